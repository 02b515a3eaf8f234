//! `kvcat`: a telnet-like tool for dkv. One command per line in, exactly one line out (CLUSTER:
//! one line per node), so scripts can drive it; an interactive prompt when stdin is a terminal.
//!
//! The line format is a contract (later versions extend it, never change it):
//!
//! ```text
//! PUT key value [ONE|QUORUM|ALL] [ttl=SECONDS]   -> OK
//! GET key [ONE|QUORUM|ALL]                       -> the value | (not found)
//! DEL key [ONE|QUORUM|ALL]                       -> OK
//! LGET key                                       -> value version=N | (not found)
//! PING                                           -> PONG
//! STATS                                          -> name=value name=value ...
//! CLUSTER                                        -> one line per node
//! RING                                           -> `version=V replicas=N partitions=P`, then
//!                                                   `ID ADDR partitions=X primaries=Y` per node
//!                                                   (ADDR `-`: the connected node's address)
//! RING PARTITIONS                                -> the header line, then `P owner,owner,...`
//!                                                   per partition (primary first)
//! COMPACT                                        -> name=value ... (what the forced pass reclaimed)
//! SNAPSHOT name [ALL]                            -> `snapshot NAME taken: ...` (ALL: every node,
//!                                                   each line prefixed `node ID: `)
//! SNAPSHOT LIST | SNAPSHOTS                      -> `NAME taken_at_ms=T files=F bytes=B` per line
//! SNAPSHOT DELETE name                           -> `snapshot NAME deleted`
//! HELP                                           -> the command list
//! any failure                                    -> ERR <CODE> <message>
//! ```
//!
//! On a node of a `--conflicts siblings` cluster (its STATS say `conflicts_siblings 1`),
//! keyed commands speak the causal protocol (protocol.md § 19) and take `ctx=HEX` beside their
//! other options, in any order:
//!
//! ```text
//! GET key [ONE|QUORUM|ALL]                       -> "v1" "v2" ... ctx=HEX (every sibling,
//!                                                   quoted, in the node's stable order) |
//!                                                   (not found) ctx=HEX
//! PUT key value [...] [ctx=HEX]                  -> OK (without ctx: kept beside the siblings)
//! DEL key ctx=HEX [ONE|QUORUM|ALL]               -> OK (deletes what that GET saw)
//! ```
//!
//! Tokens with spaces or bytes outside printable ASCII are written in double quotes, with
//! `\xNN` for such bytes and `\"`, `\\` for quote and backslash, in input and output alike.

use dkv::client::{Client, ClientError};
use dkv::limits::{PARTITION_COUNT, PORT_DEFAULT};
use dkv::protocol::ringmap::RingMap;
use dkv::protocol::{Consistency, Role, Status};
use std::io::{self, BufRead, Write};
use std::process::ExitCode;

const HELP: &str = "commands: PUT key value [ONE|QUORUM|ALL] [ttl=SECONDS] | GET key [ONE|QUORUM|ALL] | DEL key [ONE|QUORUM|ALL] | LGET key | PING | STATS | CLUSTER | CLUSTER LEAVE n|REMOVE n|PLAN|PAUSE|RESUME|THROTTLE MB | TRANSFERS | RING [PARTITIONS] | AAE | COMPACT | SNAPSHOT name [ALL] | SNAPSHOT LIST | SNAPSHOT DELETE name | HELP   (quote tokens with spaces: \"a b\", bytes as \\xNN; on a --conflicts siblings cluster GET prints every sibling and ctx=HEX, PUT and DEL take ctx=HEX)";

/// Split a line into tokens, honouring double quotes and escapes.
fn tokenize(line: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            break;
        }
        let mut tok = Vec::new();
        if line[i] == b'"' {
            i += 1;
            loop {
                match line.get(i) {
                    None => return Err("unterminated quote".into()),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => match line.get(i + 1) {
                        Some(b'x') => {
                            let hex = line
                                .get(i + 2..i + 4)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u8::from_str_radix(h, 16).ok())
                                .ok_or("bad \\x escape: expected two hex digits")?;
                            tok.push(hex);
                            i += 4;
                        }
                        Some(&c @ (b'"' | b'\\')) => {
                            tok.push(c);
                            i += 2;
                        }
                        _ => return Err("bad escape: use \\xNN, \\\" or \\\\".into()),
                    },
                    Some(&c) => {
                        tok.push(c);
                        i += 1;
                    }
                }
            }
            if i < line.len() && !line[i].is_ascii_whitespace() {
                return Err("closing quote must end the token".into());
            }
        } else {
            while i < line.len() && !line[i].is_ascii_whitespace() {
                tok.push(line[i]);
                i += 1;
            }
        }
        out.push(tok);
    }
    Ok(out)
}

/// Write a token so that `tokenize` reads it back as the same bytes.
fn quote(bytes: &[u8]) -> String {
    let plain = !bytes.is_empty()
        && bytes
            .iter()
            .all(|&b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\');
    if plain {
        // All printable ASCII: valid UTF-8.
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let mut s = String::with_capacity(bytes.len() + 2);
    s.push('"');
    for &b in bytes {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('"');
    s
}

fn usage_err(msg: &str) -> String {
    format!("ERR USAGE {msg}")
}

fn server_err(e: &ClientError) -> String {
    match e {
        ClientError::Server { status, message } => {
            let name = Status::from_u8(*status)
                .map(|s| s.name().to_string())
                .unwrap_or_else(|| format!("STATUS_0x{status:02x}"));
            format!("ERR {name} {}", message.replace('\n', " "))
        }
        ClientError::Io(e) => format!("ERR IO {e}"),
        ClientError::Protocol(why) => format!("ERR PROTOCOL {why}"),
    }
}

/// Options after the key: a consistency word, `ttl=SECONDS` (PUT), `ctx=HEX` (a causal
/// context, siblings mode).
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    consistency: Consistency,
    ttl: u32,
    context: Option<Vec<u8>>,
}

fn parse_options(words: &[Vec<u8>], allow_ttl: bool) -> Result<Options, String> {
    let mut o = Options::default();
    for w in words {
        let w = String::from_utf8_lossy(w);
        if let Some(c) = Consistency::parse(&w) {
            o.consistency = c;
        } else if let (true, Some(v)) = (allow_ttl, w.strip_prefix("ttl=")) {
            o.ttl = v
                .parse()
                .map_err(|_| format!("bad ttl {v:?}: expected whole seconds"))?;
        } else if let Some(hex) = w.strip_prefix("ctx=") {
            o.context =
                Some(from_hex(hex).ok_or_else(|| format!("bad ctx {hex:?}: expected hex"))?);
        } else {
            return Err(format!("unexpected {w:?}"));
        }
    }
    Ok(o)
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the connected node's cluster keeps siblings (asked once per connection).
fn siblings_mode(client: &mut Client, known: &mut Option<bool>) -> Result<bool, ClientError> {
    if let Some(m) = *known {
        return Ok(m);
    }
    let stats = client.stats()?;
    let m = stats.lines().any(|l| l == "conflicts_siblings 1");
    *known = Some(m);
    Ok(m)
}

/// A keyed command on a siblings-mode node.
fn causal_command(client: &mut Client, cmd: &str, args: &[Vec<u8>]) -> String {
    let (key, rest, ttl_ok) = match cmd {
        "PUT" => (&args[0], &args[2..], true),
        _ => (&args[0], &args[1..], false),
    };
    let o = match parse_options(rest, ttl_ok) {
        Ok(o) => o,
        Err(e) => return usage_err(&e),
    };
    let context = o.context.as_deref();
    let done = match (cmd, context) {
        ("GET", _) => {
            return match client.get_siblings(key, o.consistency) {
                Ok(s) if s.values.is_empty() => format!("(not found) ctx={}", to_hex(&s.context)),
                Ok(s) => {
                    let mut line: Vec<String> =
                        s.values.iter().map(|(_, v)| quote_always(v)).collect();
                    line.push(format!("ctx={}", to_hex(&s.context)));
                    line.join(" ")
                }
                Err(e) => server_err(&e),
            }
        }
        ("PUT", c) => {
            client.put_with_context(key, &args[1], o.ttl, c.unwrap_or(&[]), o.consistency)
        }
        (_, Some(c)) => client.delete_with_context(key, c, o.consistency),
        // The node explains why a DELETE needs a context.
        (_, None) => client.delete(key, o.consistency),
    };
    match done {
        Ok(_) => "OK".into(),
        Err(e) => server_err(&e),
    }
}

/// A value in double quotes whatever its bytes (siblings are listed side by side).
fn quote_always(bytes: &[u8]) -> String {
    let q = quote(bytes);
    if q.starts_with('"') {
        q
    } else {
        format!("\"{q}\"")
    }
}

/// Run one command line on `client`; `token` is what kvcat presents in HELLO, for the
/// commands that reach other nodes too (SNAPSHOT name ALL).
fn run_command(
    client: &mut Client,
    token: &[u8],
    mode: &mut Option<bool>,
    tokens: &[Vec<u8>],
) -> Vec<String> {
    let Some(cmd) = tokens.first() else {
        return Vec::new();
    };
    let cmd = String::from_utf8_lossy(cmd).to_ascii_uppercase();
    let args = &tokens[1..];
    let keyed = match cmd.as_str() {
        "PUT" => args.len() >= 2,
        "GET" | "DEL" | "DELETE" => !args.is_empty(),
        _ => false,
    };
    if keyed {
        // A node that cannot tell (STATS refused) is taken for last-write-wins: its
        // answers to plain requests say what is wrong, if anything.
        if let Ok(true) = siblings_mode(client, mode) {
            let cmd = if cmd == "DELETE" { "DEL" } else { cmd.as_str() };
            return vec![causal_command(client, cmd, args)];
        }
    }
    let line = match cmd.as_str() {
        "PUT" if args.len() >= 2 => match parse_options(&args[2..], true) {
            Ok(Options {
                context: Some(_), ..
            }) => usage_err("ctx= needs a node of a --conflicts siblings cluster"),
            Ok(o) => match client.put(&args[0], &args[1], o.ttl, o.consistency) {
                Ok(_) => "OK".into(),
                Err(e) => server_err(&e),
            },
            Err(e) => usage_err(&e),
        },
        "GET" if !args.is_empty() => match parse_options(&args[1..], false) {
            Ok(Options {
                context: Some(_), ..
            }) => usage_err("ctx= needs a node of a --conflicts siblings cluster"),
            Ok(o) => match client.get(&args[0], o.consistency) {
                Ok(Some((_, v))) => quote(&v),
                Ok(None) => "(not found)".into(),
                Err(e) => server_err(&e),
            },
            Err(e) => usage_err(&e),
        },
        "DEL" | "DELETE" if !args.is_empty() => match parse_options(&args[1..], false) {
            Ok(Options {
                context: Some(_), ..
            }) => usage_err("ctx= needs a node of a --conflicts siblings cluster"),
            Ok(o) => match client.delete(&args[0], o.consistency) {
                Ok(_) => "OK".into(),
                Err(e) => server_err(&e),
            },
            Err(e) => usage_err(&e),
        },
        "LGET" if args.len() == 1 => match client.local_get(&args[0]) {
            Ok(Some((version, v))) => format!("{} version={version}", quote(&v)),
            Ok(None) => "(not found)".into(),
            Err(e) => server_err(&e),
        },
        "PING" if args.is_empty() => match client.ping() {
            Ok(()) => "PONG".into(),
            Err(e) => server_err(&e),
        },
        "STATS" if args.is_empty() => match client.stats() {
            Ok(text) => text
                .lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            Err(e) => server_err(&e),
        },
        "CLUSTER" if args.is_empty() => match client.cluster() {
            Ok(text) => return text.lines().map(str::to_string).collect(),
            Err(e) => server_err(&e),
        },
        // An operator's cluster command (CLUSTER_ADMIN opcode): a change of membership,
        // the plan of the running one, pausing and throttling partition moves.
        "CLUSTER" | "TRANSFERS" => {
            let mut words: Vec<String> = args
                .iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if cmd == "TRANSFERS" {
                if !words.is_empty() {
                    return vec![usage_err("TRANSFERS takes no arguments")];
                }
                words.push("TRANSFERS".into());
            }
            let plan = words.len() == 1 && words[0].eq_ignore_ascii_case("PLAN");
            match client.cluster_admin(&words.join(" ")) {
                Ok(text) if plan => return plan_lines(client, &text),
                Ok(text) => return text.lines().map(str::to_string).collect(),
                Err(e) => server_err(&e),
            }
        }
        "RING" if args.is_empty() || is_word(args, "PARTITIONS") => match client.ring() {
            Ok(map) => return ring_lines(&map, !args.is_empty()),
            Err(e) => server_err(&e),
        },
        // Start an anti-entropy round on the connected node (ANTI_ENTROPY opcode).
        "AAE" if args.is_empty() => match client.anti_entropy() {
            Ok(()) => "OK".into(),
            Err(e) => server_err(&e),
        },
        // Force a compaction pass on every shard of the connected node and wait for it.
        "COMPACT" if args.is_empty() => match client.compact() {
            Ok(text) if text.is_empty() => "OK".into(),
            Ok(text) => text
                .lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            Err(e) => server_err(&e),
        },
        // Snapshots of the connected node (SNAPSHOT opcode), or of every node of its ring.
        "SNAPSHOT" | "SNAPSHOTS" => return snapshot_command(client, token, &cmd, args),
        "HELP" => HELP.into(),
        "PUT" | "GET" | "DEL" | "DELETE" | "LGET" | "PING" | "STATS" | "RING" | "AAE"
        | "COMPACT" => usage_err(&format!("wrong arguments for {cmd}; {HELP}")),
        _ => usage_err(&format!("unknown command {cmd:?}; {HELP}")),
    };
    vec![line]
}

/// `SNAPSHOT name [ALL]`, `SNAPSHOT LIST` (or `SNAPSHOTS`), `SNAPSHOT DELETE name`: one line
/// per line of the node's answer; with ALL, `node ID: ...` for every node of the ring map.
fn snapshot_command(client: &mut Client, token: &[u8], cmd: &str, args: &[Vec<u8>]) -> Vec<String> {
    let words: Vec<String> = args
        .iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
    let command = match (cmd, upper.as_slice()) {
        ("SNAPSHOTS", []) | ("SNAPSHOT", ["LIST"]) => "LIST".to_string(),
        ("SNAPSHOT", ["DELETE", _]) => format!("DELETE {}", words[1]),
        ("SNAPSHOT", [_]) | ("SNAPSHOT", [_, "ALL"]) => format!("TAKE {}", words[0]),
        _ => {
            return vec![usage_err(
                "SNAPSHOT name [ALL] | SNAPSHOT LIST | SNAPSHOT DELETE name",
            )]
        }
    };
    let lines = |r: Result<String, ClientError>| -> Vec<String> {
        match r {
            Ok(t) if t.is_empty() => vec!["(none)".into()],
            Ok(t) => t.lines().map(str::to_string).collect(),
            Err(e) => vec![server_err(&e)],
        }
    };
    if upper.len() != 2 || upper[1] != "ALL" {
        return lines(client.snapshot(&command));
    }
    // Every node of the ring, each with its own connection (the same token).
    let map = match client.ring() {
        Ok(m) => m,
        Err(e) => return vec![server_err(&e)],
    };
    let mut out = Vec::new();
    for (id, addr) in &map.addrs {
        let answer = if addr.is_empty() {
            lines(client.snapshot(&command))
        } else {
            match Client::connect_as(addr.as_str(), Role::Client, 0, token) {
                Ok(mut c) => lines(c.snapshot(&command)),
                Err(e) => vec![server_err(&e)],
            }
        };
        out.extend(answer.into_iter().map(|l| format!("node {id}: {l}")));
    }
    out
}

/// Whether `args` is the single word `word` (any case).
fn is_word(args: &[Vec<u8>], word: &str) -> bool {
    args.len() == 1 && args[0].eq_ignore_ascii_case(word.as_bytes())
}

/// The RING command's lines: a header, then one line per node, or per partition.
fn ring_lines(map: &RingMap, partitions: bool) -> Vec<String> {
    let o = &map.ownership;
    let mut lines = vec![format!(
        "version={} replicas={} partitions={PARTITION_COUNT}",
        o.version(),
        o.replicas()
    )];
    if partitions {
        for p in 0..PARTITION_COUNT {
            let owners: Vec<String> = o.owners(p).iter().map(u32::to_string).collect();
            lines.push(format!("{p} {}", owners.join(",")));
        }
        return lines;
    }
    let (loads, prims) = (o.loads(), o.primaries());
    for (id, addr) in &map.addrs {
        let addr = if addr.is_empty() { "-" } else { addr };
        let (held, primary) = match o.nodes().binary_search(id) {
            Ok(i) => (loads[i], prims[i]),
            Err(_) => (0, 0),
        };
        // The keys it holds, from its own STATS (best effort: `?` when it does not answer).
        let keys = (addr != "-")
            .then(|| node_keys(addr))
            .flatten()
            .map_or("?".to_string(), |k| k.to_string());
        lines.push(format!(
            "{id} {addr} partitions={held} primaries={primary} keys={keys}"
        ));
    }
    lines
}

/// The `storage_keys` figure of the node at `addr`, if it answers STATS within a second.
fn node_keys(addr: &str) -> Option<u64> {
    node_stat(addr, "storage_keys")
}

/// One STATS figure of the node at `addr`, if it answers within a second.
fn node_stat(addr: &str, name: &str) -> Option<u64> {
    let sock = addr.parse::<std::net::SocketAddr>().ok()?;
    std::net::TcpStream::connect_timeout(&sock, std::time::Duration::from_secs(1)).ok()?;
    let text = dkv::client::Client::connect(addr).ok()?.stats().ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.parse().ok())?
    })
}

/// CLUSTER PLAN's lines with the bytes each node receives and gives. The leader's plan
/// counts placements (`node N receives R gives G`); a placement's bytes are estimated as
/// the live bytes of the nodes that answer STATS over the placements they hold (keys hash
/// evenly over partitions, so one partition's replica is close to that mean: with 256
/// partitions the spread is a few percent). Lines kvcat cannot annotate pass unchanged.
fn plan_lines(client: &mut dkv::client::Client, text: &str) -> Vec<String> {
    let per_placement = client.ring().ok().and_then(|map| {
        let loads = map.ownership.loads();
        let (mut bytes, mut held) = (0u64, 0u64);
        for (id, addr) in &map.addrs {
            let Ok(i) = map.ownership.nodes().binary_search(id) else {
                continue;
            };
            if let Some(b) = node_stat(addr, "storage_live_bytes") {
                bytes += b;
                held += loads[i] as u64;
            }
        }
        (held > 0).then(|| bytes as f64 / held as f64)
    });
    text.lines()
        .map(|line| {
            let words: Vec<&str> = line.split(' ').collect();
            match (per_placement, words.as_slice()) {
                (Some(b), ["node", _, "receives", r, "gives", g]) => {
                    let est = |n: &str| n.parse::<f64>().map_or(0.0, |n| n * b);
                    format!(
                        "{line} bytes_in~{} bytes_out~{}",
                        human_bytes(est(r)),
                        human_bytes(est(g))
                    )
                }
                _ => line.to_string(),
            }
        })
        .collect()
}

/// `n` bytes as B, KB, MB or GB (decimal, one decimal place above B).
fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0}{}", UNITS[u])
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(0) == 1 }
}

/// Environment variable holding the token kvcat presents (instead of `--token`).
const TOKEN_ENV: &str = "DKV_TOKEN";

/// The address and the token from the command line: `[--token T | --token-file F]
/// [HOST:PORT]`, the token also from [`TOKEN_ENV`] (one source only).
fn parse_args(args: &[String]) -> Result<(String, Vec<u8>), String> {
    let mut addr = None;
    let mut tokens: Vec<(String, Vec<u8>)> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--token" => {
                let t = it.next().ok_or("--token needs a value")?;
                tokens.push(("--token".into(), t.as_bytes().to_vec()));
            }
            "--token-file" => {
                let f = it.next().ok_or("--token-file needs a file")?;
                let mut t = std::fs::read(f).map_err(|e| format!("--token-file {f}: {e}"))?;
                if t.last() == Some(&b'\n') {
                    t.pop();
                }
                tokens.push(("--token-file".into(), t));
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s if addr.is_none() => addr = Some(s.to_string()),
            _ => return Err("expected at most one argument, HOST:PORT".into()),
        }
    }
    if let Some(t) = std::env::var_os(TOKEN_ENV) {
        use std::os::unix::ffi::OsStrExt;
        tokens.push((TOKEN_ENV.into(), t.as_bytes().to_vec()));
    }
    if tokens.len() > 1 {
        let names: Vec<&str> = tokens.iter().map(|t| t.0.as_str()).collect();
        return Err(format!(
            "{} given: give the token one way only",
            names.join(" and ")
        ));
    }
    let addr = addr.unwrap_or_else(|| format!("127.0.0.1:{PORT_DEFAULT}"));
    Ok((addr, tokens.pop().map(|t| t.1).unwrap_or_default()))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "Usage: kvcat [--token TOKEN | --token-file FILE] [HOST:PORT]   (default \
             127.0.0.1:{PORT_DEFAULT})\n\n\
             Reads one command per line from stdin and prints one line per command.\n\
             --token presents TOKEN in HELLO: the node's client token, or its admin token \
             (kvd --admin-token), which the admin commands (AAE, COMPACT, CLUSTER LEAVE ...) \
             need on a node that has one. Also read from {TOKEN_ENV}.\n{HELP}"
        );
        return ExitCode::SUCCESS;
    }
    let (addr, token) = match parse_args(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("kvcat: {e} (see kvcat --help)");
            return ExitCode::from(2);
        }
    };
    let connect = || Client::connect_as(addr.as_str(), Role::Client, 0, &token);
    let mut client = match connect() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvcat: cannot connect to {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let interactive = is_terminal();
    // The node's conflict mode, asked before the first keyed command.
    let mut mode = None;
    let stdin = io::stdin();
    let mut stdout = io::stdout().lock();
    let mut line = Vec::new();
    let mut input = stdin.lock();
    loop {
        if interactive {
            let _ = write!(stdout, "{addr}> ");
            let _ = stdout.flush();
        }
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                eprintln!("kvcat: reading stdin: {e}");
                return ExitCode::from(1);
            }
        }
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        let out = match tokenize(&line) {
            Ok(t) if t.is_empty() => continue,
            Ok(t) => {
                let out = run_command(&mut client, &token, &mut mode, &t);
                // A broken connection: reconnect once, so the next command has a chance.
                if out.iter().any(|l| l.starts_with("ERR IO")) {
                    if let Ok(c) = connect() {
                        client = c;
                    }
                }
                out
            }
            Err(e) => vec![usage_err(&e)],
        };
        for l in out {
            if writeln!(stdout, "{l}").is_err() {
                return ExitCode::from(1);
            }
        }
        let _ = stdout.flush();
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_round_trips() {
        for bytes in [
            &b"plain"[..],
            b"two words",
            b"",
            b"\x00\xff\n",
            b"q\"uo\\te",
            "é".as_bytes(),
        ] {
            let q = quote(bytes);
            let t = tokenize(q.as_bytes()).unwrap();
            assert_eq!(t, vec![bytes.to_vec()], "{q}");
        }
    }

    #[test]
    fn tokenize_errors() {
        assert!(tokenize(b"PUT \"abc").is_err());
        assert!(tokenize(b"PUT \"\\xZZ\"").is_err());
        assert!(tokenize(b"PUT \"a\"b").is_err());
        assert_eq!(
            tokenize(b"  PUT  a \"b c\" ").unwrap(),
            vec![b"PUT".to_vec(), b"a".to_vec(), b"b c".to_vec()]
        );
    }
}
