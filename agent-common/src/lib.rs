//! The wire format between lostwrite's eBPF programs and its agent.
//!
//! Everything that crosses the kernel/userspace boundary is defined here, once, as `#[repr(C)]`
//! structs without implicit padding, so both sides compile the same layout:
//! - [`SockState`]: the per-socket value in the `SOCKS` LRU map;
//! - the records the programs put on the `EVENTS` ring buffer ([`TeardownEvent`], [`AbortEvent`],
//!   [`WriteErrorEvent`]), each behind an [`EventHeader`];
//! - [`Config`]: kernel offsets and options the agent writes into the programs before attach;
//! - the `STATS` per-CPU counter indices ([`stat`]).
//!
//! The policy shared by both sides lives here too: [`SockState::verdict`] (is this close an
//! unanswered one?), [`data_at_stake`] (did this abort lose data?) and
//! [`SockState::failed_write_loses_nothing`], with the protocol facts they rest on ([`proto`],
//! [`SendKind`]). The kernel uses them to decide whether a record is worth sending at all, and
//! the agent's correlation applies the same functions, so the kernel-side pre-filter can never
//! disagree with userspace.
#![no_std]

/// Map and global names, shared so the agent never spells them differently from the programs.
pub mod names {
    pub const SOCKS: &str = "SOCKS";
    pub const EVENTS: &str = "EVENTS";
    pub const STATS: &str = "STATS";
    pub const CLOSED_FDS: &str = "CLOSED_FDS";
    pub const CONFIG: &str = "CONFIG";
    pub const GO_DEADLINES: &str = "GO_DEADLINES";
}

/// Indices into the `STATS` per-CPU array.
pub mod stat {
    /// Ring-buffer reservations that failed (the record was lost).
    pub const EVENTS_DROPPED: u32 = 0;
    /// Records successfully submitted to the ring buffer.
    pub const EVENTS_SENT: u32 = 1;
    /// Sockets that got a state entry (new connections and adopted pre-existing ones).
    pub const SOCKETS_TRACKED: u32 = 2;
    /// State entries removed at socket destruction.
    pub const SOCKETS_RELEASED: u32 = 3;
    /// Number of slots in the array.
    pub const COUNT: u32 = 8;
}

/// `EventHeader::kind` values.
pub mod kind {
    pub const TEARDOWN: u32 = 1;
    pub const ABORT: u32 = 2;
    pub const WRITE_ERROR: u32 = 3;
    /// The peer's FIN crossed the local one (FIN_WAIT1 -> CLOSING) on a socket whose teardown
    /// was reported: the peer was closing too, not waiting. A [`super::TeardownEvent`].
    pub const SIMULTANEOUS_CLOSE: u32 = 4;
    /// Go net/http reset an HTTP/2 stream because its WriteTimeout expired: a
    /// [`super::GoStreamEvent`].
    pub const GO_STREAM_RESET: u32 = 5;
    /// A process called execve(): an [`super::ExecEvent`], for finding Go binaries.
    pub const EXEC: u32 = 6;
}

/// A TCP socket's fd closed by its process, remembered for the EBADF detector.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClosedFd {
    pub sock: SockState,
    pub sk: u64,
    pub closed_ns: u64,
}

/// What ended a connection abortively (`AbortEvent::trigger`).
pub mod trigger {
    /// `tcp:tcp_send_reset` on the socket: the local stack sent an RST.
    pub const SEND_RESET: u32 = 1;
    /// `tcp:tcp_receive_reset`: the peer sent an RST.
    pub const RECEIVE_RESET: u32 = 2;
    /// The socket went to CLOSE with `sk_err` set and no RST (retransmission timeout, ...).
    pub const ERROR: u32 = 3;
}

/// Positive errno values the programs compare against (include/uapi/asm-generic/errno*.h).
pub mod errno {
    pub const EBADF: u32 = 9;
    pub const EPIPE: u32 = 32;
    pub const ECONNRESET: u32 = 104;
    pub const ENOTCONN: u32 = 107;
    pub const ETIMEDOUT: u32 = 110;
}

/// Socket roles (`SockState::role`).
pub mod role {
    /// The socket existed before the agent started; its open was not observed.
    pub const UNKNOWN: u8 = 0;
    /// Passive open: the socket came from accept().
    pub const SERVER: u8 = 1;
    /// Active open: the socket called connect().
    pub const CLIENT: u8 = 2;
}

/// `SockState::flags` bits.
pub mod flag {
    /// The peer sent FIN (we saw ESTABLISHED -> CLOSE_WAIT).
    pub const PEER_FIN: u16 = 1 << 0;
    /// The peer sent RST (`tcp:tcp_receive_reset`).
    pub const PEER_RESET: u16 = 1 << 1;
    /// The local side started its close (FIN or abortive close) and it was examined.
    pub const LOCAL_CLOSE: u16 = 1 << 2;
    /// An abort record was already sent for this socket.
    pub const ABORTED: u16 = 1 << 3;
    /// The local side sent its FIN, which takes one sequence number but carries no data.
    pub const FIN_SENT: u16 = 1 << 5;
    /// The process called close() on it (fentry/kprobe `tcp_close`; tracepoint mode cannot
    /// tell close() from shutdown()).
    pub const CLOSE_CALLED: u16 = 1 << 6;
    /// The process wrote to it at least once (`SockState::copied_at_last_out` is set).
    pub const SENT: u16 = 1 << 7;
    /// The process had read input before its first write: the peer spoke first.
    pub const PEER_FIRST: u16 = 1 << 8;
    /// The process's last message was a goodbye ([`SendKind::ends`]): what it read after it
    /// (from `SockState::copied_at_goodbye`) is the goodbye's reply, owed nothing.
    pub const GOODBYE_SENT: u16 = 1 << 9;
    /// A teardown record was sent for this socket; a simultaneous close that follows is reported
    /// too (see `kind::SIMULTANEOUS_CLOSE`).
    pub const TEARDOWN_SENT: u16 = 1 << 10;
    /// The Go runtime's write deadline expired on this connection: its [`super::GoDeadline`]
    /// is in the `GO_DEADLINES` map.
    pub const GO_DEADLINE: u16 = 1 << 11;
}

/// TCP states, from include/net/tcp_states.h.
pub mod tcp_state {
    pub const ESTABLISHED: u32 = 1;
    pub const SYN_SENT: u32 = 2;
    pub const SYN_RECV: u32 = 3;
    pub const FIN_WAIT1: u32 = 4;
    pub const CLOSE: u32 = 7;
    pub const CLOSING: u32 = 11;
    pub const CLOSE_WAIT: u32 = 8;
    pub const LAST_ACK: u32 = 9;
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
pub const COMM_LEN: usize = 16;

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
    pub _pad: [u8; 2],
    /// `tcp_sock.write_seq` where the process's output began when tracking did.
    pub write_at_start: u32,
    /// `tcp_sock.copied_seq` at the process's last goodbye (valid with [`flag::GOODBYE_SENT`]).
    pub copied_at_goodbye: u32,
    pub _pad2: u32,
}

impl SockState {
    /// Whether the peer's address is this host's loopback (127.0.0.0/8, ::1, or IPv4 loopback
    /// mapped into IPv6): only then can the agent see both ends of the connection.
    pub fn peer_is_loopback(&self) -> bool {
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

    /// Whether a write must record where the process's reading stands. Not for a client that
    /// wrote before it read anything: it owes no answer ([`SockState::verdict`]) however its
    /// reads and writes interleave later, so its writes (an HTTP client's requests, a stream of
    /// uploads) skip the read of `copied_seq`.
    #[inline(always)]
    pub const fn send_needs_read_position(&self) -> bool {
        !(self.role == role::CLIENT && self.flags & (flag::SENT | flag::PEER_FIRST) == flag::SENT)
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
    /// them (zeros when they could not be read).
    #[inline(always)]
    pub fn record_send(&mut self, copied: u32, len: u32, head: &Head) {
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
            }
            if self.flags & flag::GOODBYE_SENT != 0 && !kind.ends() {
                self.flags &= !flag::GOODBYE_SENT;
            }
        }
        if kind.ends() {
            self.flags |= flag::GOODBYE_SENT;
            self.copied_at_goodbye = copied;
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

    /// The unanswered-close decision for a close the process started, from the socket's
    /// facts after `settle` (SPEC §2: "unanswered close" and "not loss"). The kernel calls it
    /// to decide whether a teardown is worth a record at all, and the agent's correlation
    /// applies the same function to the record, so the two can never disagree.
    ///
    /// - The peer closed or reset its side first: it was not waiting.
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
        if self.flags & (flag::PEER_FIN | flag::PEER_RESET) != 0 {
            return Verdict::PeerClosed;
        }
        if self.role == role::CLIENT
            && (!self.peer_spoke_first() || proto::client_speaks_first(self.proto))
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
        Verdict::Owes
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

/// Whether an abortive end put data at stake: bytes the process wrote that the peer never
/// acknowledged (`unacked`), or input it never read that the abort discards (`dropped`, for a
/// local abort). Neither counts when it is only a goodbye ([`proto::is_goodbye_size`]): two TLS
/// ends that each send a close alert and close at once reset the later alert, which was never
/// more than a goodbye. The kernel applies it before writing an abort record; the agent applies
/// it again.
#[inline(always)]
pub const fn data_at_stake(p: u8, unacked: u64, dropped: u64) -> bool {
    let out = unacked > 0 && !proto::is_goodbye_size(p, unacked);
    let input = dropped > 0 && !proto::is_goodbye_size(p, dropped);
    out || input
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
        }
    }
}

/// The first bytes of a message the process sent, as far as they were read (zeros after).
pub type Head = [u8; HEAD_LEN];

/// How many bytes of a message [`SendKind::of`] and [`proto::of_first_message`] look at.
pub const HEAD_LEN: usize = 16;

/// What one message the process sent means for the requests before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendKind(u8);

impl SendKind {
    const ANSWERS: u8 = 1;
    const ENDS: u8 = 2;
    /// An ordinary message: it answers what was read before it.
    pub const ANSWER: Self = Self(Self::ANSWERS);
    /// A goodbye that is also a reply (QUIT, a WebSocket close frame, an HTTP/2 GOAWAY).
    pub const ANSWER_AND_GOODBYE: Self = Self(Self::ANSWERS | Self::ENDS);
    /// A goodbye that answers nothing: a TLS close alert, which a TLS library writes when the
    /// application closes, whether or not the application ever answered.
    pub const GOODBYE: Self = Self(Self::ENDS);

    /// The kind of a `len`-byte message on a connection of protocol `p` (one of [`proto`]),
    /// `head` its first bytes where [`SockState::send_needs_peek`] asked for them.
    #[inline(always)]
    pub const fn of(p: u8, head: &Head, len: u32) -> Self {
        match p {
            // TLS 1.3 hides the record type; only the size of a close alert is its own.
            proto::TLS if proto::is_tls_alert_size(len as u64) => Self::GOODBYE,
            // FIN and opcode 8 (RFC 6455 §5.5.1).
            proto::WEBSOCKET if head[0] == 0x88 => Self::ANSWER_AND_GOODBYE,
            // A frame of type 7 (RFC 9113 §6.8) on stream 0.
            proto::H2 if len >= 17 && head[3] == 0x07 => Self::ANSWER_AND_GOODBYE,
            proto::TEXT if proto::is_quit(head, len) => Self::ANSWER_AND_GOODBYE,
            _ => Self::ANSWER,
        }
    }

    #[inline(always)]
    pub const fn answers(self) -> bool {
        self.0 & Self::ANSWERS != 0
    }

    #[inline(always)]
    pub const fn ends(self) -> bool {
        self.0 & Self::ENDS != 0
    }
}

/// Protocols told from the first bytes the process sends (`SockState::proto`). Bounded: they
/// become the `protocol` field of incidents.
pub mod proto {
    use super::Head;

    pub const UNKNOWN: u8 = 0;
    pub const HTTP: u8 = 1;
    /// HTTP/2 in clear text (h2c, gRPC without TLS).
    pub const H2: u8 = 2;
    pub const TLS: u8 = 3;
    pub const POSTGRES: u8 = 4;
    pub const MYSQL: u8 = 5;
    /// HTTP/1 upgraded to WebSocket (the process's first message was a 101).
    pub const WEBSOCKET: u8 = 6;
    /// A line-based text protocol whose server speaks first (SMTP, FTP, POP3, IMAP).
    pub const TEXT: u8 = 7;
    pub const REDIS: u8 = 8;

    #[inline(always)]
    pub const fn name(p: u8) -> &'static str {
        match p {
            HTTP => "http",
            H2 => "h2",
            TLS => "tls",
            POSTGRES => "postgres",
            MYSQL => "mysql",
            WEBSOCKET => "websocket",
            TEXT => "text",
            REDIS => "redis",
            _ => "unknown",
        }
    }

    /// The protocol of a connection from the first message the process sent on it, `len`
    /// bytes long. `replying`: the peer had spoken first (the message answers it).
    #[inline(always)]
    pub const fn of_first_message(h: &Head, len: u32, replying: bool) -> u8 {
        // A TLS handshake record: ClientHello or ServerHello (RFC 8446 §5.1).
        if h[0] == 0x16 && h[1] == 0x03 && h[2] <= 0x04 {
            return TLS;
        }
        if starts(h, b"HTTP/1.1 101 ") {
            return WEBSOCKET;
        }
        if starts(h, b"HTTP/1.") || is_http_method(h) {
            return HTTP;
        }
        // The client preface, or a server's first frame: SETTINGS (type 4) on stream 0.
        if starts(h, b"PRI * HTTP/2.0")
            || (len >= 9 && h[0] == 0 && h[3] == 0x04 && h[4] & !1 == 0 && zero4(h, 5))
        {
            return H2;
        }
        // A PostgreSQL server's first message: the one-byte answer to SSLRequest or
        // GSSENCRequest, or an authentication request or error ('R'/'E' and a length).
        if replying && len == 1 && (h[0] == b'N' || h[0] == b'S' || h[0] == b'G') {
            return POSTGRES;
        }
        if replying && (h[0] == b'R' || h[0] == b'E') && h[1] == 0 && h[2] == 0 && len >= 9 {
            return POSTGRES;
        }
        // A PostgreSQL client's first message: a length, then protocol 3.0 or an SSL,
        // GSSAPI or cancel request code (1234.5679, 1234.5680, 1234.5678).
        if !replying
            && h[0] == 0
            && h[1] == 0
            && ((h[4] == 0 && h[5] == 3) || (h[4] == 0x04 && h[5] == 0xd2))
        {
            return POSTGRES;
        }
        // A MySQL server's greeting: a 3-byte length, sequence 0, protocol version 10. Its
        // client's first message is sequence 1 of the same exchange.
        if !replying && h[3] == 0 && h[4] == 10 && h[2] == 0 {
            return MYSQL;
        }
        if replying && h[3] == 1 && h[2] == 0 && len >= 32 {
            return MYSQL;
        }
        // A text greeting: a three-digit code or "+OK"/"* OK" (SMTP, FTP, POP3, IMAP).
        if !replying && (is_reply_code(h) || starts(h, b"+OK") || starts(h, b"* OK")) {
            return TEXT;
        }
        // A text client answering a greeting.
        if replying
            && (starts_ci(h, b"EHLO")
                || starts_ci(h, b"HELO")
                || starts_ci(h, b"USER")
                || starts_ci(h, b"CAPA"))
        {
            return TEXT;
        }
        // RESP: an array of bulk strings from a client, or a reply from a server.
        if (h[0] == b'*' && h[1] >= b'0' && h[1] <= b'9')
            || (replying && (h[0] == b'+' || h[0] == b'-' || h[0] == b':' || h[0] == b'$'))
        {
            return REDIS;
        }
        UNKNOWN
    }

    /// Protocols whose client speaks first: on these an active open never owes an answer,
    /// whatever arrived before its first message.
    #[inline(always)]
    pub const fn client_speaks_first(p: u8) -> bool {
        matches!(p, HTTP | H2 | TLS | POSTGRES | REDIS | WEBSOCKET)
    }

    /// The sizes of one TLS close alert record: TLS 1.3 with any AEAD (5 + 2 + 1 + 16), TLS 1.2
    /// with AES-GCM (5 + 8 + 2 + 16) or ChaCha20-Poly1305 (5 + 2 + 16), and in clear text
    /// before a handshake completes (5 + 2). A record that size carries two bytes of
    /// application data at most: no answer to anything.
    #[inline(always)]
    pub const fn is_tls_alert_size(n: u64) -> bool {
        matches!(n, 7 | 23 | 24 | 31)
    }

    /// Whether `n` bytes of input after the last answer are exactly the peer's goodbye on a
    /// connection of protocol `p`: PostgreSQL's Terminate and MySQL's COM_QUIT are five bytes
    /// each ('X' and a length of 4; a 1-byte payload 0x01 behind a 4-byte header), clear or
    /// as one TLS record, maybe followed by a TLS close alert; on TLS, a close alert.
    ///
    /// A size, not the bytes: no probe mode sees received bytes in the same way (tracepoint
    /// mode sees none), so the decision rests on what every mode can measure.
    #[inline(always)]
    pub const fn is_goodbye_size(p: u8, n: u64) -> bool {
        match p {
            POSTGRES | MYSQL => n == 5 || is_tls_wrapped(5, n),
            TLS => is_tls_alert_size(n) || is_small_record_then_alert(n),
            _ => false,
        }
    }

    /// The plaintext of HTTP/2 control frames a TLS peer may send just before its close alert
    /// (a SETTINGS ack is 9 bytes, WINDOW_UPDATE and RST_STREAM 13, PING and GOAWAY 17): a
    /// record with no more than this, then the alert, is a peer closing its side.
    const SMALL_RECORD: u64 = 40;

    /// What one TLS record adds to its data, and the size of a close alert record, under the
    /// protections seen in practice: TLS 1.3 (any AEAD), TLS 1.2 AES-GCM, TLS 1.2
    /// ChaCha20-Poly1305 (see `is_tls_alert_size`).
    const TLS_PROTECTIONS: [(u64, u64); 3] = [(22, 24), (29, 31), (21, 23)];

    /// `n` is one TLS record of at most [`SMALL_RECORD`] bytes of data followed by a close
    /// alert of the same protection: the peer's last control frames, then its goodbye (records
    /// that arrive together are read together).
    #[inline(always)]
    const fn is_small_record_then_alert(n: u64) -> bool {
        let mut i = 0;
        while i < TLS_PROTECTIONS.len() {
            let (record, alert) = TLS_PROTECTIONS[i];
            if n > record + alert && n <= record + alert + SMALL_RECORD {
                return true;
            }
            i += 1;
        }
        false
    }

    /// `n` is a `plain`-byte message as one TLS record, alone or followed by the close alert
    /// of the same record protection ([`TLS_PROTECTIONS`]).
    #[inline(always)]
    const fn is_tls_wrapped(plain: u64, n: u64) -> bool {
        let mut i = 0;
        while i < TLS_PROTECTIONS.len() {
            let (record, alert) = TLS_PROTECTIONS[i];
            if n == plain + record || n == plain + record + alert {
                return true;
            }
            i += 1;
        }
        false
    }

    #[inline(always)]
    const fn starts(h: &Head, s: &[u8]) -> bool {
        starts_folded(h, s, false)
    }

    /// `s` is upper case; `h` may be in either case.
    #[inline(always)]
    const fn starts_ci(h: &Head, s: &[u8]) -> bool {
        starts_folded(h, s, true)
    }

    #[inline(always)]
    const fn starts_folded(h: &Head, s: &[u8], fold: bool) -> bool {
        let mut i = 0;
        while i < s.len() {
            let b = if fold {
                h[i].to_ascii_uppercase()
            } else {
                h[i]
            };
            if b != s[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    #[inline(always)]
    const fn zero4(h: &Head, at: usize) -> bool {
        h[at] == 0 && h[at + 1] == 0 && h[at + 2] == 0 && h[at + 3] == 0
    }

    #[inline(always)]
    const fn is_reply_code(h: &Head) -> bool {
        h[0] >= b'1'
            && h[0] <= b'5'
            && h[1].is_ascii_digit()
            && h[2].is_ascii_digit()
            && (h[3] == b' ' || h[3] == b'-')
    }

    #[inline(always)]
    const fn is_http_method(h: &Head) -> bool {
        starts(h, b"GET ")
            || starts(h, b"POST ")
            || starts(h, b"PUT ")
            || starts(h, b"HEAD ")
            || starts(h, b"DELETE ")
            || starts(h, b"OPTIONS ")
            || starts(h, b"PATCH ")
            || starts(h, b"CONNECT ")
    }

    /// A text protocol's QUIT command on a line of its own (IMAP's tagged LOGOUT is not
    /// recognised).
    #[inline(always)]
    pub const fn is_quit(h: &Head, len: u32) -> bool {
        (len == 6 || len == 5) && starts_ci(h, b"QUIT") && (h[4] == b'\r' || h[4] == b'\n')
    }
}

/// Header in front of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// Size of the whole record, header included.
    pub len: u32,
    /// `bpf_ktime_get_ns()` when the record was written.
    pub ts_ns: u64,
}

/// The local side started closing a connection whose state is worth reporting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TeardownEvent {
    pub header: EventHeader,
    pub sock: SockState,
    /// The `struct sock` address (for correlating with later records of the same socket).
    pub sk: u64,
    /// Task that was current when the state changed.
    pub closer_tgid: u32,
    pub oldstate: u32,
    pub newstate: u32,
    pub _pad: u32,
    /// The Go write deadline that expired on the connection, if it explains the close
    /// ([`GoDeadline::explains`]); zeroed otherwise.
    pub go: GoDeadline,
}

/// A tracked connection ended abortively with data at stake.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct AbortEvent {
    pub header: EventHeader,
    pub sock: SockState,
    pub sk: u64,
    /// `write_seq - snd_una`: bytes write() accepted that the peer never acknowledged.
    pub unacked: u64,
    /// `write_seq - snd_nxt`: of those, bytes never even transmitted.
    pub unsent: u64,
    /// `rcv_nxt - copied_seq`: bytes received that the process never read.
    pub unread: u64,
    /// Task current when it happened (the closing process for local aborts).
    pub current_tgid: u32,
    /// One of [`trigger`].
    pub trigger: u32,
    /// `enum sk_rst_reason` from `tcp:tcp_send_reset`, or [`NO_REASON`].
    pub rst_reason: u32,
    /// `sk->sk_err` (positive errno) at that moment.
    pub sk_err: u32,
    /// SO_LINGER was on with a zero timeout.
    pub linger_zero: u32,
    /// TCP state at that moment.
    pub state: u32,
    /// `tcp_sock.rcv_nxt` and `write_seq` at that moment: where the data received and the
    /// data written end, in the two directions' sequence spaces (for pairing the two ends of
    /// a reset on this host, see [`AbortEvent::received_end`]).
    pub rcv_nxt: u32,
    pub write_seq: u32,
}

impl AbortEvent {
    /// The sequence number after the last data byte received (the peer's FIN not counted).
    pub fn received_end(&self) -> u32 {
        self.rcv_nxt
            .wrapping_sub(u32::from(self.sock.flags & flag::PEER_FIN != 0))
    }

    /// The sequence number after the last data byte written (a FIN queued not counted).
    pub fn written_end(&self) -> u32 {
        self.write_seq
            .wrapping_sub(u32::from(self.sock.flags & flag::FIN_SENT != 0))
    }

    /// A local abort the agent needs even with nothing at stake on this socket: it dropped
    /// input from a peer on this host, whose own record of the reset (those bytes, maybe not
    /// yet acknowledged) it answers. Healthy closes send no RST, so this costs nothing there.
    pub fn pairs_on_this_host(sock: &SockState, unread: u64) -> bool {
        unread > 0 && sock.peer_is_loopback()
    }
}

/// `AbortEvent::rst_reason` when the kernel's tracepoint has no reason field.
pub const NO_REASON: u32 = u32::MAX;

/// A write-family call on a TCP socket failed because the connection was gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct WriteErrorEvent {
    pub header: EventHeader,
    /// The socket's state if it was tracked, else identity only (role unknown, no owner).
    pub sock: SockState,
    pub sk: u64,
    /// Bytes the call tried to write, when the probe mode can see them (else 0, see
    /// `size_known`).
    pub attempted: u64,
    /// Positive errno.
    pub errno: u32,
    /// 1 if the socket was in the SOCKS map (its connection was observed).
    pub tracked: u32,
    /// The writing task: its process, its thread, the process's name (thread-group leader's
    /// `comm`) and the thread's.
    pub tgid: u32,
    pub pid: u32,
    pub comm: [u8; COMM_LEN],
    pub thread: [u8; COMM_LEN],
    /// 1 if `attempted` is meaningful in this probe mode.
    pub size_known: u32,
    pub _pad: u32,
}

/// What the Go runtime hooks report about a deadline, `GoDeadline::which`.
pub mod go_deadline {
    /// `runtime.netpollWriteDeadline`: the connection's write deadline expired.
    pub const WRITE: u8 = 1;
    /// `runtime.netpollDeadline`: a read and a write deadline set to the same instant expired
    /// together (they share one timer).
    pub const READ_WRITE: u8 = 2;
    /// net/http's HTTP/2 `onWriteTimeout`: one stream's WriteTimeout expired, and net/http
    /// resets that stream.
    pub const H2_STREAM: u8 = 3;
}

/// `SOCK_NOSPACE` in `struct socket`'s `flags` (include/linux/net.h): a writer found the send
/// buffer full and waits for room.
pub const SOCK_NOSPACE_BIT: u32 = 2;

/// A Go write deadline that expired on a connection, as the socket stood at that moment.
/// Recorded by the Go runtime hooks in the `GO_DEADLINES` map (by `struct sock *`); an expiry is
/// a cause, never an incident by itself: net/http leaves the write deadline armed after a
/// response, so it also expires on healthy idle keep-alive connections.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct GoDeadline {
    /// `bpf_ktime_get_ns()` when it expired.
    pub ns: u64,
    /// When the socket's last input before the expiry arrived (the request the deadline was
    /// armed for), on the same clock; input that comes after it (a peer's goodbye) does not
    /// move it.
    pub input_ns: u64,
    /// `tcp_sock.copied_seq` then: input read after it re-armed the deadline (net/http sets
    /// it anew after reading each request).
    pub copied: u32,
    /// `write_seq - snd_una` then: bytes written that the peer had not acknowledged.
    pub unacked: u32,
    /// `tcp_sock.write_seq` then.
    pub write_seq: u32,
    /// The HTTP/2 stream, for [`go_deadline::H2_STREAM`].
    pub stream_id: u32,
    /// One of [`go_deadline`]; 0 for none.
    pub which: u8,
    /// A write was waiting for room in the send buffer (`SOCK_NOSPACE`): the expiry cut it.
    pub writer_waiting: u8,
    pub _pad: [u8; 6],
}

/// What an expired Go write deadline did to the response a connection was closed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoLoss {
    /// Nothing: it expired after the response (an idle keep-alive connection), or a request
    /// read since re-armed it.
    None,
    /// The close left the request unanswered: the deadline dropped the whole response.
    Dropped,
    /// The response had begun, and a write of it was waiting for the peer when the deadline
    /// expired: the rest was dropped.
    CutShort,
}

impl GoDeadline {
    /// What this expiry explains about a close judged `verdict`, `copied` being the socket's
    /// `copied_seq` at the close. The kernel sends a teardown record for it, and the agent
    /// names the cause from it; both call this.
    #[inline(always)]
    pub const fn explains(&self, verdict: Verdict, copied: u32) -> GoLoss {
        let connection = self.which == go_deadline::WRITE || self.which == go_deadline::READ_WRITE;
        if !connection || self.copied != copied {
            return GoLoss::None;
        }
        match verdict {
            Verdict::Owes => GoLoss::Dropped,
            Verdict::Answered | Verdict::GoodbyeSent if self.writer_waiting != 0 => {
                GoLoss::CutShort
            }
            _ => GoLoss::None,
        }
    }
}

/// Go net/http reset an HTTP/2 stream because its WriteTimeout expired.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct GoStreamEvent {
    pub header: EventHeader,
    /// The connection's state (it stays open).
    pub sock: SockState,
    pub sk: u64,
    pub go: GoDeadline,
    /// The task whose timer fired.
    pub tgid: u32,
    pub pid: u32,
}

/// A process called execve() (`sched:sched_process_exec`): its new image may be a Go binary.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ExecEvent {
    pub header: EventHeader,
    pub tgid: u32,
    pub _pad: u32,
}

/// Byte offsets of the kernel struct fields the programs read, resolved from BTF at start.
///
/// Rust eBPF has no CO-RE relocations, so the agent reads these from `/sys/kernel/btf/vmlinux`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    pub skc_family: u32,
    pub skc_num: u32,
    pub skc_dport: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_state: u32,
    pub sk_protocol: u32,
    pub tcp_write_seq: u32,
    pub tcp_snd_una: u32,
    pub tcp_snd_nxt: u32,
    pub tcp_rcv_nxt: u32,
    pub tcp_copied_seq: u32,
    pub sk_err: u32,
    /// `unsigned long sk_flags`.
    pub sk_flags: u32,
    /// `unsigned long sk_lingertime`.
    pub sk_lingertime: u32,
    /// Bit number of SOCK_LINGER in `sk_flags` (`enum sock_flags`).
    pub sock_linger_bit: u32,
    /// `u64 tcp_sock.bytes_received`.
    pub tcp_bytes_received: u32,
    /// `u32 inet_connection_sock.icsk_ack.lrcvtime` (jiffies).
    pub icsk_lrcvtime: u32,
    /// `int sock.sk_lock.owned`: a process holds the socket (it is in a socket call).
    pub sk_lock_owned: u32,
    /// `u32 tcp_sock.data_segs_out`: data segments ever sent (0: the socket never wrote).
    pub tcp_data_segs_out: u32,
    pub _pad: u32,
}

/// Where a classic (tracefs) tracepoint keeps the fields the programs read, from its `format`.
/// Unused slots are 0. Only used when the BTF variant of a tracepoint cannot be attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointFields {
    /// `sock:sock_send_length`: sk, ret, flags.
    pub len_sk: u32,
    pub len_ret: u32,
    pub len_flags: u32,
    /// `sock:inet_sock_set_state`: skaddr, oldstate, newstate.
    pub state_sk: u32,
    pub state_old: u32,
    pub state_new: u32,
    /// `tcp:tcp_destroy_sock`, `tcp:tcp_receive_reset`: skaddr.
    pub destroy_sk: u32,
    pub receive_reset_sk: u32,
    /// `tcp:tcp_send_reset`: skaddr, and reason (0 when the kernel has no reason field).
    pub send_reset_sk: u32,
    pub send_reset_reason: u32,
}

/// Offsets for the EBADF use-after-close detector: fd -> `struct file` -> `struct socket` -> sk
/// through the current task, and the syscall arguments in `struct pt_regs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    pub fdtable_max_fds: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// `struct pt_regs`: first and third syscall argument, and the syscall number.
    pub regs_arg0: u32,
    pub regs_arg2: u32,
    pub regs_nr: u32,
    /// `unsigned long socket.flags` ([`SOCK_NOSPACE_BIT`]).
    pub socket_flags: u32,
}

/// Where the programs find the message a write-family syscall is sending, to read its first
/// bytes ([`SockState::send_needs_peek`]): the current task's user registers, then the buffer
/// its syscall arguments point at.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeekOffsets {
    /// Non-zero: `bpf_task_pt_regs` exists (Linux 5.15+) and finds the user registers. Else they
    /// sit at the top of the task's kernel stack: `task_struct.stack` + `stack_top`.
    pub by_helper: u32,
    pub task_stack: u32,
    /// `sizeof(union thread_union)` (THREAD_SIZE) less `sizeof(struct pt_regs)`.
    pub stack_top: u32,
    /// `struct pt_regs`: the second syscall argument and the syscall number.
    pub regs_arg1: u32,
    pub regs_nr: u32,
    /// `struct user_msghdr.msg_iov`.
    pub msg_iov: u32,
}

/// Where the programs find the current task's process name: `task_struct.group_leader`, then
/// that task's `comm`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    pub group_leader: u32,
    pub comm: u32,
}

/// x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl) the EBADF detector watches.
pub mod nr {
    pub const WRITE: u64 = 1;
    pub const CLOSE: u64 = 3;
    pub const WRITEV: u64 = 20;
    pub const SENDTO: u64 = 44;
    pub const SENDMSG: u64 = 46;
    pub const SENDMMSG: u64 = 307;
}

/// How long after close() a write to the same fd number still counts as use-after-close.
pub const EBADF_WINDOW_NS: u64 = 5_000_000_000;

/// The size of a failed write when the hook cannot see it (`sock:sock_send_length`).
pub const SIZE_UNKNOWN: u64 = u64::MAX;

/// Read-only configuration the agent hands to the programs (the `CONFIG` global).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub sock: SockOffsets,
    pub tp: TracepointFields,
    pub fd: FdOffsets,
    /// Nanoseconds per jiffy (1/HZ), to place `icsk_ack.lrcvtime` on the monotonic clock.
    pub jiffy_ns: u32,
    /// Non-zero: every program returns as soon as it has its arguments. Only the overhead bench
    /// sets it, to measure what the hooks cost with nothing done in them. The verifier sees the
    /// value (read-only data) and removes the branch when it is zero.
    pub empty_programs: u32,
    pub peek: PeekOffsets,
    /// `--explain-port`: every judged close of a connection on one of these ports (local or
    /// remote) is reported with its verdict, loss or not. Zeros are unused slots.
    pub explain_ports: [u16; EXPLAIN_PORTS],
    /// The claiming task's process name (`SockState::comm`, `WriteErrorEvent::comm`).
    pub task: TaskOffsets,
}

/// How many `--explain-port`s the programs take.
pub const EXPLAIN_PORTS: usize = 4;

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, every field an integer, no implicit padding.
unsafe impl aya::Pod for Config {}

/// Upper bound for any offset the programs add to a kernel pointer; the agent rejects bigger ones.
pub const MAX_FIELD_OFFSET: u32 = 8192;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_out_come_from_write_seq_without_the_fin() {
        let mut st = SockState {
            write_at_start: u32::MAX - 10,
            ..SockState::default()
        };
        // 30 bytes written across the wrap.
        st.settle(0, 0, 0, 19, false);
        assert_eq!(st.bytes_out, 30);
        // The same with the FIN queued after them.
        st.settle(0, 0, 0, 20, true);
        assert_eq!(st.bytes_out, 30);
        // Nothing written, FIN queued: zero, not 4 GiB.
        st.settle(0, 0, 0, u32::MAX - 10, true);
        assert_eq!(st.bytes_out, 0);
    }

    #[test]
    fn record_send_keeps_the_last_read_position() {
        let mut st = SockState {
            copied_at_start: 100,
            ..SockState::default()
        };
        st.record_send(178, 120, &head(b"HTTP/1.1 200 OK\r\n"));
        assert_eq!(
            st.flags & (flag::SENT | flag::PEER_FIRST),
            flag::SENT | flag::PEER_FIRST
        );
        assert_eq!(st.proto, proto::HTTP);
        assert_eq!(st.copied_at_last_out, 178);
        st.record_send(178, 120, &Head::default());
        st.record_send(258, 120, &Head::default());
        assert_eq!(st.copied_at_last_out, 258);
    }

    fn head(bytes: &[u8]) -> Head {
        let mut h = Head::default();
        let n = bytes.len().min(HEAD_LEN);
        h[..n].copy_from_slice(&bytes[..n]);
        h
    }

    #[test]
    fn first_messages_name_their_protocol() {
        let cases: &[(&[u8], u32, bool, u8)] = &[
            (b"HTTP/1.1 200 OK\r\n", 200, true, proto::HTTP),
            (b"GET / HTTP/1.1\r\n", 78, false, proto::HTTP),
            (b"HTTP/1.1 101 Switching", 129, true, proto::WEBSOCKET),
            (b"\x16\x03\x03\x00\x7a\x02", 1400, true, proto::TLS),
            (b"\x16\x03\x01\x02\x00\x01", 517, false, proto::TLS),
            (b"PRI * HTTP/2.0\r\n", 24, false, proto::H2),
            // A server's SETTINGS frame: 18 bytes of settings, type 4, no flags, stream 0.
            (
                b"\x00\x00\x12\x04\x00\x00\x00\x00\x00",
                27,
                false,
                proto::H2,
            ),
            (b"N", 1, true, proto::POSTGRES),
            (
                b"R\x00\x00\x00\x08\x00\x00\x00\x00S",
                300,
                true,
                proto::POSTGRES,
            ),
            (
                b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
                8,
                false,
                proto::POSTGRES,
            ),
            (
                b"\x00\x00\x00\x54\x00\x03\x00\x00user",
                84,
                false,
                proto::POSTGRES,
            ),
            (b"\x5b\x00\x00\x00\x0a5.5.5-10.11", 95, false, proto::MYSQL),
            (b"\xb4\x00\x00\x01\x85\xa6\xff\x01", 184, true, proto::MYSQL),
            (b"220 mail.example ESMTP", 30, false, proto::TEXT),
            (b"+OK POP3 ready\r\n", 16, false, proto::TEXT),
            (b"ehlo [127.0.0.1]\r\n", 18, true, proto::TEXT),
            (b"*1\r\n$4\r\nPING\r\n", 14, false, proto::REDIS),
            (b"+PONG\r\n", 7, true, proto::REDIS),
            (b"\x00\x01\x02", 3, true, proto::UNKNOWN),
        ];
        for &(bytes, len, replying, want) in cases {
            assert_eq!(
                proto::name(proto::of_first_message(&head(bytes), len, replying)),
                proto::name(want),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn goodbyes_are_told_by_protocol_and_bytes_or_size() {
        let none = Head::default();
        assert_eq!(SendKind::of(proto::TLS, &none, 24), SendKind::GOODBYE);
        assert_eq!(SendKind::of(proto::TLS, &none, 31), SendKind::GOODBYE);
        assert_eq!(SendKind::of(proto::TLS, &none, 90), SendKind::ANSWER);
        // The size of an alert means nothing outside TLS.
        assert_eq!(SendKind::of(proto::HTTP, &none, 24), SendKind::ANSWER);
        let ws_close = head(b"\x88\x02\x03\xe8");
        assert_eq!(
            SendKind::of(proto::WEBSOCKET, &ws_close, 4),
            SendKind::ANSWER_AND_GOODBYE
        );
        assert_eq!(
            SendKind::of(proto::WEBSOCKET, &head(b"\x81\x05hello"), 7),
            SendKind::ANSWER
        );
        let goaway = head(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00");
        assert_eq!(
            SendKind::of(proto::H2, &goaway, 17),
            SendKind::ANSWER_AND_GOODBYE
        );
        let settings_ack = head(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00");
        assert_eq!(SendKind::of(proto::H2, &settings_ack, 9), SendKind::ANSWER);
        assert_eq!(
            SendKind::of(proto::TEXT, &head(b"QUIT\r\n"), 6),
            SendKind::ANSWER_AND_GOODBYE
        );
        assert_eq!(
            SendKind::of(proto::TEXT, &head(b"NOOP\r\n"), 6),
            SendKind::ANSWER
        );
        // A failed write after the process's goodbye, or of a close alert, loses nothing.
        let mut st = SockState {
            proto: proto::H2,
            ..SockState::default()
        };
        st.record_send(0, 27, &head(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00"));
        assert!(!st.failed_write_loses_nothing(None));
        st.record_send(0, 17, &goaway);
        assert!(st.failed_write_loses_nothing(None));
        let tls = SockState {
            proto: proto::TLS,
            flags: flag::SENT,
            ..SockState::default()
        };
        assert!(tls.failed_write_loses_nothing(Some(24)));
        assert!(!tls.failed_write_loses_nothing(Some(4000)));
        assert!(!tls.failed_write_loses_nothing(None));
        // Received: sizes only.
        assert!(proto::is_goodbye_size(proto::POSTGRES, 5));
        assert!(proto::is_goodbye_size(proto::POSTGRES, 27));
        assert!(proto::is_goodbye_size(proto::POSTGRES, 27 + 24));
        assert!(!proto::is_goodbye_size(proto::POSTGRES, 28));
        assert!(proto::is_goodbye_size(proto::MYSQL, 5));
        assert!(proto::is_goodbye_size(proto::TLS, 24));
        // A SETTINGS ack and the alert, TLS 1.3; a GOAWAY and the alert, TLS 1.2.
        assert!(proto::is_goodbye_size(proto::TLS, 31 + 24));
        assert!(proto::is_goodbye_size(proto::TLS, 46 + 31));
        assert!(!proto::is_goodbye_size(proto::TLS, 101));
        // The seed's client Finished and request: no goodbye.
        assert!(!proto::is_goodbye_size(proto::TLS, 165));
        // Bytes at stake at an abort.
        assert!(!data_at_stake(proto::TLS, 24, 0));
        assert!(!data_at_stake(proto::TLS, 0, 31));
        assert!(data_at_stake(proto::TLS, 2_803_712, 0));
        assert!(data_at_stake(proto::HTTP, 24, 0));
        assert!(!data_at_stake(proto::POSTGRES, 5, 0));
        assert!(data_at_stake(proto::UNKNOWN, 0, 5));
        assert!(!proto::is_goodbye_size(proto::HTTP, 5));
        assert!(!proto::is_goodbye_size(proto::UNKNOWN, 5));
    }

    #[test]
    fn an_expired_go_deadline_explains_only_the_close_of_its_request() {
        let d = GoDeadline {
            copied: 500,
            which: go_deadline::WRITE,
            ..GoDeadline::default()
        };
        assert_eq!(d.explains(Verdict::Owes, 500), GoLoss::Dropped);
        // A request read since re-armed the deadline.
        assert_eq!(d.explains(Verdict::Owes, 578), GoLoss::None);
        // Answered, nothing waiting: the idle keep-alive expiry.
        assert_eq!(d.explains(Verdict::Answered, 500), GoLoss::None);
        assert_eq!(d.explains(Verdict::PeerClosed, 500), GoLoss::None);
        let blocked = GoDeadline {
            writer_waiting: 1,
            ..d
        };
        assert_eq!(blocked.explains(Verdict::Answered, 500), GoLoss::CutShort);
        assert_eq!(
            blocked.explains(Verdict::GoodbyeSent, 500),
            GoLoss::CutShort
        );
        assert_eq!(blocked.explains(Verdict::PeerClosed, 500), GoLoss::None);
        // A stream's expiry is reported on its own, never at the connection's close.
        let stream = GoDeadline {
            which: go_deadline::H2_STREAM,
            ..blocked
        };
        assert_eq!(stream.explains(Verdict::Owes, 500), GoLoss::None);
        assert_eq!(
            GoDeadline::default().explains(Verdict::Owes, 0),
            GoLoss::None
        );
    }
}
