//! The wire format between lostwrite's eBPF programs and its agent.
//!
//! Everything that crosses the kernel/userspace boundary is defined here, once, as `#[repr(C)]`
//! structs without implicit padding, so both sides compile the same layout:
//! - [`SockState`]: the per-socket value in the `SOCKS` LRU map;
//! - [`TeardownEvent`]: the only record the programs put on the `EVENTS` ring buffer, always
//!   behind an [`EventHeader`];
//! - [`Config`]: kernel offsets and options the agent writes into the programs before attach;
//! - the `STATS` per-CPU counter indices ([`stat`]).
//!
//! The one piece of policy shared by both sides is [`SockState::may_owe_answer`]: the kernel uses it
//! to decide whether a teardown is worth a ring-buffer record at all, and the agent's correlation
//! applies the same function, so the kernel-side pre-filter can never disagree with userspace.
#![no_std]

/// Map and global names, shared so the agent never spells them differently from the programs.
pub mod names {
    pub const SOCKS: &str = "SOCKS";
    pub const EVENTS: &str = "EVENTS";
    pub const STATS: &str = "STATS";
    pub const CLOSED_FDS: &str = "CLOSED_FDS";
    pub const CONFIG: &str = "CONFIG";
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
}

/// TCP states, from include/net/tcp_states.h.
pub mod tcp_state {
    pub const ESTABLISHED: u32 = 1;
    pub const SYN_SENT: u32 = 2;
    pub const SYN_RECV: u32 = 3;
    pub const FIN_WAIT1: u32 = 4;
    pub const CLOSE: u32 = 7;
    pub const CLOSE_WAIT: u32 = 8;
    pub const LAST_ACK: u32 = 9;
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
pub const MSG_PEEK: i32 = 2;
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
    /// Process that first wrote or closed the socket (in its own context).
    pub tgid: u32,
    pub pid: u32,
    /// `tcp_sock.copied_seq` when tracking began (connection established, or socket adopted).
    pub copied_at_start: u32,
    /// `tcp_sock.copied_seq` at the process's last write (valid with [`flag::SENT`]).
    pub copied_at_last_out: u32,
    pub comm: [u8; COMM_LEN],
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
    pub _pad: [u8; 3],
    /// `tcp_sock.write_seq` where the process's output began when tracking did.
    pub write_at_start: u32,
}

impl SockState {
    /// Whether a write must record where the process's reading stands. Not for a client that
    /// wrote before it read anything: it owes no answer ([`SockState::may_owe_answer`]) however
    /// its reads and writes interleave later, so its writes (an HTTP client's requests, a
    /// stream of uploads) skip the read of `copied_seq`.
    pub const fn send_needs_read_position(&self) -> bool {
        !(self.role == role::CLIENT && self.flags & (flag::SENT | flag::PEER_FIRST) == flag::SENT)
    }

    /// Where the process's reading stood at this write: `copied` is the socket's `copied_seq`
    /// (everything the process had read, as a sequence number).
    pub fn record_send(&mut self, copied: u32) {
        if self.flags & flag::SENT == 0 {
            self.flags |= flag::SENT;
            if copied != self.copied_at_start {
                self.flags |= flag::PEER_FIRST;
            }
        }
        // Stored only when it moved: a stream of writes with nothing read in between leaves the
        // map value's cache line clean, so other CPUs that read it need not fetch it again.
        if self.copied_at_last_out != copied {
            self.copied_at_last_out = copied;
        }
    }

    /// Fills the derived byte counts (`bytes_in`, `unanswered_in`, `bytes_out`) from the socket
    /// now: `copied`, `rcv_nxt` and `write_seq` are `tcp_sock` sequence numbers, `received` is
    /// `tcp_sock.bytes_received` (which, like `rcv_nxt`, counts the peer's FIN as one byte).
    /// `fin_queued`: the socket's own FIN is in `write_seq` already (it takes a sequence number
    /// but is not data). `last_in_ns` is set apart, only for a record: it costs two clock reads.
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
        let read_to = copied.wrapping_sub(fin_read as u32);
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
    pub const fn peer_spoke_first(&self) -> bool {
        if self.flags & flag::SENT != 0 {
            self.flags & flag::PEER_FIRST != 0
        } else {
            self.bytes_in > 0
        }
    }

    /// The process read input after its last write (or read and never wrote). Meaningful after
    /// `settle`.
    pub const fn input_after_last_output(&self) -> bool {
        self.unanswered_in > 0
    }

    /// The kernel-side pre-filter for a teardown record: the local side may be the responder on
    /// this connection and has input it never answered.
    ///
    /// A passive open is a responder by definition (HTTP/2 servers may write SETTINGS before
    /// reading anything, so "who spoke first" alone would miss them). An active open is a
    /// responder only when the peer spoke first (server-speaks-first protocols); a client that
    /// reads a response and closes owes nothing. A socket opened before the agent started passes
    /// the filter: which side it is cannot be told from the bytes seen since (the agent may have
    /// started between a request and its response), so the agent resolves it in userspace.
    pub const fn may_owe_answer(&self) -> bool {
        let responder = self.role != role::CLIENT || self.peer_spoke_first();
        responder && self.input_after_last_output()
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
    /// The writing task.
    pub tgid: u32,
    pub pid: u32,
    pub comm: [u8; COMM_LEN],
    /// 1 if `attempted` is meaningful in this probe mode.
    pub size_known: u32,
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
    pub _pad: u32,
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
}

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
        st.record_send(178);
        assert_eq!(
            st.flags & (flag::SENT | flag::PEER_FIRST),
            flag::SENT | flag::PEER_FIRST
        );
        assert_eq!(st.copied_at_last_out, 178);
        st.record_send(178);
        st.record_send(258);
        assert_eq!(st.copied_at_last_out, 258);
    }
}
