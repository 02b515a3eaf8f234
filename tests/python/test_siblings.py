#!/usr/bin/env python3
"""Siblings mode (protocol.md section 19) against a running cluster, through dkv_client.py alone.

    python3 tests/python/test_siblings.py 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003

The nodes must form one cluster started with `kvd --conflicts siblings` in which every node is
a replica of every key (N = the node count; `tests/python_client.rs` starts 3 nodes with
N = 3), so that a write may go through any of them. Each test uses keys of its own. Prints one
line per test and `N passed, M failed`; exits non-zero on any failure.
"""

import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dkv_client as d  # noqa: E402

TIMEOUT_S = 10.0
# Section 19.2: a write may not leave more siblings than this.
SIBLINGS_MAX = 32
ADDRS = []  # ["host:port", ...], set in main
RUN = "%d" % (time.time() * 1000)  # keys of this run: a rerun on the same cluster starts afresh


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def key(name):
    return ("py-siblings:%s:%s" % (RUN, name)).encode()


def node(i):
    """A connection to the i-th node given, after HELLO (its node id in .node_id)."""
    host, _, port = ADDRS[i].rpartition(":")
    c = d.Client(host, int(port), timeout=TIMEOUT_S)
    c.node_id = c.hello()["node_id"]
    return c


def expect_status(status, what, call, *args, **kwargs):
    try:
        got = call(*args, **kwargs)
    except d.DkvError as e:
        check(e.status == d.STATUS[status], "%s: %s instead of %s" % (what, e, status))
        return e
    raise Failure("%s: answered %r instead of %s" % (what, got, status))


def values(siblings):
    return sorted(v for _, v in siblings)


def test_the_cluster_is_in_siblings_mode():
    for i in range(len(ADDRS)):
        with node(i) as c:
            stats = dict(c.stats())
            check(stats.get("conflicts_siblings") == "1", "%s: STATS %r" % (ADDRS[i], stats))
            m = c.ring()
            check(m.replicas == len(ADDRS), "N=%d on %d nodes" % (m.replicas, len(ADDRS)))


def test_blind_writes_through_two_nodes_are_both_kept():
    k = key("cart")
    with node(0) as a, node(1) as b, node(2) as c:
        # Neither writer read the key: a PUT without context (plain) and one with the causal
        # flag and an empty context mean the same.
        a.put(k, b"milk")
        b.put(k, b"eggs", context=b"")
        ctx, siblings = c.get_siblings(k, consistency=d.QUORUM)
        check(values(siblings) == [b"eggs", b"milk"], "siblings %r" % siblings)
        check(ctx[:1] == b"\x01" and len(ctx) == 3 + 10 * 2, "a context of 2 nodes: %r" % ctx)
        # Versions name the coordinating node (section 12): one each.
        nodes = sorted(d.version_parts(v)[2] for v, _ in siblings)
        check(nodes == sorted([a.node_id, b.node_id]), "coordinators %r" % nodes)
        # The order is stable: every node answers the same.
        check(a.get_siblings(k, consistency=d.ALL) == (ctx, siblings), "node 1 disagrees")

        # A plain GET cannot carry two values: SIBLINGS, and the connection stays usable.
        e = expect_status("SIBLINGS", "plain GET of two siblings", c.get, k, consistency=d.QUORUM)
        check(e.status == 0x28, "SIBLINGS is 0x28")
        c.ping()

        # A PUT with the context supersedes exactly those two.
        version = a.put(k, b"milk,eggs", consistency=d.QUORUM, context=ctx)
        ctx2, siblings = b.get_siblings(k, consistency=d.QUORUM)
        check(siblings == [(version, b"milk,eggs")], "after the resolving PUT: %r" % siblings)
        check(c.get(k, consistency=d.QUORUM) == (version, b"milk,eggs"), "plain GET of one")

        # A DELETE with the next context removes it; NOT_FOUND still carries the context.
        c.delete(k, consistency=d.QUORUM, context=ctx2)
        ctx3, siblings = a.get_siblings(k, consistency=d.QUORUM)
        check(siblings == [], "after the DELETE: %r" % siblings)
        check(len(ctx3) > 3, "NOT_FOUND carries the context: %r" % ctx3)
        check(b.get(k, consistency=d.QUORUM) is None, "plain GET after the DELETE")


def test_a_write_supersedes_only_what_its_read_saw():
    k = key("stale")
    with node(0) as a, node(1) as b:
        a.put(k, b"v1")
        ctx, siblings = a.get_siblings(k, consistency=d.QUORUM)
        check(values(siblings) == [b"v1"], "%r" % siblings)
        # A concurrent writer that did not read: kept beside whatever comes next.
        b.put(k, b"v2")
        a.put(k, b"v3", context=ctx)
        _, siblings = b.get_siblings(k, consistency=d.QUORUM)
        check(values(siblings) == [b"v2", b"v3"], "v1 superseded, v2 kept: %r" % siblings)
        # A DELETE with the old context removes nothing it did not see.
        a.delete(k, context=ctx)
        _, siblings = b.get_siblings(k, consistency=d.QUORUM)
        check(values(siblings) == [b"v2", b"v3"], "the stale DELETE removed %r" % siblings)


def test_a_plain_delete_is_refused():
    k = key("plain-delete")
    with node(0) as a:
        a.put(k, b"x")
        expect_status("BAD_REQUEST", "DELETE without the causal flag", a.delete, k)
        check(a.get(k)[1] == b"x", "the value is still there")
        a.ping()


def test_too_many_siblings_is_refused_and_resolved():
    k = key("crowd")
    with node(0) as a:
        for i in range(SIBLINGS_MAX):
            a.put(k, b"w%d" % i)
        expect_status("TOO_MANY_SIBLINGS", "write %d" % (SIBLINGS_MAX + 1), a.put, k, b"one more")
        ctx, siblings = a.get_siblings(k, consistency=d.QUORUM)
        check(len(siblings) == SIBLINGS_MAX, "%d siblings kept" % len(siblings))
        check(b"one more" not in values(siblings), "the refused write was not written")
        a.put(k, b"merged", context=ctx)
        _, siblings = a.get_siblings(k, consistency=d.QUORUM)
        check(values(siblings) == [b"merged"], "%r" % siblings)


def test_ring_client_routes_causal_requests():
    k = key("ring")
    with d.RingClient(ADDRS) as rc:
        rc.put(k, b"a")
        rc.put(k, b"b", context=b"")
        ctx, siblings = rc.get_siblings(k, consistency=d.QUORUM)
        check(values(siblings) == [b"a", b"b"], "%r" % siblings)
        rc.put(k, b"ab", context=ctx, consistency=d.QUORUM)
        ctx, siblings = rc.get_siblings(k)
        check(values(siblings) == [b"ab"], "%r" % siblings)
        rc.delete(k, context=ctx)
        check(rc.get_siblings(k)[1] == [], "deleted")
        check(rc.to_other == 0 and rc.to_owner == 7, "to_owner %d to_other %d"
              % (rc.to_owner, rc.to_other))


def test_pipelined_causal_requests_are_matched_by_id():
    keys = [key("pipe:%d" % i) for i in range(50)]
    with node(0) as a, node(1) as b:
        ids = [a.send_put(k, b"x") for k in keys] + [b.send_put(k, b"y", context=b"") for k in keys]
        for i, r in list(a.collect(ids[:50]).items()) + list(b.collect(ids[50:]).items()):
            check(r.status == d.OK, "PUT %d: %r" % (i, r))
        ids = [a.send_get_siblings(k, consistency=d.QUORUM) for k in keys]
        replies = a.collect(ids)
        deletes = []
        for k, i in zip(keys, ids):
            ctx, siblings = d.get_siblings_result(replies[i])
            check(values(siblings) == [b"x", b"y"], "%r: %r" % (k, siblings))
            deletes.append(a.send_delete(k, consistency=d.QUORUM, context=ctx))
        for r in a.collect(deletes).values():
            check(r.status == d.OK, "DELETE %r" % r)
        for k in keys:
            check(b.get_siblings(k, consistency=d.QUORUM)[1] == [], "%r deleted" % k)


TESTS = [
    test_the_cluster_is_in_siblings_mode,
    test_blind_writes_through_two_nodes_are_both_kept,
    test_a_write_supersedes_only_what_its_read_saw,
    test_a_plain_delete_is_refused,
    test_too_many_siblings_is_refused_and_resolved,
    test_ring_client_routes_causal_requests,
    test_pipelined_causal_requests_are_matched_by_id,
]


def main(argv):
    ADDRS.extend(argv[1:])
    if len(ADDRS) < 3 or not all(":" in a for a in ADDRS):
        print("usage: test_siblings.py HOST:PORT HOST:PORT HOST:PORT ...", file=sys.stderr)
        return 2
    passed = failed = 0
    for test in TESTS:
        start = time.monotonic()
        try:
            test()
        except Failure as e:
            failed += 1
            print("FAIL %s: %s" % (test.__name__, e))
        except Exception as e:  # a crash of the client or a node is a failure, with details
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
