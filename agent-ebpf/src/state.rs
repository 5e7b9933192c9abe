//! Per-socket bookkeeping shared by every probe mode's entry points.

use agent_common::{
    EventHeader, MSG_PEEK, SockState, TeardownEvent, flag, kind, role, stat, tcp_state,
};
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    },
};
use aya_log_ebpf::debug;

use crate::{EVENTS, SOCKS, STATS, kernel};

#[inline(always)]
fn now() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn bump(idx: u32) {
    if let Some(v) = STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *v += 1 };
    }
}

/// Records the current task as the socket's owner. Only called from send/recv, which run in the
/// process's own context (unlike state changes, which often run in softirq).
#[inline(always)]
fn claim(st: &mut SockState) {
    if st.tgid != 0 {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    st.tgid = (id >> 32) as u32;
    st.pid = id as u32;
    st.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // SAFETY: plain helper call.
    st.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
}

/// The socket's state, adopting a live TCP socket the agent has not seen open (role unknown).
#[inline(always)]
fn lookup_or_adopt<C: EbpfContext>(ctx: &C, sk: u64) -> Option<*mut SockState> {
    if let Some(st) = SOCKS.get_ptr_mut(sk) {
        return Some(st);
    }
    if !kernel::is_inet_tcp(sk) {
        return None;
    }
    let state = kernel::tcp_state(sk);
    if state != tcp_state::ESTABLISHED && state != tcp_state::CLOSE_WAIT {
        return None;
    }
    let mut st = SockState {
        role: role::UNKNOWN,
        ..SockState::default()
    };
    kernel::fill_identity(sk, &mut st);
    // BPF_NOEXIST: a concurrent adopter on another CPU wins, we then use its entry.
    if SOCKS.insert(sk, st, 1).is_ok() {
        bump(stat::SOCKETS_TRACKED);
        // Once per socket that predates the agent: rare, and useful when a role looks wrong.
        debug!(
            ctx,
            "adopted a TCP socket opened before the agent: {}:{} -> :{}, state {}",
            st.family,
            st.lport,
            st.rport,
            state
        );
    }
    SOCKS.get_ptr_mut(sk)
}

pub fn on_recv<C: EbpfContext>(ctx: &C, sk: u64, ret: i32, flags: i32) {
    // 0 (EOF) and errors (EAGAIN, ...) are not input; a peek consumes nothing.
    if ret <= 0 || flags & MSG_PEEK != 0 {
        return;
    }
    let Some(st) = lookup_or_adopt(ctx, sk) else {
        return;
    };
    // SAFETY: a live map value; concurrent updaters can only make the counters approximate.
    let st = unsafe { &mut *st };
    let t = now();
    claim(st);
    st.bytes_in += ret as u64;
    if st.first_in_ns == 0 {
        st.first_in_ns = t;
    }
    st.last_in_ns = t;
}

pub fn on_send<C: EbpfContext>(ctx: &C, sk: u64, ret: i32) {
    if ret <= 0 {
        return;
    }
    let Some(st) = lookup_or_adopt(ctx, sk) else {
        return;
    };
    // SAFETY: see on_recv.
    let st = unsafe { &mut *st };
    let t = now();
    claim(st);
    st.bytes_out += ret as u64;
    st.bytes_in_at_last_out = st.bytes_in;
    if st.first_out_ns == 0 {
        st.first_out_ns = t;
    }
    st.last_out_ns = t;
}

pub fn on_state(sk: u64, old: u32, new: u32) {
    if new == tcp_state::ESTABLISHED {
        let role = match old {
            tcp_state::SYN_RECV => role::SERVER,
            tcp_state::SYN_SENT => role::CLIENT,
            _ => return,
        };
        // MPTCP's meta socket also reports state changes here; its TCP subflows are the sockets
        // that carry bytes through sock_{send,recv}_length only when MPTCP fell back to TCP.
        if !kernel::is_inet_tcp(sk) {
            return;
        }
        let mut st = SockState {
            role,
            ..SockState::default()
        };
        kernel::fill_identity(sk, &mut st);
        // BPF_ANY: a stale entry for a recycled `struct sock` address is replaced.
        if SOCKS.insert(sk, st, 0).is_ok() {
            bump(stat::SOCKETS_TRACKED);
        }
        return;
    }
    let Some(st) = SOCKS.get_ptr_mut(sk) else {
        return;
    };
    // SAFETY: see on_recv.
    let st = unsafe { &mut *st };
    if new == tcp_state::CLOSE_WAIT {
        st.flags |= flag::PEER_FIN;
        return;
    }
    let open = old == tcp_state::ESTABLISHED || old == tcp_state::CLOSE_WAIT;
    let closing =
        new == tcp_state::FIN_WAIT1 || new == tcp_state::LAST_ACK || new == tcp_state::CLOSE;
    if !open || !closing || st.flags & flag::LOCAL_CLOSE != 0 {
        return;
    }
    st.flags |= flag::LOCAL_CLOSE;
    if st.may_owe_answer() {
        emit_teardown(sk, st, old, new);
    }
}

pub fn on_receive_reset(sk: u64) {
    if let Some(st) = SOCKS.get_ptr_mut(sk) {
        // SAFETY: see on_recv.
        unsafe { (*st).flags |= flag::PEER_RESET };
    }
}

pub fn on_destroy(sk: u64) {
    if SOCKS.remove(sk).is_ok() {
        bump(stat::SOCKETS_RELEASED);
    }
}

#[inline(always)]
fn emit_teardown(sk: u64, st: &SockState, old: u32, new: u32) {
    let Some(mut entry) = EVENTS.reserve::<TeardownEvent>(0) else {
        bump(stat::EVENTS_DROPPED);
        return;
    };
    let ev = TeardownEvent {
        header: EventHeader {
            kind: kind::TEARDOWN,
            len: core::mem::size_of::<TeardownEvent>() as u32,
            ts_ns: now(),
        },
        sock: *st,
        sk,
        closer_tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        oldstate: old,
        newstate: new,
        _pad: 0,
    };
    entry.write(ev);
    entry.submit(0);
    bump(stat::EVENTS_SENT);
}
