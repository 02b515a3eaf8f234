//! The HTTP key-value API against real `kvd` processes, driven by `curl` as requirement 004's
//! session does: a PUT through node 1 is read through node 3 (and through the binary
//! protocol), a missing key is 404, a 2 MiB body is 413, a DELETE removes, any key bytes
//! work percent-encoded, and a node with a client token wants it as a Bearer token.

mod common;

use common::{debian_program, free_port, temp_dir, Node};
use dkv::protocol::Consistency;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Run curl with `args`, feeding `stdin`; (HTTP status, body, response headers).
fn curl(curl: &Path, args: &[&str], stdin: &[u8]) -> (u16, Vec<u8>, String) {
    let dir = temp_dir("curl-headers");
    let headers = dir.join("h");
    let mut child = Command::new(curl)
        .args(["-s", "-o", "-", "-D"])
        .arg(&headers)
        .args(["-w", "\n%{http_code}", "--max-time", "20"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run curl");
    let mut input = child.stdin.take().expect("stdin");
    // A refused upload may stop reading: a failed write here is what the test looks at.
    let _ = input.write_all(stdin);
    drop(input);
    let out = child.wait_with_output().expect("curl");
    let mut body = out.stdout;
    let split = body.iter().rposition(|&b| b == b'\n').expect("status line");
    let status = String::from_utf8_lossy(&body[split + 1..])
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
    body.truncate(split);
    let headers = std::fs::read_to_string(&headers).unwrap_or_default();
    (status, body, headers)
}

#[test]
fn curl_session_of_requirement_004_against_a_cluster() {
    let curl_bin = debian_program("curl", "curl");
    let (nodes, http) = common::start_three_nodes_with_http("http-api");
    let url = |node: usize, path: &str| format!("http://127.0.0.1:{}{path}", http[node]);

    // echo -n "hello" | curl -XPUT --data-binary @- http://localhost:8081/kv/greeting
    let (status, _, headers) = curl(
        &curl_bin,
        &["-XPUT", "--data-binary", "@-", &url(0, "/kv/greeting")],
        b"hello",
    );
    assert_eq!(status, 200, "{headers}");
    assert!(
        headers.to_ascii_lowercase().contains("x-dkv-version: "),
        "{headers}"
    );
    for node in [1, 2] {
        let (status, body, _) = curl(&curl_bin, &[&url(node, "/kv/greeting")], b"");
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"hello"[..]),
            "node {}",
            node + 1
        );
    }
    let got = nodes[2]
        .client()
        .get(b"greeting", Consistency::Quorum)
        .expect("binary GET");
    assert_eq!(got.map(|(_, v)| v), Some(b"hello".to_vec()));

    // A missing key, a too-large body, a bad parameter, an unknown path.
    assert_eq!(curl(&curl_bin, &[&url(2, "/kv/missing")], b"").0, 404);
    let big = vec![b'x'; 2 * 1024 * 1024];
    let (status, _, _) = curl(
        &curl_bin,
        &["-XPUT", "--data-binary", "@-", &url(0, "/kv/big")],
        &big,
    );
    assert_eq!(status, 413);
    assert_eq!(
        curl(&curl_bin, &[&url(0, "/kv/k?consistency=TWO")], b"").0,
        400
    );
    assert_eq!(curl(&curl_bin, &[&url(0, "/nothing")], b"").0, 404);

    // Any key bytes, percent-encoded; a consistency level; DELETE.
    let (status, _, _) = curl(
        &curl_bin,
        &[
            "-XPUT",
            "--data-binary",
            "@-",
            &url(1, "/kv/a%00b%2Fc%20d?consistency=ALL"),
        ],
        b"odd",
    );
    assert_eq!(status, 200);
    let got = nodes[0]
        .client()
        .get(b"a\0b/c d", Consistency::All)
        .expect("binary GET");
    assert_eq!(got.map(|(_, v)| v), Some(b"odd".to_vec()));
    assert_eq!(
        curl(&curl_bin, &["-XDELETE", &url(2, "/kv/greeting")], b"").0,
        200
    );
    assert_eq!(curl(&curl_bin, &[&url(0, "/kv/greeting")], b"").0, 404);
    for n in &nodes {
        n.client().ping().expect("every node still serves");
    }
}

#[test]
fn a_node_with_a_client_token_wants_it_as_a_bearer_token() {
    let curl_bin = debian_program("curl", "curl");
    let dir = temp_dir("http-token");
    let http = free_port();
    let listen = format!("127.0.0.1:{http}");
    let _node = Node::start(
        &dir,
        &["--client-token", "t0k", "--metrics-listen", &listen],
    );
    let url = format!("http://127.0.0.1:{http}/kv/k");
    let (status, _, headers) = curl(&curl_bin, &[&url], b"");
    assert_eq!(status, 401, "{headers}");
    let (status, _, _) = curl(&curl_bin, &["-H", "Authorization: Bearer wrong", &url], b"");
    assert_eq!(status, 401);
    let (status, _, _) = curl(
        &curl_bin,
        &[
            "-H",
            "Authorization: Bearer t0k",
            "-XPUT",
            "--data-binary",
            "@-",
            &url,
        ],
        b"v",
    );
    assert_eq!(status, 200);
    let (status, body, _) = curl(&curl_bin, &["-H", "Authorization: Bearer t0k", &url], b"");
    assert_eq!((status, body.as_slice()), (200, &b"v"[..]));
}
