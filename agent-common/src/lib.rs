//! The wire format between lostwrite's eBPF programs and its agent.
//!
//! Everything that crosses the kernel/userspace boundary is defined here, once, as `#[repr(C)]`
//! structs without implicit padding, so both sides compile the same layout:
//! - [`SockState`] (`sock`): the per-socket value in the `SOCKS` LRU map;
//! - the records the programs put on the `EVENTS` ring buffer (`records`: [`TeardownEvent`],
//!   [`AbortEvent`], [`WriteErrorEvent`], [`GoStreamEvent`], [`ExecEvent`]), each behind an
//!   [`EventHeader`];
//! - [`Config`] (`config`): kernel offsets and options the agent writes into the programs;
//! - the `STATS` per-CPU counter indices ([`stat`]).
//!
//! The decisions shared by both sides live here too, so that the kernel-side filter can never
//! disagree with userspace: each detector's decision (`detectors`: [`SockState::verdict`] for
//! the unanswered close, [`Stake::loses_data`] for undelivered bytes, [`write_error_loses`] for
//! write after close), what an expired Go deadline explains ([`GoDeadline::explains`]), the
//! transitions of a tracked socket's state (`track`: [`Start`], [`SockState::local_close`], ...),
//! and the protocol facts they rest on ([`proto`], [`SendKind`]).
#![no_std]

mod config;
mod detectors;
mod go;
pub mod proto;
mod records;
mod sock;
#[cfg(test)]
mod tests;
mod track;

pub use config::*;
pub use detectors::*;
pub use go::*;
pub use proto::{HEAD_LEN, Head, SendKind};
pub use records::*;
pub use sock::*;
pub use track::*;

/// Map and global names, shared so the agent never spells them differently from the programs.
pub mod names {
    pub const SOCKS: &str = "SOCKS";
    pub const EVENTS: &str = "EVENTS";
    pub const STATS: &str = "STATS";
    pub const CLOSED_FDS: &str = "CLOSED_FDS";
    pub const CONFIG: &str = "CONFIG";
    pub const GO_DEADLINES: &str = "GO_DEADLINES";
    pub const SOCK_STATES: &str = "SOCK_STATES";
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
    /// Map updates the kernel refused (a state entry, an expired Go deadline, a closed fd): that
    /// connection goes unwatched, or that cause unnamed.
    pub const MAP_UPDATE_FAILED: u32 = 4;
    /// Reads of kernel memory that failed (a field read as zero instead).
    pub const READ_FAILED: u32 = 5;
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
    /// A teardown record judged [`crate::Verdict::Owes`] was sent for this socket: an abort
    /// that follows it (close() with the request unread resets the connection) loses only what
    /// that unanswered close already counts, unless bytes written are at stake too.
    pub const OWES_SENT: u16 = 1 << 4;
    /// The local side sent its FIN, which takes one sequence number but carries no data.
    pub const FIN_SENT: u16 = 1 << 5;
    /// The process called close() on it (fentry/kprobe `tcp_close`; tracepoint mode cannot
    /// tell close() from shutdown()).
    pub const CLOSE_CALLED: u16 = 1 << 6;
    /// The process wrote to it at least once (`SockState::copied_at_last_out` is set).
    pub const SENT: u16 = 1 << 7;
    /// The process had read input before its first write: the peer spoke first.
    pub const PEER_FIRST: u16 = 1 << 8;
    /// The process's last message was a goodbye ([`crate::SendKind::ends`]): what it read after it
    /// (from `SockState::copied_at_goodbye`) is the goodbye's reply, owed nothing.
    pub const GOODBYE_SENT: u16 = 1 << 9;
    /// A teardown record was sent for this socket; a simultaneous close that follows is reported
    /// too (see `kind::SIMULTANEOUS_CLOSE`).
    pub const TEARDOWN_SENT: u16 = 1 << 10;
    /// The Go runtime's write deadline expired on this connection: its [`super::GoDeadline`]
    /// is in the `GO_DEADLINES` map.
    pub const GO_DEADLINE: u16 = 1 << 11;
    /// The connection reached CLOSE and was counted released (socket-local storage, whose
    /// state lives on until the kernel frees the socket).
    pub const RELEASED: u16 = 1 << 12;
    /// The process closed within [`crate::PROMPT_CLOSE_NS`] of the last input's arrival, or
    /// said its goodbye that soon ([`crate::SockState::note_close`]).
    pub const PROMPT_CLOSE: u16 = 1 << 13;
    /// The connection went to CLOSE with `sk_err` set and no reset: a retransmission or
    /// keepalive timeout ended it.
    pub const TIMED_OUT: u16 = 1 << 14;
    /// The peer's FIN acknowledged everything the process wrote, its goodbye last
    /// ([`GOODBYE_SENT`]): the FIN answered that goodbye (a TLS client that closes on the
    /// server's close alert), so the peer did not leave first (`SockState::settle`).
    pub const FIN_ANSWERED_GOODBYE: u16 = 1 << 15;
}

/// A close this soon after the last input arrived is the direct reaction to that input: a
/// goodbye answered by closing. Work, a timer, a deadline or a kill take longer. The kernel
/// measures it in jiffies (`icsk_ack.lrcvtime`), so at HZ=250 it is 48 to 52 ms.
pub const PROMPT_CLOSE_NS: u64 = 50_000_000;

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
