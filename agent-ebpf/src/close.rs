//! State changes, and the records of a connection's end: the teardown the process started
//! (unanswered close), and an abortive end with data at stake (undelivered bytes).

use agent_common::{
    AbortEvent, Closing, EXPLAIN_PORTS, GoDeadline, GoLoss, NO_REASON, SockState, Stake,
    TeardownEvent, flag, kind, tcp_state, trigger,
};
use aya_ebpf::helpers::bpf_get_current_pid_tgid;

use crate::{
    emit::{reserve, zero},
    go,
    kernel::{self, Mem},
    store::Store,
    track::{self, claim, claim_if_held},
};

/// The process closes `sk` (fentry/kprobe `tcp_close`, in the caller's context). The teardown
/// itself is judged at the state change this close causes, as in every mode; this records that
/// close() (not shutdown()) started it, and who called it. A socket the agent does not track is
/// left alone: adopting it here, at its current read position, would take what it read before
/// for answered; the state change adopts it as it must ([`track::adopt_unwritten`]).
pub fn on_close<S: Store>(sk: u64) {
    skip_if_empty!();
    let Some(st) = S::get(sk) else {
        return;
    };
    // SAFETY: a live map value; concurrent updaters can only make the counters approximate.
    let st = unsafe { &mut *st };
    claim(st);
    st.flags |= flag::CLOSE_CALLED;
}

/// `sock:inet_sock_set_state`: `sk` went from `old` to `new`.
pub fn on_state<M: Mem, S: Store>(sk: u64, old: u32, new: u32) {
    skip_if_empty!();
    match new {
        tcp_state::ESTABLISHED => track::on_established::<M, S>(sk, old),
        tcp_state::CLOSE_WAIT => {
            if let Some(st) = S::get(sk) {
                let acked = M::tcp(sk).and_then(|tp| M::read::<u32>(tp, config!(sock.tcp_snd_una)));
                // SAFETY: see on_close.
                unsafe { (*st).peer_fin(acked.unwrap_or(0)) };
            }
        }
        tcp_state::FIN_WAIT1 | tcp_state::LAST_ACK | tcp_state::CLOSE => {
            if let Some(tp) = M::tcp(sk) {
                on_closing::<M, S>(tp, old, new);
            }
        }
        // The peer's FIN crossed ours. Rare, and it matters only where a teardown was reported.
        tcp_state::CLOSING => on_simultaneous_close::<S>(sk, old, new),
        // SYN_SENT, SYN_RECV, FIN_WAIT2, TIME_WAIT, LISTEN: nothing to learn, not even
        // a lookup (a short connection goes through ten state changes).
        _ => {}
    }
}

/// The connection is going away: FIN_WAIT1 and LAST_ACK are a local close() or shutdown();
/// CLOSE is an abortive close, a timeout, a reset, or the end of an orderly close.
#[inline(always)]
fn on_closing<M: Mem, S: Store>(tp: u64, old: u32, new: u32) {
    // Retransmission/keepalive timeouts set sk_err and go to CLOSE without an RST of their own
    // (tcp_write_err -> tcp_done_with_error).
    let closing = Closing::of(old, new, kernel::sk_err::<M>(tp));
    if !closing.matters() {
        // The orderly end: nothing to judge. Only a state that lives until the socket is freed
        // stops counting as tracked here.
        if new == tcp_state::CLOSE
            && S::FREED_WITH_SOCKET
            && let Some(st) = S::get(tp)
        {
            // SAFETY: see on_close.
            S::closed(unsafe { &mut *st });
        }
        return;
    }
    let st = match S::get(tp) {
        Some(st) => st,
        None if closing.open => match track::adopt_unwritten::<M, S>(tp) {
            Some(st) => st,
            None => return,
        },
        None => return,
    };
    // SAFETY: see on_close.
    let st = unsafe { &mut *st };
    st.closing_from(old);
    if new == tcp_state::CLOSE {
        S::closed(st);
    }
    // A peer RST was already reported by tcp_receive_reset.
    if closing.failed && st.flags & flag::PEER_RESET == 0 {
        st.flags |= flag::TIMED_OUT;
        abort::<M>(tp, st, trigger::ERROR, NO_REASON);
    }
    if !closing.open || !st.local_close(new) {
        return;
    }
    // The task holding the socket lock is the one closing it; without the lock this is a timer or
    // a received segment, and no task closed it.
    let closer = if claim_if_held::<M>(tp, st) {
        (bpf_get_current_pid_tgid() >> 32) as u32
    } else {
        0
    };
    // This state change comes before the kernel queues the FIN it announces.
    track::settle::<M>(tp, st, false);
    // How soon the close followed the last input decides only a session's possible goodbye.
    st.note_close(|| track::since_last_input_ns::<M>(tp));
    let go = go_deadline_explaining::<M, S>(tp, st);
    // The clocks are read only for a record: most closes owe nothing.
    if st.mark_teardown_record(explained(st), go.is_some()) {
        st.last_in_ns = track::last_input_ns::<M>(tp);
        emit_teardown(kind::TEARDOWN, tp, st, closer, old, new, go.as_ref());
    }
}

/// The Go write deadline that expired on the connection, where it explains this close
/// ([`GoDeadline::explains`]). Only a socket the Go hooks marked costs a lookup.
#[inline(always)]
fn go_deadline_explaining<M: Mem, S: Store>(tp: u64, st: &SockState) -> Option<GoDeadline> {
    if !S::go_deadline_possible(st.flags) {
        return None;
    }
    let deadline = go::deadline_of(tp)?;
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
            core::ptr::read_volatile(core::ptr::addr_of!(crate::maps::CONFIG.explain_ports[i]))
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
fn on_simultaneous_close<S: Store>(sk: u64, old: u32, new: u32) {
    let Some(st) = S::get(sk) else {
        return;
    };
    // SAFETY: see on_close.
    let st = unsafe { &mut *st };
    if st.flags & flag::TEARDOWN_SENT != 0 {
        st.flags |= flag::PEER_FIN;
        emit_teardown(kind::SIMULTANEOUS_CLOSE, sk, st, 0, old, new, None);
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
    let Some(mut r) = reserve::<TeardownEvent>(kind) else {
        return;
    };
    let ev = r.ptr();
    // SAFETY: `ev` is the reserved record (see `Reserved`).
    unsafe {
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
    r.send();
}

/// `tcp:tcp_receive_reset`: the peer reset the connection.
pub fn on_receive_reset<M: Mem, S: Store>(sk: u64) {
    skip_if_empty!();
    let Some(st) = S::get(sk) else {
        return;
    };
    let Some(tp) = M::tcp(sk) else {
        return;
    };
    // SAFETY: see on_close.
    let st = unsafe { &mut *st };
    st.flags |= flag::PEER_RESET;
    // Over loopback the peer's RST can answer a first write before that write returns: it is
    // then processed from the socket's backlog, in the writer's context, with the lock held.
    claim_if_held::<M>(tp, st);
    abort::<M>(tp, st, trigger::RECEIVE_RESET, NO_REASON);
}

/// `tcp:tcp_send_reset`: the local stack resets a connection (abortive close, SO_LINGER{1,0},
/// memory pressure, keepalive timeout, or a segment for a dead socket).
pub fn on_send_reset<M: Mem, S: Store>(sk: u64, reason: u32) {
    skip_if_empty!();
    let Some(st) = S::get(sk) else {
        return;
    };
    let Some(tp) = M::tcp(sk) else {
        return;
    };
    // SAFETY: see on_close.
    let st = unsafe { &mut *st };
    // An abortive close() (unread input, SO_LINGER{1,0}) runs with the process holding the
    // socket; a reset answering a segment runs in softirq.
    claim_if_held::<M>(tp, st);
    abort::<M>(tp, st, trigger::SEND_RESET, reason);
}

/// One abort record per socket, where [`Stake::worth_a_record`] says so.
#[inline(always)]
fn abort<M: Mem>(tp: u64, st: &mut SockState, trig: u32, rst_reason: u32) {
    if st.flags & flag::ABORTED != 0 {
        return;
    }
    let seqs = kernel::seqs::<M>(tp);
    let stake = Stake::of(st.flags, trig, &seqs);
    if !stake.worth_a_record(st) {
        return;
    }
    st.flags |= flag::ABORTED;
    track::settle::<M>(tp, st, st.flags & flag::FIN_SENT != 0);
    st.last_in_ns = track::last_input_ns::<M>(tp);
    let Some(mut r) = reserve::<AbortEvent>(kind::ABORT) else {
        return;
    };
    let ev = r.ptr();
    // SAFETY: `ev` is the reserved record (see `Reserved`).
    unsafe {
        (*ev).sock = *st;
        (*ev).sk = tp;
        (*ev).unacked = stake.unacked;
        (*ev).unsent = stake.unsent;
        (*ev).unread = stake.unread;
        (*ev).current_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*ev).trigger = trig;
        (*ev).rst_reason = rst_reason;
        (*ev).sk_err = kernel::sk_err::<M>(tp);
        (*ev).linger_zero = kernel::linger_zero::<M>(tp) as u32;
        (*ev).state = kernel::tcp_state::<M>(tp);
        (*ev).rcv_nxt = seqs.rcv_nxt;
        (*ev).write_seq = seqs.write_seq;
    }
    r.send();
}
