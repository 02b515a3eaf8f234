//! Admin rights against a real `kvd` (protocol.md § 8.2): with `--admin-token`, the admin
//! opcodes answer UNAUTHORIZED (the connection stays usable) until a HELLO presents the
//! token, which `kvcat --token` does; a wrong token is refused; ordinary requests need none.

mod common;

use common::{temp_dir, Node};
use dkv::client::Client;
use dkv::protocol::{Consistency, Role, Status};
use std::process::Command;

const ADMIN: &str = "adm1n-t0ken";

/// Run kvcat with `args` on `input`; its stdout.
fn kvcat(args: &[&str], input: &str) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvcat"));
    cmd.args(args).env_remove("DKV_TOKEN");
    let out = common::run_with_input(&mut cmd, input);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn admin_opcodes_need_the_admin_token() {
    let dir = temp_dir("admin-token");
    let node = Node::start(&dir, &["--admin-token", ADMIN]);

    // Without the token: UNAUTHORIZED with the documented message, and the connection works.
    let mut c = node.client();
    let err = c.compact().expect_err("COMPACT without the admin token");
    assert_eq!(err.status(), Some(Status::Unauthorized), "{err}");
    assert!(
        err.to_string().contains(dkv::protocol::ADMIN_TOKEN_NEEDED),
        "{err}"
    );
    let err = c
        .anti_entropy()
        .expect_err("ANTI_ENTROPY without the admin token");
    assert_eq!(err.status(), Some(Status::Unauthorized), "{err}");
    c.put(b"k", b"v", 0, Consistency::Default)
        .expect("PUT needs no admin");
    assert!(c.get(b"k", Consistency::Default).expect("GET").is_some());

    // With it: allowed.
    let mut admin = Client::connect_as(node.addr.as_str(), Role::Client, 0, ADMIN.as_bytes())
        .expect("HELLO with the admin token");
    admin.compact().expect("COMPACT as admin");
    admin.anti_entropy().expect("ANTI_ENTROPY as admin");
    admin.ping().expect("PING as admin");

    // A wrong token is refused at HELLO.
    let Err(err) = Client::connect_as(node.addr.as_str(), Role::Client, 0, b"adm1n-t0kem") else {
        panic!("a wrong token was accepted");
    };
    assert_eq!(err.status(), Some(Status::Unauthorized), "{err}");

    // kvcat: refused without --token, allowed with it (and --token-file).
    let out = kvcat(&[&node.addr], "COMPACT\nPING\n");
    assert!(out.starts_with("ERR UNAUTHORIZED"), "{out}");
    assert!(out.contains("PONG"), "{out}");
    let out = kvcat(&["--token", ADMIN, &node.addr], "COMPACT\n");
    assert!(!out.starts_with("ERR"), "{out}");
    let file = dir.join("admin-token");
    std::fs::write(&file, format!("{ADMIN}\n")).expect("token file");
    let out = kvcat(
        &["--token-file", file.to_str().expect("path"), &node.addr],
        "AAE\n",
    );
    assert!(!out.starts_with("ERR"), "{out}");
    node.client().ping().expect("the node still serves");
}

#[test]
fn a_node_refuses_an_admin_token_equal_to_its_client_token() {
    let dir = temp_dir("admin-token-same");
    let out = Command::new(env!("CARGO_BIN_EXE_kvd"))
        .args(["--data", dir.to_str().expect("path")])
        .args(["--client-token", "same", "--admin-token", "same"])
        .output()
        .expect("run kvd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin token is the client token"), "{err}");
}
