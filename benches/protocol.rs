//! Micro-benchmarks of the protocol hot path: encoding and decoding GET/PUT requests and their
//! replies, one frame at a time and as a pipelined stream. `cargo bench --bench protocol`.
//!
//! No harness: each case runs [`RUNS`] timed loops of [`ITERS`] iterations after a warm-up and
//! prints the median (and the spread) in ns per operation. The machines are shared and noisy,
//! so the median of several runs is the figure to compare; nothing here asserts a speed.

use dkv::protocol::message::{put_ok, Response};
use dkv::protocol::{frame, op, Consistency, Request};
use std::hint::black_box;
use std::time::Instant;

/// Timed runs per case.
const RUNS: usize = 9;

/// Iterations per timed run.
const ITERS: u64 = 200_000;

/// Frames in the pipelined-stream cases.
const STREAM_FRAMES: usize = 1000;

/// Run `f` [`RUNS`] times for `iters` iterations, print ns/op (median, min, max).
fn bench(name: &str, iters: u64, per_iter_ops: u64, mut f: impl FnMut(u64)) {
    for i in 0..iters / 10 {
        f(i);
    }
    let mut ns: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            for i in 0..iters {
                f(i);
            }
            t.elapsed().as_nanos() as f64 / (iters * per_iter_ops) as f64
        })
        .collect();
    ns.sort_by(|a, b| a.total_cmp(b));
    let median = ns[RUNS / 2];
    println!(
        "{name:<34} {median:>8.1} ns/op  (min {:>6.1}, max {:>6.1})  {:>7.1} M ops/s",
        ns[0],
        ns[RUNS - 1],
        1e3 / median
    );
}

fn main() {
    let key = b"k000000000012345";
    let value = [b'v'; 100];
    let version = 0x0123_4567_89AB_CDEFu64.to_be_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    println!(
        "dkv protocol v1, {}-byte key, {}-byte value",
        key.len(),
        value.len()
    );

    bench("encode GET request", ITERS, 1, |i| {
        out.clear();
        Request::Get {
            key,
            consistency: Consistency::Quorum,
        }
        .encode(i as u32, &mut out);
        black_box(&out);
    });
    bench("encode PUT request", ITERS, 1, |i| {
        out.clear();
        Request::Put {
            key,
            value: &value,
            ttl_seconds: 0,
            consistency: Consistency::Quorum,
        }
        .encode(i as u32, &mut out);
        black_box(&out);
    });

    let mut get_req = Vec::new();
    Request::Get {
        key,
        consistency: Consistency::One,
    }
    .encode(7, &mut get_req);
    let mut put_req = Vec::new();
    Request::Put {
        key,
        value: &value,
        ttl_seconds: 60,
        consistency: Consistency::All,
    }
    .encode(8, &mut put_req);
    bench("decode GET request", ITERS, 1, |_| {
        let (f, n) = frame::parse(black_box(&get_req))
            .expect("valid frame")
            .expect("whole frame");
        let r = Request::decode(&f).expect("valid GET");
        black_box((r, n));
    });
    bench("decode PUT request", ITERS, 1, |_| {
        let (f, n) = frame::parse(black_box(&put_req))
            .expect("valid frame")
            .expect("whole frame");
        let r = Request::decode(&f).expect("valid PUT");
        black_box((r, n));
    });

    bench("encode GET reply (OK, value)", ITERS, 1, |i| {
        out.clear();
        put_ok(&mut out, op::GET, i as u32, &[&version, &value]);
        black_box(&out);
    });
    bench("encode PUT reply (OK, version)", ITERS, 1, |i| {
        out.clear();
        put_ok(&mut out, op::PUT, i as u32, &[&version]);
        black_box(&out);
    });

    let mut get_reply = Vec::new();
    put_ok(&mut get_reply, op::GET, 7, &[&version, &value]);
    let mut put_reply = Vec::new();
    put_ok(&mut put_reply, op::PUT, 8, &[&version]);
    bench("decode GET reply", ITERS, 1, |_| {
        let (f, _) = frame::parse(black_box(&get_reply))
            .expect("valid frame")
            .expect("whole frame");
        let r = Response::from_frame(&f).expect("a response");
        black_box(r.version_and_rest());
    });
    bench("decode PUT reply", ITERS, 1, |_| {
        let (f, _) = frame::parse(black_box(&put_reply))
            .expect("valid frame")
            .expect("whole frame");
        let r = Response::from_frame(&f).expect("a response");
        black_box(r.version_and_rest());
    });

    // A pipelined stream: what a server's read loop or a client's reply loop walks through.
    let mut stream = Vec::new();
    for i in 0..STREAM_FRAMES {
        if i % 10 == 0 {
            Request::Put {
                key,
                value: &value,
                ttl_seconds: 0,
                consistency: Consistency::Default,
            }
            .encode(i as u32, &mut stream);
        } else {
            Request::Get {
                key,
                consistency: Consistency::Default,
            }
            .encode(i as u32, &mut stream);
        }
    }
    let stream_iters = ITERS / STREAM_FRAMES as u64 * 10;
    bench(
        "decode stream, 90% GET / 10% PUT",
        stream_iters,
        STREAM_FRAMES as u64,
        |_| {
            let mut at = 0;
            let mut n = 0;
            while let Ok(Some((f, used))) = frame::parse(&stream[at..]) {
                n += Request::decode(&f).is_ok() as usize;
                at += used;
            }
            assert_eq!(n, STREAM_FRAMES, "every frame decodes");
            black_box(n);
        },
    );
    let mut replies = Vec::new();
    for i in 0..STREAM_FRAMES {
        put_ok(&mut replies, op::GET, i as u32, &[&version, &value]);
    }
    bench(
        "decode stream, GET replies",
        stream_iters,
        STREAM_FRAMES as u64,
        |_| {
            let mut at = 0;
            let mut bytes = 0;
            while let Ok(Some((f, used))) = frame::parse(&replies[at..]) {
                let r = Response::from_frame(&f).expect("a response");
                bytes += r.version_and_rest().map_or(0, |(_, v)| v.len());
                at += used;
            }
            black_box(bytes);
        },
    );
}
