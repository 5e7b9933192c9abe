//! Tracking a connection: its state entry from the handshake (or adoption) to the socket's
//! destruction, who owns it, and its byte counts settled from the socket when a record is due.

use agent_common::{SockState, Start, stat};
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_jiffies64},
};
use aya_log_ebpf::debug;

use crate::{
    emit::{now, zero},
    kernel::{self, Mem},
    maps::{SCRATCH, SOCKS, bump},
    store::Store,
};

/// Records the current task as the socket's owner: its process (pid and name, the `comm` label)
/// and the thread that acted (tid and name, for the incident log). Only called where the
/// current task is the one using the socket: a send, `tcp_close`, or a state change made while
/// a process holds the socket lock (state changes in softirq or timers run with it released).
#[inline(always)]
pub fn claim(st: &mut SockState) {
    if st.tgid != 0 {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    st.tgid = (id >> 32) as u32;
    st.pid = id as u32;
    kernel::owner_names(&mut st.comm, &mut st.thread, st.pid, st.tgid);
    // SAFETY: plain helper call.
    st.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
}

/// Claims `st` for the current task if a process holds the socket's lock: the holder is the one
/// acting on it. Softirq and timers run only while no process holds it, and must not claim the
/// socket for whatever task they interrupted. Returns whether the lock was held.
#[inline(always)]
pub fn claim_if_held<M: Mem>(tp: u64, st: &mut SockState) -> bool {
    let held = kernel::owned_by_user::<M>(tp);
    if held {
        claim(st);
    }
    held
}

/// A zeroed [`SockState`] in per-CPU scratch memory, to fill and copy into its store: built on
/// the stack instead, it would push the fexit programs' call chain over the verifier's
/// 512-byte combined stack limit.
#[inline(always)]
fn fresh() -> Option<&'static mut SockState> {
    let st = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, used by one program at a time; zeroing then setting fields in
    // place builds nothing on the stack.
    unsafe {
        zero(st);
        Some(&mut *st)
    }
}

/// Starts tracking the connection `tp` (from `Mem::tcp`) from `start`. `replace` where a stale
/// state must be overwritten (see [`Store::put`]), not where a concurrent adopter on another CPU
/// may have won (its state is then used). Returns the new state if this call stored it.
#[inline(always)]
fn start_tracking<M: Mem, S: Store>(
    tp: u64,
    start: &Start,
    replace: bool,
) -> Option<&'static SockState> {
    let st = fresh()?;
    kernel::fill_identity::<M>(tp, st);
    st.begin(start, kernel::tcp_state::<M>(tp));
    let st: &SockState = st;
    if !S::put(tp, st, replace) {
        return None;
    }
    bump(stat::SOCKETS_TRACKED);
    Some(st)
}

/// The handshake completed (from `old`), in softirq: ports, addresses and the first sequence
/// number to read are final now; the current task is not the owner (the first write or the
/// close claims it). Tracking starts here for both ends, one state stored per connection: a
/// connect() that never completes is never tracked (its writes then fail with ENOTCONN on a
/// socket that never connected, which is not a loss).
#[inline(always)]
pub fn on_established<M: Mem, S: Store>(sk: u64, old: u32) {
    // MPTCP's meta socket also reports state changes here; only its TCP subflows are tracked.
    let Some(tp) = M::tcp(sk) else {
        return;
    };
    if !M::is_inet_tcp(tp) {
        return;
    }
    let start = Start::established(old, kernel::copied_seq::<M>(tp), kernel::write_seq::<M>(tp));
    if let Some(start) = start {
        start_tracking::<M, S>(tp, &start, true);
    }
}

/// The socket's state, adopting a live TCP socket the agent has not seen open
/// ([`Start::at_send`]). `sent`: what the send being handled queued.
#[inline(always)]
pub fn lookup_or_adopt<M: Mem, S: Store, C: EbpfContext>(
    ctx: &C,
    sk: u64,
    sent: u32,
) -> Option<*mut SockState> {
    if let Some(st) = S::get(sk) {
        return Some(st);
    }
    let tp = M::tcp(sk)?;
    if !M::is_inet_tcp(tp) {
        return None;
    }
    let state = kernel::tcp_state::<M>(tp);
    if !Start::adoptable_at_send(state) {
        return None;
    }
    let start = Start::at_send(
        kernel::copied_seq::<M>(tp),
        kernel::write_seq::<M>(tp),
        sent,
    );
    if let Some(st) = start_tracking::<M, S>(tp, &start, false) {
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
    S::get(sk)
}

/// A connection the agent never saw established is closing: adopted if it never sent a data
/// byte in its life ([`Start::unwritten`]).
#[inline(always)]
pub fn adopt_unwritten<M: Mem, S: Store>(tp: u64) -> Option<*mut SockState> {
    if !M::is_inet_tcp(tp) {
        return None;
    }
    let (_, rcv_nxt, received) = kernel::receive_side::<M>(tp);
    let start = Start::unwritten(
        M::read::<u32>(tp, config!(sock.tcp_data_segs_out))?,
        rcv_nxt,
        received,
        M::read::<u32>(tp, config!(sock.tcp_snd_una)).unwrap_or(0),
    )?;
    start_tracking::<M, S>(tp, &start, false);
    S::get(tp)
}

/// `tcp:tcp_destroy_sock`: the socket is freed, and its state in the LRU map with it (state in
/// socket-local storage goes with the socket, and this hook is not attached).
pub fn on_destroy(sk: u64) {
    skip_if_empty!();
    if SOCKS.remove(sk).is_ok() {
        bump(stat::SOCKETS_RELEASED);
    }
}

/// Fills a state's byte counts from the socket now (see `SockState::settle`). `fin_queued`: the
/// socket's FIN is in `write_seq` (not yet at the state change that a close makes, before
/// the kernel queues the FIN).
#[inline(always)]
pub fn settle<M: Mem>(tp: u64, st: &mut SockState, fin_queued: bool) {
    let (copied, rcv_nxt, received) = kernel::receive_side::<M>(tp);
    st.settle(
        copied,
        rcv_nxt,
        received,
        kernel::write_seq::<M>(tp),
        fin_queued,
    );
}

/// When the last input arrived: `icsk_ack.lrcvtime` (jiffies) placed on the monotonic clock.
#[inline(always)]
pub fn last_input_ns<M: Mem>(tp: u64) -> u64 {
    match since_last_input_ns::<M>(tp) {
        Some(ago) => now().saturating_sub(ago),
        None => 0,
    }
}

/// How long ago the last input arrived, at the kernel's tick resolution: `icsk_ack.lrcvtime`
/// against the jiffies now, no clock read.
#[inline(always)]
pub fn since_last_input_ns<M: Mem>(tp: u64) -> Option<u64> {
    let lrcv = M::read::<u32>(tp, config!(sock.icsk_lrcvtime))?;
    // SAFETY: plain helper call.
    let jiffies = unsafe { bpf_jiffies64() } as u32;
    Some(jiffies.wrapping_sub(lrcv) as u64 * config!(jiffy_ns) as u64)
}
