//! Reads from kernel memory at offsets the agent resolved at start.

use agent_common::{AF_INET, AF_INET6, IPPROTO_TCP, MAX_FIELD_OFFSET, SockState};
use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::TracePointContext};

/// Reads a `T` at `sk + off`. Offsets above [`MAX_FIELD_OFFSET`] (never produced by a sane BTF)
/// read nothing rather than wander through kernel memory.
#[inline(always)]
pub fn read<T>(sk: u64, off: u32) -> Option<T> {
    if off > MAX_FIELD_OFFSET {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel tolerates any address; a bad one returns an error.
    unsafe { bpf_probe_read_kernel((sk + off as u64) as *const T).ok() }
}

/// True for an IPv4/IPv6 TCP socket (not UDP, unix, MPTCP's meta socket, ...).
#[inline(always)]
pub fn is_inet_tcp(sk: u64) -> bool {
    let family: Option<u16> = read(sk, config!(sock.skc_family));
    let protocol: Option<u16> = read(sk, config!(sock.sk_protocol));
    matches!(family, Some(AF_INET | AF_INET6)) && protocol == Some(IPPROTO_TCP)
}

/// `sk->__sk_common.skc_state`.
#[inline(always)]
pub fn tcp_state(sk: u64) -> u32 {
    read::<u8>(sk, config!(sock.skc_state)).unwrap_or(0) as u32
}

/// Fills family, ports and addresses from `struct sock_common`.
#[inline(always)]
pub fn fill_identity(sk: u64, st: &mut SockState) {
    let family: u16 = read(sk, config!(sock.skc_family)).unwrap_or(0);
    st.family = family;
    st.lport = read::<u16>(sk, config!(sock.skc_num)).unwrap_or(0);
    st.rport = u16::from_be(read::<u16>(sk, config!(sock.skc_dport)).unwrap_or(0));
    if family == AF_INET6 {
        st.laddr = read(sk, config!(sock.skc_v6_rcv_saddr)).unwrap_or([0; 16]);
        st.raddr = read(sk, config!(sock.skc_v6_daddr)).unwrap_or([0; 16]);
    } else {
        let l: [u8; 4] = read(sk, config!(sock.skc_rcv_saddr)).unwrap_or([0; 4]);
        let r: [u8; 4] = read(sk, config!(sock.skc_daddr)).unwrap_or([0; 4]);
        st.laddr[..4].copy_from_slice(&l);
        st.raddr[..4].copy_from_slice(&r);
    }
}

/// `sock:sock_send_length` fields of a classic tracepoint record: (sk, ret, flags).
#[inline(always)]
pub fn len_args(ctx: &TracePointContext) -> Option<(u64, i32, i32)> {
    let (sk, ret, flags) = (
        config!(tp.len_sk),
        config!(tp.len_ret),
        config!(tp.len_flags),
    );
    // SAFETY: offsets come from the tracepoint's tracefs format, bounds-checked by the agent;
    // read_at goes through bpf_probe_read.
    unsafe {
        Some((
            ctx.read_at::<u64>(sk as usize).ok()?,
            ctx.read_at::<i32>(ret as usize).ok()?,
            ctx.read_at::<i32>(flags as usize).ok()?,
        ))
    }
}

/// `a - b` for TCP sequence numbers (u32, wrapping), read at two offsets of the socket.
#[inline(always)]
pub fn seq_gap(sk: u64, a: u32, b: u32) -> u64 {
    let a: u32 = read(sk, a).unwrap_or(0);
    let b: u32 = read(sk, b).unwrap_or(0);
    a.wrapping_sub(b) as u64
}

/// The data at stake on a socket: (unacknowledged, never sent, received but unread).
#[inline(always)]
pub fn at_stake(sk: u64) -> (u64, u64, u64) {
    (
        seq_gap(sk, config!(sock.tcp_write_seq), config!(sock.tcp_snd_una)),
        seq_gap(sk, config!(sock.tcp_write_seq), config!(sock.tcp_snd_nxt)),
        seq_gap(sk, config!(sock.tcp_rcv_nxt), config!(sock.tcp_copied_seq)),
    )
}

/// SO_LINGER on with a zero timeout: close() then discards the send queue with an RST.
#[inline(always)]
pub fn linger_zero(sk: u64) -> bool {
    let flags: u64 = read(sk, config!(sock.sk_flags)).unwrap_or(0);
    let bit = config!(sock.sock_linger_bit) & 63;
    let lingertime: u64 = read(sk, config!(sock.sk_lingertime)).unwrap_or(1);
    flags & (1 << bit) != 0 && lingertime == 0
}

/// `sk->sk_err` as a positive errno.
#[inline(always)]
pub fn sk_err(sk: u64) -> u32 {
    read::<i32>(sk, config!(sock.sk_err))
        .unwrap_or(0)
        .unsigned_abs()
}

/// `tcp_sock.copied_seq`: the sequence number of the next byte the process will read.
#[inline(always)]
pub fn copied_seq(sk: u64) -> u32 {
    read(sk, config!(sock.tcp_copied_seq)).unwrap_or(0)
}

/// `tcp_sock.rcv_nxt`: the sequence number of the next byte expected from the peer.
#[inline(always)]
pub fn rcv_nxt(sk: u64) -> u32 {
    read(sk, config!(sock.tcp_rcv_nxt)).unwrap_or(0)
}

/// The receive side now: (`copied_seq`, `rcv_nxt`, `bytes_received`).
#[inline(always)]
pub fn receive_side(sk: u64) -> (u32, u32, u64) {
    (
        copied_seq(sk),
        rcv_nxt(sk),
        read(sk, config!(sock.tcp_bytes_received)).unwrap_or(0),
    )
}

/// `sk->sk_lock.owned`: a process holds the socket, so the current task is the one acting on it
/// (softirq and timers only touch a socket no process holds).
#[inline(always)]
pub fn owned_by_user(sk: u64) -> bool {
    read::<i32>(sk, config!(sock.sk_lock_owned)).unwrap_or(0) != 0
}
