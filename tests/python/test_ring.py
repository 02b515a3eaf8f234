#!/usr/bin/env python3
"""Routing by the ring map, against a running cluster, through dkv_client.py alone.

    python3 tests/python/test_ring.py 127.0.0.1:7001 127.0.0.1:7002 ...

The nodes must form one cluster whose N is below its node count (so that owning a key means
something); `tests/python_client.rs` starts 4 nodes with N = 2. The test fetches the ring map
(RING, protocol.md section 11.1) from the first address (after a dead seed, to show the
fallback), writes and reads keys through RingClient, and checks that at least 99% of the
requests went to an owner of their key, counted by the client and by the nodes' STATS
(`key_requests_owned`, `key_requests_not_owned`). Prints `N passed, M failed`.
"""

import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dkv_client as d  # noqa: E402

KEYS = 2000
OWNER_SHARE_MIN = 0.99
DEAD_SEED = "127.0.0.1:1"


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def node_stats(addr):
    host, _, port = addr.rpartition(":")
    with d.Client(host, int(port)) as c:
        return dict(c.stats())


def key_request_counts(addrs):
    owned = not_owned = 0
    for a in addrs:
        s = node_stats(a)
        owned += int(s.get("key_requests_owned", "0"))
        not_owned += int(s.get("key_requests_not_owned", "0"))
    return owned, not_owned


def test_ring_map_is_consistent(addrs):
    maps = []
    for a in addrs:
        host, _, port = a.rpartition(":")
        with d.Client(host, int(port)) as c:
            maps.append(c.ring())
    m = maps[0]
    check(m.version >= 1, "version %d" % m.version)
    check(len(m.nodes) == len(addrs), "%d nodes in the map, %d started" % (len(m.nodes), len(addrs)))
    check(sorted(m.addrs.values()) == sorted(addrs), "addresses %r" % m.addrs)
    check(m.replicas < len(m.nodes), "N=%d on %d nodes: every node owns everything" % (m.replicas, len(m.nodes)))
    for other in maps[1:]:
        check(other.owners == m.owners and other.version == m.version, "nodes disagree on the ring")
    # Balanced: every node is primary of its share of partitions, within one.
    prim = {n: 0 for n in m.nodes}
    for owners in m.owners:
        prim[owners[0]] += 1
    check(max(prim.values()) - min(prim.values()) <= 1, "primaries %r" % prim)


def test_requests_go_to_an_owner(addrs):
    before_owned, before_not = key_request_counts(addrs)
    with d.RingClient([DEAD_SEED] + addrs) as rc:
        check(rc.source == addrs[0], "map fetched from %s" % rc.source)
        keys = [b"ring-key:%d" % i for i in range(KEYS)]
        for i, k in enumerate(keys):
            rc.put(k, b"value-%d" % i, consistency=d.QUORUM)
        for i, k in enumerate(keys):
            got = rc.get(k, consistency=d.QUORUM)
            check(got is not None and got[1] == b"value-%d" % i, "GET %r: %r" % (k, got))
        for k in keys[: KEYS // 4]:
            rc.delete(k, consistency=d.QUORUM)
        total = rc.to_owner + rc.to_other
        check(total == KEYS * 2 + KEYS // 4, "%d requests counted" % total)
        share = rc.to_owner / total
        print("     client: %d of %d requests to an owner (%.2f%%), %d maps fetched"
              % (rc.to_owner, total, 100 * share, rc.maps_fetched))
        check(share >= OWNER_SHARE_MIN, "only %.2f%% to an owner" % (100 * share))
        # Primaries take the load: every node got some requests.
        used = set(rc.conns)
        check(used == set(rc.map.nodes), "connections to %r only" % sorted(used))
    owned, not_owned = key_request_counts(addrs)
    owned -= before_owned
    not_owned -= before_not
    print("     nodes: %d key requests for owned keys, %d for others" % (owned, not_owned))
    check(owned + not_owned >= total, "nodes counted %d requests" % (owned + not_owned))
    check(owned / (owned + not_owned) >= OWNER_SHARE_MIN,
          "nodes saw %d of %d requests for keys they do not own" % (not_owned, owned + not_owned))


def test_a_bad_ring_map_is_refused(addrs):
    host, _, port = addrs[0].rpartition(":")
    with d.Client(host, int(port)) as c:
        body = d._ok(c.call(d.OP_RING)).body
    d.parse_ring_map(body)
    for bad in (body[:-1], body + b"\x00", body[:13], b"\x02" + body[1:]):
        try:
            d.parse_ring_map(bad)
        except d.ProtocolError:
            continue
        raise Failure("a mangled ring map was accepted")


TESTS = [test_ring_map_is_consistent, test_requests_go_to_an_owner, test_a_bad_ring_map_is_refused]


def main(argv):
    addrs = argv[1:]
    if len(addrs) < 2 or not all(":" in a for a in addrs):
        print("usage: test_ring.py HOST:PORT HOST:PORT ...", file=sys.stderr)
        return 2
    passed = failed = 0
    for test in TESTS:
        start = time.monotonic()
        try:
            test(addrs)
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
