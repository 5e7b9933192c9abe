//! Each detector's decision, one function each. The kernel calls it to decide whether a record is
//! worth sending at all, and the agent's correlation calls it again on the record, so the
//! kernel-side pre-filter can never disagree with userspace:
//! - unanswered close: [`SockState::verdict`] (the kernel's filter is
//!   [`SockState::may_owe_answer`]);
//! - undelivered bytes: [`Stake::loses_data`] (the kernel's filter is [`Stake::worth_a_record`]);
//! - write after close: [`write_error_loses`].

use crate::{SockState, errno, flag, proto, role, trigger};

/// The detectors, as `agent check`, `lostwrite_detector_enabled` and incidents name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Detector {
    UnansweredClose,
    WriteAfterClose,
    UndeliveredBytes,
    /// Write after close on an fd the process had closed itself (EBADF), by the raw syscall
    /// tracepoints: its incidents are write-after-close ones.
    WriteAfterCloseEbadf,
    /// The cause named for Go programs: an expired write deadline (the Go runtime hooks).
    GoWriteTimeout,
}

impl Detector {
    /// The three detectors every probe mode must give to count as complete.
    pub const CORE: [Self; 3] = [
        Self::UnansweredClose,
        Self::WriteAfterClose,
        Self::UndeliveredBytes,
    ];
    /// The detectors of the probe modes. [`Detector::GoWriteTimeout`] is apart: the Go runtime
    /// hooks are uprobes, beside whichever mode runs.
    pub const ALL: [Self; 4] = [
        Self::UnansweredClose,
        Self::WriteAfterClose,
        Self::UndeliveredBytes,
        Self::WriteAfterCloseEbadf,
    ];

    /// The `detector` label of `lostwrite_detector_enabled`, its name in `agent check`, and an
    /// incident's `kind`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UnansweredClose => "unanswered_close",
            Self::WriteAfterClose => "write_after_close",
            Self::UndeliveredBytes => "undelivered_bytes",
            Self::WriteAfterCloseEbadf => "write_after_close_ebadf",
            Self::GoWriteTimeout => "go_write_timeout",
        }
    }

    /// The detector named `name` by [`Detector::as_str`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .chain([Self::GoWriteTimeout])
            .find(|d| d.as_str() == name)
    }
}

/// A socket's sequence numbers, read once when it ends abortively.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seqs {
    /// `tcp_sock.write_seq`: after the last byte the process queued (a FIN queued included).
    pub write_seq: u32,
    /// `tcp_sock.snd_una`: the first byte the peer has not acknowledged.
    pub snd_una: u32,
    /// `tcp_sock.snd_nxt`: the next byte to transmit.
    pub snd_nxt: u32,
    /// `tcp_sock.rcv_nxt`: after the last byte received (the peer's FIN included).
    pub rcv_nxt: u32,
    /// `tcp_sock.copied_seq`: the next byte the process will read.
    pub copied: u32,
}

/// What an abortive end put at stake on one socket: the data of the undelivered-bytes detector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stake {
    /// Bytes write() accepted that the peer never acknowledged.
    pub unacked: u64,
    /// Of those, bytes never even transmitted.
    pub unsent: u64,
    /// Bytes received that the process never read.
    pub unread: u64,
    /// One of [`trigger`].
    pub trigger: u32,
}

impl Stake {
    /// The stake of a socket whose [`flag`]s are `flags`, ended by `trigger`. Control flags take
    /// a sequence number each but are not data: a FIN we queued is the last unacknowledged (and,
    /// if anything is unsent, unsent) "byte"; a FIN received is the last unread one.
    #[inline(always)]
    pub const fn of(flags: u16, trigger: u32, s: &Seqs) -> Self {
        let mut unacked = s.write_seq.wrapping_sub(s.snd_una) as u64;
        let mut unsent = s.write_seq.wrapping_sub(s.snd_nxt) as u64;
        let mut unread = s.rcv_nxt.wrapping_sub(s.copied) as u64;
        if flags & flag::FIN_SENT != 0 {
            unacked = unacked.saturating_sub(1);
            unsent = unsent.saturating_sub(1);
        }
        if flags & flag::PEER_FIN != 0 && unread > 0 {
            unread -= 1;
        }
        Self {
            unacked,
            unsent,
            unread,
            trigger,
        }
    }

    /// The local stack reset the connection (not the peer, not a timeout).
    #[inline(always)]
    pub const fn local(&self) -> bool {
        self.trigger == trigger::SEND_RESET
    }

    /// A local abort that discarded input: its record pairs with the peer's reset when the peer
    /// is on this host (that reset's unacknowledged bytes are then these, not lost).
    #[inline(always)]
    pub const fn drops_input(&self) -> bool {
        self.local() && self.unread > 0
    }

    /// The undelivered-bytes decision (README: What it detects): the abort lost bytes the process wrote that the
    /// peer never acknowledged, or (a local abort by a server) input it never read. Not a loss:
    /// - what is at stake is only a goodbye ([`proto::is_goodbye_size`]): two TLS ends that
    ///   each send a close alert and close at once reset the later alert;
    /// - a client that closes with a response it asked for still unread chose to drop it (wrk
    ///   at the end of a run, a caller that timed out);
    /// - a server whose client closed its side first (FIN) and then reset the response that
    ///   arrived after it had gone (wrk stopping between a request and its response).
    #[inline(always)]
    pub const fn loses_data(&self, st: &SockState) -> bool {
        let dropped = if self.local() && st.role != role::CLIENT {
            self.unread
        } else {
            0
        };
        // Input dropped by the close of an unanswered close: that incident counts it already.
        if st.flags & flag::OWES_SENT != 0 && self.unacked == 0 {
            return false;
        }
        if !data_at_stake(st.proto, self.unacked, dropped) {
            return false;
        }
        let client_gone = st.flags & flag::PEER_FIN != 0;
        !(self.trigger == trigger::RECEIVE_RESET && st.role == role::SERVER && client_gone)
    }

    /// The kernel's filter: a record is sent when the abort [`loses_data`](Self::loses_data),
    /// or when it dropped input the other end of the connection may report, if that end is on
    /// this host: data beyond a goodbye, or anything from a loopback peer (its own record may
    /// count bytes this side received but had not yet acknowledged). Healthy closes send no
    /// RST, so this costs nothing there.
    #[inline(always)]
    pub const fn worth_a_record(&self, st: &SockState) -> bool {
        self.loses_data(st)
            || (self.drops_input()
                && (data_at_stake(st.proto, 0, self.unread) || st.peer_is_loopback()))
    }
}

/// Whether an abortive end put data at stake: bytes the process wrote that the peer never
/// acknowledged (`unacked`), or input it never read that the abort discards (`dropped`). Neither
/// counts when it is only a goodbye ([`proto::is_goodbye_size`]).
#[inline(always)]
pub const fn data_at_stake(p: u8, unacked: u64, dropped: u64) -> bool {
    let out = unacked > 0 && !proto::is_goodbye_size(p, unacked);
    let input = dropped > 0 && !proto::is_goodbye_size(p, dropped);
    out || input
}

/// The write-after-close decision (README: What it detects): a write that failed with `errno` (positive) lost
/// what it tried to write. `tracked` is the socket's state where its connection was observed,
/// `attempted` the size of the write where the probe mode sees it.
/// - EPIPE and ECONNRESET mean the connection was torn down.
/// - ENOTCONN counts only on a socket whose connection was observed: a socket that never
///   connected gets it too.
/// - EBADF is reported only for an fd that was a TCP socket of the process until moments ago
///   and is not open again (the raw syscall hooks' own window decides that).
/// - Nothing is lost by a write after the process's own goodbye, or by a TLS close alert
///   ([`SockState::failed_write_loses_nothing`]).
#[inline(always)]
pub const fn write_error_loses(
    errno: u32,
    tracked: Option<&SockState>,
    attempted: Option<u64>,
) -> bool {
    match errno {
        errno::EBADF => true,
        errno::EPIPE | errno::ECONNRESET | errno::ENOTCONN => match tracked {
            Some(st) => !st.failed_write_loses_nothing(attempted),
            None => errno != errno::ENOTCONN,
        },
        _ => false,
    }
}
