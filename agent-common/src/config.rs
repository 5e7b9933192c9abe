//! The read-only configuration the agent writes into the programs before attach.

/// Byte offsets of the kernel struct fields the programs read, resolved from BTF at start.
///
/// Rust eBPF has no CO-RE relocations, so the agent reads these from `/sys/kernel/btf/vmlinux`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
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
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TracepointFields {
    /// `sock:sock_send_length`: sk, ret.
    pub len_sk: u32,
    pub len_ret: u32,
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
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
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
    /// `unsigned long socket.flags` ([`crate::SOCK_NOSPACE_BIT`]).
    pub socket_flags: u32,
}

/// Where the programs find the message a write-family syscall is sending, to read its first
/// bytes ([`crate::SockState::send_needs_peek`]): the current task's user registers, then the buffer
/// its syscall arguments point at.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
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
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
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
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
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
// SAFETY: `Config` derives `bytemuck::Pod` (above), whose derive fails to compile when the
// struct or any struct in it has padding or a field that is not plain old data: what
// `aya::Pod` asks for too.
unsafe impl aya::Pod for Config {}

/// Upper bound for any offset the programs add to a kernel pointer; the agent rejects bigger ones.
pub const MAX_FIELD_OFFSET: u32 = 8192;
