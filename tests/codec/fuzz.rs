//! Round trips of every request type, truncated prefixes, random and mutated bytes.

use super::*;

// ---------------------------------------------------------------------------------------------
// Round trips, prefixes, random input

/// The crate's seeded PRNG (`cluster::rng`), so every run checks the same inputs, with the
/// helpers these tests draw from.
struct SplitMix(dkv::cluster::rng::SplitMix64);

impl SplitMix {
    fn seeded(seed: u64) -> SplitMix {
        SplitMix(dkv::cluster::rng::SplitMix64::new(seed))
    }

    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn below(&mut self, n: usize) -> usize {
        self.0.below(n as u64) as usize
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
    let mut rng = SplitMix::seeded(0x0d15_ea5e);
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
    let mut rng = SplitMix::seeded(0x5eed_0001);
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
    let mut rng = SplitMix::seeded(0x5eed_0002);
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
