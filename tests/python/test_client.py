#!/usr/bin/env python3
"""Exercise a running dkv node through dkv_client.py, as protocol.md describes it.

    python3 tests/python/test_client.py 127.0.0.1:7379

    python3 tests/python/test_client.py 127.0.0.1:7379 127.0.0.1:7380 TOKEN

Prints one line per test and `N passed, M failed`; exits non-zero on any failure. Every wait is
bounded by a socket timeout or a deadline. The first node must be a fresh single node without a
client token; the optional second one was started with `--client-token TOKEN` and gets the
handshake tests (`tests/python_client.rs` starts both).
"""

import os
import re
import socket
import struct
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dkv_client as d  # noqa: E402

ADDR = None  # (host, port), set in main
TIMEOUT_S = 10.0
PROTOCOL_MD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "protocol.md")


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def connect(hello=True):
    c = d.Client(ADDR[0], ADDR[1], timeout=TIMEOUT_S)
    if hello:
        c.hello()
    return c


def expect_closed(c, what):
    """After a closing error frame the node closes the connection: the next read is end of
    stream (or a reset), never another frame."""
    try:
        reply = c.read_frame()
    except d.ConnectionClosed:
        return
    except socket.timeout:
        raise Failure("%s: connection still open %.0f s after the error frame" % (what, TIMEOUT_S))
    raise Failure("%s: frame after the closing error frame: %r" % (what, reply))


def expect_connection_error(c, status, what):
    """The next frame is a connection-level error frame (op 0x80, id 0) with `status`, then the
    connection is closed."""
    try:
        reply = c.read_frame()
    except d.ConnectionClosed as e:
        raise Failure("%s: connection closed without an error frame (%s)" % (what, e))
    check(
        reply.status == d.STATUS[status],
        "%s: expected %s, got %r" % (what, status, reply),
    )
    check(
        reply.raw_op == d.OP_CONNECTION_ERROR and reply.id == 0,
        "%s: %s must come as a connection-level frame (op 0x80, id 0), got op 0x%02x id %d"
        % (what, status, reply.raw_op, reply.id),
    )
    check(len(reply.body) <= 512, "%s: message longer than 512 bytes" % what)
    reply.body.decode("utf-8")  # must be UTF-8
    expect_closed(c, what)


def expect_closing_reply(c, request_id, op, status, what):
    """The reply to request_id (with the request's op and id) has the closing `status`; then the
    connection is closed."""
    try:
        reply = c.read_frame()
    except d.ConnectionClosed as e:
        raise Failure("%s: connection closed without a reply (%s)" % (what, e))
    check(reply.status == d.STATUS[status], "%s: expected %s, got %r" % (what, status, reply))
    check(
        reply.raw_op == op | d.RESPONSE_BIT and reply.id == request_id,
        "%s: %s must answer the request (op 0x%02x, id %d), got op 0x%02x id %d"
        % (what, status, op | d.RESPONSE_BIT, request_id, reply.raw_op, reply.id),
    )
    reply.body.decode("utf-8")
    expect_closed(c, what)


def expect_error_then_usable(c, request_id, op, status, what):
    """The reply to request_id has `status`, the request's op and id; the connection then still
    answers PING."""
    reply = c.wait(request_id)
    check(reply.status == d.STATUS[status], "%s: expected %s, got %r" % (what, status, reply))
    check(reply.raw_op == (op | d.RESPONSE_BIT) & 0xFF, "%s: reply op 0x%02x" % (what, reply.raw_op))
    check(reply.id == request_id, "%s: reply id %d != %d" % (what, reply.id, request_id))
    check(len(reply.body) <= 512, "%s: message longer than 512 bytes" % what)
    reply.body.decode("utf-8")
    c.ping()


# ---- tests that need no node -----------------------------------------------------------------


def test_key_hash_matches_protocol_md():
    # Section 11's test values.
    check(d.key_hash(b"") == 0xEFD01F60BA992926, "hash of the empty key")
    check(d.key_hash(b"a") == 0x82A2A958A9BECE5B, "hash of a")
    check(d.key_hash(b"hello") == 0xE9C562C0FDB23244, "hash of hello")
    check(d.partition_of(b"hello") == 233, "partition of hello")
    check(d.key_hash(b"key:0") == 0x4FF2EC70D4F843ED, "hash of key:0")
    check(d.partition_of(b"\x00\xff") == 172, "partition of 00ff")


def golden_vectors():
    """{name: (spec, bytes)} from protocol.md's `Vector NAME: SPEC` + hex blocks."""
    with open(PROTOCOL_MD, encoding="utf-8") as f:
        text = f.read()
    out = {}
    pattern = re.compile(r"^Vector `([^`]+)`: `([^`]*)`\n\n```hex\n(.*?)\n```", re.M | re.S)
    for m in pattern.finditer(text):
        digits = "".join(line.split("#")[0] for line in m.group(3).splitlines())
        out[m.group(1)] = (m.group(2), bytes.fromhex("".join(digits.split())))
    return out


def test_encoder_matches_golden_vectors():
    v = golden_vectors()
    check(len(v) >= 10, "found only %d vectors in protocol.md" % len(v))
    check(v["hello-request"][1] == d.encode_frame(d.OP_HELLO, 0, 1, d.hello_body()), "HELLO")
    check(v["ping-request"][1] == d.encode_frame(d.OP_PING, 0, 2), "PING")
    check(
        v["put-request"][1] == d.encode_frame(d.OP_PUT, 0, 3, d.put_body(b"hello", b"world", 0)),
        "PUT",
    )
    check(v["get-request"][1] == d.encode_frame(d.OP_GET, 0, 4, d.key_body(b"hello")), "GET")
    check(
        v["get-one-request"][1] == d.encode_frame(d.OP_GET, d.ONE, 6, d.key_body(b"hello")),
        "GET ONE",
    )
    check(
        v["delete-request"][1] == d.encode_frame(d.OP_DELETE, 0, 5, d.key_body(b"hello")),
        "DELETE",
    )
    check(
        v["put-ttl-all-request"][1]
        == d.encode_frame(d.OP_PUT, d.ALL, 7, d.put_body(b"k", b"", 60)),
        "PUT TTL ALL",
    )
    op, aux, rid, body, n = d.parse_frame(v["get-reply"][1])
    r = d.Reply(op, aux, rid, body)
    check(d.get_result(r) == (0x66ADA5FA00000001, b"world"), "GET reply")
    check(d.version_parts(r.version()) == (1764000000000, 0, 1), "version parts")
    op, aux, rid, body, n = d.parse_frame(v["frame-too-large-reply"][1])
    check((op, aux, rid) == (0x80, d.STATUS["FRAME_TOO_LARGE"], 0), "FRAME_TOO_LARGE frame")
    try:
        d.parse_frame(v["oversized-prefix"][1])
        raise Failure("0xFFFFFFFF prefix accepted")
    except d.FrameTooLarge:
        pass
    whole = v["put-request"][1]
    for cut in range(len(whole)):
        check(d.parse_frame(whole[:cut]) is None, "prefix of %d bytes" % cut)


def test_siblings_vectors_of_protocol_md():
    # Section 19.5: the causal requests this client encodes, the causal GET replies it parses.
    v = golden_vectors()
    ctx = bytes.fromhex("010002000166ada5fa00000001000266ada5fa00400002")
    ctx2 = bytes.fromhex("010002000166ada5fa00800001000266ada5fa00400002")
    check(v["context-empty"][1] == b"\x01\x00\x00", "the empty context")
    with_flag = d.QUORUM | d.FLAG_CAUSAL
    check(
        v["causal-get-request"][1] == d.encode_frame(d.OP_GET, with_flag, 11, d.key_body(b"cart")),
        "causal GET",
    )
    op, body, aux = d.write_request(b"cart", b"milk,eggs", 0, d.QUORUM, ctx)
    check(v["causal-put-request"][1] == d.encode_frame(op, aux, 12, body), "causal PUT")
    op, body, aux = d.write_request(b"cart", None, 0, d.DEFAULT, ctx2)
    check(v["causal-delete-request"][1] == d.encode_frame(op, aux, 13, body), "causal DELETE")
    op, aux, rid, body, n = d.parse_frame(v["causal-get-reply"][1])
    got = d.get_siblings_result(d.Reply(op, aux, rid, body))
    want = (ctx, [(0x66ADA5FA00000001, b"milk"), (0x66ADA5FA00400002, b"eggs")])
    check(got == want, "causal GET reply: %r" % (got,))
    op, aux, rid, body, n = d.parse_frame(v["causal-get-not-found-reply"][1])
    check(d.get_siblings_result(d.Reply(op, aux, rid, body)) == (ctx2, []), "NOT_FOUND reply")
    for cut in range(len(body)):
        try:
            d.parse_causal_get_reply(body[:cut], False)
        except d.ProtocolError:
            continue
        raise Failure("a causal reply cut at %d bytes was accepted" % cut)
    check(d.STATUS["SIBLINGS"] == 0x28 and d.STATUS["TOO_MANY_SIBLINGS"] == 0x29, "statuses")


# ---- tests against the node ------------------------------------------------------------------


def test_ping_without_hello():
    with connect(hello=False) as c:
        c.ping()
        c.put(b"py:nohello", b"1")
        check(c.get(b"py:nohello")[1] == b"1", "GET without HELLO")


def test_hello():
    with connect(hello=False) as c:
        info = c.hello()
        check(info["version"] == 1, "HELLO reply version %r" % info)
        check(info["shards"] >= 1 and info["shard"] < info["shards"], "shard fields %r" % info)
        check(info["node_id"] <= 1023, "node id %r" % info)
        c.ping()


def forwarded_out(c):
    """Requests the node's shards forwarded to another shard, in total (STATS)."""
    return sum(
        int(v) for k, v in c.stats() if k.startswith("shard_") and k.endswith("_forwarded_out")
    )


def test_shard_vectors_match_protocol_md():
    with open(PROTOCOL_MD, encoding="utf-8") as f:
        doc = f.read()
    block = doc.split("```shard-vectors\n")[1].split("\n```")[0]
    n = 0
    for line in block.splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        kind, value, k, want = line.split()
        if kind == "key":
            key = b"" if value == "-" else bytes.fromhex(value)
            got = d.shard_of(key, int(k))
        else:
            got = d.shard_of_port(int(value), int(k))
        check(got == int(want), "shard vector %r gives %d" % (line, got))
        n += 1
    check(n >= 6, "too few shard vectors")


def test_shard_aware_connections_are_not_forwarded():
    n = 400
    with d.ShardedClient(ADDR[0], ADDR[1], timeout=TIMEOUT_S) as s:
        check(s.shards >= 1, "shard count %r" % s.shards)
        for shard, info in enumerate(s.landed):
            check(info["shard"] == shard, "connection for shard %d landed %r" % (shard, info))
            port = s.conns[shard].sock.getsockname()[1]
            check(d.shard_of_port(port, s.shards) == shard, "local port %d" % port)
        before = forwarded_out(s.conns[0])
        # Pipelined on each shard's connection: PUTs, then GETs of the same keys.
        keys = [b"py:shard-aware:%d" % i for i in range(n)]
        ids = [(s.for_key(k), s.for_key(k).send_put(k, k[::-1])) for k in keys]
        for c, i in ids:
            d._ok(c.wait(i))
        ids = [(s.for_key(k), s.for_key(k).send_get(k)) for k in keys]
        for k, (c, i) in zip(keys, ids):
            check(d.get_result(c.wait(i))[1] == k[::-1], "GET %r" % k)
        forwarded = forwarded_out(s.conns[-1]) - before
        check(forwarded == 0, "%d of %d shard-aware requests were forwarded" % (forwarded, 2 * n))
        check(
            s.shards == 1 or len({d.shard_of(k, s.shards) for k in keys}) == s.shards,
            "the keys did not cover every shard",
        )


def test_put_get_delete_round_trip():
    with connect() as c:
        key = b"py:round-trip"
        check(c.get(key) is None, "fresh key exists")
        v1 = c.put(key, b"world")
        got = c.get(key)
        check(got == (v1, b"world"), "GET after PUT: %r, put version %d" % (got, v1))
        v2 = c.put(key, b"again")
        check(v2 > v1, "second PUT version %d not above %d" % (v2, v1))
        check(c.get(key) == (v2, b"again"), "GET after the second PUT")
        v3 = c.delete(key)
        check(v3 > v2, "tombstone version %d not above %d" % (v3, v2))
        check(c.get(key) is None, "GET after DELETE found the key")
        ms, _logical, _node = d.version_parts(v1)
        now_ms = int(time.time() * 1000)
        check(abs(now_ms - ms) < 3600 * 1000, "version time %d ms far from now %d" % (ms, now_ms))


def test_delete_of_a_missing_key_is_ok():
    with connect() as c:
        v = c.delete(b"py:never-written")
        check(v > 0, "DELETE version %d" % v)
        check(c.get(b"py:never-written") is None, "GET after DELETE")


def test_binary_keys_values_and_edge_sizes():
    with connect() as c:
        all_bytes = bytes(range(256))
        cases = [
            (b"\x00", b""),
            (all_bytes, all_bytes),
            (b"k" * d.KEY_SIZE_MAX, b"\x00" * 100),
            (b"py:big-value", bytes(i % 251 for i in range(d.VALUE_SIZE_MAX))),
        ]
        for key, value in cases:
            v = c.put(key, value)
            got = c.get(key)
            check(got is not None and got == (v, value), "round trip of a %d-byte key" % len(key))


def test_consistency_levels_on_one_node():
    with connect() as c:
        for level in (d.DEFAULT, d.ONE, d.QUORUM, d.ALL):
            key = b"py:level:%d" % level
            v = c.put(key, b"x%d" % level, consistency=level)
            check(c.get(key, consistency=level) == (v, b"x%d" % level), "level %d" % level)
            c.delete(key, consistency=level)


def test_100_pipelined_requests_matched_by_id():
    with connect() as c:
        n = 100
        keys = [b"py:pipe:%d" % i for i in range(n)]
        values = [b"value-%d-" % i + bytes([i]) * (i % 7) for i in range(n)]
        # Ids chosen by the client, not sequential, so matching by position would fail.
        ids = [(i * 7919 + 12345) % 1000003 + 1 for i in range(n)]

        for i in range(n):
            c.send(d.OP_PUT, d.put_body(keys[i], values[i]), request_id=ids[i])
        c.flush()
        order = []
        versions = {}
        while len(order) < n:
            r = c.read_frame()
            check(r.id in ids and r.id not in versions, "unexpected reply id %d" % r.id)
            check(r.status == d.OK and r.op == d.OP_PUT, "PUT reply %r" % r)
            versions[r.id] = r.version()
            order.append(r.id)

        get_ids = [i + 5000000 for i in ids]
        for i in range(n):
            c.send(d.OP_GET, d.key_body(keys[i]), request_id=get_ids[i])
        c.flush()
        seen = {}
        while len(seen) < n:
            r = c.read_frame()
            check(r.id in get_ids and r.id not in seen, "unexpected reply id %d" % r.id)
            seen[r.id] = r
            order.append(r.id)
        for i in range(n):
            r = seen[get_ids[i]]
            check(r.op == d.OP_GET, "GET reply op %r" % r)
            got = d.get_result(r)
            check(got == (versions[ids[i]], values[i]), "GET %r answered %r" % (keys[i], got))
        # A reply "overtook" if some request sent before it was still unanswered.
        sent_rank = {rid: i for i, rid in enumerate(ids + get_ids)}
        answered, overtook, lowest_unanswered = set(), 0, 0
        for rid in order:
            if sent_rank[rid] > lowest_unanswered:
                overtook += 1
            answered.add(sent_rank[rid])
            while lowest_unanswered in answered:
                lowest_unanswered += 1
        print("    (%d of %d replies overtook an earlier request's reply)" % (overtook, 2 * n))


def test_pipelined_mixed_requests():
    with connect() as c:
        ids = {}
        for i in range(50):
            ids[c.send_ping()] = d.OP_PING
            ids[c.send_put(b"py:mixed:%d" % i, b"v")] = d.OP_PUT
            ids[c.send(d.OP_STATS)] = d.OP_STATS
        replies = c.collect(list(ids))
        for rid, op in ids.items():
            check(replies[rid].op == op and replies[rid].status == d.OK, "reply %r" % replies[rid])


def test_stats_is_name_value_lines():
    with connect() as c:
        c.put(b"py:stats", b"1")
        raw = c.call(d.OP_STATS)
        check(raw.status == d.OK, "STATS %r" % raw)
        text = raw.body.decode("utf-8")
        check(len(raw.body) <= 65536, "STATS body over 65536 bytes")
        check(text == "" or text.endswith("\n"), "STATS text does not end in a newline")
        lines = [line for line in text.split("\n") if line]
        check(len(lines) > 0, "STATS is empty")
        for line in lines:
            check(
                re.match(r"^[a-z0-9_.]+ \S", line) is not None,
                "STATS line %r is not `name value`" % line,
            )


def test_malformed_frame_closes_the_connection():
    with connect() as c:
        # A GET whose key length (9) runs past the end of its body (5 bytes): protocol.md's
        # malformed-get-request vector.
        c.send_raw(struct.pack(">IBBIH", 13, d.OP_GET, 0, 10, 9) + b"hello")
        c.flush()
        expect_closing_reply(c, 10, d.OP_GET, "MALFORMED", "GET with a key length past the body")
    with connect() as c:
        c.send_raw(struct.pack(">I", 5) + b"\x02\x00\x00\x00\x00")  # length 5 < 6
        c.flush()
        expect_connection_error(c, "MALFORMED", "frame length 5")
    with connect() as c:
        c.send_raw(d.encode_frame(d.OP_PING, 0, 3, b"x"))  # PING must have an empty body
        c.flush()
        expect_closing_reply(c, 3, d.OP_PING, "MALFORMED", "PING with a body")
    with connect() as c:  # other connections are unaffected
        c.ping()


def test_oversized_frame_closes_the_connection():
    with connect() as c:
        c.ping()
        c.send_raw(b"\xff\xff\xff\xff")  # the 4-byte prefix alone: the node must not wait
        c.flush()
        expect_connection_error(c, "FRAME_TOO_LARGE", "declared length 0xFFFFFFFF")
    with connect() as c:
        c.send_raw(struct.pack(">I", d.FRAME_SIZE_MAX + 1))
        c.flush()
        expect_connection_error(c, "FRAME_TOO_LARGE", "declared length FRAME_SIZE_MAX + 1")
    with connect() as c:
        c.ping()


def test_key_too_large_keeps_the_connection():
    with connect() as c:
        big = b"k" * (d.KEY_SIZE_MAX + 1)
        rid = c.send_get(big)
        expect_error_then_usable(c, rid, d.OP_GET, "KEY_TOO_LARGE", "GET of a 1025-byte key")
        rid = c.send_put(big, b"v")
        expect_error_then_usable(c, rid, d.OP_PUT, "KEY_TOO_LARGE", "PUT of a 1025-byte key")
        rid = c.send_delete(big)
        expect_error_then_usable(c, rid, d.OP_DELETE, "KEY_TOO_LARGE", "DELETE of a 1025-byte key")


def test_value_too_large_keeps_the_connection():
    with connect() as c:
        rid = c.send_put(b"py:too-big", b"v" * (d.VALUE_SIZE_MAX + 1))
        expect_error_then_usable(c, rid, d.OP_PUT, "VALUE_TOO_LARGE", "PUT of 1 MiB + 1")
        check(c.get(b"py:too-big") is None, "the too-large value was stored")


def test_unknown_opcode_keeps_the_connection():
    with connect() as c:
        rid = c.send(0x7E)
        expect_error_then_usable(c, rid, 0x7E, "UNKNOWN_OPCODE", "opcode 0x7E")
        rid = c.send(0x1F, b"whatever")
        expect_error_then_usable(c, rid, 0x1F, "UNKNOWN_OPCODE", "opcode 0x1F")
        # A response opcode sent as a request: answered on op 0x80 with the request's id.
        rid = c.send(0x83, d.key_body(b"k"))
        expect_error_then_usable(c, rid, 0x00, "UNKNOWN_OPCODE", "opcode 0x83")


def test_bad_requests_keep_the_connection():
    with connect() as c:
        rid = c.send(d.OP_GET, d.key_body(b"k"), aux=0x08)
        expect_error_then_usable(c, rid, d.OP_GET, "BAD_REQUEST", "GET with reserved flag bits")
        # The causal flag needs a --conflicts siblings cluster (section 5).
        rid = c.send_get_siblings(b"k")
        expect_error_then_usable(c, rid, d.OP_GET, "BAD_REQUEST", "causal GET on a lww node")
        rid = c.send_put(b"k", b"v", context=b"")
        expect_error_then_usable(c, rid, d.OP_PUT, "BAD_REQUEST", "causal PUT on a lww node")
        rid = c.send(d.OP_GET, d.key_body(b""))
        expect_error_then_usable(c, rid, d.OP_GET, "BAD_REQUEST", "GET of the empty key")
        rid = c.send_put(b"k", b"v", ttl_seconds=d.TTL_SECONDS_MAX + 1)
        expect_error_then_usable(c, rid, d.OP_PUT, "BAD_REQUEST", "PUT with a TTL over the max")
        rid = c.send(d.OP_PING, aux=1)
        expect_error_then_usable(c, rid, d.OP_PING, "BAD_REQUEST", "PING with aux 1")


def test_peer_opcode_from_a_client_is_unauthorized():
    with connect() as c:
        rid = c.send(d.PEER_OP_FIRST, b"")
        expect_error_then_usable(c, rid, d.PEER_OP_FIRST, "UNAUTHORIZED", "peer opcode 0x20")


def test_peer_hello_without_the_secret_is_refused_and_closed():
    with connect(hello=False) as c:
        rid = c.send(d.OP_HELLO, d.hello_body(role=d.ROLE_PEER, node_id=7, token=b"wrong"))
        c.flush()
        try:
            reply = c.read_frame()
        except d.ConnectionClosed as e:
            raise Failure("closed without an UNAUTHORIZED reply (%s)" % e)
        check(reply.status == d.STATUS["UNAUTHORIZED"], "peer HELLO answered %r" % reply)
        check(reply.id in (rid, 0), "reply id %d" % reply.id)
        expect_closed(c, "peer HELLO without the secret")


def test_unsupported_version():
    with connect(hello=False) as c:
        rid = c.send(d.OP_HELLO, d.hello_body(version=2))
        expect_error_then_usable(c, rid, d.OP_HELLO, "UNSUPPORTED_VERSION", "HELLO version 2")
        check(c.hello()["version"] == 1, "HELLO version 1 after a refused version 2")


def test_lget_shows_the_local_copy():
    with connect() as c:
        key = b"py:lget"
        check(c.lget(key) is None, "LGET of a fresh key")
        v = c.put(key, b"local", ttl_seconds=3600)
        got = c.lget(key)
        check(got is not None and got[0] == v and got[2] == b"local", "LGET %r" % (got,))
        now_ms = int(time.time() * 1000)
        check(
            abs(got[1] - (now_ms + 3600 * 1000)) < 600 * 1000,
            "LGET expiry %d, expected about %d" % (got[1], now_ms + 3600 * 1000),
        )
        v = c.put(key, b"forever")
        check(c.lget(key) == (v, 0, b"forever"), "LGET without TTL")
        t = c.delete(key)
        check(c.lget(key) == ("tombstone", t), "LGET of a deleted key: %r" % (c.lget(key),))


def test_cluster_and_admin_opcodes():
    with connect() as c:
        lines = c.cluster()
        check(len(lines) >= 1, "CLUSTER lists no node")
        check(all(name.isdigit() for name, _ in lines), "CLUSTER names are node ids: %r" % lines)
        r = c.call(d.OP_ANTI_ENTROPY)
        check(r.status == d.OK and r.body == b"", "ANTI_ENTROPY: %r" % (r,))
        # COMPACT answers once the forced pass is over, with what it reclaimed.
        r = c.call(d.OP_COMPACT)
        check(r.status == d.OK, "COMPACT: %r" % (r,))
        figures = dict(line.split(" ", 1) for line in r.body.decode().splitlines())
        check(
            set(figures) >= {"compactions", "bytes_reclaimed", "segments_reclaimed", "complete"},
            "COMPACT reply lines: %r" % (figures,),
        )
        check(figures["complete"] == "1", "COMPACT pass complete: %r" % (figures,))


def test_partial_frames_byte_by_byte():
    with connect() as c:
        frames = d.encode_frame(d.OP_PUT, 0, 41, d.put_body(b"py:slow", b"drip")) + d.encode_frame(
            d.OP_GET, 0, 42, d.key_body(b"py:slow")
        )
        for i in range(len(frames)):
            c.send_raw(frames[i : i + 1])
            c.flush()
        put = c.wait(41)
        check(put.status == d.OK, "PUT sent byte by byte: %r" % put)
        check(d.get_result(c.wait(42)) == (put.version(), b"drip"), "GET sent byte by byte")


def test_largest_frame_is_read_and_answered():
    with connect() as c:
        # A frame of exactly FRAME_SIZE_MAX: a PUT with a 1-byte key whose value is above
        # VALUE_SIZE_MAX. It is a frame (not FRAME_TOO_LARGE) with a bad value.
        value = b"x" * (d.FRAME_SIZE_MAX - 6 - 2 - 1 - 4)
        frame = d.encode_frame(d.OP_PUT, 0, 77, d.put_body(b"m", value))
        check(len(frame) == 4 + d.FRAME_SIZE_MAX, "test frame size")
        c.send_raw(frame)
        expect_error_then_usable(c, 77, d.OP_PUT, "VALUE_TOO_LARGE", "a FRAME_SIZE_MAX frame")


def test_ring_of_a_single_node():
    # A node without a cluster answers a ring of itself, with an empty address (section 11.1).
    with connect() as c:
        node_id = c.hello()["node_id"]
        m = c.ring()
    check(m.version == 1 and m.replicas == 1, "version %d, N %d" % (m.version, m.replicas))
    check(m.nodes == [node_id], "nodes %r" % m.nodes)
    check(all(o == [node_id] for o in m.owners), "owners of a single node")
    check(m.addrs == {node_id: ""}, "addresses %r" % m.addrs)
    # The golden reply of protocol.md parses to its documented 2-node ring.
    g = d.parse_ring_map(golden_vectors()["ring-reply"][1][10:])
    check((g.version, g.replicas, g.nodes) == (1, 2, [1, 2]), "golden ring header")
    check(all(g.owners[p] == ([1, 2] if p % 2 == 0 else [2, 1]) for p in range(256)),
          "golden ring owners")
    check(g.addrs == {1: "127.0.0.1:7001", 2: "127.0.0.1:7002"}, "golden addresses")


def test_opcode_zero_is_unknown():
    with connect() as c:
        rid = c.send(0x00)
        expect_error_then_usable(c, rid, 0x00, "UNKNOWN_OPCODE", "opcode 0x00")


def test_garbage_never_breaks_the_node():
    """Seeded random and mutated frames on 300 connections, each half-closed after its garbage:
    every reply stream must be well-formed frames, nothing after a closing status, and the node
    keeps serving."""
    import random

    rng = random.Random(0xD1CE)
    valid = [
        d.encode_frame(d.OP_PING, 0, 1),
        d.encode_frame(d.OP_GET, 0, 2, d.key_body(b"py:garbage")),
        d.encode_frame(d.OP_PUT, 1, 3, d.put_body(b"py:garbage", b"v" * 40, 5)),
        d.encode_frame(d.OP_DELETE, 2, 4, d.key_body(b"py:garbage")),
        d.encode_frame(d.OP_HELLO, 0, 5, d.hello_body()),
        d.encode_frame(d.OP_STATS, 0, 6),
        d.encode_frame(d.OP_LGET, 0, 7, d.key_body(b"py:garbage")),
    ]
    for case in range(300):
        if case % 3 == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        else:
            data = bytearray(b"".join(rng.choice(valid) for _ in range(rng.randrange(1, 5))))
            for _ in range(rng.randrange(1, 4)):
                i = rng.randrange(len(data))
                if rng.random() < 0.5:
                    data[i] ^= 1 << rng.randrange(8)
                else:
                    data[i] = rng.randrange(256)
            data = bytes(data)
        with connect(hello=False) as c:
            try:
                c.sock.sendall(data)
                c.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the node may already have closed on a bad length
            closed_by = None
            while True:
                try:
                    r = c.read_frame()
                except d.ConnectionClosed:
                    break
                check(closed_by is None, "case %d: frame %r after closing %r" % (case, r, closed_by))
                check(r.status in d.STATUS_NAMES, "case %d: unknown status in %r" % (case, r))
                if r.closes_connection:
                    closed_by = r
    with connect() as c:
        c.ping()
        c.put(b"py:after-garbage", b"fine")
        check(c.get(b"py:after-garbage")[1] == b"fine", "node unwell after the garbage")


# ---- tests against a node started with --client-token ----------------------------------------

TOKEN_ADDR = None
TOKEN = None


def connect_token_node():
    return d.Client(TOKEN_ADDR[0], TOKEN_ADDR[1], timeout=TIMEOUT_S)


def test_token_node_refuses_requests_before_hello():
    with connect_token_node() as c:
        rid = c.send_ping()
        expect_error_then_usable_no_ping(c, rid, d.OP_PING, "UNAUTHORIZED", "PING before HELLO")
        rid = c.send_get(b"k")
        expect_error_then_usable_no_ping(c, rid, d.OP_GET, "UNAUTHORIZED", "GET before HELLO")
        c.hello(token=TOKEN)
        c.ping()
        v = c.put(b"py:token", b"ok")
        check(c.get(b"py:token") == (v, b"ok"), "GET after HELLO with the token")


def test_token_node_checks_a_request_before_the_login():
    """Section 9: before HELLO, a request's own checks come first; only a request that passes
    them gets UNAUTHORIZED."""
    with connect_token_node() as c:
        rid = c.send(d.OP_GET, d.key_body(b"k" * (d.KEY_SIZE_MAX + 1)))
        expect_error_then_usable_no_ping(c, rid, d.OP_GET, "KEY_TOO_LARGE", "long key before HELLO")
        rid = c.send(0x7E, b"")
        expect_error_then_usable_no_ping(c, rid, 0x7E, "UNKNOWN_OPCODE", "op 0x7e before HELLO")
        rid = c.send(d.OP_GET, d.key_body(b"k"), aux=0x08)
        expect_error_then_usable_no_ping(c, rid, d.OP_GET, "BAD_REQUEST", "flags before HELLO")
        rid = c.send(d.OP_GET, d.key_body(b"k"))
        expect_error_then_usable_no_ping(c, rid, d.OP_GET, "UNAUTHORIZED", "GET before HELLO")
        # The version is checked before the token: UNSUPPORTED_VERSION, and the connection
        # stays usable for a HELLO that is right.
        rid = c.send(d.OP_HELLO, d.hello_body(version=9, token=b"not the token"))
        expect_error_then_usable_no_ping(c, rid, d.OP_HELLO, "UNSUPPORTED_VERSION", "HELLO v9")
        c.hello(token=TOKEN)
        c.ping()
    with connect_token_node() as c:
        rid = c.send(d.OP_GET, struct.pack(">H", 9) + b"short")
        c.flush()
        expect_closing_reply(c, rid, d.OP_GET, "MALFORMED", "malformed GET before HELLO")


def test_token_node_closes_on_a_wrong_token():
    with connect_token_node() as c:
        rid = c.send(d.OP_HELLO, d.hello_body(token=TOKEN + b"-wrong"))
        expect_closing_unauthorized(c, rid, "HELLO with a wrong token")
    with connect_token_node() as c:
        rid = c.send(d.OP_HELLO, d.hello_body(token=b""))
        expect_closing_unauthorized(c, rid, "HELLO without the token")


def expect_error_then_usable_no_ping(c, request_id, op, status, what):
    reply = c.wait(request_id)
    check(reply.status == d.STATUS[status], "%s: expected %s, got %r" % (what, status, reply))
    check(reply.raw_op == op | d.RESPONSE_BIT, "%s: reply op 0x%02x" % (what, reply.raw_op))


def expect_closing_unauthorized(c, request_id, what):
    c.flush()
    try:
        reply = c.read_frame()
    except d.ConnectionClosed as e:
        raise Failure("%s: closed without an UNAUTHORIZED reply (%s)" % (what, e))
    check(reply.status == d.STATUS["UNAUTHORIZED"], "%s: %r" % (what, reply))
    check(reply.id == request_id and reply.raw_op == 0x81, "%s: reply %r" % (what, reply))
    expect_closed(c, what)


def test_ttl_expires():
    with connect() as c:
        v = c.put(b"py:ttl", b"short-lived", ttl_seconds=1)
        check(c.get(b"py:ttl") == (v, b"short-lived"), "value with a TTL not readable at once")
        c.put(b"py:no-ttl", b"forever", ttl_seconds=0)
        deadline = time.monotonic() + 10.0
        while c.get(b"py:ttl") is not None:
            check(time.monotonic() < deadline, "value with a 1 s TTL still there after 10 s")
            time.sleep(0.05)
        check(c.get(b"py:no-ttl")[1] == b"forever", "value without TTL expired")
        # Section 9: LGET of an expired value is NOT_FOUND with an empty body (no tombstone).
        got = c.lget(b"py:ttl")
        check(got is None, "LGET of an expired key: %r" % (got,))


def test_refused_client_hellos_keep_or_close_the_connection():
    """Sections 7 and 8: a client HELLO refused with BAD_REQUEST or UNSUPPORTED_VERSION leaves
    the connection usable (HELLO again works); MALFORMED closes it."""
    with connect(hello=False) as c:
        rid = c.send(d.OP_HELLO, d.hello_body(role=3))
        expect_error_then_usable(c, rid, d.OP_HELLO, "BAD_REQUEST", "HELLO with role 3")
        rid = c.send(d.OP_HELLO, d.hello_body(), aux=1)
        expect_error_then_usable(c, rid, d.OP_HELLO, "BAD_REQUEST", "HELLO with aux 1")
        rid = c.send(d.OP_HELLO, d.hello_body(token=b"t" * 257))
        expect_error_then_usable(c, rid, d.OP_HELLO, "BAD_REQUEST", "HELLO token of 257 bytes")
        rid = c.send(d.OP_HELLO, d.hello_body(version=9))
        expect_error_then_usable(c, rid, d.OP_HELLO, "UNSUPPORTED_VERSION", "HELLO version 9")
        check(c.hello()["version"] == 1, "HELLO after refused ones")
    with connect(hello=False) as c:
        rid = c.send(d.OP_HELLO, d.hello_body()[:9])
        c.flush()
        expect_closing_reply(c, rid, d.OP_HELLO, "MALFORMED", "HELLO of 9 bytes")


TESTS = [
    test_key_hash_matches_protocol_md,
    test_encoder_matches_golden_vectors,
    test_siblings_vectors_of_protocol_md,
    test_ping_without_hello,
    test_hello,
    test_shard_vectors_match_protocol_md,
    test_shard_aware_connections_are_not_forwarded,
    test_put_get_delete_round_trip,
    test_delete_of_a_missing_key_is_ok,
    test_binary_keys_values_and_edge_sizes,
    test_consistency_levels_on_one_node,
    test_100_pipelined_requests_matched_by_id,
    test_pipelined_mixed_requests,
    test_stats_is_name_value_lines,
    test_malformed_frame_closes_the_connection,
    test_oversized_frame_closes_the_connection,
    test_key_too_large_keeps_the_connection,
    test_value_too_large_keeps_the_connection,
    test_unknown_opcode_keeps_the_connection,
    test_bad_requests_keep_the_connection,
    test_peer_opcode_from_a_client_is_unauthorized,
    test_peer_hello_without_the_secret_is_refused_and_closed,
    test_unsupported_version,
    test_refused_client_hellos_keep_or_close_the_connection,
    test_ttl_expires,
    test_lget_shows_the_local_copy,
    test_cluster_and_admin_opcodes,
    test_partial_frames_byte_by_byte,
    test_largest_frame_is_read_and_answered,
    test_opcode_zero_is_unknown,
    test_ring_of_a_single_node,
    test_garbage_never_breaks_the_node,
]

TOKEN_TESTS = [
    test_token_node_refuses_requests_before_hello,
    test_token_node_checks_a_request_before_the_login,
    test_token_node_closes_on_a_wrong_token,
]


def parse_addr(s):
    host, _, port = s.rpartition(":")
    return host, int(port)


def main(argv):
    """test_client.py HOST:PORT [TOKEN_HOST:PORT TOKEN]: the second node, if given, was started
    with --client-token TOKEN and gets the handshake tests too."""
    global ADDR, TOKEN_ADDR, TOKEN
    if len(argv) not in (2, 4) or ":" not in argv[1]:
        print("usage: test_client.py HOST:PORT [TOKEN_HOST:PORT TOKEN]", file=sys.stderr)
        return 2
    ADDR = parse_addr(argv[1])
    tests = list(TESTS)
    if len(argv) == 4:
        TOKEN_ADDR = parse_addr(argv[2])
        TOKEN = argv[3].encode()
        tests += TOKEN_TESTS
    only = os.environ.get("DKV_PY_TEST")  # run one test by name, for debugging
    passed = failed = 0
    for test in tests:
        if only and test.__name__ != only:
            continue
        start = time.monotonic()
        try:
            test()
        except Failure as e:
            failed += 1
            print("FAIL %s: %s" % (test.__name__, e))
        except Exception as e:  # a crash of the client or the node is a failure, with details
            failed += 1
            print("FAIL %s: %s: %s" % (test.__name__, type(e).__name__, e))
            traceback.print_exc(limit=3)
        else:
            passed += 1
            print("ok   %s (%.2f s)" % (test.__name__, time.monotonic() - start))
        sys.stdout.flush()
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
