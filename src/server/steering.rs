//! Shard-aware connections: a connection from TCP source port `P` lands on shard
//! `(P div 2) mod K`.
//!
//! Every shard has its own `SO_REUSEPORT` listener on the node's one port. Left alone, the
//! kernel spreads connections over them by a hash of the 4-tuple, so a client cannot know
//! which shard it reaches, and most of its requests cross to the owning shard through the
//! mailboxes (a thread hop each way). This module attaches a classic BPF program to the
//! reuseport group (`SO_ATTACH_REUSEPORT_CBPF`) that picks the listener by the client's
//! source port instead, as ScyllaDB's shard-aware port does; a client that binds a local port
//! `P` with `(P div 2) mod K == s` before connecting reaches shard `s` (protocol.md § 11.2).
//!
//! Why `P div 2` and not ScyllaDB's `P mod K`: ScyllaDB steers on a port of its own, while
//! dkv has one port for every client and peer, so the rule must also spread connections whose
//! port the kernel chose. Linux's `connect` takes ephemeral ports of one parity first (the
//! parity of the range's low end, even by default, leaving the other to `bind`): with
//! `P mod 2` every such connection of a 2-shard node would land on shard 0. Bit 1 and up of
//! those ports are spread evenly.
//!
//! How the kernel runs it (net/core/sock_reuseport.c, `run_bpf_filter`): the program sees the
//! SYN with its data pointer moved past the TCP header, so offsets from 0 are payload; the IP
//! and TCP headers are read relative to `SKF_NET_OFF` (the network header). The value it
//! returns is an index into the group's sockets, which are in the order the listeners called
//! `listen` — [`super::bind_listeners`] does that in shard order. An index at or past the group
//! size makes the kernel fall back to its hash, so a packet the program does not understand
//! (not IPv4, not IPv6) still reaches some shard, and forwarding keeps it correct.
//!
//! The program (K = shard count):
//!
//! ```text
//! 0  ldb  [net+0]         A = first byte of the IP header
//! 1  rsh  #4              A = IP version
//! 2  jeq  #6, v6, next
//! 3  jeq  #4, next, other
//! 4  ldxb 4*([net+0]&0xf) X = IPv4 header length
//! 5  ldh  [x+net+0]       A = TCP source port
//! 6  ja   mod
//! 7  v6: ldh [net+40]     A = TCP source port (fixed 40-byte IPv6 header; a SYN with
//!                         extension headers reads other bytes and only lands on some shard)
//! 8  mod: rsh #1          A = port div 2
//! 9  mod #K
//! 10 ret  A
//! 11 other: ret #0xffffffff  (out of range: the kernel's own hash decides)
//! ```
//!
//! IPv4-mapped connections to a dual-stack IPv6 listener arrive as IPv4 packets, so one
//! program serves IPv4 and IPv6 listeners alike.

use std::io;
use std::os::fd::AsRawFd;

/// `SO_ATTACH_REUSEPORT_CBPF` from asm-generic/socket.h (x86, arm, riscv and most others;
/// the `libc` crate only names it for Android). parisc and sparc number it differently; on
/// them attaching is not tried (see [`attach`]).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Offset of the TCP source port in an IPv6 packet without extension headers.
const IPV6_HEADER_SIZE: u32 = 40;

/// What the program returns for a packet it does not understand: past any group size, so the
/// kernel falls back to hashing.
const INDEX_NONE: u32 = u32::MAX;

fn insn(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The classic BPF program that returns `(source port div 2) mod shards` (layout in the module
/// docs),
/// the rule of [`crate::shard_port::shard_of_port`].
pub fn program(shards: usize) -> Vec<libc::sock_filter> {
    use libc::{
        BPF_A, BPF_ABS, BPF_ALU, BPF_B, BPF_H, BPF_IND, BPF_JA, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD,
        BPF_LDX, BPF_MOD, BPF_MSH, BPF_RET, BPF_RSH,
    };
    assert!(shards >= 1 && shards <= u16::MAX as usize);
    let net = libc::SKF_NET_OFF as u32; // negative offsets are two's complement in `k`
    vec![
        insn(BPF_LD | BPF_B | BPF_ABS, 0, 0, net),
        insn(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 4),
        insn(BPF_JMP | BPF_JEQ | BPF_K, 4, 0, 6),
        insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 7, 4),
        insn(BPF_LDX | BPF_B | BPF_MSH, 0, 0, net),
        insn(BPF_LD | BPF_H | BPF_IND, 0, 0, net),
        insn(BPF_JMP | BPF_JA, 0, 0, 1),
        insn(
            BPF_LD | BPF_H | BPF_ABS,
            0,
            0,
            net.wrapping_add(IPV6_HEADER_SIZE),
        ),
        insn(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 1),
        insn(BPF_ALU | BPF_MOD | BPF_K, 0, 0, shards as u32),
        insn(BPF_RET | BPF_A, 0, 0, 0),
        insn(BPF_RET | BPF_K, 0, 0, INDEX_NONE),
    ]
}

/// Attach the steering program to the reuseport group `listener` belongs to (any member will
/// do: the program is the group's). The listeners must already be listening, in shard order.
#[cfg(not(any(target_arch = "sparc64", target_arch = "sparc")))]
pub fn attach(listener: &std::net::TcpListener, shards: usize) -> io::Result<()> {
    let mut code = program(shards);
    let prog = libc::sock_fprog {
        // The program has a fixed 12 instructions.
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `code`, which outlives the call (the kernel copies it); the
    // option length is the size of the struct passed; the fd is a live socket we own.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Not tried where the option has another number.
#[cfg(any(target_arch = "sparc64", target_arch = "sparc"))]
pub fn attach(_listener: &std::net::TcpListener, _shards: usize) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "SO_ATTACH_REUSEPORT_CBPF is not wired up for this architecture",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard_port::shard_of_port;

    /// A classic BPF interpreter for the instructions [`program`] uses, over a packet whose
    /// network header starts at byte 0 (what `SKF_NET_OFF` addresses). `None`: the kernel
    /// would abort the program (a read out of bounds), which also means "no index".
    fn run(prog: &[libc::sock_filter], packet: &[u8]) -> Option<u32> {
        let net = libc::SKF_NET_OFF as u32;
        let load = |off: u32, size: usize| -> Option<u32> {
            let at = off.wrapping_sub(net) as usize;
            let bytes = packet.get(at..at + size)?;
            Some(bytes.iter().fold(0u32, |v, &b| v << 8 | b as u32))
        };
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        for _ in 0..prog.len() * 2 {
            let i = prog.get(pc)?;
            pc += 1;
            let code = i.code as u32;
            match code {
                c if c == libc::BPF_LD | libc::BPF_B | libc::BPF_ABS => a = load(i.k, 1)?,
                c if c == libc::BPF_LD | libc::BPF_H | libc::BPF_ABS => a = load(i.k, 2)?,
                c if c == libc::BPF_LD | libc::BPF_H | libc::BPF_IND => {
                    a = load(i.k.wrapping_add(x), 2)?
                }
                c if c == libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH => {
                    x = 4 * (load(i.k, 1)? & 0xf)
                }
                c if c == libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K => a >>= i.k,
                c if c == libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K => a %= i.k,
                c if c == libc::BPF_JMP | libc::BPF_JA => pc += i.k as usize,
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += if a == i.k { i.jt } else { i.jf } as usize
                }
                c if c == libc::BPF_RET | libc::BPF_A => return Some(a),
                c if c == libc::BPF_RET | libc::BPF_K => return Some(i.k),
                other => panic!("instruction 0x{other:x} not in the test interpreter"),
            }
        }
        panic!("program did not return");
    }

    fn ipv4_syn(source_port: u16, options_words: u8) -> Vec<u8> {
        let mut p = vec![0x40 | (5 + options_words), 0, 0, 0];
        p.resize(20 + 4 * options_words as usize, 0xAA);
        p.extend_from_slice(&source_port.to_be_bytes());
        p.extend_from_slice(&7379u16.to_be_bytes());
        p.resize(p.len() + 16, 0);
        p
    }

    fn ipv6_syn(source_port: u16) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.resize(40, 0xBB);
        p.extend_from_slice(&source_port.to_be_bytes());
        p.extend_from_slice(&7379u16.to_be_bytes());
        p.resize(p.len() + 16, 0);
        p
    }

    #[test]
    fn picks_source_port_mod_shards() {
        for shards in [1usize, 2, 3, 4, 7, 64] {
            let prog = program(shards);
            for port in [1024u16, 40000, 49152, 49153, 61234, 65535] {
                let want = Some(shard_of_port(port, shards) as u32);
                assert_eq!(run(&prog, &ipv4_syn(port, 0)), want, "v4 {port} {shards}");
                assert_eq!(run(&prog, &ipv4_syn(port, 3)), want, "v4+opts {port}");
                assert_eq!(run(&prog, &ipv6_syn(port)), want, "v6 {port} {shards}");
            }
        }
    }

    #[test]
    fn unknown_packets_fall_back_to_the_kernel_hash() {
        let prog = program(4);
        let mut odd = ipv4_syn(50000, 0);
        odd[0] = 0x50;
        assert_eq!(run(&prog, &odd), Some(INDEX_NONE));
        // Too short to hold the port: the kernel aborts the program (index 0 there, which
        // is still a valid shard; here `None`).
        assert_eq!(run(&prog, &[0x45, 0, 0]), None);
    }

    #[test]
    fn rule_is_half_the_port_mod_shards() {
        assert_eq!(shard_of_port(49152, 2), 0);
        assert_eq!(shard_of_port(49153, 2), 0);
        assert_eq!(shard_of_port(49154, 2), 1);
        assert_eq!(shard_of_port(49159, 4), 3);
        assert_eq!(shard_of_port(12345, 1), 0);
    }
}
