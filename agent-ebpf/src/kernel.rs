//! Reads from kernel memory at offsets the agent resolved at start.
//!
//! Two ways to read a socket, chosen per entry point: [`Probe`] (a helper call per field, for
//! the raw pointers of kprobes and classic tracepoints) and [`Direct`] (plain loads, for the
//! BTF-typed pointers of tp_btf and fentry/fexit programs).

use agent_common::{
    AF_INET, AF_INET6, COMM_LEN, HEAD_LEN, Head, IPPROTO_TCP, MAX_FIELD_OFFSET, Seqs, SockState,
    nr, stat,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            self, bpf_get_current_comm, bpf_get_current_task_btf, bpf_skc_to_tcp_sock,
            bpf_task_pt_regs,
        },
    },
    programs::TracePointContext,
};

use crate::maps::bump;

/// Reads a `T` at `ptr + off` with `bpf_probe_read_kernel`. Offsets above [`MAX_FIELD_OFFSET`]
/// (never produced by a sane BTF) read nothing rather than wander through kernel memory.
#[inline(always)]
pub fn read<T>(ptr: u64, off: u32) -> Option<T> {
    if off > MAX_FIELD_OFFSET {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel tolerates any address; a bad one returns an error.
    match unsafe { bpf_probe_read_kernel((ptr + off as u64) as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            bump(stat::READ_FAILED);
            None
        }
    }
}

/// How an entry point reads its socket's fields.
pub trait Mem {
    /// The socket to read fields from: `sk` itself, or `None` where this way of reading can
    /// already tell it is not a TCP socket. It is the same address, so it is also the map key.
    fn tcp(sk: u64) -> Option<u64>;
    /// True for an IPv4/IPv6 TCP socket (not UDP, unix, MPTCP's meta socket, ...), `tp` from
    /// [`Mem::tcp`].
    fn is_inet_tcp(tp: u64) -> bool;
    /// A `T` at `tp + off`, `tp` from [`Mem::tcp`].
    fn read<T>(tp: u64, off: u32) -> Option<T>;
}

/// `bpf_probe_read_kernel` per field: for the untyped pointers of kprobes and classic
/// tracepoints.
pub struct Probe;

impl Mem for Probe {
    #[inline(always)]
    fn tcp(sk: u64) -> Option<u64> {
        (sk != 0).then_some(sk)
    }

    #[inline(always)]
    fn is_inet_tcp(tp: u64) -> bool {
        let protocol: Option<u16> = Self::read(tp, config!(sock.sk_protocol));
        is_inet::<Self>(tp) && protocol == Some(IPPROTO_TCP)
    }

    #[inline(always)]
    fn read<T>(tp: u64, off: u32) -> Option<T> {
        read(tp, off)
    }
}

/// Plain loads: for tp_btf and fentry/fexit programs, whose `struct sock *` argument the
/// verifier knows by its BTF type. `bpf_skc_to_tcp_sock` retypes it as a `struct tcp_sock *`
/// (NULL for anything but a full TCP socket), and each load is then checked against the
/// kernel's BTF at load time and run as a fault-tolerant load: no helper call per field. The
/// offsets are the agent's read-only configuration, which the verifier sees as constants.
pub struct Direct;

impl Mem for Direct {
    #[inline(always)]
    fn tcp(sk: u64) -> Option<u64> {
        // SAFETY: the helper accepts any socket pointer the verifier lets through and returns
        // NULL for what is not a TCP socket.
        let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut _) };
        (!tp.is_null()).then_some(tp as u64)
    }

    /// The helper behind [`Direct::tcp`] has already checked the protocol.
    #[inline(always)]
    fn is_inet_tcp(tp: u64) -> bool {
        is_inet::<Self>(tp)
    }

    #[inline(always)]
    fn read<T>(tp: u64, off: u32) -> Option<T> {
        if off > MAX_FIELD_OFFSET {
            return None;
        }
        // SAFETY: `tp` is a BTF-typed pointer: the verifier checks this load against the
        // field at `off` and makes a faulting load read zero. Volatile, so that neighbouring
        // fields are never merged into one load spanning two of them, which it would refuse.
        Some(unsafe { core::ptr::read_volatile((tp + off as u64) as *const T) })
    }
}

/// True for an IPv4/IPv6 socket.
#[inline(always)]
fn is_inet<M: Mem>(sk: u64) -> bool {
    let family: Option<u16> = M::read(sk, config!(sock.skc_family));
    matches!(family, Some(AF_INET | AF_INET6))
}

/// `sk->__sk_common.skc_state`.
#[inline(always)]
pub fn tcp_state<M: Mem>(sk: u64) -> u32 {
    M::read::<u8>(sk, config!(sock.skc_state)).unwrap_or(0) as u32
}

/// Fills family, ports and addresses from `struct sock_common`.
#[inline(always)]
pub fn fill_identity<M: Mem>(sk: u64, st: &mut SockState) {
    let family: u16 = M::read(sk, config!(sock.skc_family)).unwrap_or(0);
    st.family = family;
    st.lport = M::read::<u16>(sk, config!(sock.skc_num)).unwrap_or(0);
    st.rport = u16::from_be(M::read::<u16>(sk, config!(sock.skc_dport)).unwrap_or(0));
    if family == AF_INET6 {
        st.laddr = M::read(sk, config!(sock.skc_v6_rcv_saddr)).unwrap_or([0; 16]);
        st.raddr = M::read(sk, config!(sock.skc_v6_daddr)).unwrap_or([0; 16]);
    } else {
        let l: [u8; 4] = M::read(sk, config!(sock.skc_rcv_saddr)).unwrap_or([0; 4]);
        let r: [u8; 4] = M::read(sk, config!(sock.skc_daddr)).unwrap_or([0; 4]);
        st.laddr[..4].copy_from_slice(&l);
        st.raddr[..4].copy_from_slice(&r);
    }
}

/// `sock:sock_send_length` fields of a classic tracepoint record: (sk, ret).
#[inline(always)]
pub fn len_args(ctx: &TracePointContext) -> Option<(u64, i32)> {
    let (sk, ret) = (config!(tp.len_sk), config!(tp.len_ret));
    // SAFETY: offsets come from the tracepoint's tracefs format, bounds-checked by the agent;
    // read_at goes through bpf_probe_read.
    unsafe {
        Some((
            ctx.read_at::<u64>(sk as usize).ok()?,
            ctx.read_at::<i32>(ret as usize).ok()?,
        ))
    }
}

/// The socket's sequence numbers, for what an abortive end put at stake
/// ([`agent_common::Stake`]).
#[inline(always)]
pub fn seqs<M: Mem>(sk: u64) -> Seqs {
    Seqs {
        write_seq: write_seq::<M>(sk),
        snd_una: M::read(sk, config!(sock.tcp_snd_una)).unwrap_or(0),
        snd_nxt: M::read(sk, config!(sock.tcp_snd_nxt)).unwrap_or(0),
        rcv_nxt: rcv_nxt::<M>(sk),
        copied: copied_seq::<M>(sk),
    }
}

/// SO_LINGER on with a zero timeout: close() then discards the send queue with an RST.
#[inline(always)]
pub fn linger_zero<M: Mem>(sk: u64) -> bool {
    let flags: u64 = M::read(sk, config!(sock.sk_flags)).unwrap_or(0);
    let bit = config!(sock.sock_linger_bit) & 63;
    let lingertime: u64 = M::read(sk, config!(sock.sk_lingertime)).unwrap_or(1);
    flags & (1 << bit) != 0 && lingertime == 0
}

/// `sk->sk_err` as a positive errno.
#[inline(always)]
pub fn sk_err<M: Mem>(sk: u64) -> u32 {
    M::read::<i32>(sk, config!(sock.sk_err))
        .unwrap_or(0)
        .unsigned_abs()
}

/// `tcp_sock.copied_seq`: the sequence number of the next byte the process will read.
#[inline(always)]
pub fn copied_seq<M: Mem>(sk: u64) -> u32 {
    M::read(sk, config!(sock.tcp_copied_seq)).unwrap_or(0)
}

/// `tcp_sock.rcv_nxt`: the sequence number of the next byte expected from the peer.
#[inline(always)]
pub fn rcv_nxt<M: Mem>(sk: u64) -> u32 {
    M::read(sk, config!(sock.tcp_rcv_nxt)).unwrap_or(0)
}

/// `tcp_sock.write_seq`: the sequence number after the last byte the process queued.
#[inline(always)]
pub fn write_seq<M: Mem>(sk: u64) -> u32 {
    M::read(sk, config!(sock.tcp_write_seq)).unwrap_or(0)
}

/// The receive side now: (`copied_seq`, `rcv_nxt`, `bytes_received`).
#[inline(always)]
pub fn receive_side<M: Mem>(sk: u64) -> (u32, u32, u64) {
    (
        copied_seq::<M>(sk),
        rcv_nxt::<M>(sk),
        M::read(sk, config!(sock.tcp_bytes_received)).unwrap_or(0),
    )
}

/// `sk->sk_lock.owned`: a process holds the socket, so the current task is the one acting on it
/// (softirq and timers only touch a socket no process holds).
#[inline(always)]
pub fn owned_by_user<M: Mem>(sk: u64) -> bool {
    M::read::<i32>(sk, config!(sock.sk_lock_owned)).unwrap_or(0) != 0
}

/// The current task's user registers (its syscall's arguments).
#[inline(always)]
fn user_regs() -> Option<u64> {
    if config!(peek.by_helper) != 0 {
        // SAFETY: plain helper calls; the task pointer comes from the kernel. The verifier
        // drops this branch on kernels without the helpers (the flag is read-only data).
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) };
        return (regs != 0).then_some(regs as u64);
    }
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    // task_pt_regs() on x86_64 without FRED (which came with the helper's kernels).
    let stack: u64 = read(task, config!(peek.task_stack))?;
    (stack != 0).then_some(stack + config!(peek.stack_top) as u64)
}

/// A `T` at a user address.
#[inline(always)]
fn read_user<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user tolerates any address; a bad one returns an error.
    unsafe { bpf_probe_read_user(addr as *const T).ok() }
}

/// The first bytes of the message of `len` bytes that the current task's write-family syscall
/// is sending, zeros where they cannot be read (sendfile and splice have no user buffer; a send
/// from a kernel thread has no syscall).
#[inline(always)]
pub fn peek_send(len: u32, head: &mut Head) {
    let Some(regs) = user_regs() else {
        return;
    };
    let (Some(nr), Some(arg1)) = (
        read::<u64>(regs, config!(peek.regs_nr)),
        read::<u64>(regs, config!(peek.regs_arg1)),
    ) else {
        return;
    };
    // (buffer, bytes in it): write and sendto pass the buffer; writev an iovec array; sendmsg
    // and sendmmsg a msghdr (the first of sendmmsg's is at the start of its array).
    let (buf, avail) = match nr {
        nr::WRITE | nr::SENDTO => (arg1, len as u64),
        nr::WRITEV => first_iovec(arg1),
        nr::SENDMSG | nr::SENDMMSG => match read_user::<u64>(arg1 + config!(peek.msg_iov) as u64) {
            Some(iov) => first_iovec(iov),
            None => return,
        },
        _ => return,
    };
    let n = if avail >= HEAD_LEN as u64 {
        HEAD_LEN as u32
    } else {
        avail as u32
    };
    if n == 0 || buf == 0 {
        return;
    }
    // SAFETY: writes at most n <= HEAD_LEN bytes into `head`; bad addresses return an error.
    unsafe {
        generated::bpf_probe_read_user(head.as_mut_ptr().cast(), n, buf as *const _);
    }
}

/// (`iov_base`, `iov_len`) of the first `struct iovec` at user address `iov`.
#[inline(always)]
fn first_iovec(iov: u64) -> (u64, u64) {
    match read_user::<[u64; 2]>(iov) {
        Some([base, len]) => (base, len),
        None => (0, 0),
    }
}

/// Names the current task, thread `tid` of process `tgid`: `thread` gets its own `comm`,
/// `comm` its process's, the thread-group leader's `comm` (what `/proc/<tgid>/comm` and `ps`
/// show). Thread pools name their threads by number (`pool-1-thread-7`), so only the process
/// name can be a metric label. Both are written in place (a `[u8; 16]` built on the stack is
/// zeroed first, a call to the target's byte-at-a-time `memset`) and in full: the helpers pad
/// or zero what follows the name. `comm` and `thread` must be 8-byte aligned (they are, in
/// every record and in `SockState`).
///
/// A single-threaded process (or its main thread) costs what `bpf_get_current_comm` alone did;
/// another thread two reads more: `current->group_leader`, then that task's `comm`
/// (https://elixir.bootlin.com/linux/v6.12/source/include/linux/sched.h, offsets from BTF;
/// `/proc/<tgid>/comm` prints that same task's, fs/proc/base.c `comm_show`).
#[inline(always)]
pub fn owner_names(comm: &mut [u8; COMM_LEN], thread: &mut [u8; COMM_LEN], tid: u32, tgid: u32) {
    // SAFETY: the helper writes at most COMM_LEN bytes into `thread`.
    unsafe { bpf_get_current_comm(thread.as_mut_ptr().cast(), COMM_LEN as u32) };
    if tid != tgid && leader_comm(comm) {
        return;
    }
    copy_comm(thread, comm);
}

/// The current task's thread-group leader's `comm` into `comm`; false if it cannot be read.
#[inline(always)]
fn leader_comm(comm: &mut [u8; COMM_LEN]) -> bool {
    let off = config!(task.comm);
    if off == 0 || off > MAX_FIELD_OFFSET {
        return false;
    }
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    let Some(leader) = read::<u64>(task, config!(task.group_leader)) else {
        return false;
    };
    if leader == 0 {
        return false;
    }
    // SAFETY: writes at most COMM_LEN bytes into `comm`; a bad address returns an error (and
    // zeroes `comm`).
    let ret = unsafe {
        generated::bpf_probe_read_kernel(
            comm.as_mut_ptr().cast(),
            COMM_LEN as u32,
            (leader + off as u64) as *const _,
        )
    };
    ret == 0 && comm[0] != 0
}

const _: () = {
    use core::mem::offset_of;

    use agent_common::WriteErrorEvent;
    assert!(offset_of!(SockState, comm) % 8 == 0 && offset_of!(SockState, thread) % 8 == 0);
    assert!(offset_of!(WriteErrorEvent, comm) % 8 == 0);
    assert!(offset_of!(WriteErrorEvent, thread) % 8 == 0);
};

/// Copies a task name as two 8-byte words (a byte array copy is a `memcpy` call here).
#[inline(always)]
fn copy_comm(from: &[u8; COMM_LEN], to: &mut [u8; COMM_LEN]) {
    const _: () = assert!(COMM_LEN == 16);
    let (from, to) = (from.as_ptr().cast::<u64>(), to.as_mut_ptr().cast::<u64>());
    // SAFETY: both are 16 bytes and 8-byte aligned (see `owner_names`); volatile so that the
    // two words are not merged back into a `memcpy`.
    unsafe {
        core::ptr::write_volatile(to, core::ptr::read_volatile(from));
        core::ptr::write_volatile(to.add(1), core::ptr::read_volatile(from.add(1)));
    }
}
