"""A dkv client in Python 3, standard library only, written from protocol.md alone.

It speaks protocol version 1: length-prefixed frames, an optional HELLO, request ids chosen by
the client and replies matched by id (they may arrive out of order), GET/PUT/DELETE with a
consistency level and TTL, PING, STATS and CLUSTER, and the stable key hash that places keys on
ring partitions.

    from dkv_client import Client
    with Client("127.0.0.1", 7379) as c:
        c.hello()
        version = c.put(b"hello", b"world")
        print(c.get(b"hello"))            # (version, b"world")
        ids = [c.send_get(b"k%d" % i) for i in range(100)]
        replies = c.collect(ids)          # {id: Reply}, whatever order they came in

Siblings mode (section 19, a cluster started with `kvd --conflicts siblings`): writes to one
key that did not see each other are all kept, as siblings. A causal read returns them with an
opaque context; a write that carries the context supersedes exactly what that read saw:

    ctx, siblings = c.get_siblings(b"cart")     # (context bytes, [(version, value), ...])
    c.put(b"cart", b"milk,eggs", context=ctx)  # replaces exactly those siblings
    ctx, _ = c.get_siblings(b"cart")
    c.delete(b"cart", context=ctx)

Such a cluster coordinates a PUT or DELETE at a replica of the key (section 19.2): send writes
through RingClient, which routes them to an owner.

Shard-aware connections (section 11.2): a node lands a connection from source port P on its
shard (P div 2) mod K, so one connection per shard, each sending only the keys its shard owns, saves
the node a hop between shards per request:

    with ShardedClient("127.0.0.1", 7379) as s:
        s.put(b"hello", b"world")         # on the connection of shard_of(b"hello", K)

Frame layout (protocol.md section 2), all integers big-endian:

    | length u32 | op u8 | aux u8 | request id u32 | body (length - 6 bytes) |
"""

import errno
import random
import socket
import struct
import time

PROTOCOL_VERSION = 1
PORT_DEFAULT = 7379

# Section 10 of protocol.md.
KEY_SIZE_MAX = 1024
VALUE_SIZE_MAX = 1024 * 1024
FRAME_SIZE_MAX = 1053708
FRAME_HEADER_SIZE = 10
TOKEN_SIZE_MAX = 256
TTL_SECONDS_MAX = 315360000
PARTITION_COUNT = 256
# Section 19.1: the longest causal context a node accepts.
CONTEXT_SIZE_MAX = 643

# Opcodes (section 3).
OP_HELLO = 0x01
OP_PING = 0x02
OP_GET = 0x03
OP_PUT = 0x04
OP_DELETE = 0x05
OP_STATS = 0x06
OP_CLUSTER = 0x07
OP_LGET = 0x08
OP_ANTI_ENTROPY = 0x09
OP_COMPACT = 0x0A
OP_RING = 0x0C
PEER_OP_FIRST = 0x20
PEER_OP_LAST = 0x3F
RESPONSE_BIT = 0x80
OP_CONNECTION_ERROR = 0x80

# Roles in HELLO (section 8).
ROLE_CLIENT = 1
ROLE_PEER = 2

# Consistency levels: bits 0-1 of aux (section 5).
DEFAULT = 0
ONE = 1
QUORUM = 2
ALL = 3
# Bit 2 of aux of GET, PUT and DELETE: the causal protocol of siblings mode (sections 5, 19).
FLAG_CAUSAL = 0x04

# Status codes (section 7).
STATUS_NAMES = {
    0x00: "OK",
    0x01: "NOT_FOUND",
    0x10: "MALFORMED",
    0x11: "FRAME_TOO_LARGE",
    0x12: "UNKNOWN_OPCODE",
    0x13: "BAD_REQUEST",
    0x14: "KEY_TOO_LARGE",
    0x15: "VALUE_TOO_LARGE",
    0x16: "UNSUPPORTED_VERSION",
    0x17: "UNAUTHORIZED",
    0x20: "OVERLOADED",
    0x21: "UNAVAILABLE",
    0x22: "TIMEOUT",
    0x23: "TOO_MANY_CONNECTIONS",
    0x24: "STORAGE_ERROR",
    0x25: "SHUTTING_DOWN",
    0x26: "CLOCK_OFFSET",
    0x27: "MAYBE_APPLIED",
    0x28: "SIBLINGS",
    0x29: "TOO_MANY_SIBLINGS",
    0x30: "INTERNAL",
}
STATUS = {name: code for code, name in STATUS_NAMES.items()}
OK = STATUS["OK"]
NOT_FOUND = STATUS["NOT_FOUND"]
# After a frame with one of these statuses the node closes the connection (section 6).
CLOSING_STATUSES = (
    STATUS["MALFORMED"],
    STATUS["FRAME_TOO_LARGE"],
    STATUS["TOO_MANY_CONNECTIONS"],
    STATUS["SHUTTING_DOWN"],
)

_MASK64 = (1 << 64) - 1


def status_name(code):
    """The name of a status code, or STATUS_0xNN for a code this client does not know."""
    return STATUS_NAMES.get(code, "STATUS_0x%02x" % code)


# ---- key hash (section 11) -------------------------------------------------------------------


def key_hash(key):
    """The stable 64-bit hash of a key: FNV-1a 64, then MurmurHash3's fmix64."""
    h = 0xCBF29CE484222325
    for b in bytes(key):
        h ^= b
        h = (h * 0x00000100000001B3) & _MASK64
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _MASK64
    h ^= h >> 33
    return h


def partition_of(key):
    """The ring partition of a key: the top 8 bits of its hash (0..=255)."""
    return key_hash(key) >> 56


def shard_of(key, shards):
    """The shard that owns a key on a node with `shards` shards (section 11)."""
    return partition_of(key) % shards


# ---- shard-aware connections (section 11.2) --------------------------------------------------

# Local ports a shard-aware connection binds: the IANA dynamic range.
LOCAL_PORT_MIN = 49152
LOCAL_PORT_MAX = 65535
# Candidate ports tried for one connection before giving up.
BIND_ATTEMPTS_MAX = 64


def shard_of_port(port, shards):
    """The shard a connection from source port `port` lands on: (port div 2) mod shards."""
    return (port >> 1) % shards


def connect_to_shard(host, port, shard, shards, timeout=10.0):
    """A TCP socket to host:port from a local port P with (P div 2) mod shards == shard, so
    that it lands on that shard. Ports that are taken (EADDRINUSE on bind, EADDRNOTAVAIL or
    EADDRINUSE on connect) are skipped for the next candidate."""
    if not 0 <= shard < shards:
        raise ValueError("shard %d of %d" % (shard, shards))
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    # Ports come in pairs 2q, 2q+1 that land on shard q mod shards.
    low, high = LOCAL_PORT_MIN // 2, LOCAL_PORT_MAX // 2
    first = low + (shard - low) % shards
    count = (high - first) // shards + 1
    n = random.randrange(2 * count)
    last = None
    for _ in range(BIND_ATTEMPTS_MAX):
        local = 2 * (first + (n // 2 % count) * shards) + n % 2
        n += 1
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", local))
            sock.connect(addr)
            return sock
        except OSError as e:
            sock.close()
            if e.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                raise
            last = e
    raise last


# ---- versions (section 12) -------------------------------------------------------------------


def version_parts(version):
    """(physical ms since the Unix epoch, logical counter, node id) of a version."""
    return version >> 22, (version >> 10) & 0xFFF, version & 0x3FF


# ---- frames (section 2) ----------------------------------------------------------------------


class FrameTooLarge(Exception):
    """A frame declared a length above FRAME_SIZE_MAX."""


class FrameTooShort(Exception):
    """A frame declared a length below 6."""


def encode_frame(op, aux, request_id, body=b""):
    """One whole frame."""
    length = 6 + len(body)
    if length > FRAME_SIZE_MAX:
        raise ValueError("frame of %d bytes exceeds FRAME_SIZE_MAX" % length)
    return struct.pack(">IBBI", length, op, aux, request_id) + bytes(body)


def parse_frame(buf):
    """(op, aux, id, body, total size) of the frame at the front of buf, or None when more
    bytes are needed. Decides from the 4 length bytes alone whether the length is valid."""
    if len(buf) < 4:
        return None
    (length,) = struct.unpack_from(">I", buf, 0)
    if length > FRAME_SIZE_MAX:
        raise FrameTooLarge("declared frame length %d > %d" % (length, FRAME_SIZE_MAX))
    if length < 6:
        raise FrameTooShort("declared frame length %d < 6" % length)
    if len(buf) < 4 + length:
        return None
    op, aux, request_id = struct.unpack_from(">BBI", buf, 4)
    return op, aux, request_id, bytes(buf[FRAME_HEADER_SIZE : 4 + length]), 4 + length


def key_body(key):
    """| key len u16 | key |"""
    key = bytes(key)
    return struct.pack(">H", len(key)) + key


def put_body(key, value, ttl_seconds=0):
    """| key len u16 | key | ttl seconds u32 | value |"""
    return key_body(key) + struct.pack(">I", ttl_seconds) + bytes(value)


def _context_field(context):
    """| ctx len u16 | context | (section 19.1)."""
    context = bytes(context)
    if len(context) > 0xFFFF:
        raise ValueError("a context of %d bytes cannot be encoded" % len(context))
    return struct.pack(">H", len(context)) + context


def causal_put_body(key, value, ttl_seconds=0, context=b""):
    """| key len u16 | key | ttl seconds u32 | ctx len u16 | context | value | (section 19.1)"""
    return key_body(key) + struct.pack(">I", ttl_seconds) + _context_field(context) + bytes(value)


def causal_delete_body(key, context=b""):
    """| key len u16 | key | ctx len u16 | context | (section 19.1)"""
    return key_body(key) + _context_field(context)


def parse_causal_get_reply(body, found):
    """The body of a causal GET's OK (`found`) or NOT_FOUND reply (section 19.1) as
    (context, [(version, value), ...]); raises ProtocolError on anything out of layout."""
    body = bytes(body)
    if len(body) < 2:
        raise ProtocolError("causal GET reply of %d bytes" % len(body))
    (n,) = struct.unpack_from(">H", body, 0)
    at = 2 + n
    if at > len(body):
        raise ProtocolError("causal GET reply ends inside its context")
    context = body[2:at]
    siblings = []
    if found:
        if at + 2 > len(body):
            raise ProtocolError("causal GET reply ends before its sibling count")
        (count,) = struct.unpack_from(">H", body, at)
        at += 2
        for _ in range(count):
            if at + 12 > len(body):
                raise ProtocolError("causal GET reply ends inside a sibling")
            version, length = struct.unpack_from(">QI", body, at)
            at += 12
            if at + length > len(body):
                raise ProtocolError("causal GET reply ends inside a value")
            siblings.append((version, body[at: at + length]))
            at += length
        if not siblings:
            raise ProtocolError("causal GET reply OK without a sibling")
    if at != len(body):
        raise ProtocolError("%d bytes after the causal GET reply" % (len(body) - at))
    return context, siblings


def get_siblings_result(reply):
    """A causal GET reply as (context, [(version, value), ...]): no sibling for NOT_FOUND
    (which still carries the context); raises DkvError for an error status."""
    if reply.status == NOT_FOUND:
        return parse_causal_get_reply(reply.body, False)
    return parse_causal_get_reply(_ok(reply).body, True)


def write_request(key, value=None, ttl_seconds=0, consistency=DEFAULT, context=None):
    """(op, body, aux) of a PUT (`value` given) or a DELETE (`value` None): with the causal
    flag and the context when `context` is not None (siblings mode, section 19)."""
    if context is None:
        if value is None:
            return OP_DELETE, key_body(key), consistency
        return OP_PUT, put_body(key, value, ttl_seconds), consistency
    aux = consistency | FLAG_CAUSAL
    if value is None:
        return OP_DELETE, causal_delete_body(key, context), aux
    return OP_PUT, causal_put_body(key, value, ttl_seconds, context), aux


def hello_body(version=PROTOCOL_VERSION, role=ROLE_CLIENT, node_id=0, token=b""):
    """| version u16 | role u8 | reserved u8 | node id u32 | token len u16 | token |"""
    token = bytes(token)
    return struct.pack(">HBBIH", version, role, 0, node_id, len(token)) + token


def parse_text(body):
    """STATS/CLUSTER text (section 14) as an ordered list of (name, value) pairs."""
    pairs = []
    for line in body.decode("utf-8").splitlines():
        if not line:
            continue
        name, _, value = line.partition(" ")
        pairs.append((name, value))
    return pairs


# ---- replies and errors ----------------------------------------------------------------------


class Reply:
    """One reply frame: op (response bit cleared; 0 for a connection-level error), status, id,
    body."""

    __slots__ = ("op", "status", "id", "body", "raw_op")

    def __init__(self, raw_op, status, request_id, body):
        self.raw_op = raw_op
        self.op = raw_op & ~RESPONSE_BIT & 0xFF
        self.status = status
        self.id = request_id
        self.body = body

    @property
    def status_name(self):
        return status_name(self.status)

    @property
    def closes_connection(self):
        return self.status in CLOSING_STATUSES

    @property
    def is_connection_error(self):
        """A connection-level error frame (op 0x80, id 0, a closing status)."""
        return self.raw_op == OP_CONNECTION_ERROR and self.closes_connection

    def message(self):
        return self.body.decode("utf-8", errors="replace")

    def version(self):
        """The leading version u64 of a GET/PUT/DELETE/LGET OK reply."""
        if len(self.body) < 8:
            raise ProtocolError("%s reply without a version" % self.status_name)
        return struct.unpack_from(">Q", self.body, 0)[0]

    def __repr__(self):
        return "Reply(op=0x%02x, status=%s, id=%d, body=%r)" % (
            self.raw_op,
            self.status_name,
            self.id,
            self.body[:64],
        )


class DkvError(Exception):
    """An error status from the node: .status (code), .name and .message."""

    def __init__(self, status, message, reply=None):
        self.status = status
        self.name = status_name(status)
        self.message = message
        self.reply = reply
        Exception.__init__(self, "%s %s" % (self.name, message))


class ConnectionClosed(Exception):
    """The connection is gone: closed by the node (after .reply, a connection-level error
    frame, if it sent one) or by the network."""

    def __init__(self, why, reply=None):
        self.reply = reply
        Exception.__init__(self, why)


class ProtocolError(Exception):
    """The node sent something this client does not understand."""


# ---- the client ------------------------------------------------------------------------------


class Client:
    """A connection to one node. Not thread-safe. Requests may be pipelined: the send_*
    methods queue a request and return its id, collect() waits for replies by id."""

    def __init__(self, host="127.0.0.1", port=PORT_DEFAULT, timeout=10.0, shard=None, shards=None):
        """With `shard` and `shards` (the node's shard count, from a HELLO reply), connect
        from a local port that lands on that shard (section 11.2)."""
        if shard is None:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        else:
            self.sock = connect_to_shard(host, port, shard, shards, timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.pending = {}  # id -> Reply received before anyone asked for it
        self.next_id = 1
        self.closed = None  # the ConnectionClosed that ended the connection, if any

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # -- sending --

    def _take_id(self):
        # Ids are never 0: connection-level error frames carry id 0 (section 4).
        request_id = self.next_id
        self.next_id = (self.next_id % 0xFFFFFFFF) + 1
        return request_id

    def send(self, op, body=b"", aux=0, request_id=None):
        """Queue one request; returns its id. Sent by flush() or the next wait/collect."""
        if request_id is None:
            request_id = self._take_id()
        self.outbuf += encode_frame(op, aux, request_id, body)
        return request_id

    def send_raw(self, data):
        """Queue raw bytes (for tests of bad input)."""
        self.outbuf += data

    def flush(self):
        if self.outbuf:
            try:
                self.sock.sendall(self.outbuf)
            except OSError as e:
                raise self._closed("send failed: %s" % e)
            self.outbuf.clear()

    def send_ping(self):
        return self.send(OP_PING)

    def send_get(self, key, consistency=DEFAULT):
        return self.send(OP_GET, key_body(key), aux=consistency)

    def send_put(self, key, value, ttl_seconds=0, consistency=DEFAULT, context=None):
        op, body, aux = write_request(key, value, ttl_seconds, consistency, context)
        return self.send(op, body, aux=aux)

    def send_delete(self, key, consistency=DEFAULT, context=None):
        op, body, aux = write_request(key, None, 0, consistency, context)
        return self.send(op, body, aux=aux)

    def send_get_siblings(self, key, consistency=DEFAULT):
        return self.send(OP_GET, key_body(key), aux=consistency | FLAG_CAUSAL)

    # -- receiving --

    def _closed(self, why, reply=None):
        if self.closed is None:
            self.closed = ConnectionClosed(why, reply)
        return self.closed

    def read_frame(self):
        """The next reply frame off the wire, whatever its id. Raises ConnectionClosed at end
        of stream, socket.timeout if nothing arrives in time."""
        self.flush()
        while True:
            try:
                parsed = parse_frame(self.inbuf)
            except (FrameTooLarge, FrameTooShort) as e:
                raise ProtocolError("bad frame from the node: %s" % e)
            if parsed is not None:
                op, aux, request_id, body, n = parsed
                del self.inbuf[:n]
                if not op & RESPONSE_BIT:
                    raise ProtocolError("request frame op 0x%02x from the node" % op)
                return Reply(op, aux, request_id, body)
            if self.closed is not None:
                raise self.closed
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise
            except OSError as e:
                raise self._closed("connection error: %s" % e)
            if not chunk:
                raise self._closed("connection closed by the node")
            self.inbuf += chunk

    def wait(self, request_id):
        """The reply to request_id. Replies to other ids that arrive first are kept for
        later. A connection-level error frame raises ConnectionClosed carrying it."""
        while request_id not in self.pending:
            reply = self.read_frame()
            if reply.closes_connection:
                raise self._closed("%s %s" % (reply.status_name, reply.message()), reply)
            if reply.id in self.pending:
                raise ProtocolError("two replies to request id %d" % reply.id)
            self.pending[reply.id] = reply
        return self.pending.pop(request_id)

    def collect(self, ids):
        """{id: Reply} for every id in ids, in whatever order the replies come."""
        return {request_id: self.wait(request_id) for request_id in ids}

    def call(self, op, body=b"", aux=0):
        """Send one request and wait for its reply."""
        return self.wait(self.send(op, body, aux))

    # -- typed requests --

    def hello(self, token=b"", version=PROTOCOL_VERSION, role=ROLE_CLIENT, node_id=0):
        """HELLO: returns {version, node_id, shard, shards} from the node's reply."""
        reply = _ok(self.call(OP_HELLO, hello_body(version, role, node_id, token)))
        if len(reply.body) != 10:
            raise ProtocolError("HELLO reply of %d bytes" % len(reply.body))
        v, node_id, shard, shards = struct.unpack(">HIHH", reply.body)
        return {"version": v, "node_id": node_id, "shard": shard, "shards": shards}

    def ping(self):
        _ok(self.call(OP_PING))

    def get(self, key, consistency=DEFAULT):
        """(version, value), or None if the key has no live value."""
        return get_result(self.call(OP_GET, key_body(key), consistency))

    def put(self, key, value, ttl_seconds=0, consistency=DEFAULT, context=None):
        """The version given to the write. With `context` (siblings mode, bytes from
        get_siblings, b"" for none) the write supersedes exactly what that read saw; without
        it, a siblings-mode node keeps the value beside the siblings already there."""
        op, body, aux = write_request(key, value, ttl_seconds, consistency, context)
        return _ok(self.call(op, body, aux)).version()

    def delete(self, key, consistency=DEFAULT, context=None):
        """The version of the tombstone. Siblings mode needs `context` (from get_siblings):
        the delete removes what that read saw; a plain DELETE is BAD_REQUEST there."""
        op, body, aux = write_request(key, None, 0, consistency, context)
        return _ok(self.call(op, body, aux)).version()

    def get_siblings(self, key, consistency=DEFAULT):
        """Siblings mode: (context, [(version, value), ...]), every live sibling in the node's
        stable order; no sibling when the key has no live value."""
        return get_siblings_result(self.call(OP_GET, key_body(key), consistency | FLAG_CAUSAL))

    def lget(self, key):
        """This node's local copy of a key: (version, expires at ms or 0, value) for a live
        value, ("tombstone", version) for a deleted one, None if the node has nothing."""
        reply = self.call(OP_LGET, key_body(key))
        if reply.status == NOT_FOUND:
            if len(reply.body) == 8:
                return ("tombstone", struct.unpack(">Q", reply.body)[0])
            return None
        reply = _ok(reply)
        if len(reply.body) < 16:
            raise ProtocolError("LGET reply of %d bytes" % len(reply.body))
        version, expires_at_ms = struct.unpack_from(">QQ", reply.body, 0)
        return version, expires_at_ms, reply.body[16:]

    def stats(self):
        """STATS as an ordered list of (name, value) pairs."""
        return parse_text(_ok(self.call(OP_STATS)).body)

    def cluster(self):
        """CLUSTER as an ordered list of (name, value) pairs."""
        return parse_text(_ok(self.call(OP_CLUSTER)).body)

    def ring(self):
        """RING: the ring map (a RingMap, section 11.1)."""
        return parse_ring_map(_ok(self.call(OP_RING)).body)


class ShardedClient:
    """One connection per shard of a node, each landed on its shard (section 11.2); requests
    for a key go on the connection of the shard that owns it, so none is forwarded between
    shards. `landed` lists each connection's HELLO reply (its `shard` should be its index)."""

    def __init__(self, host="127.0.0.1", port=PORT_DEFAULT, token=b"", timeout=10.0):
        with Client(host, port, timeout) as probe:
            self.shards = probe.hello(token)["shards"]
        self.conns = []
        self.landed = []
        try:
            for shard in range(self.shards):
                c = Client(host, port, timeout, shard=shard, shards=self.shards)
                self.conns.append(c)
                self.landed.append(c.hello(token))
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for c in self.conns:
            c.close()

    def for_key(self, key):
        """The connection for requests about `key`."""
        return self.conns[shard_of(key, self.shards)]

    def get(self, key, consistency=DEFAULT):
        return self.for_key(key).get(key, consistency)

    def put(self, key, value, ttl_seconds=0, consistency=DEFAULT, context=None):
        return self.for_key(key).put(key, value, ttl_seconds, consistency, context)

    def delete(self, key, consistency=DEFAULT, context=None):
        return self.for_key(key).delete(key, consistency, context)

    def get_siblings(self, key, consistency=DEFAULT):
        return self.for_key(key).get_siblings(key, consistency)


def _ok(reply):
    if reply.status != OK:
        raise DkvError(reply.status, reply.message(), reply)
    return reply


def get_result(reply):
    """A GET reply as (version, value), None for NOT_FOUND; raises DkvError otherwise."""
    if reply.status == NOT_FOUND:
        return None
    reply = _ok(reply)
    return reply.version(), reply.body[8:]


# ---- routing by the ring map (section 11.1) ----------------------------------------------------

RING_FORMAT = 1
REPLICAS_MAX = 7
CLUSTER_NODES_MAX = 64


class RingMap:
    """The ring map of a RING reply: version, replicas (N), nodes (ids, ascending),
    owners[p] (N node ids, primary first) and addrs {id: "host:port" or "" = the replying node}."""

    def __init__(self, version, replicas, nodes, owners, addrs):
        self.version = version
        self.replicas = replicas
        self.nodes = nodes
        self.owners = owners
        self.addrs = addrs

    def owners_of_key(self, key):
        return self.owners[partition_of(key)]


def parse_ring_map(body):
    """A RING reply body as a RingMap; raises ProtocolError on anything out of layout."""
    body = bytes(body)
    if len(body) < 14:
        raise ProtocolError("ring map of %d bytes" % len(body))
    fmt, n, k, reserved, version, partitions = struct.unpack_from(">BBBBQH", body, 0)
    if fmt != RING_FORMAT or reserved != 0:
        raise ProtocolError("ring map format %d, reserved %d" % (fmt, reserved))
    if not (1 <= n <= REPLICAS_MAX and n <= k <= CLUSTER_NODES_MAX):
        raise ProtocolError("ring map with N=%d on %d nodes" % (n, k))
    if partitions != PARTITION_COUNT:
        raise ProtocolError("ring map of %d partitions" % partitions)
    at = 14
    if len(body) < at + 4 * k + PARTITION_COUNT * n + 1:
        raise ProtocolError("short ring map")
    nodes = list(struct.unpack_from(">%dI" % k, body, at))
    if any(a >= b for a, b in zip(nodes, nodes[1:])):
        raise ProtocolError("ring node ids not ascending")
    at += 4 * k
    owners = []
    for p in range(PARTITION_COUNT):
        row = body[at + p * n: at + (p + 1) * n]
        if any(i >= k for i in row) or len(set(row)) != n:
            raise ProtocolError("partition %d: bad owners %r" % (p, list(row)))
        owners.append([nodes[i] for i in row])
    at += PARTITION_COUNT * n
    count = body[at]
    at += 1
    addrs = {}
    last = None
    for _ in range(count):
        if at + 5 > len(body):
            raise ProtocolError("ring map ends inside an address entry")
        node_id, length = struct.unpack_from(">IB", body, at)
        at += 5
        if at + length > len(body) or (last is not None and node_id <= last):
            raise ProtocolError("bad address entry of node %d" % node_id)
        addrs[node_id] = body[at: at + length].decode("utf-8")
        at += length
        last = node_id
    if at != len(body):
        raise ProtocolError("%d bytes after the ring map" % (len(body) - at))
    missing = [x for x in nodes if x not in addrs]
    if missing:
        raise ProtocolError("ring nodes without an address: %r" % missing)
    return RingMap(version, n, nodes, owners, addrs)


def _split_addr(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class RingClient:
    """A client of a whole cluster: fetches the ring map from any node it is given, keeps one
    connection per node, and sends each request to the first reachable owner of its key
    (primary first). The map is fetched again when a connection fails, and when its version
    changed (checked every REFRESH_S seconds). Counts where requests went: to_owner, to_other."""

    REFRESH_S = 1.0

    def __init__(self, seeds, token=b"", timeout=10.0):
        self.seeds = list(seeds)  # ["host:port", ...]
        self.token = token
        self.timeout = timeout
        self.conns = {}  # node id -> Client
        self.to_owner = 0
        self.to_other = 0
        self.maps_fetched = 0
        self.refresh()

    def close(self):
        for c in self.conns.values():
            c.close()
        self.conns = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _connect(self, addr):
        c = Client(*_split_addr(addr), timeout=self.timeout)
        c.hello(self.token)
        return c

    def refresh(self):
        """Fetch the map from the seeds, then from the nodes of the current map."""
        sources = list(self.seeds)
        if getattr(self, "map", None) is not None:
            sources += [self._addr(n) for n in self.map.nodes]
        last = None
        for addr in sources:
            try:
                c = self._connect(addr)
                try:
                    self.map = c.ring()
                finally:
                    c.close()
                self.source = addr
                self.maps_fetched += 1
                self.checked_at = time.monotonic()
                return self.map
            except (OSError, ConnectionClosed, DkvError, ProtocolError) as e:
                last = e
        raise ConnectionClosed("no node answered RING: %s" % last)

    def _addr(self, node_id):
        addr = self.map.addrs.get(node_id, "")
        return addr if addr else self.source

    def _conn(self, node_id):
        c = self.conns.get(node_id)
        if c is None:
            c = self._connect(self._addr(node_id))
            self.conns[node_id] = c
        return c

    def _check_version(self):
        if time.monotonic() - self.checked_at < self.REFRESH_S or not self.conns:
            return
        self.checked_at = time.monotonic()
        node_id, c = sorted(self.conns.items())[0]
        try:
            m = c.ring()
        except (OSError, ConnectionClosed, ProtocolError):
            self.conns.pop(node_id).close()
            return
        if m.version != self.map.version:
            self.map = m
            self.maps_fetched += 1

    def call(self, op, key, body, aux=0):
        """Send a request about `key` to an owner (or, if none is reachable, any node)."""
        self._check_version()
        owners = self.map.owners_of_key(key)
        others = [n for n in self.map.nodes if n not in owners]
        last = None
        for node_id in list(owners) + others:
            try:
                reply = self._conn(node_id).call(op, body, aux)
            except (OSError, ConnectionClosed) as e:
                c = self.conns.pop(node_id, None)
                if c is not None:
                    c.close()
                last = e
                try:
                    self.refresh()
                except ConnectionClosed:
                    pass
                continue
            if node_id in owners:
                self.to_owner += 1
            else:
                self.to_other += 1
            return reply
        raise ConnectionClosed("no node reachable for the key: %s" % last)

    def get(self, key, consistency=DEFAULT):
        return get_result(self.call(OP_GET, key, key_body(key), consistency))

    def put(self, key, value, ttl_seconds=0, consistency=DEFAULT, context=None):
        op, body, aux = write_request(key, value, ttl_seconds, consistency, context)
        return _ok(self.call(op, key, body, aux)).version()

    def delete(self, key, consistency=DEFAULT, context=None):
        op, body, aux = write_request(key, None, 0, consistency, context)
        return _ok(self.call(op, key, body, aux)).version()

    def get_siblings(self, key, consistency=DEFAULT):
        reply = self.call(OP_GET, key, key_body(key), consistency | FLAG_CAUSAL)
        return get_siblings_result(reply)
