//! Siblings mode (protocol.md § 19.5): the context and state vectors against `dkv::causal`,
//! the causal GET replies against the codec, and the story the vectors tell run through the
//! causal kernel.

use super::*;
use dkv::version::Version;

// ---------------------------------------------------------------------------------------------
// Siblings mode (protocol.md § 19.5): causal GET replies, contexts and causal states

use dkv::causal::{CausalState, Dot, NewValue, VersionVector};
use dkv::protocol::siblings::{decode_causal_get_reply, put_causal_get_reply};

/// `vv={1:5,3:2}` (or `vv={}`) as (node id, counter) pairs, in the order written.
fn vv_entries(v: &Vector) -> Vec<(u16, u64)> {
    let raw = v.raw("vv");
    let inner = raw
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .unwrap_or_else(|| panic!("vector {}: vv={raw} is not {{A:N,...}}", v.name));
    inner
        .split(',')
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (a, n) = e
                .split_once(':')
                .unwrap_or_else(|| panic!("vector {}: vv entry {e}", v.name));
            let a = parse_int(a).unwrap_or_else(|| panic!("vector {}: node {a}", v.name));
            let n = parse_int(n).unwrap_or_else(|| panic!("vector {}: counter {n}", v.name));
            (a as u16, n)
        })
        .collect()
}

fn vector_of(entries: &[(u16, u64)]) -> VersionVector {
    let mut vv = VersionVector::new();
    for &(a, n) in entries {
        vv.raise(a, n);
    }
    vv
}

/// A `context vv={...}` vector: `VersionVector::encode_context` of that vector gives the
/// bytes, which decode back to it (and the empty context is also the zero-length one).
pub(crate) fn check_context_vector(v: &Vector) {
    v.only(&["vv"]);
    let entries = vv_entries(v);
    let vv = vector_of(&entries);
    assert_eq!(
        vv.iter().collect::<Vec<_>>(),
        entries,
        "vector {}: entries must be written ascending by node id",
        v.name
    );
    let mut out = Vec::new();
    vv.encode_context(&mut out);
    assert_eq!(out, v.bytes, "vector {}: encode_context", v.name);
    assert_eq!(vv.encoded_context_len(), v.bytes.len(), "vector {}", v.name);
    assert_eq!(
        VersionVector::decode_context(&v.bytes).as_ref(),
        Ok(&vv),
        "vector {}: decode_context",
        v.name
    );
    assert_eq!(
        VersionVector::from_hex(&vv.to_hex()).as_ref(),
        Ok(&vv),
        "vector {}: hex (kvcat's ctx=HEX)",
        v.name
    );
    if vv.is_empty() {
        assert_eq!(VersionVector::decode_context(&[]), Ok(vv));
    }
}

/// `siblingI=NODE:COUNTER/VERSION/EXPIRES_AT_MS/"value"`: (dot, version, expiry, value).
fn siblings_of_state(v: &Vector) -> Vec<(Dot, u64, u64, Vec<u8>)> {
    (1..)
        .map_while(|i| v.fields.get(&format!("sibling{i}")).map(|raw| (i, raw)))
        .map(|(i, raw)| {
            let parts: Vec<&str> = raw.splitn(4, '/').collect();
            assert_eq!(parts.len(), 4, "vector {}: sibling{i}={raw}", v.name);
            let (actor, counter) = parts[0]
                .split_once(':')
                .unwrap_or_else(|| panic!("vector {}: sibling{i} dot {}", v.name, parts[0]));
            let n = |s: &str| parse_int(s).unwrap_or_else(|| panic!("vector {}: {s}", v.name));
            let value = parse_string(parts[3])
                .unwrap_or_else(|e| panic!("vector {}: sibling{i}: {e}", v.name));
            let dot = Dot {
                actor: n(actor) as u16,
                counter: n(counter),
            };
            (dot, n(parts[1]), n(parts[2]), value)
        })
        .collect()
}

/// A `state` vector: the bytes decode to the vector and siblings of the SPEC, encoding that
/// state gives the bytes again, and its digest is the SPEC's.
pub(crate) fn check_state_vector(v: &Vector) {
    let siblings = siblings_of_state(v);
    let mut allowed = vec!["vv".to_string(), "digest".to_string()];
    allowed.extend((1..=siblings.len()).map(|i| format!("sibling{i}")));
    v.only(&allowed.iter().map(String::as_str).collect::<Vec<_>>());
    let state = CausalState::decode(&v.bytes)
        .unwrap_or_else(|e| panic!("vector {}: CausalState::decode: {e}", v.name));
    assert_eq!(
        state.vv().iter().collect::<Vec<_>>(),
        vv_entries(v),
        "vector {}: vector",
        v.name
    );
    let got: Vec<(Dot, u64, u64, Vec<u8>)> = state
        .siblings()
        .iter()
        .map(|s| (s.dot, s.version, s.expires_at_ms, s.value.clone()))
        .collect();
    assert_eq!(got, siblings, "vector {}: siblings", v.name);
    let mut out = Vec::new();
    state.encode(&mut out);
    assert_eq!(out, v.bytes, "vector {}: encode", v.name);
    assert_eq!(state.encoded_len(), v.bytes.len(), "vector {}", v.name);
    assert_eq!(state.digest(), v.int("digest"), "vector {}: digest", v.name);
    assert_eq!(
        state.digest(),
        key_hash(&v.bytes),
        "vector {}: the digest is the key hash of the encoding",
        v.name
    );
}

/// A causal GET reply (`causal=1`): `put_causal_get_reply` with the SPEC's context and
/// siblings (`versionI`, `valueI`) gives the bytes, and `decode_causal_get_reply` reads them
/// back.
pub(crate) fn check_causal_get_reply_vector(v: &Vector) {
    let f = whole_frame(v);
    assert_eq!(v.raw("causal"), "1", "vector {}", v.name);
    assert_eq!(
        op_named(v.raw("op")),
        op::GET,
        "vector {}: only GET",
        v.name
    );
    let status = status_named(v.raw("status"));
    let id = v.int("id") as u32;
    let context = v.bytes_of("context");
    let values: Vec<(Version, Vec<u8>)> = (1..)
        .map_while(|i| {
            v.has(&format!("version{i}")).then(|| {
                (
                    Version(v.int(&format!("version{i}"))),
                    v.bytes_of(&format!("value{i}")),
                )
            })
        })
        .collect();
    let mut allowed = vec!["op", "status", "id", "causal", "context"];
    let names: Vec<String> = (1..=values.len())
        .flat_map(|i| [format!("version{i}"), format!("value{i}")])
        .collect();
    allowed.extend(names.iter().map(String::as_str));
    v.only(&allowed);
    assert_eq!(
        status == Status::Ok,
        !values.is_empty(),
        "vector {}: OK carries siblings, NOT_FOUND none",
        v.name
    );
    VersionVector::decode_context(&context)
        .unwrap_or_else(|e| panic!("vector {}: the context: {e}", v.name));

    let mut out = Vec::new();
    assert_eq!(
        put_causal_get_reply(&mut out, id, &context, &values),
        status,
        "vector {}: status",
        v.name
    );
    assert_eq!(out, v.bytes, "vector {}: encoding the value", v.name);

    let r = Response::from_frame(&f).expect("a reply");
    assert_eq!((r.op, r.status(), r.id), (op::GET, Some(status), id));
    let decoded = decode_causal_get_reply(r.body, status == Status::Ok)
        .unwrap_or_else(|e| panic!("vector {}: {e}", v.name));
    assert_eq!(decoded.context, &context[..], "vector {}: context", v.name);
    let want: Vec<(u64, &[u8])> = values.iter().map(|(ver, val)| (ver.0, &val[..])).collect();
    assert_eq!(decoded.values, want, "vector {}: siblings", v.name);
}

/// The vectors of § 19.5 tell one story; the causal kernel, run through it, must produce
/// each context and version they show. And the `causal-state` vector is the state replicas
/// reach by the writes its text describes.
#[test]
fn siblings_vectors_in_protocol_md_follow_the_causal_kernel() {
    let vs = vectors(&protocol_md());
    let vector = |name: &str| {
        vs.iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("protocol.md lacks vector {name}"))
    };
    let write = |version: u64, value: &[u8]| {
        Some(NewValue {
            version,
            expires_at_ms: 0,
            value: value.to_vec(),
        })
    };
    let context_of = |s: &CausalState| {
        let mut out = Vec::new();
        s.vv().encode_context(&mut out);
        out
    };
    let live = |s: &CausalState| -> Vec<(u64, Vec<u8>)> {
        s.live(0).map(|x| (x.version, x.value.clone())).collect()
    };
    let empty = VersionVector::new();

    // "cart": milk through node 1 and eggs through node 2, neither with a context; a dot's
    // counter is its write's version (what a coordinator passes as the counter floor).
    let reply = vector("causal-get-reply");
    let (v1, v2) = (reply.int("version1"), reply.int("version2"));
    let mut at1 = CausalState::empty();
    at1.update_at(&empty, 1, write(v1, b"milk"), v1).unwrap();
    let mut at2 = CausalState::empty();
    at2.update_at(&empty, 2, write(v2, b"eggs"), v2).unwrap();
    let mut state = CausalState::merged(&at1, &at2);
    assert_eq!(context_of(&state), reply.bytes_of("context"));
    assert_eq!(
        live(&state),
        vec![(v1, b"milk".to_vec()), (v2, b"eggs".to_vec())]
    );
    assert_eq!(vector("causal-get-request").raw("key"), "\"cart\"");

    // The PUT carries that context and supersedes both siblings.
    let put = vector("causal-put-request");
    assert_eq!(put.bytes_of("context"), reply.bytes_of("context"));
    let v3 = vector("causal-put-reply").int("version");
    let ctx = VersionVector::decode_context(&put.bytes_of("context")).unwrap();
    let dot = state
        .update_at(&ctx, 1, write(v3, &put.bytes_of("value")), v3)
        .unwrap();
    assert_eq!(
        dot,
        Some(Dot {
            actor: 1,
            counter: v3
        })
    );
    assert_eq!(live(&state), vec![(v3, b"milk,eggs".to_vec())]);

    // The DELETE carries the context of a GET of that state and leaves no sibling; the
    // NOT_FOUND reply carries the same context.
    let delete = vector("causal-delete-request");
    assert_eq!(delete.bytes_of("context"), context_of(&state));
    let v4 = vector("causal-delete-reply").int("version");
    let ctx = VersionVector::decode_context(&delete.bytes_of("context")).unwrap();
    assert_eq!(state.update_at(&ctx, 1, None, v4).unwrap(), None);
    assert!(state.is_tombstone(0));
    let not_found = vector("causal-get-not-found-reply");
    assert_eq!(not_found.bytes_of("context"), context_of(&state));
    assert!(
        v1 < v2 && v2 < v3 && v3 < v4,
        "versions grow along the story"
    );

    // `causal-state`: node 1 wrote "a" twice (the second with the first's context), node 2
    // wrote "bc" expiring at 1000 ms without having seen either; the replicas merge.
    let golden = vector("causal-state");
    let mut a = CausalState::empty();
    a.update(&empty, 1, write(0x10, b"a")).unwrap();
    let seen = a.vv().clone();
    a.update(&seen, 1, write(0x12, b"a")).unwrap();
    let mut b = CausalState::empty();
    b.update(
        &empty,
        2,
        Some(NewValue {
            version: 0x11,
            expires_at_ms: 1000,
            value: b"bc".to_vec(),
        }),
    )
    .unwrap();
    let mut out = Vec::new();
    CausalState::merged(&a, &b).encode(&mut out);
    assert_eq!(
        out, golden.bytes,
        "the state of the writes the text describes"
    );
    let mut out = Vec::new();
    CausalState::merged(&b, &a).encode(&mut out);
    assert_eq!(out, golden.bytes, "merged the other way round");
    assert_eq!(
        vector("context-two-nodes").bytes,
        {
            let mut out = Vec::new();
            vector_of(&[(3, 2), (1, 5)]).encode_context(&mut out);
            out
        },
        "a vector built in any order encodes ascending"
    );
}
