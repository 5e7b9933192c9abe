//! The per-socket state and the unanswered-close decision made from it.

use crate::{AF_INET6, COMM_LEN, Head, SendKind, flag, proto, role};

/// Per-socket state, the value of the `SOCKS` LRU map (keyed by the `struct sock` address).
///
/// No program runs when the process reads: what it read, and when the input arrived, are told
/// from the socket's own receive side (`copied_seq`, `rcv_nxt`, `bytes_received`,
/// `icsk_ack.lrcvtime`) at the moment a record is written. The write path keeps one marker,
/// `copied_seq` after the last write ([`SockState::record_send`]), and [`SockState::settle`]
/// turns the markers into the byte counts and the time a record carries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockState {
    pub cgroup_id: u64,
    /// Data bytes the process read (the peer's FIN not counted). Set by `settle`.
    pub bytes_in: u64,
    /// Bytes the process's writes queued since tracking began (modulo 4 GiB). Set by `settle`
    /// from `tcp_sock.write_seq`: no program stores anything per write for it.
    pub bytes_out: u64,
    /// `bpf_ktime_get_ns()` time when the last input arrived, at the kernel's tick resolution
    /// (1/HZ). Set by `settle`.
    pub last_in_ns: u64,
    /// Bytes the process read after its last write (all it read since tracking began if it
    /// never wrote). Set by `settle`.
    pub unanswered_in: u64,
    /// Process that first wrote or closed the socket (in its own context), and the thread of
    /// it that did.
    pub tgid: u32,
    pub pid: u32,
    /// `tcp_sock.copied_seq` when tracking began (connection established, or socket adopted).
    pub copied_at_start: u32,
    /// `tcp_sock.copied_seq` at the process's last write (valid with [`flag::SENT`]).
    pub copied_at_last_out: u32,
    /// The process's name: its thread-group leader's `comm`, the `comm` label of every series.
    pub comm: [u8; COMM_LEN],
    /// The name of the thread `pid` (for the incident log only: thread pools number their
    /// threads, and one process would spread over as many series).
    pub thread: [u8; COMM_LEN],
    /// Network byte order, IPv4 in the first 4 bytes for AF_INET.
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    /// Host byte order.
    pub lport: u16,
    pub rport: u16,
    pub family: u16,
    /// [`flag`] bits.
    pub flags: u16,
    /// One of [`role`].
    pub role: u8,
    /// One of [`proto`], from the first bytes of the process's first message.
    pub proto: u8,
    /// How many of the process's messages answered input it had not answered yet (saturating):
    /// the connection's rhythm, which the goodbye of a protocol in no table is told by
    /// ([`SockState::ends_a_session`]). A server's greeting is not one.
    pub answers: u8,
    pub _pad: u8,
    /// `tcp_sock.write_seq` where the process's output began when tracking did.
    pub write_at_start: u32,
    /// `tcp_sock.copied_seq` at the process's last goodbye (valid with [`flag::GOODBYE_SENT`]).
    pub copied_at_goodbye: u32,
    /// `tcp_sock.snd_una` when the peer's FIN arrived ([`SockState::peer_fin`]): what the peer
    /// had received of the process's output when it closed.
    pub acked_at_peer_fin: u32,
}

impl SockState {
    /// Whether the peer's address is this host's loopback (127.0.0.0/8, ::1, or IPv4 loopback
    /// mapped into IPv6): only then can the agent see both ends of the connection.
    pub const fn peer_is_loopback(&self) -> bool {
        let a = &self.raddr;
        if self.family != AF_INET6 {
            return a[0] == 127;
        }
        let mut i = 0;
        while i < 10 {
            if a[i] != 0 {
                return false;
            }
            i += 1;
        }
        match (a[10], a[11]) {
            (0xff, 0xff) => a[12] == 127,
            (0, 0) => a[12] == 0 && a[13] == 0 && a[14] == 0 && a[15] == 1,
            _ => false,
        }
    }

    /// Whether a write must record where the process's reading stands. Not for a client after
    /// its first write: a client that spoke first, or answered its server once, owes no answer
    /// ([`SockState::verdict`]) however its reads and writes interleave later, so its writes
    /// (an HTTP client's requests, a stream of uploads, a subscriber's acknowledgements) skip
    /// the read of `copied_seq`.
    #[inline(always)]
    pub const fn send_needs_read_position(&self) -> bool {
        !(self.role == role::CLIENT && self.flags & flag::SENT != 0)
    }

    /// Whether the send of `len` bytes being recorded must have its first bytes read
    /// ([`SendKind::of`] needs them): the first message of a connection (it names the
    /// protocol), and small messages of the protocols whose goodbyes are recognised by their
    /// bytes. Everything else is judged by its size alone, or is simply an answer.
    #[inline(always)]
    pub const fn send_needs_peek(&self, len: u32) -> bool {
        if self.flags & flag::SENT == 0 {
            return true;
        }
        match self.proto {
            proto::WEBSOCKET => len <= 2 + 125,
            proto::H2 => len <= 64,
            proto::TEXT => len <= 8,
            _ => false,
        }
    }

    /// Where the process's reading stood at this write, and what the write was: `copied` is
    /// the socket's `copied_seq` (everything the process had read, as a sequence number).
    /// `head` holds the message's first bytes when [`SockState::send_needs_peek`] asked for
    /// them (zeros when they could not be read). `since_input_ns` (how long ago the last input
    /// arrived) is asked only for a goodbye that does not answer, where the session rule may
    /// apply ([`SockState::ends_a_session`]).
    #[inline(always)]
    pub fn record_send(
        &mut self,
        copied: u32,
        len: u32,
        head: &Head,
        since_input_ns: impl FnOnce() -> Option<u64>,
    ) {
        if self.flags & flag::SENT == 0 {
            self.flags |= flag::SENT;
            if copied != self.copied_at_start {
                self.flags |= flag::PEER_FIRST;
            }
            self.proto = proto::of_first_message(head, len, copied != self.copied_at_start);
            self.copied_at_last_out = self.copied_at_start;
        }
        let kind = SendKind::of(self.proto, head, len);
        if kind.answers() {
            // Stored only when it moved: a stream of writes with nothing read in between
            // leaves the map value's cache line clean, so other CPUs that read it need not
            // fetch it again.
            if self.copied_at_last_out != copied {
                self.copied_at_last_out = copied;
                self.answers = self.answers.saturating_add(1);
            }
            if self.flags & flag::GOODBYE_SENT != 0 && !kind.ends() {
                self.flags &= !(flag::GOODBYE_SENT | flag::PROMPT_CLOSE);
            }
        }
        if kind.ends() {
            self.flags |= flag::GOODBYE_SENT;
            self.copied_at_goodbye = copied;
            // The goodbye is where the process ended the session, so the session rule times
            // it rather than the close: the peer's reply to it (a TLS client's own alert and
            // FIN) can arrive before the close and would make any close look prompt.
            self.flags &= !flag::PROMPT_CLOSE;
            let unanswered = copied.wrapping_sub(self.copied_at_last_out) as i32;
            if unanswered > 0
                && self.session_may_end(unanswered as u64)
                && let Some(ns) = since_input_ns()
                && ns <= crate::PROMPT_CLOSE_NS
            {
                self.flags |= flag::PROMPT_CLOSE;
            }
        }
    }

    /// Fills the derived byte counts (`bytes_in`, `unanswered_in`, `bytes_out`) from the socket
    /// now: `copied`, `rcv_nxt` and `write_seq` are `tcp_sock` sequence numbers, `received` is
    /// `tcp_sock.bytes_received` (which, like `rcv_nxt`, counts the peer's FIN as one byte).
    /// `fin_queued`: the socket's own FIN is in `write_seq` already (it takes a sequence number
    /// but is not data). `last_in_ns` is set apart, only for a record: it costs two clock reads.
    #[inline(always)]
    pub fn settle(
        &mut self,
        copied: u32,
        rcv_nxt: u32,
        received: u64,
        write_seq: u32,
        fin_queued: bool,
    ) {
        self.bytes_out = write_seq
            .wrapping_sub(self.write_at_start)
            .saturating_sub(fin_queued as u32) as u64;
        let written = write_seq.wrapping_sub(fin_queued as u32);
        // The peer closed having received all the process wrote, its goodbye last: the FIN
        // answered that goodbye; the peer did not leave first.
        let fin_after_goodbye = flag::PEER_FIN | flag::GOODBYE_SENT;
        if self.flags & fin_after_goodbye == fin_after_goodbye && self.acked_at_peer_fin == written
        {
            self.flags |= flag::FIN_ANSWERED_GOODBYE;
        }
        // Reading the end of file steps copied_seq over the peer's FIN; that is not input.
        let fin_read = self.flags & flag::PEER_FIN != 0 && copied == rcv_nxt;
        let unread = rcv_nxt.wrapping_sub(copied) as u64;
        self.bytes_in = received
            .saturating_sub(unread)
            .saturating_sub(fin_read as u64);
        // Input read after the process's goodbye is the goodbye's reply: the unanswered input
        // ends where the goodbye was written.
        let read_to = if self.flags & flag::GOODBYE_SENT != 0 {
            self.copied_at_goodbye
        } else {
            copied.wrapping_sub(fin_read as u32)
        };
        let since = if self.flags & flag::SENT != 0 {
            self.copied_at_last_out
        } else {
            self.copied_at_start
        };
        // Signed: an end of file read before the last write leaves `read_to` one short of it.
        let after = read_to.wrapping_sub(since) as i32;
        self.unanswered_in = if after > 0 { after as u64 } else { 0 };
    }

    /// The peer's bytes came first on this connection: the local side is the one being asked.
    /// Meaningful after `settle`.
    #[inline(always)]
    pub const fn peer_spoke_first(&self) -> bool {
        if self.flags & flag::SENT != 0 {
            self.flags & flag::PEER_FIRST != 0
        } else {
            self.bytes_in > 0
        }
    }

    /// The peer's FIN arrived (the socket went to CLOSE_WAIT), acknowledging the process's
    /// output up to `snd_una`. Whether it answered the process's goodbye is told at the close
    /// (`settle`), by that acknowledgement rather than by which program ran first: a send is
    /// recorded when it returns in fentry mode, and over loopback the peer's reply can be in
    /// before that.
    #[inline(always)]
    pub const fn peer_fin(&mut self, snd_una: u32) {
        self.flags |= flag::PEER_FIN;
        self.acked_at_peer_fin = snd_una;
    }

    /// The local close starts from `old`. CLOSE_WAIT means the peer's FIN came first, even
    /// where the program that would have recorded it did not run: the kernel skips a program
    /// already running on that CPU (a softirq's state change that interrupts the same program
    /// in a process, `lostwrite_kernel_errors_total{error="run_skipped"}`).
    #[inline(always)]
    pub const fn closing_from(&mut self, old: u32) {
        if old == crate::tcp_state::CLOSE_WAIT {
            self.flags |= flag::PEER_FIN;
        }
    }

    /// The unanswered-close decision for a close the process started, from the socket's
    /// facts after `settle` (README: What it detects; docs/detection.md). The kernel calls it
    /// to decide whether a teardown is worth a record at all, and the agent's correlation
    /// applies the same function to the record, so the two can never disagree.
    ///
    /// - The peer closed or reset its side first: it was not waiting. A FIN that answered the
    ///   process's own goodbye is not the peer leaving first (a TLS close alert sent instead of
    ///   the response, whose client closes at once).
    /// - A passive open is a responder by definition (HTTP/2 servers may write SETTINGS before
    ///   reading anything, so "who spoke first" alone would miss them). An active open is a
    ///   responder only when the peer spoke first on a protocol whose server speaks first (an
    ///   HTTP/2 server's SETTINGS may arrive before its client's preface goes out); a client
    ///   that reads a response and closes owes nothing. A socket opened before the agent
    ///   started is judged as a responder here: which side it is cannot be told from the bytes
    ///   seen since, so the agent resolves it in userspace.
    /// - The input after the last answer is empty (or came after the process's own goodbye:
    ///   QUIT, a WebSocket close, a GOAWAY, a TLS close alert).
    /// - That input is only the peer's goodbye, told by the protocol and its size (PostgreSQL
    ///   Terminate, MySQL COM_QUIT, a TLS close alert).
    #[inline(always)]
    pub const fn verdict(&self) -> Verdict {
        let fin_first =
            self.flags & (flag::PEER_FIN | flag::FIN_ANSWERED_GOODBYE) == flag::PEER_FIN;
        if fin_first || self.flags & flag::PEER_RESET != 0 {
            return Verdict::PeerClosed;
        }
        if self.role == role::CLIENT
            && (!self.peer_spoke_first()
                || proto::client_speaks_first(self.proto)
                || self.answers > 0)
        {
            return Verdict::Client;
        }
        if self.unanswered_in == 0 {
            return if self.flags & flag::GOODBYE_SENT != 0 {
                Verdict::GoodbyeSent
            } else {
                Verdict::Answered
            };
        }
        if proto::is_goodbye_size(self.proto, self.unanswered_in) {
            return Verdict::PeerGoodbye;
        }
        if self.ends_a_session() {
            return Verdict::SessionEnd;
        }
        Verdict::Owes
    }

    /// The goodbye of a protocol the table does not know (docs/detection.md): the peer's last
    /// message, unanswered, is taken for its goodbye when
    /// - the protocol has no table of its goodbyes that is complete ([`proto::goodbyes_known`]:
    ///   on HTTP, HTTP/2, WebSocket, PostgreSQL and MySQL every other request is owed an
    ///   answer);
    /// - the connection is a session: the process answered the peer before, at least
    ///   [`proto::answers_before_goodbye`] times (a TLS handshake takes two), or spoke first
    ///   (a greeting);
    /// - the message is small ([`proto::SESSION_GOODBYE_MAX`] bytes at most);
    /// - and the close came at once ([`flag::PROMPT_CLOSE`], set by [`SockState::note_close`]),
    ///   or the process's own goodbye before it did (a TLS close alert): the direct reaction to
    ///   that message, not work, a timer, a deadline or a kill.
    ///
    /// What it gives up: a small request on such a session, dropped within
    /// [`crate::PROMPT_CLOSE_NS`] of its arrival (a crash right after reading it), is taken for
    /// a goodbye.
    #[inline(always)]
    pub const fn ends_a_session(&self) -> bool {
        self.flags & flag::PROMPT_CLOSE != 0 && self.may_end_a_session()
    }

    /// Everything [`SockState::ends_a_session`] asks but the close's timing: the kernel reads
    /// the clock at a close only when this holds. Meaningful after `settle`.
    #[inline(always)]
    pub const fn may_end_a_session(&self) -> bool {
        self.session_may_end(self.unanswered_in)
    }

    /// [`SockState::may_end_a_session`] with `unanswered` bytes of input after the last answer.
    #[inline(always)]
    const fn session_may_end(&self, unanswered: u64) -> bool {
        if proto::goodbyes_known(self.proto) || unanswered > proto::SESSION_GOODBYE_MAX {
            return false;
        }
        let greeted = self.flags & (flag::SENT | flag::PEER_FIRST) == flag::SENT;
        self.answers as u32 + greeted as u32 >= proto::answers_before_goodbye(self.proto) as u32
    }

    /// The process closes, after `settle`: a close within [`crate::PROMPT_CLOSE_NS`] of the
    /// last input's arrival is the direct reaction to that input ([`flag::PROMPT_CLOSE`]), or,
    /// where the process said goodbye last, a goodbye that came so soon.
    /// `since_input_ns` (how long ago that input arrived, where it can be read) is asked only
    /// where the rest of [`SockState::ends_a_session`] holds: the kernel reads it from the
    /// socket and the jiffies, and most closes need neither.
    #[inline(always)]
    pub fn note_close(&mut self, since_input_ns: impl FnOnce() -> Option<u64>) {
        // After the process's own goodbye, its goodbye was timed ([`SockState::record_send`]).
        if self.flags & flag::GOODBYE_SENT != 0 || !self.may_end_a_session() {
            return;
        }
        if let Some(ns) = since_input_ns()
            && ns <= crate::PROMPT_CLOSE_NS
        {
            self.flags |= flag::PROMPT_CLOSE;
        }
    }

    /// A write that failed because the connection was gone loses nothing when the process had
    /// already said goodbye (a second HTTP/2 GOAWAY answering the peer's, a TLS close alert
    /// after the last record), or when it is itself a TLS close alert (`attempted`, where the
    /// probe mode sees the size). The kernel does not report such a failure.
    #[inline(always)]
    pub const fn failed_write_loses_nothing(&self, attempted: Option<u64>) -> bool {
        if self.flags & flag::GOODBYE_SENT != 0 {
            return true;
        }
        match attempted {
            Some(n) => self.proto == proto::TLS && proto::is_tls_alert_size(n),
            None => false,
        }
    }

    /// The kernel-side pre-filter for a teardown record (see [`SockState::verdict`]).
    #[inline(always)]
    pub const fn may_owe_answer(&self) -> bool {
        matches!(self.verdict(), Verdict::Owes)
    }
}

/// What an unanswered-close judgement found (see [`SockState::verdict`]; the agent adds the
/// judgements only it can make).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Verdict {
    /// The process closed with input it never answered: an unanswered close.
    Owes = 0,
    /// Nothing was read after the last answer.
    Answered = 1,
    /// The process said goodbye last; what it read after it was the reply.
    GoodbyeSent = 2,
    /// The only unanswered input is the peer's goodbye.
    PeerGoodbye = 3,
    /// The peer closed or reset its side before the local close.
    PeerClosed = 4,
    /// An active open that owes its peer nothing.
    Client = 5,
    /// The peer's FIN crossed the local one: it was closing too (decided by the agent).
    SimultaneousClose = 6,
    /// No process closed it (a timer or a received segment did), or a socket older than the
    /// agent that is not a server's (decided by the agent).
    NotTheResponder = 7,
    /// The peer's last message was small and closed at once on a session of a protocol whose
    /// goodbyes no table knows: its goodbye ([`SockState::ends_a_session`]).
    SessionEnd = 8,
}

impl Verdict {
    /// The `verdict` label of `lostwrite_explained_closes_total`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Owes => "unanswered",
            Self::Answered => "answered",
            Self::GoodbyeSent => "goodbye_sent",
            Self::PeerGoodbye => "peer_goodbye",
            Self::PeerClosed => "peer_closed",
            Self::Client => "client",
            Self::SimultaneousClose => "simultaneous_close",
            Self::NotTheResponder => "not_the_responder",
            Self::SessionEnd => "session_end",
        }
    }
}
