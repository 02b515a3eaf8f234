//! Codec tests of protocol v1 against its written contract, `protocol.md`.
//!
//! * Golden vectors: every ```` ```hex ```` block of protocol.md is read out of the file with the
//!   `Vector NAME: SPEC` line before it; each must decode (through `dkv::protocol`) to what SPEC
//!   says, and encoding that value must give the same bytes. The limits table, the opcode and
//!   status tables and the key-hash test values of protocol.md are checked the same way, so the
//!   document and the code cannot drift apart.
//! * Peer frames (protocol.md § 18): every peer opcode in use has a request and a reply vector;
//!   REPLICATE, READ and GOSSIP vectors are encoded with `dkv::cluster::peer` and decoded back,
//!   the anti-entropy vectors are the frames of a scripted exchange between two real
//!   anti-entropy cores.
//! * Siblings mode (protocol.md § 19.5): the causal GET, PUT and DELETE requests and the
//!   causal GET replies are encoded and decoded like the others; the contexts and the causal
//!   state (not frames) with `dkv::causal`; and the kernel, run through the story the
//!   vectors tell, produces each context and version they show.
//! * Round trips of every request type, every truncated prefix of a valid frame reading as "need
//!   more bytes", 100,000 random byte strings and random mutations of valid frames decoded
//!   without a panic, and the 4-byte prefix 0xFFFFFFFF refused on its own.

use dkv::cluster::Ownership;
use dkv::hash::{key_hash, partition_of};
use dkv::limits;
use dkv::protocol::message::{put_connection_error, put_error, put_ok, put_reply, Response};
use dkv::protocol::ringmap::RingMap;
use dkv::protocol::{
    frame, op, Consistency, FrameError, Request, RequestError, Role, Status, OP_CONNECTION_ERROR,
    RESPONSE_BIT,
};
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------
// Reading protocol.md

fn protocol_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/protocol.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// One golden vector: its name, its SPEC (kind and fields) and its bytes.
#[derive(Debug)]
struct Vector {
    name: String,
    kind: String,
    fields: BTreeMap<String, String>,
    bytes: Vec<u8>,
}

impl Vector {
    /// A field's raw text; panics (failing the test) with the vector's name if absent.
    fn raw(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("vector {}: no field {key}", self.name))
    }

    fn int(&self, key: &str) -> u64 {
        parse_int(self.raw(key))
            .unwrap_or_else(|| panic!("vector {}: {key} not a number", self.name))
    }

    fn int_or(&self, key: &str, default: u64) -> u64 {
        if self.fields.contains_key(key) {
            self.int(key)
        } else {
            default
        }
    }

    /// A string field: double-quoted, or `hex:` and hex digits (nonces, proofs).
    fn bytes_of(&self, key: &str) -> Vec<u8> {
        let raw = self.raw(key);
        if let Some(hex) = raw.strip_prefix("hex:") {
            return parse_hex(&[hex], &self.name);
        }
        parse_string(raw).unwrap_or_else(|e| panic!("vector {}: field {key}: {e}", self.name))
    }

    fn has(&self, key: &str) -> bool {
        self.fields.contains_key(key)
    }

    /// Fail if the SPEC has a field the checks below do not look at (a typo in the document).
    fn only(&self, allowed: &[&str]) {
        for k in self.fields.keys() {
            assert!(
                allowed.contains(&k.as_str()),
                "vector {}: unexpected field {k} (allowed: {allowed:?})",
                self.name
            );
        }
    }
}

fn parse_int(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// A double-quoted string with `\xNN`, `\\` and `\"` escapes, as bytes.
fn parse_string(s: &str) -> Result<Vec<u8>, String> {
    let inner = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or_else(|| format!("{s} is not a double-quoted string"))?;
    let b = inner.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'\\') | Some(b'"') => {
                out.push(b[i + 1]);
                i += 2;
            }
            Some(b'x') => {
                let hex = inner.get(i + 2..i + 4).ok_or("short \\x escape")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|e| format!("\\x{hex}: {e}"))?);
                i += 4;
            }
            _ => return Err(format!("bad escape in {s}")),
        }
    }
    Ok(out)
}

/// Split a SPEC on spaces outside double quotes.
fn tokens(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in spec.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == ' ' && !quoted {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        cur.push(c);
    }
    assert!(!quoted, "unterminated string in SPEC {spec}");
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Bytes of a hex block: pairs of hex digits; whitespace and `#` comments ignored.
fn parse_hex(lines: &[&str], name: &str) -> Vec<u8> {
    let mut digits = String::new();
    for line in lines {
        let code = line
            .split('#')
            .next()
            .expect("split yields at least one part");
        digits.extend(code.chars().filter(|c| !c.is_whitespace()));
    }
    assert!(
        digits.len().is_multiple_of(2),
        "vector {name}: odd number of hex digits"
    );
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .unwrap_or_else(|e| panic!("vector {name}: bad hex {}: {e}", &digits[i..i + 2]))
        })
        .collect()
}

/// Every `Vector NAME: SPEC` line with the hex block after it. A hex block without a Vector line
/// before it fails the test: every hex example in the document is a checked vector.
fn vectors(doc: &str) -> Vec<Vector> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut out = Vec::new();
    let mut pending: Option<(String, String)> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_end();
        if let Some(rest) = line.strip_prefix("Vector `") {
            assert!(pending.is_none(), "Vector line without a hex block: {line}");
            let (name, rest) = rest.split_once('`').expect("Vector `NAME`: `SPEC`");
            let spec = rest
                .trim_start_matches(':')
                .trim()
                .strip_prefix('`')
                .and_then(|s| s.strip_suffix('`'))
                .unwrap_or_else(|| panic!("vector {name}: SPEC must be in backquotes: {line}"));
            pending = Some((name.to_string(), spec.to_string()));
        } else if line == "```hex" {
            let (name, spec) = pending
                .take()
                .unwrap_or_else(|| panic!("hex block at line {} has no Vector line", i + 1));
            let start = i + 1;
            let mut end = start;
            while lines.get(end).map(|l| l.trim_end()) != Some("```") {
                assert!(end < lines.len(), "vector {name}: unterminated hex block");
                end += 1;
            }
            let bytes = parse_hex(&lines[start..end], &name);
            let toks = tokens(&spec);
            let kind = toks.first().cloned().expect("SPEC starts with its kind");
            let mut fields = BTreeMap::new();
            for t in &toks[1..] {
                let (k, v) = t
                    .split_once('=')
                    .unwrap_or_else(|| panic!("vector {name}: field {t} is not k=v"));
                let old = fields.insert(k.to_string(), v.to_string());
                assert!(old.is_none(), "vector {name}: field {k} twice");
            }
            out.push(Vector {
                name,
                kind,
                fields,
                bytes,
            });
            i = end;
        } else if !line.is_empty() && pending.is_some() && !line.starts_with("```") {
            // Prose between a Vector line and its block would separate them: not allowed.
            panic!("text between a Vector line and its hex block: {line}");
        }
        i += 1;
    }
    assert!(pending.is_none(), "last Vector line has no hex block");
    out
}

/// The rows of a markdown table whose first cell is a backquoted word: (word, other cells).
fn table_rows(doc: &str) -> Vec<(String, Vec<String>)> {
    doc.lines()
        .filter_map(|l| {
            let cells: Vec<String> = l
                .trim()
                .strip_prefix('|')?
                .strip_suffix('|')?
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect();
            let first = cells[0].strip_prefix('`')?.strip_suffix('`')?.to_string();
            Some((first, cells[1..].to_vec()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Names used in SPECs

fn status_named(name: &str) -> Status {
    *Status::ALL
        .iter()
        .find(|s| s.name() == name)
        .unwrap_or_else(|| panic!("unknown status name {name}"))
}

fn op_named(name: &str) -> u8 {
    if name == "CONNECTION" {
        return 0;
    }
    (1..0x80u8)
        .find(|&c| op::name(c) == name && !(op::PEER_FIRST..=op::PEER_LAST).contains(&c))
        .unwrap_or_else(|| panic!("unknown opcode name {name}"))
}

fn consistency_named(name: &str) -> Consistency {
    if name == "DEFAULT" {
        Consistency::Default
    } else {
        Consistency::parse(name).unwrap_or_else(|| panic!("unknown consistency {name}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Checking vectors

fn check_no_prefix_is_a_frame(bytes: &[u8], what: &str) {
    for cut in 0..bytes.len() {
        assert_eq!(
            frame::parse(&bytes[..cut]),
            Ok(None),
            "{what}: prefix of {cut} bytes is not 'need more bytes'"
        );
    }
}

fn whole_frame<'a>(v: &'a Vector) -> frame::FrameRef<'a> {
    let (f, n) = frame::parse(&v.bytes)
        .unwrap_or_else(|e| panic!("vector {}: {e}", v.name))
        .unwrap_or_else(|| panic!("vector {}: incomplete frame", v.name));
    assert_eq!(n, v.bytes.len(), "vector {}: bytes after the frame", v.name);
    f
}

fn check_request_vector(v: &Vector) {
    let f = whole_frame(v);
    let opcode = op_named(v.raw("op"));
    let id = v.int("id") as u32;
    assert_eq!(f.op, opcode, "vector {}: op", v.name);
    assert_eq!(f.id, id, "vector {}: id", v.name);
    let (key, value, token, context);
    let consistency = || consistency_named(v.fields.get("consistency").map_or("DEFAULT", |s| s));
    // Siblings mode (§ 19): `causal=1` is the causal flag, aux bit 2.
    let causal = match v.fields.get("causal").map(String::as_str) {
        None => false,
        Some("1") => true,
        Some(c) => panic!("vector {}: causal={c} (only causal=1 is written)", v.name),
    };
    let expected = match opcode {
        op::HELLO => {
            v.only(&["op", "id", "protocol", "role", "node", "token"]);
            token = v.bytes_of("token");
            Request::Hello {
                version: v.int("protocol") as u16,
                role: match v.raw("role") {
                    "client" => Role::Client,
                    "peer" => Role::Peer,
                    r => panic!("vector {}: role {r}", v.name),
                },
                node_id: v.int("node") as u32,
                token: &token,
            }
        }
        op::PING | op::STATS | op::CLUSTER | op::ANTI_ENTROPY | op::COMPACT | op::RING => {
            v.only(&["op", "id"]);
            match opcode {
                op::PING => Request::Ping,
                op::STATS => Request::Stats,
                op::CLUSTER => Request::Cluster,
                op::ANTI_ENTROPY => Request::AntiEntropy,
                op::RING => Request::Ring,
                _ => Request::Compact,
            }
        }
        op::GET | op::DELETE => {
            key = v.bytes_of("key");
            match (opcode, causal) {
                (op::GET, false) => {
                    v.only(&["op", "id", "consistency", "key"]);
                    Request::Get {
                        key: &key,
                        consistency: consistency(),
                    }
                }
                (op::GET, true) => {
                    v.only(&["op", "id", "consistency", "causal", "key"]);
                    Request::CausalGet {
                        key: &key,
                        consistency: consistency(),
                    }
                }
                (_, false) => {
                    v.only(&["op", "id", "consistency", "key"]);
                    Request::Delete {
                        key: &key,
                        consistency: consistency(),
                    }
                }
                (_, true) => {
                    v.only(&["op", "id", "consistency", "causal", "key", "context"]);
                    context = v.bytes_of("context");
                    Request::CausalDelete {
                        key: &key,
                        context: &context,
                        consistency: consistency(),
                    }
                }
            }
        }
        op::PUT => {
            key = v.bytes_of("key");
            value = v.bytes_of("value");
            if causal {
                v.only(&[
                    "op",
                    "id",
                    "consistency",
                    "causal",
                    "key",
                    "ttl",
                    "context",
                    "value",
                ]);
                context = v.bytes_of("context");
                Request::CausalPut {
                    key: &key,
                    value: &value,
                    ttl_seconds: v.int("ttl") as u32,
                    context: &context,
                    consistency: consistency(),
                }
            } else {
                v.only(&["op", "id", "consistency", "key", "ttl", "value"]);
                Request::Put {
                    key: &key,
                    value: &value,
                    ttl_seconds: v.int("ttl") as u32,
                    consistency: consistency(),
                }
            }
        }
        op::LOCAL_GET => {
            v.only(&["op", "id", "key"]);
            key = v.bytes_of("key");
            Request::LocalGet { key: &key }
        }
        op::PEER_AUTH => {
            v.only(&["op", "id", "proof"]);
            token = v.bytes_of("proof");
            Request::PeerAuth { proof: &token }
        }
        op::SNAPSHOT | op::CLUSTER_ADMIN => {
            v.only(&["op", "id", "command"]);
            token = v.bytes_of("command");
            let command = std::str::from_utf8(&token).expect("UTF-8 command");
            if opcode == op::SNAPSHOT {
                Request::Snapshot { command }
            } else {
                Request::ClusterAdmin { command }
            }
        }
        other => panic!("vector {}: no request check for op 0x{other:02x}", v.name),
    };
    assert_eq!(
        Request::decode(&f),
        Ok(expected),
        "vector {}: decoded value",
        v.name
    );
    let mut out = Vec::new();
    expected.encode(id, &mut out);
    assert_eq!(out, v.bytes, "vector {}: encoding the value", v.name);
}

fn check_reply_vector(v: &Vector) {
    if v.has("causal") {
        return check_causal_get_reply_vector(v);
    }
    let f = whole_frame(v);
    let r = Response::from_frame(&f)
        .unwrap_or_else(|| panic!("vector {}: op 0x{:02x} is not a reply", v.name, f.op));
    let opcode = op_named(v.raw("op"));
    let status = status_named(v.raw("status"));
    let id = v.int("id") as u32;
    assert_eq!(r.op, opcode, "vector {}: op", v.name);
    assert_eq!(r.status(), Some(status), "vector {}: status", v.name);
    assert_eq!(r.id, id, "vector {}: id", v.name);

    // The body the SPEC describes, as the parts a node would write.
    let mut parts: Vec<Vec<u8>> = Vec::new();
    match status {
        Status::Ok => match opcode {
            op::HELLO => {
                v.only(&[
                    "op", "status", "id", "protocol", "node", "shard", "shards", "nonce",
                ]);
                parts.push((v.int("protocol") as u16).to_be_bytes().to_vec());
                parts.push((v.int("node") as u32).to_be_bytes().to_vec());
                parts.push((v.int("shard") as u16).to_be_bytes().to_vec());
                parts.push((v.int("shards") as u16).to_be_bytes().to_vec());
                if v.has("nonce") {
                    // A peer HELLO's reply: the responder's nonce follows (§ 8.1).
                    parts.push(v.bytes_of("nonce"));
                }
            }
            op::PEER_AUTH => {
                v.only(&["op", "status", "id", "proof"]);
                parts.push(v.bytes_of("proof"));
            }
            op::GET => {
                v.only(&["op", "status", "id", "version", "value"]);
                parts.push(v.int("version").to_be_bytes().to_vec());
                parts.push(v.bytes_of("value"));
                assert_eq!(
                    r.version_and_rest(),
                    Some((v.int("version"), &v.bytes_of("value")[..])),
                    "vector {}: version and value",
                    v.name
                );
            }
            op::PUT | op::DELETE => {
                v.only(&["op", "status", "id", "version"]);
                parts.push(v.int("version").to_be_bytes().to_vec());
                assert_eq!(
                    r.version_and_rest(),
                    Some((v.int("version"), &[][..])),
                    "vector {}: version",
                    v.name
                );
            }
            op::LOCAL_GET => {
                v.only(&["op", "status", "id", "version", "expires", "value"]);
                parts.push(v.int("version").to_be_bytes().to_vec());
                parts.push(v.int_or("expires", 0).to_be_bytes().to_vec());
                parts.push(v.bytes_of("value"));
            }
            op::STATS | op::CLUSTER => {
                v.only(&["op", "status", "id", "text"]);
                parts.push(v.bytes_of("text"));
            }
            op::RING => {
                // The ring a cluster started with `nodes` and `replicas` computes
                // (Ownership::initial), at `version`, with the addresses `addrID`.
                v.only(&[
                    "op", "status", "id", "version", "replicas", "nodes", "addr1", "addr2",
                ]);
                let nodes: Vec<u32> = v
                    .raw("nodes")
                    .split(',')
                    .map(|n| n.parse().expect("node id"))
                    .collect();
                let map = RingMap {
                    ownership: Ownership::initial(&nodes, v.int("replicas") as usize)
                        .expect("a valid ring")
                        .with_version(v.int("version")),
                    addrs: nodes
                        .iter()
                        .map(|id| {
                            let addr = v.bytes_of(&format!("addr{id}"));
                            (*id, String::from_utf8(addr).expect("UTF-8 address"))
                        })
                        .collect(),
                };
                assert_eq!(
                    RingMap::decode(r.body).as_ref(),
                    Ok(&map),
                    "vector {}: the ring map",
                    v.name
                );
                let mut body = Vec::new();
                map.encode(&mut body);
                parts.push(body);
            }
            _ => v.only(&["op", "status", "id"]),
        },
        Status::NotFound => {
            v.only(&["op", "status", "id", "version"]);
            if v.has("version") {
                parts.push(v.int("version").to_be_bytes().to_vec());
            }
        }
        _ => {
            v.only(&["op", "status", "id", "message"]);
            parts.push(v.bytes_of("message"));
            assert!(
                std::str::from_utf8(r.body).is_ok(),
                "vector {}: message not UTF-8",
                v.name
            );
        }
    }
    let body: Vec<u8> = parts.concat();
    assert_eq!(r.body, &body[..], "vector {}: body", v.name);

    // Encoding the value the way a node does gives the same bytes.
    let mut out = Vec::new();
    let refs: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
    if opcode == 0 {
        assert_eq!(f.op, OP_CONNECTION_ERROR);
        assert_eq!(
            id, 0,
            "vector {}: connection-level frames carry id 0",
            v.name
        );
        assert!(
            status.closes_connection(),
            "vector {}: a connection-level frame must carry a closing status",
            v.name
        );
        put_connection_error(&mut out, status, &String::from_utf8_lossy(&body));
    } else if status == Status::Ok {
        put_ok(&mut out, opcode, id, &refs);
    } else if status == Status::NotFound {
        put_reply(&mut out, opcode, status, id, &refs);
    } else {
        put_error(
            &mut out,
            opcode,
            id,
            status,
            &String::from_utf8_lossy(&body),
        );
    }
    assert_eq!(out, v.bytes, "vector {}: encoding the value", v.name);
}

fn check_invalid_frame_vector(v: &Vector) {
    v.only(&["error", "declared"]);
    let declared = v.int("declared") as u32;
    let expected = match v.raw("error") {
        "FRAME_TOO_LARGE" => FrameError::TooLarge { declared },
        "MALFORMED" => FrameError::TooShort { declared },
        e => panic!("vector {}: error {e}", v.name),
    };
    // Refused from the bytes shown, and from the 4-byte prefix alone.
    assert_eq!(frame::check(&v.bytes), Err(expected), "vector {}", v.name);
    assert_eq!(
        frame::check(&v.bytes[..4]),
        Err(expected),
        "vector {}",
        v.name
    );
    assert_eq!(
        frame::parse(&v.bytes[..4]),
        Err(expected),
        "vector {}",
        v.name
    );
}

fn check_invalid_request_vector(v: &Vector) {
    v.only(&["status"]);
    let f = whole_frame(v);
    let err = Request::decode(&f).expect_err("an invalid request must not decode");
    assert_eq!(
        err.status(),
        status_named(v.raw("status")),
        "vector {}: {err}",
        v.name
    );
}

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
fn check_context_vector(v: &Vector) {
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
fn check_state_vector(v: &Vector) {
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
fn check_causal_get_reply_vector(v: &Vector) {
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

/// The vectors the issue asks protocol.md to show; deleting one from the document fails here.
const REQUIRED_VECTORS: &[&str] = &[
    "hello-request",
    "hello-admin-request",
    "admin-refused-reply",
    "snapshot-request",
    "hello-reply",
    "ping-request",
    "ping-reply",
    "put-request",
    "put-reply",
    "get-request",
    "get-reply",
    "get-one-request",
    "get-not-found-reply",
    "delete-request",
    "delete-reply",
    "key-too-large-reply",
    "malformed-get-request",
    "malformed-reply",
    "oversized-prefix",
    "frame-too-large-reply",
    "peer-hello-request",
    "peer-hello-reply",
    "peer-auth-request",
    "peer-auth-reply",
    "ring-request",
    "ring-reply",
    // Siblings mode (§ 19.5).
    "context-empty",
    "context-two-nodes",
    "causal-state",
    "causal-get-request",
    "causal-get-reply",
    "causal-put-request",
    "causal-put-reply",
    "causal-delete-request",
    "causal-delete-reply",
    "causal-get-not-found-reply",
];

#[test]
fn golden_vectors_in_protocol_md_match_the_codec() {
    let doc = protocol_md();
    let vs = vectors(&doc);
    let mut names = std::collections::BTreeSet::new();
    for v in &vs {
        assert!(names.insert(v.name.clone()), "vector {} twice", v.name);
        match v.kind.as_str() {
            "request" => check_request_vector(v),
            "reply" => check_reply_vector(v),
            "invalid-frame" => check_invalid_frame_vector(v),
            "invalid-request" => check_invalid_request_vector(v),
            "context" => check_context_vector(v),
            "state" => check_state_vector(v),
            // Peer frames (protocol.md § 18): checked against the cluster layer below.
            k if k.starts_with("peer-") => {}
            k => panic!("vector {}: unknown kind {k}", v.name),
        }
        if v.kind == "request"
            || v.kind == "reply"
            || v.kind == "invalid-request"
            || v.kind.starts_with("peer-")
        {
            check_no_prefix_is_a_frame(&v.bytes, &v.name);
        }
    }
    for r in REQUIRED_VECTORS {
        assert!(names.contains(*r), "protocol.md lacks vector {r}");
    }
}

/// The example error messages in protocol.md are what the codec's errors print.
#[test]
fn documented_error_messages_are_the_codecs() {
    let vs = vectors(&protocol_md());
    let message = |name: &str| {
        let v = vs.iter().find(|v| v.name == name).expect("vector present");
        String::from_utf8(v.bytes_of("message")).expect("UTF-8 message")
    };
    let mut out = Vec::new();
    Request::Get {
        key: &[b'k'; limits::KEY_SIZE_MAX + 1],
        consistency: Consistency::Default,
    }
    .encode(8, &mut out);
    let (f, _) = frame::parse(&out).unwrap().unwrap();
    let err = Request::decode(&f).unwrap_err();
    assert_eq!(err, RequestError::KeyTooLarge(limits::KEY_SIZE_MAX + 1));
    assert_eq!(err.to_string(), message("key-too-large-reply"));
    let err = frame::check(&[0xFF; 4]).unwrap_err();
    assert_eq!(err.to_string(), message("frame-too-large-reply"));
    assert_eq!(
        dkv::protocol::ADMIN_TOKEN_NEEDED,
        message("admin-refused-reply")
    );
    let bad = vs
        .iter()
        .find(|v| v.name == "malformed-get-request")
        .expect("vector present");
    let (f, _) = frame::parse(&bad.bytes).unwrap().unwrap();
    let err = Request::decode(&f).unwrap_err();
    assert_eq!(err.to_string(), message("malformed-reply"));
}

#[test]
fn limits_table_in_protocol_md_matches_limits_rs() {
    let known: &[(&str, u64)] = &[
        ("KEY_SIZE_MAX", limits::KEY_SIZE_MAX as u64),
        ("VALUE_SIZE_MAX", limits::VALUE_SIZE_MAX as u64),
        ("FRAME_SIZE_MAX", limits::FRAME_SIZE_MAX as u64),
        ("FRAME_HEADER_SIZE", limits::FRAME_HEADER_SIZE as u64),
        ("TOKEN_SIZE_MAX", limits::TOKEN_SIZE_MAX as u64),
        ("TTL_SECONDS_MAX", limits::TTL_SECONDS_MAX as u64),
        (
            "ERROR_MESSAGE_SIZE_MAX",
            limits::ERROR_MESSAGE_SIZE_MAX as u64,
        ),
        ("TEXT_REPLY_SIZE_MAX", limits::TEXT_REPLY_SIZE_MAX as u64),
        ("PORT_DEFAULT", limits::PORT_DEFAULT as u64),
        ("PARTITION_COUNT", limits::PARTITION_COUNT as u64),
        (
            "IN_FLIGHT_PER_CONNECTION_MAX",
            limits::IN_FLIGHT_PER_CONNECTION_MAX as u64,
        ),
        (
            "WRITE_BUFFER_HIGH_WATER",
            limits::WRITE_BUFFER_HIGH_WATER as u64,
        ),
        (
            "WRITE_BUFFER_SIZE_MAX",
            limits::WRITE_BUFFER_SIZE_MAX as u64,
        ),
        ("IDLE_TIMEOUT_MS_DEFAULT", limits::IDLE_TIMEOUT_MS_DEFAULT),
        (
            "CONNECTION_BUFFER_BYTES_MAX_DEFAULT",
            limits::CONNECTION_BUFFER_BYTES_MAX_DEFAULT as u64,
        ),
        (
            "NODE_BUFFER_BYTES_MAX_DEFAULT",
            limits::NODE_BUFFER_BYTES_MAX_DEFAULT as u64,
        ),
        ("FRAME_TIMEOUT_MS_DEFAULT", limits::FRAME_TIMEOUT_MS_DEFAULT),
        (
            "CONNECTIONS_MAX_DEFAULT",
            limits::CONNECTIONS_MAX_DEFAULT as u64,
        ),
        ("SHUTDOWN_FLUSH_MS_MAX", limits::SHUTDOWN_FLUSH_MS_MAX),
    ];
    let doc = protocol_md();
    let rows: Vec<_> = table_rows(&doc)
        .into_iter()
        .filter(|(name, _)| name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    for (name, cells) in &rows {
        let value = known
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("protocol.md lists {name}, which this test does not know"))
            .1;
        assert_eq!(
            cells[0].parse::<u64>().ok(),
            Some(value),
            "protocol.md says {name} = {}",
            cells[0]
        );
    }
    for (name, _) in known {
        assert!(
            rows.iter().any(|(n, _)| n == name),
            "protocol.md's limits table lacks {name}"
        );
    }
    // The numbers written in prose must be the same ones.
    for must in [
        format!("**{}**", limits::FRAME_SIZE_MAX),
        format!("**{}**", limits::PORT_DEFAULT),
        format!("127.0.0.1:{}", limits::PORT_DEFAULT),
    ] {
        assert!(doc.contains(&must), "protocol.md lacks {must}");
    }
}

/// README.md states the frame limit as a figure; it must be the one enforced.
#[test]
fn readme_states_the_exact_frame_limit() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let grouped = |n: usize| {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(ch);
        }
        out
    };
    let limit = grouped(limits::FRAME_SIZE_MAX);
    assert!(
        readme.contains(&format!("frames up to\n{limit} bytes"))
            || readme.contains(&format!("frames up to {limit} bytes")),
        "README.md must say frames up to {limit} bytes"
    );
    let put = grouped(limits::FRAME_HEADER_AFTER_LENGTH + limits::PUT_BODY_SIZE_MAX);
    assert!(
        readme.contains(&put),
        "README.md's largest PUT is {put} bytes"
    );
}

#[test]
fn opcode_and_status_tables_in_protocol_md_match_the_code() {
    let rows = table_rows(&protocol_md());
    let coded: Vec<(u8, Vec<String>)> = rows
        .iter()
        .filter_map(|(first, cells)| {
            let hex = first.strip_prefix("0x")?;
            (hex.len() == 2).then(|| {
                (
                    u8::from_str_radix(hex, 16).expect("hex code"),
                    cells.clone(),
                )
            })
        })
        .collect();
    // Opcode table rows: | `0xNN` | NAME | who | request | reply |  (5 columns after the code).
    let ops: Vec<_> = coded.iter().filter(|(_, c)| c.len() == 4).collect();
    // Status table rows: | `0xNN` | NAME | meaning | connection afterwards |
    let statuses: Vec<_> = coded.iter().filter(|(_, c)| c.len() == 3).collect();
    for (code, cells) in &ops {
        assert_eq!(op::name(*code), cells[0], "opcode 0x{code:02x}");
    }
    for code in 1..op::PEER_FIRST {
        if op::name(code) != "UNKNOWN" {
            assert!(
                ops.iter().any(|(c, _)| *c == code),
                "protocol.md lacks opcode 0x{code:02x} {}",
                op::name(code)
            );
        }
    }
    assert_eq!(statuses.len(), Status::ALL.len(), "one row per status");
    for (code, cells) in &statuses {
        let s = Status::from_u8(*code).unwrap_or_else(|| panic!("status 0x{code:02x} unknown"));
        assert_eq!(s.name(), cells[0], "status 0x{code:02x}");
        assert_eq!(
            cells[2].starts_with("**closed**"),
            s.closes_connection(),
            "status {}: protocol.md says '{}'",
            s.name(),
            cells[2]
        );
    }
}

#[test]
fn hash_test_values_in_protocol_md_match_hash_rs() {
    let doc = protocol_md();
    let block = doc
        .split("```hash-vectors\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("protocol.md has a hash-vectors block");
    let mut n = 0;
    for line in block.lines() {
        let line = line.split('#').next().expect("split yields a part").trim();
        if line.is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols.len(), 3, "hash vector line {line}");
        let key: Vec<u8> = if cols[0] == "-" {
            Vec::new()
        } else {
            parse_hex(&[cols[0]], "hash")
        };
        assert_eq!(
            Some(key_hash(&key)),
            parse_int(cols[1]),
            "key_hash of {}",
            cols[0]
        );
        assert_eq!(
            Some(partition_of(&key) as u64),
            parse_int(cols[2]),
            "partition of {}",
            cols[0]
        );
        n += 1;
    }
    assert!(n >= 3, "too few hash vectors");
}

// ---------------------------------------------------------------------------------------------
// Round trips, prefixes, random input

/// splitmix64: a tiny seeded PRNG, so every run checks the same inputs.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const LEVELS: [Consistency; 4] = [
    Consistency::Default,
    Consistency::One,
    Consistency::Quorum,
    Consistency::All,
];

/// One encoded frame of every request type, with edge sizes.
fn sample_frames() -> Vec<Vec<u8>> {
    let big_key = [0xA5u8; limits::KEY_SIZE_MAX];
    let big_value = vec![0x5Au8; limits::VALUE_SIZE_MAX];
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let token = [7u8; limits::TOKEN_SIZE_MAX];
    let mut reqs = vec![
        Request::Ping,
        Request::Stats,
        Request::Cluster,
        Request::AntiEntropy,
        Request::Compact,
        Request::Ring,
        Request::Hello {
            version: 1,
            role: Role::Client,
            node_id: 0,
            token: b"",
        },
        Request::Hello {
            version: u16::MAX,
            role: Role::Peer,
            node_id: 1023,
            token: &token,
        },
        Request::LocalGet { key: &all_bytes },
        Request::LocalGet { key: &big_key },
        Request::PeerAuth { proof: &[0xA5; 32] },
        Request::Peer {
            op: op::PEER_FIRST,
            aux: 0xFF,
            body: b"",
        },
        Request::Peer {
            op: op::PEER_LAST,
            aux: 0,
            body: &all_bytes,
        },
    ];
    for c in LEVELS {
        reqs.push(Request::Get {
            key: b"\x00",
            consistency: c,
        });
        reqs.push(Request::Get {
            key: &big_key,
            consistency: c,
        });
        reqs.push(Request::Delete {
            key: &all_bytes,
            consistency: c,
        });
        reqs.push(Request::Put {
            key: b"k",
            value: b"",
            ttl_seconds: limits::TTL_SECONDS_MAX,
            consistency: c,
        });
        reqs.push(Request::Put {
            key: &all_bytes,
            value: &all_bytes,
            ttl_seconds: 1,
            consistency: c,
        });
    }
    reqs.push(Request::Put {
        key: &big_key,
        value: &big_value,
        ttl_seconds: 0,
        consistency: Consistency::All,
    });
    reqs.iter()
        .enumerate()
        .map(|(i, r)| {
            let mut out = Vec::new();
            r.encode(i as u32 * 0x0101_0101, &mut out);
            // Every sample is a valid request: it decodes back to itself.
            let (f, n) = frame::parse(&out).unwrap().unwrap();
            assert_eq!(n, out.len());
            assert_eq!(Request::decode(&f).as_ref(), Ok(r), "round trip of {r:?}");
            out
        })
        .collect()
}

#[test]
fn every_request_type_round_trips() {
    let frames = sample_frames();
    // Sanity: the largest PUT is within a frame, and not far from the maximum.
    let largest = frames.iter().map(|f| f.len() - 4).max().unwrap();
    assert!(largest <= limits::FRAME_SIZE_MAX);
    assert!(largest + 4096 >= limits::FRAME_SIZE_MAX);

    // Random valid requests, many per buffer as a pipelining client sends them.
    let mut rng = SplitMix(0x0d15_ea5e);
    for _ in 0..200 {
        let mut keys = Vec::new();
        let mut values = Vec::new();
        let count = 1 + rng.below(20);
        for _ in 0..count {
            let long = rng.below(10) == 0;
            let klen = 1 + rng.below(if long { limits::KEY_SIZE_MAX } else { 16 });
            keys.push(rng.bytes(klen));
            let vlen = rng.below(64);
            values.push(rng.bytes(vlen));
        }
        let mut reqs = Vec::new();
        for i in 0..count {
            let c = LEVELS[rng.below(4)];
            reqs.push(match rng.below(4) {
                0 => Request::Get {
                    key: &keys[i],
                    consistency: c,
                },
                1 => Request::Delete {
                    key: &keys[i],
                    consistency: c,
                },
                2 => Request::LocalGet { key: &keys[i] },
                _ => Request::Put {
                    key: &keys[i],
                    value: &values[i],
                    ttl_seconds: rng.next() as u32 % (limits::TTL_SECONDS_MAX + 1),
                    consistency: c,
                },
            });
        }
        let mut buf = Vec::new();
        let ids: Vec<u32> = reqs
            .iter()
            .map(|r| {
                let id = rng.next() as u32;
                r.encode(id, &mut buf);
                id
            })
            .collect();
        let mut at = 0;
        for (r, id) in reqs.iter().zip(&ids) {
            let (f, n) = frame::parse(&buf[at..]).unwrap().unwrap();
            assert_eq!(f.id, *id);
            assert_eq!(Request::decode(&f).as_ref(), Ok(r));
            at += n;
        }
        assert_eq!(at, buf.len());
    }
}

#[test]
fn every_truncated_prefix_needs_more_bytes() {
    for f in sample_frames() {
        check_no_prefix_is_a_frame(&f, "sample frame");
        // And the whole frame parses to exactly its length, even with more bytes after it.
        let mut longer = f.clone();
        longer.extend_from_slice(&[0, 0, 0]);
        assert_eq!(frame::check(&longer), Ok(Some(f.len())));
    }
}

#[test]
fn declared_length_out_of_range_is_refused_from_the_prefix_alone() {
    assert_eq!(
        frame::parse(&[0xFF, 0xFF, 0xFF, 0xFF]),
        Err(FrameError::TooLarge { declared: u32::MAX })
    );
    let max = limits::FRAME_SIZE_MAX as u32;
    assert_eq!(frame::check(&max.to_be_bytes()), Ok(None));
    assert_eq!(
        frame::check(&(max + 1).to_be_bytes()),
        Err(FrameError::TooLarge { declared: max + 1 })
    );
    for declared in 0..limits::FRAME_HEADER_AFTER_LENGTH as u32 {
        assert_eq!(
            frame::check(&declared.to_be_bytes()),
            Err(FrameError::TooShort { declared })
        );
    }
}

/// Feed `buf` through the server's read path: parse frames off the front, decode each, until
/// the buffer needs more bytes or a frame error ends the stream. Checks what holds for any
/// input: consumed sizes add up, and a request that decodes re-encodes to the same bytes
/// (the encoding is canonical), except for the HELLO reserved byte, which decoders ignore.
fn feed(buf: &[u8]) -> usize {
    let mut at = 0;
    let mut frames = 0;
    loop {
        match frame::parse(&buf[at..]) {
            Ok(Some((f, n))) => {
                assert!(n >= limits::FRAME_HEADER_SIZE && at + n <= buf.len());
                assert_eq!(n, f.body.len() + limits::FRAME_HEADER_SIZE);
                match Request::decode(&f) {
                    Ok(r) => {
                        let mut out = Vec::new();
                        r.encode(f.id, &mut out);
                        if f.op != op::HELLO || f.body[3] == 0 {
                            assert_eq!(out, &buf[at..at + n], "{r:?} re-encodes differently");
                        }
                        assert!(r
                            .key()
                            .is_none_or(|k| !k.is_empty() && k.len() <= limits::KEY_SIZE_MAX));
                    }
                    Err(e) => {
                        assert!(!e.to_string().is_empty());
                        assert_ne!(e.status(), Status::Ok);
                    }
                }
                if let Some(r) = Response::from_frame(&f) {
                    let _ = (r.status(), r.message(), r.version_and_rest());
                }
                at += n;
                frames += 1;
            }
            Ok(None) => return frames,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                return frames;
            }
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = SplitMix(0x5eed_0001);
    let ops = [
        0x00,
        op::HELLO,
        op::PING,
        op::GET,
        op::PUT,
        op::DELETE,
        op::STATS,
        op::CLUSTER,
        op::LOCAL_GET,
        op::ANTI_ENTROPY,
        op::COMPACT,
        op::PEER_FIRST,
        0x7F,
        0x83,
        0xFF,
    ];
    let mut decoded_frames = 0;
    for i in 0..100_000 {
        let len = rng.below(80);
        let mut buf = rng.bytes(len);
        // Half the inputs get a plausible header, so that they reach Request::decode instead
        // of stopping at the length check; some hold several frames.
        if i % 2 == 0 && len >= limits::FRAME_HEADER_SIZE {
            let mut at = 0;
            while at + limits::FRAME_HEADER_SIZE <= len {
                let declared = if rng.below(8) == 0 {
                    rng.next() as u32 % 100
                } else {
                    (rng.below(len - at - 4 + 1)).max(6) as u32
                };
                buf[at..at + 4].copy_from_slice(&declared.to_be_bytes());
                buf[at + 4] = ops[rng.below(ops.len())];
                if rng.below(2) == 0 {
                    buf[at + 5] = (rng.next() & 3) as u8;
                }
                if buf[at + 4] != op::HELLO && at + 11 < len && rng.below(2) == 0 {
                    // A key length that fits the frame more often than chance would.
                    let room = (declared as usize).saturating_sub(8).min(len - at - 12);
                    buf[at + 10..at + 12]
                        .copy_from_slice(&(rng.below(room + 1) as u16).to_be_bytes());
                }
                at += 4 + declared as usize;
            }
        }
        decoded_frames += feed(&buf);
    }
    // The generator must actually exercise the decoder, not only the length check.
    assert!(
        decoded_frames > 20_000,
        "only {decoded_frames} frames decoded"
    );
}

#[test]
fn mutated_valid_frames_never_panic() {
    let mut rng = SplitMix(0x5eed_0002);
    let mut seeds: Vec<Vec<u8>> = sample_frames()
        .into_iter()
        .filter(|f| f.len() < 4096)
        .collect();
    for v in vectors(&protocol_md()) {
        seeds.push(v.bytes);
    }
    for _ in 0..20_000 {
        let mut buf = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            let n = buf.len();
            match rng.below(6) {
                0 if n > 0 => buf[rng.below(n)] ^= 1 << rng.below(8),
                1 if n > 0 => buf[rng.below(n)] = rng.next() as u8,
                2 => buf.truncate(rng.below(n + 1)),
                3 => {
                    let extra_len = 1 + rng.below(8);
                    let extra = rng.bytes(extra_len);
                    let at = rng.below(n + 1);
                    buf.splice(at..at, extra);
                }
                4 if n > 0 => {
                    let at = rng.below(n);
                    buf.remove(at);
                }
                _ => {
                    // Mutate a length field (frame length or key length) specifically.
                    let at = if n > 11 && rng.below(2) == 0 { 10 } else { 0 };
                    if n >= at + 2 {
                        let v = rng.next() as u16;
                        buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
                    }
                }
            }
        }
        feed(&buf);
    }
}

/// Responses keep the request's opcode and id, and the connection-level frame is op 0x80, id 0.
#[test]
fn replies_echo_op_and_id() {
    for code in 1..0x80u8 {
        let mut out = Vec::new();
        put_ok(&mut out, code, 0xDEAD_BEEF, &[]);
        let (f, _) = frame::parse(&out).unwrap().unwrap();
        assert_eq!(f.op, code | RESPONSE_BIT);
        let r = Response::from_frame(&f).unwrap();
        assert_eq!(
            (r.op, r.id, r.status()),
            (code, 0xDEAD_BEEF, Some(Status::Ok))
        );
    }
    let mut out = Vec::new();
    put_connection_error(&mut out, Status::TooManyConnections, "full");
    let (f, _) = frame::parse(&out).unwrap().unwrap();
    assert_eq!((f.op, f.aux, f.id), (0x80, 0x23, 0));
    // A request frame is not a reply.
    let mut out = Vec::new();
    Request::Ping.encode(1, &mut out);
    let (f, _) = frame::parse(&out).unwrap().unwrap();
    assert_eq!(Response::from_frame(&f), None);
}

// ---------------------------------------------------------------------------------------------
// The peer handshake's worked example (protocol.md § 8.1)

/// The `handshake-vector` block: its secret, node ids, nonces and proofs are what `dkv::auth`
/// computes, and the frames of the exchange (vectors `peer-*` of § 15) carry those same bytes.
#[test]
fn peer_handshake_vector_in_protocol_md_matches_auth_rs() {
    use dkv::auth::{proof, verify, Side, PEER_PROTOCOL_VERSION};
    let doc = protocol_md();
    let block = doc
        .split("```handshake-vector\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("protocol.md has a handshake-vector block");
    let mut fields = BTreeMap::new();
    for line in block.lines() {
        let (k, v) = line
            .split_once(char::is_whitespace)
            .unwrap_or_else(|| panic!("handshake vector line {line}"));
        fields.insert(k.to_string(), v.trim().to_string());
    }
    let get = |k: &str| -> &str { fields.get(k).unwrap_or_else(|| panic!("no {k}")) };
    let secret = parse_string(get("secret")).unwrap();
    let hex32 = |k: &str| -> [u8; 32] {
        parse_hex(&[get(k)], k)
            .try_into()
            .unwrap_or_else(|_| panic!("{k} is not 32 bytes"))
    };
    let (i, r): (u32, u32) = (
        get("initiator").parse().unwrap(),
        get("responder").parse().unwrap(),
    );
    let (nonce_i, nonce_r) = (hex32("nonce_I"), hex32("nonce_R"));
    let (proof_i, proof_r) = (hex32("proof_I"), hex32("proof_R"));
    assert_eq!(
        proof(&secret, Side::Initiator, i, r, &nonce_i, &nonce_r),
        proof_i
    );
    assert_eq!(
        proof(&secret, Side::Responder, i, r, &nonce_i, &nonce_r),
        proof_r
    );
    assert!(verify(
        &secret,
        Side::Initiator,
        i,
        r,
        &nonce_i,
        &nonce_r,
        &proof_i
    ));
    assert!(!verify(
        &secret,
        Side::Responder,
        i,
        r,
        &nonce_i,
        &nonce_r,
        &proof_i
    ));

    // The frames of the exchange carry exactly these values.
    let vs = vectors(&doc);
    let vector = |name: &str| vs.iter().find(|v| v.name == name).expect("vector present");
    let hello = vector("peer-hello-request");
    assert_eq!(hello.int("protocol"), u64::from(PEER_PROTOCOL_VERSION));
    assert_eq!(hello.int("node"), u64::from(i));
    assert_eq!(hello.bytes_of("token"), nonce_i);
    let hello_reply = vector("peer-hello-reply");
    assert_eq!(
        hello_reply.int("protocol"),
        u64::from(PEER_PROTOCOL_VERSION)
    );
    assert_eq!(hello_reply.int("node"), u64::from(r));
    assert_eq!(hello_reply.bytes_of("nonce"), nonce_r);
    assert_eq!(vector("peer-auth-request").bytes_of("proof"), proof_i);
    assert_eq!(vector("peer-auth-reply").bytes_of("proof"), proof_r);
}

// ---------------------------------------------------------------------------------------------
// Peer frames (protocol.md § 18)
//
// REPLICATE, READ and GOSSIP vectors say in their SPEC what they carry: the value is encoded
// with `dkv::cluster::peer`'s encoders (the ones the coordinator, hints, read repair and
// membership call) and must give the vector's bytes, and the bytes decode back to the value.
// Anti-entropy frames are built inside the anti-entropy state machine, so their vectors are
// the frames of a scripted exchange between two real `AntiEntropy` cores: the vector bytes must
// be what the cores send, and each core decodes the other's frames (the exchange completes).

use dkv::cluster::antientropy::{self, ae_op, AntiEntropy};
use dkv::cluster::peer::{
    self, ClockStamp, GossipEntry, NodeState, PeerError, PeerReply, PeerRequest, WriteAck,
};
use dkv::cluster::ringpeer::{self, ring_op, ChangeRequest};
use dkv::cluster::{ClusterConfig, Ring};
use dkv::storage::memory::MemoryStore;
use dkv::storage::{Applied, Store, Stored, Write};
use dkv::version::Version;

/// Every peer opcode in use, by the name the vectors give it.
const PEER_OPS: &[(&str, u8)] = &[
    ("REPLICATE", peer::op::REPLICATE),
    ("READ", peer::op::READ),
    ("GOSSIP", peer::op::GOSSIP),
    ("AE_TREE", ae_op::TREE),
    ("AE_KEYS", ae_op::KEYS),
    ("AE_PUSH", ae_op::PUSH),
    ("AE_STATUS", ae_op::STATUS),
    ("RING_PULL", ring_op::PULL),
    ("RING_CHANGE", ring_op::CHANGE),
    ("RING_VOTE", ring_op::VOTE),
    ("RING_ACCEPT", ring_op::ACCEPT),
];

fn peer_op_named(name: &str) -> u8 {
    PEER_OPS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("unknown peer opcode name {name}"))
        .1
}

/// A peer request frame decoded the way a node decodes it.
fn decode_peer_request<'a>(f: &frame::FrameRef<'a>) -> Result<PeerRequest<'a>, PeerError> {
    match Request::decode(f) {
        Ok(Request::Peer { op, aux, body }) => PeerRequest::decode(op, aux, body),
        other => panic!("op 0x{:02x} is not a peer request: {other:?}", f.op),
    }
}

/// A peer reply frame decoded the way a node decodes it.
fn decode_peer_reply(f: &frame::FrameRef<'_>) -> Result<PeerReply, PeerError> {
    let r = Response::from_frame(f).expect("a reply");
    PeerReply::decode(f.op, r.status, r.body)
}

/// `value="..."`, or `value=tombstone`.
fn value_of(v: &Vector) -> Option<Vec<u8>> {
    (v.raw("value") != "tombstone").then(|| v.bytes_of("value"))
}

/// `entries=ID/INCARNATION/HEARTBEAT/STATE/RING_VERSION/ADDRESS,...` (ADDRESS `-`: unknown).
fn gossip_entries_of(v: &Vector) -> Vec<GossipEntry> {
    v.raw("entries")
        .split(',')
        .map(|e| {
            let p: Vec<&str> = e.split('/').collect();
            assert_eq!(p.len(), 6, "vector {}: gossip entry {e}", v.name);
            let n = |s: &str| parse_int(s).unwrap_or_else(|| panic!("vector {}: {s}", v.name));
            GossipEntry {
                node_id: n(p[0]) as u32,
                incarnation: n(p[1]),
                heartbeat: n(p[2]),
                state: match p[3] {
                    "alive" => NodeState::Alive,
                    "failed" => NodeState::Failed,
                    s => panic!("vector {}: state {s}", v.name),
                },
                ring_version: n(p[4]),
                addr: match p[5] {
                    "-" => None,
                    a => Some(
                        a.parse()
                            .unwrap_or_else(|_| panic!("vector {}: address {a}", v.name)),
                    ),
                },
            }
        })
        .collect()
}

/// A REPLICATE, READ or GOSSIP vector: encode its SPEC, compare, decode back.
fn check_peer_vector(v: &Vector) {
    let f = whole_frame(v);
    if v.kind == "peer-invalid-request" {
        // Refused by the node's decoder, with the status the SPEC names.
        v.only(&["status"]);
        let err = decode_peer_request(&f).expect_err("an invalid peer request must not decode");
        assert_eq!(err.status(), status_named(v.raw("status")), "{}", v.name);
        return;
    }
    let opcode = peer_op_named(v.raw("op"));
    let id = v.int("id") as u32;
    assert_eq!(f.op & !RESPONSE_BIT, opcode, "vector {}: op", v.name);
    assert_eq!(f.id, id, "vector {}: id", v.name);
    let mut out = Vec::new();
    let status = v.fields.get("status").map(|s| status_named(s));
    if opcode == peer::op::READ && status.is_some_and(|s| s != Status::Ok) {
        // An error reply, as a node writes it for a peer frame it cannot serve.
        v.only(&["op", "status", "id", "message"]);
        let (status, msg) = (status.expect("checked"), v.bytes_of("message"));
        let msg = String::from_utf8(msg).expect("UTF-8 message");
        put_error(&mut out, opcode, id, status, &msg);
        assert_eq!(out, v.bytes, "vector {}: encoding the value", v.name);
        let expected = PeerReply::Read(Err(format!("{status}: {msg}")));
        assert_eq!(decode_peer_reply(&f), Ok(expected), "vector {}", v.name);
        return;
    }
    match (v.kind.as_str(), opcode) {
        ("peer-request", peer::op::REPLICATE) => {
            v.only(&[
                "op", "id", "aux", "ring", "key", "version", "expires", "value",
            ]);
            let aux = match v.raw("aux") {
                "0" => 0,
                "HINT" => peer::AUX_HINT,
                "REPAIR" => peer::AUX_REPAIR,
                a => panic!("vector {}: aux {a}", v.name),
            };
            let (key, value) = (v.bytes_of("key"), value_of(v));
            let write = Write {
                key: &key,
                value: value.as_deref(),
                version: Version(v.int("version")),
                expires_at_ms: v.int("expires"),
                causal: false,
            };
            let ring = v.int("ring");
            peer::put_replicate(&mut out, id, aux, ring, &write);
            let expected = PeerRequest::Replicate { write, aux, ring };
            assert_eq!(decode_peer_request(&f), Ok(expected), "vector {}", v.name);
        }
        ("peer-reply", peer::op::REPLICATE | peer::op::READ)
            if v.fields
                .get("result")
                .or(v.fields.get("state"))
                .map(|s| s.as_str())
                == Some("stale-ring") =>
        {
            // A refusal of a sender whose ring is stale for the key's partition (§ 18.2).
            v.only(&["op", "status", "id", "result", "state", "ring"]);
            assert_eq!(status, Some(Status::Ok), "vector {}", v.name);
            let ring = v.int("ring");
            peer::put_stale_ring(&mut out, opcode, id, ring);
            let got = decode_peer_reply(&f);
            let expected = PeerReply::StaleRing { op: opcode, ring };
            assert_eq!(got, Ok(expected), "vector {}", v.name);
        }
        ("peer-reply", peer::op::REPLICATE) => {
            let status = status_named(v.raw("status"));
            let (ack, decoded) = if status == Status::Ok {
                v.only(&["op", "status", "id", "result", "current"]);
                let ack = match v.raw("result") {
                    "applied" => WriteAck::Done(Applied::Stored),
                    "stale" => WriteAck::Done(Applied::Stale {
                        current: Version(v.int("current")),
                    }),
                    r => panic!("vector {}: result {r}", v.name),
                };
                (ack.clone(), ack)
            } else {
                v.only(&["op", "status", "id", "message"]);
                let msg = String::from_utf8(v.bytes_of("message")).expect("UTF-8");
                // Decoded, the refusal names its status.
                let decoded = WriteAck::Refused(format!("{status}: {msg}"));
                (WriteAck::Refused(msg), decoded)
            };
            peer::put_write_ack(&mut out, id, &ack);
            let got = decode_peer_reply(&f);
            assert_eq!(got, Ok(PeerReply::Write(decoded)), "vector {}", v.name);
        }
        ("peer-request", peer::op::READ) => {
            v.only(&["op", "id", "ring", "key"]);
            let (key, ring) = (v.bytes_of("key"), v.int("ring"));
            peer::put_read(&mut out, id, ring, &key);
            let expected = PeerRequest::Read { key: &key, ring };
            assert_eq!(decode_peer_request(&f), Ok(expected), "vector {}", v.name);
        }
        ("peer-reply", peer::op::READ) => {
            v.only(&["op", "status", "id", "state", "version", "expires", "value"]);
            let record = match v.raw("state") {
                "absent" => None,
                "value" | "tombstone" => Some(Stored {
                    version: Version(v.int("version")),
                    expires_at_ms: v.int("expires"),
                    value: value_of(v),
                    causal: false,
                }),
                s => panic!("vector {}: state {s}", v.name),
            };
            peer::put_read_reply(&mut out, id, &Ok(record.clone()));
            let got = decode_peer_reply(&f);
            assert_eq!(got, Ok(PeerReply::Read(Ok(record))), "vector {}", v.name);
        }
        (kind, peer::op::GOSSIP) => {
            v.only(&["op", "status", "id", "sender", "entries", "sent", "echo"]);
            let sender = v.int("sender") as u32;
            let entries = gossip_entries_of(v);
            let clock = ClockStamp {
                sent_ms: v.int("sent"),
                echo_ms: v.int("echo"),
            };
            match kind {
                "peer-request" | "peer-request-newer" => {
                    assert_eq!(status, None, "vector {}: a request has no status", v.name);
                    peer::put_gossip(&mut out, id, sender, &entries, clock);
                    let expected = PeerRequest::Gossip {
                        sender,
                        entries: entries.clone(),
                        clock: Some(clock),
                    };
                    assert_eq!(decode_peer_request(&f), Ok(expected), "vector {}", v.name);
                }
                "peer-reply" => {
                    assert_eq!(status, Some(Status::Ok), "vector {}", v.name);
                    peer::put_gossip_reply(&mut out, id, sender, &entries, clock);
                    let expected = PeerReply::Gossip {
                        sender,
                        entries: entries.clone(),
                        clock: Some(clock),
                    };
                    assert_eq!(decode_peer_reply(&f), Ok(expected), "vector {}", v.name);
                }
                k => panic!("vector {}: kind {k}", v.name),
            }
            if kind == "peer-request-newer" {
                // A newer node's frame: this node reads the fields it knows and skips the
                // rest, so its own encoding of the value is shorter.
                let extra = (v.bytes.len() - out.len()) / entries.len();
                assert!(extra > 0, "vector {}: no bytes a newer node added", v.name);
                assert_eq!(v.bytes.len(), out.len() + extra * entries.len());
                return;
            }
        }
        ("peer-request", ring_op::PULL) => {
            v.only(&["op", "id", "sender", "held"]);
            let (sender, held) = (v.int("sender") as u32, v.int("held"));
            ringpeer::put_pull(&mut out, id, sender, held);
            assert_eq!(
                ringpeer::decode_pull(f.body, 0),
                Ok((sender, held)),
                "{}",
                v.name
            );
        }
        ("peer-reply", ring_op::PULL) => {
            // A receiver whose ring state is not newer answers OK with an empty body.
            v.only(&["op", "status", "id", "state"]);
            assert_eq!(v.raw("state"), "not-newer", "vector {}", v.name);
            put_ok(&mut out, ring_op::PULL, id, &[]);
        }
        ("peer-request", ring_op::CHANGE) => {
            v.only(&["op", "id", "change", "node"]);
            let node = v.int("node") as u32;
            let change = match v.raw("change") {
                "leave" => ChangeRequest::Leave { node },
                "remove" => ChangeRequest::Remove { node },
                c => panic!("vector {}: change {c}", v.name),
            };
            ringpeer::put_change(&mut out, id, &change);
            assert_eq!(ringpeer::decode_change(f.body), Ok(change), "{}", v.name);
        }
        ("peer-reply", ring_op::CHANGE) => {
            v.only(&["op", "status", "id", "version", "message"]);
            let msg = String::from_utf8(v.bytes_of("message")).expect("UTF-8");
            ringpeer::put_change_ok(&mut out, id, v.int("version"), &msg);
            let got = ringpeer::decode_change_ok(f.body);
            assert_eq!(got, Ok((v.int("version"), msg)), "{}", v.name);
        }
        ("peer-request", ring_op::VOTE) => {
            v.only(&[
                "op",
                "id",
                "term",
                "candidate",
                "acc-term",
                "acc-proposer",
                "acc-version",
            ]);
            let req = ringpeer::VoteRequest {
                term: v.int("term"),
                candidate: v.int("candidate") as u32,
                accepted: (
                    v.int("acc-term"),
                    v.int("acc-proposer") as u32,
                    v.int("acc-version"),
                ),
            };
            ringpeer::put_vote(&mut out, id, &req);
            assert_eq!(ringpeer::decode_vote(f.body), Ok(req), "{}", v.name);
        }
        ("peer-reply", ring_op::VOTE) => {
            v.only(&["op", "status", "id", "granted", "term", "node"]);
            let a = ringpeer::BallotAnswer {
                ok: v.int("granted") == 1,
                promised: (v.int("term"), v.int("node") as u32),
            };
            ringpeer::put_ballot_answer(&mut out, ring_op::VOTE, id, &a, &[]);
            let got = ringpeer::decode_ballot_answer(f.body).expect("decodes");
            assert_eq!(got, (a, &[][..]), "{}", v.name);
        }
        ("peer-request", ring_op::ACCEPT) => {
            v.only(&["op", "id", "node", "addr", "replicas", "term", "proposer"]);
            let addr = String::from_utf8(v.bytes_of("addr")).expect("UTF-8");
            let s = dkv::cluster::ringstate::RingState::initial(
                &[(v.int("node") as u32, addr)],
                v.int("replicas") as usize,
            )
            .expect("a valid ring")
            .with_ballot(v.int("term"), v.int("proposer") as u32);
            dkv::protocol::frame::put_frame(&mut out, ring_op::ACCEPT, 0, id, &[&s.to_bytes()]);
            let got = dkv::cluster::ringstate::RingState::decode(f.body);
            assert_eq!(got, Ok(s), "{}", v.name);
        }
        ("peer-reply", ring_op::ACCEPT) => {
            v.only(&["op", "status", "id", "accepted", "term", "node"]);
            let a = ringpeer::BallotAnswer {
                ok: v.int("accepted") == 1,
                promised: (v.int("term"), v.int("node") as u32),
            };
            ringpeer::put_ballot_answer(&mut out, ring_op::ACCEPT, id, &a, &[]);
            let got = ringpeer::decode_ballot_answer(f.body).expect("decodes");
            assert_eq!(got, (a, &[][..]), "{}", v.name);
        }
        (k, o) => panic!("vector {}: no check for {k} op 0x{o:02x}", v.name),
    }
    assert_eq!(out, v.bytes, "vector {}: encoding the value", v.name);
}

/// The vector names of the scripted anti-entropy exchange, in the order its frames are sent.
const AE_VECTORS: &[&str] = &[
    "ae-tree-request",
    "ae-tree-reply",
    "ae-keys-request",
    "ae-keys-reply",
    "ae-push-request",
    "ae-push-reply",
    "ae-status-request",
    "ae-status-reply",
];

/// Start of the scripted exchange, ms since the epoch.
const AE_NOW_MS: u64 = 1_764_000_001_000;

/// `hello` and `key:286008` share partition 233 and tree segment 789 (the top 18 bits of their
/// key hashes), so one AE_KEYS round compares both.
const AE_KEYS: [&[u8]; 2] = [b"hello", b"key:286008"];

fn ae_core(id: u32, store: &mut MemoryStore) -> AntiEntropy {
    let mut config =
        ClusterConfig::build(id, "1=127.0.0.1:7001,2=127.0.0.1:7002", 2).expect("config");
    config.validate().expect("valid config");
    let mut a = AntiEntropy::new(&config, Ring::new(&[1, 2], 2), AE_NOW_MS);
    // As shard 233 of a node with 256 shards: this core holds partition 233 only, so a round
    // is one exchange.
    let p = partition_of(AE_KEYS[0]);
    a.set_shard(p, limits::PARTITION_COUNT);
    // Both clocks measured and in step: exchanges are reported to the leader.
    a.set_clock_offset(Some(0));
    a.build(store).expect("build");
    a
}

/// Node `id`'s membership shard (shard 0 of 256): it holds partition 0 only, and it reports
/// the node's completed exchanges to the leader.
fn membership_core(id: u32) -> AntiEntropy {
    let mut config =
        ClusterConfig::build(id, "1=127.0.0.1:7001,2=127.0.0.1:7002", 2).expect("config");
    config.validate().expect("valid config");
    let mut a = AntiEntropy::new(&config, Ring::new(&[1, 2], 2), AE_NOW_MS);
    a.set_shard(0, limits::PARTITION_COUNT);
    a.set_clock_offset(Some(0));
    a.build(&mut MemoryStore::new()).expect("build");
    a
}

/// Run one exchange: node 2 (initiator) holds `hello`, node 1 (responder, and the leader)
/// holds `key:286008`. Returns every frame sent, in order, and checks that both ends decoded
/// each other's frames: the records crossed, and node 2 adopted the leader's horizon.
fn ae_exchange() -> Vec<Vec<u8>> {
    let put = |s: &mut MemoryStore, key: &[u8], value: &[u8], node: u32| {
        let w = Write {
            key,
            value: Some(value),
            version: Version::new(1_764_000_000_000, 0, node),
            expires_at_ms: 0,
            causal: false,
        };
        assert_eq!(s.apply(w).expect("stored"), Applied::Stored);
    };
    let (mut s1, mut s2) = (MemoryStore::new(), MemoryStore::new());
    put(&mut s2, AE_KEYS[0], b"world", 2);
    put(&mut s1, AE_KEYS[1], b"v", 1);
    let (mut a1, mut a2) = (ae_core(1, &mut s1), ae_core(2, &mut s2));
    // Node 2's membership shard: it reports the node's exchanges to the leader (AE_STATUS)
    // and hands the horizons it learns to the other shards (as the view mail does).
    let mut m2 = membership_core(2);
    let mut sm2 = MemoryStore::new();
    let alive = |_: u32| true;
    a2.trigger(AE_NOW_MS);
    let mut now = AE_NOW_MS;
    a2.on_tick(now, &mut s2, &alive, 1);
    let mut frames = Vec::new();
    for _ in 0..32 {
        let next = match a2.poll_transmit() {
            Some(t) => Some((t, false)),
            None => {
                // The round is over once its exchange completed: the next tick hands it to
                // the membership shard, whose next tick reports it to the leader.
                now += 1;
                a2.on_tick(now, &mut s2, &alive, 1);
                m2.add_reports(a2.take_reports());
                m2.on_tick(now, &mut sm2, &alive, 1);
                a2.poll_transmit()
                    .map(|t| (t, false))
                    .or_else(|| m2.poll_transmit().map(|t| (t, true)))
            }
        };
        let Some(((to, request), membership)) = next else {
            break;
        };
        assert_eq!(to, 1, "the exchange is with node 1");
        let (f, _) = frame::parse(&request).unwrap().unwrap();
        let mut reply = Vec::new();
        a1.on_request(now, &mut s1, 2, f.id, f.op, f.aux, f.body, &mut reply)
            .unwrap_or_else(|e| panic!("node 1 refused op 0x{:02x}: {e}", f.op));
        let (rf, _) = frame::parse(&reply).unwrap().unwrap();
        assert_eq!(rf.aux, Status::Ok as u8, "reply to op 0x{:02x}", f.op);
        if membership {
            m2.on_reply(now, &mut sm2, 1, &rf, &alive);
            let p = partition_of(AE_KEYS[0]);
            a2.adopt_horizon_list(&mut s2, &[(p as u16, m2.horizons()[p])]);
        } else {
            a2.on_reply(now, &mut s2, 1, &rf, &alive);
        }
        frames.push(request.clone());
        frames.push(reply);
    }
    assert_eq!(a2.stats().exchanges, 1, "the exchange completed");
    assert_eq!(a2.stats().exchanges_failed, 0);
    for key in AE_KEYS {
        let (r1, r2) = (s1.get(key).unwrap(), s2.get(key).unwrap());
        assert!(r1.is_some() && r1 == r2, "both nodes hold {key:?}");
    }
    let p = partition_of(AE_KEYS[0]);
    assert!(
        a2.index().horizon(p) > 0,
        "node 2 adopted the leader's horizon"
    );
    frames
}

#[test]
fn peer_vectors_in_protocol_md_match_the_cluster_codec() {
    let vs = vectors(&protocol_md());
    let peer_vs: Vec<&Vector> = vs.iter().filter(|v| v.kind.starts_with("peer-")).collect();

    // The exchange's frames by vector name: the first TREE request (level 0) and reply, then
    // the first of each other opcode (the level 1 and 2 TREE frames are not shown).
    let frames = ae_exchange();
    let mut by_name: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for pair in frames.chunks(2) {
        let name = match pair[0][4] {
            ae_op::TREE => "ae-tree",
            ae_op::KEYS => "ae-keys",
            ae_op::PUSH => "ae-push",
            ae_op::STATUS => "ae-status",
            o => panic!("exchange sent op 0x{o:02x}"),
        };
        let (req, rep) = (format!("{name}-request"), format!("{name}-reply"));
        let (req, rep) = (
            AE_VECTORS.iter().find(|n| **n == req).expect("named"),
            AE_VECTORS.iter().find(|n| **n == rep).expect("named"),
        );
        by_name.entry(req).or_insert(&pair[0]);
        by_name.entry(rep).or_insert(&pair[1]);
    }
    assert_eq!(
        by_name.len(),
        AE_VECTORS.len(),
        "the exchange sent every AE opcode"
    );

    for v in &peer_vs {
        if v.kind == "peer-invalid-request" {
            check_peer_vector(v);
            continue;
        }
        let opcode = peer_op_named(v.raw("op"));
        if !antientropy::is_anti_entropy_op(opcode) {
            check_peer_vector(v);
            continue;
        }
        let sent = by_name
            .get(v.name.as_str())
            .unwrap_or_else(|| panic!("vector {} is not a frame of the exchange", v.name));
        assert_eq!(&v.bytes[..], *sent, "vector {}: the frame sent", v.name);
        let f = whole_frame(v);
        assert_eq!(f.op & !RESPONSE_BIT, opcode, "vector {}: op", v.name);
        assert_eq!(f.id, v.int("id") as u32, "vector {}: id", v.name);
        if v.kind == "peer-request" {
            v.only(&["op", "id", "partition", "sender"]);
            // AE_STATUS still carries its first entry's partition, but no node routes by it
            // (it is served by the membership shard).
            let partition = if f.op == antientropy::ae_op::STATUS {
                assert_eq!(antientropy::routing_partition(f.op, f.body), None);
                Some(u16::from_be_bytes([f.body[0], f.body[1]]) as usize)
            } else {
                antientropy::routing_partition(f.op, f.body)
            };
            assert_eq!(
                partition,
                Some(v.int("partition") as usize),
                "vector {}: partition",
                v.name
            );
            assert_eq!(
                u64::from(u32::from_be_bytes(f.body[2..6].try_into().unwrap())),
                v.int("sender"),
                "vector {}: sender",
                v.name
            );
        } else {
            v.only(&["op", "status", "id"]);
            assert_eq!(f.aux, status_named(v.raw("status")) as u8, "{}", v.name);
        }
    }

    // The message of the documented MALFORMED reply is what the decoder says of the
    // documented malformed request.
    let named = |name: &str| {
        *peer_vs
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("protocol.md lacks vector {name}"))
    };
    let bad = named("read-malformed-request");
    let err = decode_peer_request(&whole_frame(bad)).unwrap_err();
    let reply = named("read-malformed-reply");
    assert_eq!(err.to_string().into_bytes(), reply.bytes_of("message"));
    assert_eq!(whole_frame(bad).id, whole_frame(reply).id);

    // The peer opcode table (rows of 6 cells: code, name, request, reply, sender, shard) lists
    // exactly the opcodes in use, by their names.
    let table: Vec<(u8, String)> = table_rows(&protocol_md())
        .into_iter()
        .filter(|(_, cells)| cells.len() == 5)
        .filter_map(|(code, cells)| {
            let hex = code.strip_prefix("0x")?;
            Some((u8::from_str_radix(hex, 16).ok()?, cells[0].clone()))
        })
        .collect();
    let in_use: Vec<(u8, String)> = PEER_OPS.iter().map(|(n, o)| (*o, n.to_string())).collect();
    assert_eq!(table, in_use, "protocol.md's peer opcode table");

    // Every peer opcode in use has a request and a reply vector; every other opcode of the
    // peer range is refused as unknown by the node.
    for (name, opcode) in PEER_OPS {
        for kind in ["peer-request", "peer-reply"] {
            assert!(
                peer_vs
                    .iter()
                    .any(|v| v.kind == kind && v.raw("op") == *name),
                "protocol.md lacks a {kind} vector for {name}"
            );
        }
        assert!((op::PEER_FIRST..=op::PEER_LAST).contains(opcode));
    }
    let mut store = MemoryStore::new();
    let mut a = ae_core(1, &mut store);
    for opcode in op::PEER_FIRST..=op::PEER_LAST {
        if PEER_OPS.iter().any(|(_, o)| *o == opcode) {
            continue;
        }
        let unknown = if antientropy::is_anti_entropy_op(opcode) {
            let mut out = Vec::new();
            let mut s = MemoryStore::new();
            a.on_request(AE_NOW_MS, &mut s, 2, 1, opcode, 0, &[0, 233], &mut out)
                .unwrap_err()
        } else {
            PeerRequest::decode(opcode, 0, &[]).unwrap_err()
        };
        assert_eq!(unknown, PeerError::UnknownOp(opcode), "op 0x{opcode:02x}");
    }
}

/// The tree hashes as § 18.5 writes them (its formulas, computed here from the text's
/// constants) give the root hash in vector `ae-tree-reply`, which the node computed: a node of
/// another implementation that follows the text compares equal.
#[test]
fn tree_hash_formulas_in_protocol_md_give_the_vector_root() {
    use dkv::hash::{fmix64, key_hash};
    let doc = protocol_md();
    let (item_seed, inner_seed) = (0x6161_655f_6974_656d_u64, 0x6161_655f_6e6f_6465_u64);
    for seed in [item_seed, inner_seed] {
        assert!(
            doc.contains(&format!("0x{seed:016x}")),
            "protocol.md lacks {seed:#x}"
        );
    }
    let chain = |children: &[u64]| {
        children
            .iter()
            .fold(inner_seed, |h, &c| fmix64(h ^ c).wrapping_add(c))
    };
    // Node 1 holds one record: key:286008 at 0x66ada5fa00000001, in segment 789.
    let key = AE_KEYS[1];
    let segment = ((key_hash(key) >> 46) & 0x3ff) as usize;
    assert_eq!(segment, 789);
    let item = fmix64(fmix64(key_hash(key) ^ item_seed) ^ 0x66ad_a5fa_0000_0001);
    let mut segments = [0u64; 1024];
    segments[segment] = item;
    let mids: Vec<u64> = segments.chunks(32).map(chain).collect();
    let root = chain(&mids);
    let vs = vectors(&doc);
    let reply = vs
        .iter()
        .find(|v| v.name == "ae-tree-reply")
        .expect("vector");
    let tail: [u8; 8] = reply.bytes[reply.bytes.len() - 8..].try_into().unwrap();
    assert_eq!(
        root,
        u64::from_be_bytes(tail),
        "the root hash of ae-tree-reply"
    );
}
