//! The transitions of a tracked socket's state that the programs make, as pure functions of the
//! socket's sequence numbers and TCP states: where tracking begins (at the handshake, or by
//! adopting a socket the agent never saw open), a local close, and what a failed send undoes.
//! The programs call them with what they read from the kernel; the agent's unit tests call them
//! with a model socket's numbers, so both run the same code.

use crate::{SockState, flag, role, tcp_state};

/// Where tracking of a connection begins: its role, and the sequence numbers its reads and its
/// writes are counted from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    /// One of [`role`].
    pub role: u8,
    pub copied_at_start: u32,
    pub write_at_start: u32,
}

impl Start {
    /// The handshake completed, `old` being the state it came from (SYN_RECV: a passive open,
    /// a server's; SYN_SENT: an active open, a client's): the first byte to read and to write
    /// are final now. Nothing else becomes established.
    #[inline(always)]
    pub const fn established(old: u32, copied: u32, write_seq: u32) -> Option<Self> {
        let role = match old {
            tcp_state::SYN_RECV => role::SERVER,
            tcp_state::SYN_SENT => role::CLIENT,
            _ => return None,
        };
        Some(Self {
            role,
            copied_at_start: copied,
            write_at_start: write_seq,
        })
    }

    /// Whether a live socket the agent never saw open can be adopted at a send, in TCP state
    /// `state`: only an established connection, so the SYN is never taken for unacknowledged
    /// data.
    #[inline(always)]
    pub const fn adoptable_at_send(state: u32) -> bool {
        state == tcp_state::ESTABLISHED || state == tcp_state::CLOSE_WAIT
    }

    /// A live socket adopted at a send that queued `sent` bytes (0 at a send's entry): what it
    /// read before is taken as answered, this send is its first output. Its role is unknown.
    #[inline(always)]
    pub const fn at_send(copied: u32, write_seq: u32, sent: u32) -> Self {
        Self {
            role: role::UNKNOWN,
            copied_at_start: copied,
            write_at_start: write_seq.wrapping_sub(sent),
        }
    }

    /// A closing socket the agent never saw open (opened before it started, or evicted from a
    /// full map), which can be judged only if it never sent a data byte in its life
    /// (`data_segs_out` 0): every byte it ever received is then unanswered. The peer's first
    /// byte is `rcv_nxt` less everything received; its own is `snd_una`, as no data segment
    /// ever left.
    #[inline(always)]
    pub const fn unwritten(
        data_segs_out: u32,
        rcv_nxt: u32,
        received: u64,
        snd_una: u32,
    ) -> Option<Self> {
        if data_segs_out != 0 {
            return None;
        }
        Some(Self {
            role: role::UNKNOWN,
            copied_at_start: rcv_nxt.wrapping_sub(received as u32),
            write_at_start: snd_una,
        })
    }
}

/// What a state change towards the end of a connection (to FIN_WAIT1, LAST_ACK or CLOSE) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closing {
    /// The connection was open: a local close() or shutdown(), an abortive close, a reset.
    pub open: bool,
    /// It went to CLOSE with `sk_err` set (a retransmission or keepalive timeout, which sends
    /// no RST of its own).
    pub failed: bool,
}

impl Closing {
    #[inline(always)]
    pub const fn of(old: u32, new: u32, sk_err: u32) -> Self {
        Self {
            open: old == tcp_state::ESTABLISHED || old == tcp_state::CLOSE_WAIT,
            failed: new == tcp_state::CLOSE && sk_err != 0,
        }
    }

    /// Anything else that reaches CLOSE from a closing state is the orderly end: not even a
    /// lookup.
    #[inline(always)]
    pub const fn matters(&self) -> bool {
        self.open || self.failed
    }
}

/// What a send recorded at its entry replaced ([`SockState::undo_point`]), to put back with
/// [`SockState::undo_send`] if the send fails (kprobe mode records a send at its entry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Undo {
    copied_at_last_out: u32,
    copied_at_goodbye: u32,
    flags: u16,
    answers: u8,
    _pad: u8,
}

impl Undo {
    /// Nothing to undo.
    pub const NONE: Self = Self {
        copied_at_last_out: 0,
        copied_at_goodbye: 0,
        flags: 0,
        answers: 0,
        _pad: 0,
    };
}

impl SockState {
    /// Begins tracking from `start`, on a state whose identity (family, ports, addresses) is
    /// filled; `state` is the socket's TCP state now. A socket adopted after the peer's FIN
    /// gets [`flag::PEER_FIN`]: the state change that would have said so is past.
    #[inline(always)]
    pub const fn begin(&mut self, start: &Start, state: u32) {
        self.role = start.role;
        self.copied_at_start = start.copied_at_start;
        self.write_at_start = start.write_at_start;
        if state == tcp_state::CLOSE_WAIT {
            self.flags |= flag::PEER_FIN;
        }
    }

    /// The local side started closing an open connection (`new`: FIN_WAIT1 or LAST_ACK for a
    /// FIN, CLOSE for an abortive close). Returns false if that was already examined.
    #[inline(always)]
    pub const fn local_close(&mut self, new: u32) -> bool {
        if self.flags & flag::LOCAL_CLOSE != 0 {
            return false;
        }
        self.flags |= flag::LOCAL_CLOSE;
        if new != tcp_state::CLOSE {
            self.flags |= flag::FIN_SENT;
        }
        true
    }

    /// The kernel's filter for a teardown record, after `settle`: the close may owe an answer
    /// ([`SockState::may_owe_answer`]), its connection is on an `--explain-port` (`explained`),
    /// or an expired Go deadline explains it (`go`, [`crate::GoDeadline::explains`]). A close
    /// worth one is marked as reported ([`flag::TEARDOWN_SENT`], and [`flag::OWES_SENT`] where it
    /// owes an answer, for the abort that may follow it).
    #[inline(always)]
    pub const fn mark_teardown_record(&mut self, explained: bool, go: bool) -> bool {
        let owes = self.may_owe_answer();
        if !(owes || explained || go) {
            return false;
        }
        self.flags |= flag::TEARDOWN_SENT;
        if owes {
            self.flags |= flag::OWES_SENT;
        }
        true
    }

    /// What [`SockState::record_send`] may change, to undo it.
    #[inline(always)]
    pub const fn undo_point(&self) -> Undo {
        Undo {
            copied_at_last_out: self.copied_at_last_out,
            copied_at_goodbye: self.copied_at_goodbye,
            flags: self.flags,
            answers: self.answers,
            _pad: 0,
        }
    }

    /// The send recorded at its entry failed: it wrote nothing, so the read position, the
    /// goodbye, the count of answers and the first-write flags go back to what they were.
    #[inline(always)]
    pub const fn undo_send(&mut self, undo: &Undo) {
        let mask = flag::SENT | flag::PEER_FIRST | flag::GOODBYE_SENT | flag::PROMPT_CLOSE;
        self.copied_at_last_out = undo.copied_at_last_out;
        self.copied_at_goodbye = undo.copied_at_goodbye;
        self.answers = undo.answers;
        self.flags = (self.flags & !mask) | (undo.flags & mask);
    }
}
