//! The records the programs put on the `EVENTS` ring buffer, each behind an [`EventHeader`].

use crate::{COMM_LEN, GoDeadline, SockState, Stake, flag};

/// Header in front of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct EventHeader {
    /// One of [`crate::kind`].
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
    /// One of [`crate::trigger`].
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

    /// What the abort put at stake, as the kernel found it ([`crate::Stake::of`]).
    pub const fn stake(&self) -> Stake {
        Stake {
            unacked: self.unacked,
            unsent: self.unsent,
            unread: self.unread,
            trigger: self.trigger,
        }
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

/// A TCP socket's fd closed by its process, remembered for the EBADF detector.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClosedFd {
    pub sock: SockState,
    pub sk: u64,
    pub closed_ns: u64,
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
