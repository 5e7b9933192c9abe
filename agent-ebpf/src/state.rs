//! Per-socket bookkeeping shared by every probe mode's entry points.

use agent_common::{
    AbortEvent, EXPLAIN_PORTS, EventHeader, GoDeadline, GoLoss, Head, NO_REASON, SIZE_UNKNOWN,
    SockState, TeardownEvent, WriteErrorEvent, errno, flag, kind, role, stat, tcp_state, trigger,
};
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_jiffies64, bpf_ktime_get_ns,
    },
};
use aya_log_ebpf::debug;

use crate::{
    EVENTS, SCRATCH, SOCKS, STATS, go,
    kernel::{self, Mem},
};

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn bump(idx: u32) {
    if let Some(v) = STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *v += 1 };
    }
}

/// Records the current task as the socket's owner: its process (pid and name, the `comm` label)
/// and the thread that acted (tid and name, for the incident log). Only called where the
/// current task is the one using the socket: a send, `tcp_close`, or a state change made while
/// a process holds the socket lock (state changes in softirq or timers run with it released).
#[inline(always)]
fn claim(st: &mut SockState) {
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

/// Zeroes `*p` (a record or state, a whole number of aligned words) with one 8-byte store per
/// word: `write_bytes` would call the target's byte-at-a-time `memset`, 128 iterations for
/// every connection tracked.
#[inline(always)]
fn zero<T>(p: *mut T) {
    let words = p.cast::<u64>();
    for i in 0..core::mem::size_of::<T>() / 8 {
        // SAFETY: `p` is an aligned T, a whole number of words long (the wire structs have no
        // implicit padding and 8-byte alignment). Volatile, so that the loop is not turned back
        // into a memset call.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

const _: () = assert!(core::mem::size_of::<SockState>().is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<GoDeadline>().is_multiple_of(8));

/// Claims `st` for the current task if a process holds the socket's lock: the holder is the one
/// acting on it. Softirq and timers run only while no process holds it, and must not claim the
/// socket for whatever task they interrupted. Returns whether the lock was held.
#[inline(always)]
fn claim_if_held<M: Mem>(tp: u64, st: &mut SockState) -> bool {
    let held = kernel::owned_by_user::<M>(tp);
    if held {
        claim(st);
    }
    held
}

/// A zeroed [`SockState`] in per-CPU scratch memory, to fill and copy into [`SOCKS`]. Built on
/// the stack instead, its 128 bytes pushed the fexit programs' call chain over the verifier's
/// 512-byte combined stack limit.
#[inline(always)]
fn fresh(role: u8) -> Option<&'static mut SockState> {
    let st = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, used by one program at a time; zeroing then setting fields in
    // place builds nothing on the stack.
    unsafe {
        zero(st);
        (*st).role = role;
        Some(&mut *st)
    }
}

/// `SOCKS.insert` flags.
const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;

/// Starts tracking the established connection `tp` (from `Mem::tcp`), in `role`, its reads
/// counted from `copied_at_start` and its writes from `write_at_start`. Only established
/// connections are ever tracked, so the SYN is never taken for unacknowledged data. `map_flags` is `BPF_ANY` where a stale entry for a recycled
/// `struct sock` address must be replaced, `BPF_NOEXIST` where a concurrent adopter on another
/// CPU may have won (its entry is then used). Returns the new state if this call inserted it.
#[inline(always)]
fn start_tracking<M: Mem>(
    tp: u64,
    role: u8,
    copied_at_start: u32,
    write_at_start: u32,
    map_flags: u64,
) -> Option<&'static SockState> {
    let st = fresh(role)?;
    kernel::fill_identity::<M>(tp, st);
    st.copied_at_start = copied_at_start;
    st.write_at_start = write_at_start;
    // A socket adopted after the peer's FIN: the state change that would have said so is past.
    if kernel::tcp_state::<M>(tp) == tcp_state::CLOSE_WAIT {
        st.flags |= flag::PEER_FIN;
    }
    let st: &SockState = st;
    if SOCKS.insert(tp, st, map_flags).is_err() {
        return None;
    }
    bump(stat::SOCKETS_TRACKED);
    Some(st)
}

/// The socket's state, adopting a live TCP socket the agent has not seen open (role unknown).
/// `sent`: what the send being handled queued (it counts as the adopted socket's first output).
#[inline(always)]
fn lookup_or_adopt<M: Mem, C: EbpfContext>(ctx: &C, sk: u64, sent: u32) -> Option<*mut SockState> {
    if let Some(st) = SOCKS.get_ptr_mut(sk) {
        return Some(st);
    }
    let tp = M::tcp(sk)?;
    if !M::is_inet_tcp(tp) {
        return None;
    }
    let state = kernel::tcp_state::<M>(tp);
    if state != tcp_state::ESTABLISHED && state != tcp_state::CLOSE_WAIT {
        return None;
    }
    let copied = kernel::copied_seq::<M>(tp);
    let written = kernel::write_seq::<M>(tp).wrapping_sub(sent);
    if let Some(st) = start_tracking::<M>(tp, role::UNKNOWN, copied, written, BPF_NOEXIST) {
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

/// A send on `sk` returned `ret` (bytes queued or -errno). `attempted` is the size asked for, or
/// [`SIZE_UNKNOWN`] (function probes know it, `sock:sock_send_length` does not).
///
/// A plain integer, not an `Option`: passing a constant `None` to a function the compiler keeps
/// out of line leaves the payload register unset, and the verifier rejects reading it.
pub fn on_send<M: Mem, C: EbpfContext>(ctx: &C, sk: u64, ret: i32, attempted: u64) {
    skip_if_empty!();
    if ret < 0 {
        let e = ret.unsigned_abs();
        if e == errno::EPIPE || e == errno::ECONNRESET || e == errno::ENOTCONN {
            on_write_error::<M>(sk, e, attempted);
        }
        return;
    }
    if ret > 0 {
        record_write::<M, C>(ctx, sk, ret as u32, ret as u32);
    }
}

/// What a send of `len` bytes on `sk` leaves in its state: the owner, where the process's
/// reading stood, and what the message was (an answer, a goodbye). `queued` is what this send
/// queued, if that is in `write_seq` already (0 at a send's entry). Returns what it replaced,
/// when it recorded anything.
///
/// Nothing is stored per write that the socket itself keeps (bytes written: `write_seq`): a store
/// on every send dirties the map value's cache line, which the other CPU then has to fetch back
/// (entries share lines with their neighbours).
#[inline(always)]
fn record_write<M: Mem, C: EbpfContext>(ctx: &C, sk: u64, queued: u32, len: u32) -> Option<Undo> {
    // SAFETY: a live map value; concurrent updaters can only make the counters approximate.
    let st = unsafe { &mut *lookup_or_adopt::<M, C>(ctx, sk, queued)? };
    claim(st);
    // Where the process's reading stood at this write: input read after it is unanswered.
    // (Gating this read on `rcv_nxt` to spare a stream of writes was measured and made them
    // slower: that field's cache line is the one the acknowledgements keep writing.)
    if !st.send_needs_read_position() {
        return None;
    }
    let tp = M::tcp(sk)?;
    let undo = Undo {
        copied_at_last_out: st.copied_at_last_out,
        copied_at_goodbye: st.copied_at_goodbye,
        flags: st.flags,
        _pad: 0,
    };
    // The message's first bytes, only where its kind depends on them: once per connection, and
    // for the small messages of a few protocols. Two words, not an array: zeroing an array is
    // a call to the target's byte-at-a-time memset.
    let mut head = [0u64; 2];
    if st.send_needs_peek(len) {
        // SAFETY: two u64s are HEAD_LEN bytes.
        kernel::peek_send(len, unsafe { &mut *head.as_mut_ptr().cast::<Head>() });
    }
    // SAFETY: as above.
    let head = unsafe { &*head.as_ptr().cast::<Head>() };
    st.record_send(kernel::copied_seq::<M>(tp), len, head);
    Some(undo)
}

/// What [`on_send_entry`] replaced, to put back with [`undo_send`] if the send fails.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Undo {
    copied_at_last_out: u32,
    copied_at_goodbye: u32,
    flags: u16,
    _pad: u16,
}

impl Undo {
    /// Nothing to undo.
    pub const NONE: Self = Self {
        copied_at_last_out: 0,
        copied_at_goodbye: 0,
        flags: 0,
        _pad: 0,
    };
}

/// kprobe mode: a send of `size` bytes starts on `sk`, in the caller's context. What
/// [`on_send`] does for a send that succeeds ([`record_write`]) is done here, at the entry,
/// which a kprobe never misses. A kretprobe can miss a return: the kernel runs a bounded number
/// of instances at once, and a send blocked on a slow reader holds one; a missed response would
/// then leave the request looking unanswered. Returns what it replaced, for [`undo_send`] if
/// the send fails.
pub fn on_send_entry<M: Mem, C: EbpfContext>(ctx: &C, sk: u64, size: u64) -> Option<Undo> {
    skip_if_empty!(None);
    if size == 0 {
        return None;
    }
    let len = if size > u32::MAX as u64 {
        u32::MAX
    } else {
        size as u32
    };
    record_write::<M, C>(ctx, sk, 0, len)
}

/// The send [`on_send_entry`] recorded failed: it wrote nothing, so the read position, the
/// goodbye and the first-write flags go back to what they were.
pub fn undo_send(sk: u64, undo: Undo) {
    skip_if_empty!();
    if let Some(st) = SOCKS.get_ptr_mut(sk) {
        // SAFETY: see on_send.
        let st = unsafe { &mut *st };
        let mask = flag::SENT | flag::PEER_FIRST | flag::GOODBYE_SENT;
        st.copied_at_last_out = undo.copied_at_last_out;
        st.copied_at_goodbye = undo.copied_at_goodbye;
        st.flags = (st.flags & !mask) | (undo.flags & mask);
    }
}

/// The process closes `sk` (fentry/kprobe `tcp_close`, in the caller's context). The teardown
/// itself is judged at the state change this close causes, as in every mode; this records that
/// close() (not shutdown()) started it, and who called it. A socket the agent does not track is
/// left alone: adopting it here, at its current read position, would take what it read before
/// for answered; the state change adopts it as it must ([`adopt_unwritten`]).
pub fn on_close<M: Mem>(sk: u64) {
    skip_if_empty!();
    let Some(st) = SOCKS.get_ptr_mut(sk) else {
        return;
    };
    // SAFETY: see on_send.
    let st = unsafe { &mut *st };
    claim(st);
    st.flags |= flag::CLOSE_CALLED;
}

pub fn on_state<M: Mem>(sk: u64, old: u32, new: u32) {
    skip_if_empty!();
    match new {
        tcp_state::ESTABLISHED => on_established::<M>(sk, old),
        tcp_state::CLOSE_WAIT => {
            if let Some(st) = SOCKS.get_ptr_mut(sk) {
                // SAFETY: see on_send.
                unsafe { (*st).flags |= flag::PEER_FIN };
            }
        }
        tcp_state::FIN_WAIT1 | tcp_state::LAST_ACK | tcp_state::CLOSE => {
            if let Some(tp) = M::tcp(sk) {
                on_closing::<M>(tp, old, new);
            }
        }
        // The peer's FIN crossed ours. Rare, and it matters only where a teardown was reported.
        tcp_state::CLOSING => on_simultaneous_close(sk, old, new),
        // SYN_SENT, SYN_RECV, FIN_WAIT2, TIME_WAIT, LISTEN: nothing to learn, not even
        // a lookup (a short connection goes through ten state changes).
        _ => {}
    }
}

/// The handshake completed, in softirq: ports, addresses and the first sequence number to read
/// are final now; the current task is not the owner (the first write or the close claims it).
/// Tracking starts here for both ends, one map insert per connection: a connect() that never
/// completes is never tracked (its writes then fail with ENOTCONN on a socket that never
/// connected, which is not a loss).
#[inline(always)]
fn on_established<M: Mem>(sk: u64, old: u32) {
    let role = match old {
        tcp_state::SYN_RECV => role::SERVER,
        tcp_state::SYN_SENT => role::CLIENT,
        _ => return,
    };
    // MPTCP's meta socket also reports state changes here; only its TCP subflows are tracked.
    let Some(tp) = M::tcp(sk) else {
        return;
    };
    if !M::is_inet_tcp(tp) {
        return;
    }
    start_tracking::<M>(
        tp,
        role,
        kernel::copied_seq::<M>(tp),
        kernel::write_seq::<M>(tp),
        BPF_ANY,
    );
}

/// The connection is going away: FIN_WAIT1 and LAST_ACK are a local close() or shutdown();
/// CLOSE is an abortive close, a timeout, a reset, or the end of an orderly close.
#[inline(always)]
fn on_closing<M: Mem>(tp: u64, old: u32, new: u32) {
    let open = old == tcp_state::ESTABLISHED || old == tcp_state::CLOSE_WAIT;
    // Retransmission/keepalive timeouts set sk_err and go to CLOSE without an RST of their own
    // (tcp_write_err -> tcp_done_with_error). Anything else that reaches CLOSE from a closing
    // state is the orderly end: no lookup.
    let failed = new == tcp_state::CLOSE && kernel::sk_err::<M>(tp) != 0;
    if !open && !failed {
        return;
    }
    let st = match SOCKS.get_ptr_mut(tp) {
        Some(st) => st,
        None if open => match adopt_unwritten::<M>(tp) {
            Some(st) => st,
            None => return,
        },
        None => return,
    };
    // SAFETY: see on_send.
    let st = unsafe { &mut *st };
    // A peer RST was already reported by tcp_receive_reset.
    if failed && st.flags & flag::PEER_RESET == 0 {
        abort::<M>(tp, st, trigger::ERROR, NO_REASON);
    }
    if !open || st.flags & flag::LOCAL_CLOSE != 0 {
        return;
    }
    st.flags |= flag::LOCAL_CLOSE;
    if new != tcp_state::CLOSE {
        st.flags |= flag::FIN_SENT;
    }
    // The task holding the socket lock is the one closing it; without the lock this is a timer or
    // a received segment, and no task closed it.
    let closer = if claim_if_held::<M>(tp, st) {
        (bpf_get_current_pid_tgid() >> 32) as u32
    } else {
        0
    };
    // This state change comes before the kernel queues the FIN it announces.
    settle::<M>(tp, st, false);
    let go = go_deadline_explaining::<M>(tp, st);
    // The clocks are read only for a record: most closes owe nothing.
    if st.may_owe_answer() || explained(st) || go.is_some() {
        st.last_in_ns = last_input_ns::<M>(tp);
        st.flags |= flag::TEARDOWN_SENT;
        emit_teardown(kind::TEARDOWN, tp, st, closer, old, new, go.as_ref());
    }
}

/// The Go write deadline that expired on the connection, where it explains this close
/// ([`GoDeadline::explains`]). Only a socket the Go hooks marked costs a lookup.
#[inline(always)]
fn go_deadline_explaining<M: Mem>(tp: u64, st: &SockState) -> Option<GoDeadline> {
    let deadline = go::deadline_of(tp, st.flags)?;
    match deadline.explains(st.verdict(), kernel::copied_seq::<M>(tp)) {
        GoLoss::None => None,
        GoLoss::Dropped | GoLoss::CutShort => Some(deadline),
    }
}

/// A connection on one of the `--explain-port`s: its close is reported whatever the verdict.
#[inline(always)]
fn explained(st: &SockState) -> bool {
    let mut i = 0;
    while i < EXPLAIN_PORTS {
        // SAFETY: CONFIG is a plain static that nothing writes after load (see `config!`).
        let port = unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!(crate::CONFIG.explain_ports[i]))
        };
        if port != 0 && (st.lport == port || st.rport == port) {
            return true;
        }
        i += 1;
    }
    false
}

/// FIN_WAIT1 -> CLOSING: the peer's FIN arrived before it acknowledged ours, so it closed on
/// its own, not in reaction to our close. Reported for a socket whose teardown was.
#[inline(always)]
fn on_simultaneous_close(sk: u64, old: u32, new: u32) {
    let Some(st) = SOCKS.get_ptr_mut(sk) else {
        return;
    };
    // SAFETY: see on_send.
    let st = unsafe { &mut *st };
    if st.flags & flag::TEARDOWN_SENT != 0 {
        st.flags |= flag::PEER_FIN;
        emit_teardown(kind::SIMULTANEOUS_CLOSE, sk, st, 0, old, new, None);
    }
}

/// A connection the agent never saw established (opened before it started, or evicted from a
/// full map) is closing. It can be judged only if it never sent a data byte in its life: then
/// every byte it read is unanswered, whatever happened before the agent was there.
#[inline(always)]
fn adopt_unwritten<M: Mem>(tp: u64) -> Option<*mut SockState> {
    if !M::is_inet_tcp(tp) || M::read::<u32>(tp, config!(sock.tcp_data_segs_out)) != Some(0) {
        return None;
    }
    // The peer's first byte: rcv_nxt less everything ever received. Its own: snd_una, as no
    // data segment ever left.
    let (_, rcv_nxt, received) = kernel::receive_side::<M>(tp);
    start_tracking::<M>(
        tp,
        role::UNKNOWN,
        rcv_nxt.wrapping_sub(received as u32),
        M::read::<u32>(tp, config!(sock.tcp_snd_una)).unwrap_or(0),
        BPF_NOEXIST,
    );
    SOCKS.get_ptr_mut(tp)
}

/// Fills a state's byte counts from the socket now (see `SockState::settle`). `fin_queued`: the
/// socket's FIN is in `write_seq` (not yet at the state change that a close makes, before
/// the kernel queues the FIN).
#[inline(always)]
fn settle<M: Mem>(tp: u64, st: &mut SockState, fin_queued: bool) {
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
    let Some(lrcv) = M::read::<u32>(tp, config!(sock.icsk_lrcvtime)) else {
        return 0;
    };
    // SAFETY: plain helper call.
    let jiffies = unsafe { bpf_jiffies64() } as u32;
    let ago = jiffies.wrapping_sub(lrcv) as u64 * config!(jiffy_ns) as u64;
    now().saturating_sub(ago)
}

pub fn on_receive_reset<M: Mem>(sk: u64) {
    skip_if_empty!();
    let Some(st) = SOCKS.get_ptr_mut(sk) else {
        return;
    };
    let Some(tp) = M::tcp(sk) else {
        return;
    };
    // SAFETY: see on_send.
    let st = unsafe { &mut *st };
    st.flags |= flag::PEER_RESET;
    // Over loopback the peer's RST can answer a first write before that write returns: it is
    // then processed from the socket's backlog, in the writer's context, with the lock held.
    claim_if_held::<M>(tp, st);
    abort::<M>(tp, st, trigger::RECEIVE_RESET, NO_REASON);
}

/// `tcp:tcp_send_reset`: the local stack resets a connection (abortive close, SO_LINGER{1,0},
/// memory pressure, keepalive timeout, or a segment for a dead socket).
pub fn on_send_reset<M: Mem>(sk: u64, reason: u32) {
    skip_if_empty!();
    let Some(st) = SOCKS.get_ptr_mut(sk) else {
        return;
    };
    let Some(tp) = M::tcp(sk) else {
        return;
    };
    // SAFETY: see on_send.
    let st = unsafe { &mut *st };
    // An abortive close() (unread input, SO_LINGER{1,0}) runs with the process holding the
    // socket; a reset answering a segment runs in softirq.
    claim_if_held::<M>(tp, st);
    abort::<M>(tp, st, trigger::SEND_RESET, reason);
}

/// Emits one abort record per socket when data was at stake: bytes the peer never acknowledged,
/// or (for a local abort) bytes received that the process never read.
#[inline(always)]
fn abort<M: Mem>(tp: u64, st: &mut SockState, trig: u32, rst_reason: u32) {
    if st.flags & flag::ABORTED != 0 {
        return;
    }
    let (mut unacked, mut unsent, mut unread) = kernel::at_stake::<M>(tp);
    // Control flags take a sequence number each but are not data: a FIN we queued is the last
    // unacknowledged (and, if anything is unsent, unsent) "byte".
    if st.flags & flag::FIN_SENT != 0 {
        unacked = unacked.saturating_sub(1);
        unsent = unsent.saturating_sub(1);
    }
    // A received FIN takes one sequence number but is not data.
    if st.flags & flag::PEER_FIN != 0 && unread > 0 {
        unread -= 1;
    }
    let local = trig == trigger::SEND_RESET;
    if !agent_common::data_at_stake(st.proto, unacked, if local { unread } else { 0 })
        && !(local && AbortEvent::pairs_on_this_host(st, unread))
    {
        return;
    }
    st.flags |= flag::ABORTED;
    settle::<M>(tp, st, st.flags & flag::FIN_SENT != 0);
    st.last_in_ns = last_input_ns::<M>(tp);
    let rcv_nxt = kernel::rcv_nxt::<M>(tp);
    let write_seq = kernel::write_seq::<M>(tp);
    let Some(mut entry) = EVENTS.reserve::<AbortEvent>(0) else {
        bump(stat::EVENTS_DROPPED);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is reserved ring-buffer memory sized for an AbortEvent. Fields are written in
    // place (not built on the 512-byte stack), every one of them, so nothing stale leaks out.
    unsafe {
        (*ev).header = header(kind::ABORT, core::mem::size_of::<AbortEvent>());
        (*ev).sock = *st;
        (*ev).sk = tp;
        (*ev).unacked = unacked;
        (*ev).unsent = unsent;
        (*ev).unread = unread;
        (*ev).current_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*ev).trigger = trig;
        (*ev).rst_reason = rst_reason;
        (*ev).sk_err = kernel::sk_err::<M>(tp);
        (*ev).linger_zero = kernel::linger_zero::<M>(tp) as u32;
        (*ev).state = kernel::tcp_state::<M>(tp);
        (*ev).rcv_nxt = rcv_nxt;
        (*ev).write_seq = write_seq;
    }
    entry.submit(0);
    bump(stat::EVENTS_SENT);
}

/// EPIPE / ECONNRESET / ENOTCONN from a send on a TCP socket.
fn on_write_error<M: Mem>(sk: u64, e: u32, attempted: u64) {
    let Some(tp) = M::tcp(sk) else {
        return;
    };
    if !M::is_inet_tcp(tp) {
        return;
    }
    // A write after the process's own goodbye, to a connection already gone, loses nothing
    // (a second GOAWAY, a close alert).
    if let Some(st) = SOCKS.get_ptr(tp) {
        let known = (attempted != SIZE_UNKNOWN).then_some(attempted);
        // SAFETY: a live map value, read in place.
        if unsafe { (*st).failed_write_loses_nothing(known) } {
            return;
        }
    }
    emit_write_error(tp, e, attempted, |sock| match SOCKS.get_ptr(tp) {
        Some(st) => {
            // SAFETY: a live map value, copied out.
            *sock = unsafe { *st };
            settle::<M>(tp, sock, sock.flags & flag::FIN_SENT != 0);
            sock.last_in_ns = last_input_ns::<M>(tp);
            true
        }
        None => {
            *sock = SockState::default();
            kernel::fill_identity::<M>(tp, sock);
            false
        }
    });
}

/// Writes a write-error record for the current task. `fill` puts the socket's state into the
/// record in place (not on the 512-byte stack) and says whether the socket was tracked.
#[inline(always)]
pub fn emit_write_error(
    sk: u64,
    e: u32,
    attempted: u64,
    fill: impl FnOnce(&mut SockState) -> bool,
) {
    let Some(mut entry) = EVENTS.reserve::<WriteErrorEvent>(0) else {
        bump(stat::EVENTS_DROPPED);
        return;
    };
    let ev = entry.as_mut_ptr();
    let id = bpf_get_current_pid_tgid();
    // SAFETY: see abort().
    unsafe {
        (*ev).header = header(kind::WRITE_ERROR, core::mem::size_of::<WriteErrorEvent>());
        (*ev).tracked = fill(&mut (*ev).sock) as u32;
        (*ev).sk = sk;
        (*ev).size_known = (attempted != SIZE_UNKNOWN) as u32;
        (*ev).attempted = if attempted == SIZE_UNKNOWN {
            0
        } else {
            attempted
        };
        (*ev).errno = e;
        (*ev).tgid = (id >> 32) as u32;
        (*ev).pid = id as u32;
        kernel::owner_names(&mut (*ev).comm, &mut (*ev).thread, (*ev).pid, (*ev).tgid);
        (*ev)._pad = 0;
    }
    entry.submit(0);
    bump(stat::EVENTS_SENT);
}

#[inline(always)]
pub fn header(kind: u32, len: usize) -> EventHeader {
    EventHeader {
        kind,
        len: len as u32,
        ts_ns: now(),
    }
}

pub fn on_destroy(sk: u64) {
    skip_if_empty!();
    if SOCKS.remove(sk).is_ok() {
        bump(stat::SOCKETS_RELEASED);
    }
}

#[inline(always)]
fn emit_teardown(
    kind: u32,
    sk: u64,
    st: &SockState,
    closer: u32,
    old: u32,
    new: u32,
    go: Option<&GoDeadline>,
) {
    let Some(mut entry) = EVENTS.reserve::<TeardownEvent>(0) else {
        bump(stat::EVENTS_DROPPED);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: see abort().
    unsafe {
        (*ev).header = header(kind, core::mem::size_of::<TeardownEvent>());
        (*ev).sock = *st;
        (*ev).sk = sk;
        (*ev).closer_tgid = closer;
        (*ev).oldstate = old;
        (*ev).newstate = new;
        (*ev)._pad = 0;
        match go {
            Some(d) => (*ev).go = *d,
            None => zero(core::ptr::addr_of_mut!((*ev).go)),
        }
    }
    entry.submit(0);
    bump(stat::EVENTS_SENT);
}
