//! lostwrite's kernel side: per-socket bookkeeping and the records of lost data.
//!
//! The programs decide nothing about loss on their own. They keep a little state per socket in
//! an LRU map and emit a record only where a detector's decision, shared with the agent
//! (`agent_common::detectors`), says it may be one: a close by the local side of a connection
//! that still owes its peer an answer, an abort with data at stake, a failed write that lost
//! data. No program runs when a process reads: what it read is taken from the socket's own
//! sequence numbers when a record is written. A send reads the first bytes of its message from
//! the syscall's buffer once per connection (they name the protocol), and again only for the
//! small messages of protocols whose goodbyes are told by their bytes. Healthy traffic therefore
//! costs one map lookup per send, a few per connection, and never touches the ring buffer.
//!
//! The modules: [`maps`], [`emit`] (one function writes every record), [`track`] (a
//! connection's state entry and owner), [`send`], [`close`] (state changes, teardowns, aborts),
//! [`ebadf`] and [`go`] (the optional detectors' hooks), [`kernel`] (reading kernel memory).
//! This file holds the tracepoint entry points; [`fentry`] and [`kprobe`] hold the function
//! probes'.
//!
//! Every tracepoint has two entry points, a BTF one (`tp_btf`, typed arguments, much cheaper:
//! plain loads instead of a helper call per field) and a classic one that reads its fields at
//! the offsets the agent parsed from tracefs. Both call the same handler; the agent attaches one
//! of the two.
#![no_std]
#![no_main]

/// Reads one field of [`maps::CONFIG`]. The volatile read stops the compiler from
/// constant-folding the zeroed initialiser; reading single fields keeps the whole struct off the
/// 512-byte stack.
macro_rules! config {
    ($($field:ident).+) => {
        // SAFETY: CONFIG is a plain static that nothing writes after load.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(crate::maps::CONFIG.$($field).+)) }
    };
}

/// Defines an entry point twice, one program per [`store`] backend, with `$S` naming the store
/// in its body: `$shared` keeps socket state in the LRU map, `$local` in socket-local storage.
/// The agent attaches one of the two.
macro_rules! per_store {
    (#[$attr:meta] fn $shared:ident / $local:ident ($ctx:ident: $ctx_ty:ty) -> $ret:ty, $S:ident => $body:block) => {
        #[$attr]
        pub fn $shared($ctx: $ctx_ty) -> $ret {
            type $S = crate::store::Shared;
            $body
        }

        #[$attr]
        pub fn $local($ctx: $ctx_ty) -> $ret {
            type $S = crate::store::Local;
            $body
        }
    };
}

/// Returns at once when the agent runs with `--empty-programs` (see `Config::empty_programs`).
macro_rules! skip_if_empty {
    () => {
        skip_if_empty!(())
    };
    ($ret:expr) => {
        if config!(empty_programs) != 0 {
            return $ret;
        }
    };
}

mod close;
mod ebadf;
mod emit;
mod fentry;
mod go;
mod kernel;
mod kprobe;
mod maps;
mod send;
mod store;
mod track;

use agent_common::{NO_REASON, SIZE_UNKNOWN};
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use kernel::{Direct, Probe};
use store::Shared;

// --- sock:sock_send_length (struct sock *sk, int ret, int flags) ---

per_store! {
    #[btf_tracepoint(function = "sock_send_length")]
    fn btf_sock_send_length / btf_sock_send_length_local(ctx: BtfTracePointContext) -> u32, S => {
        send::on_send::<Direct, S, _>(&ctx, ctx.arg(0), ctx.arg(1), SIZE_UNKNOWN);
        0
    }
}

#[tracepoint]
pub fn tp_sock_send_length(ctx: TracePointContext) -> u32 {
    if let Some((sk, ret)) = kernel::len_args(&ctx) {
        send::on_send::<Probe, Shared, _>(&ctx, sk, ret, SIZE_UNKNOWN);
    }
    0
}

// --- sock:inet_sock_set_state (const struct sock *sk, const int oldstate, const int newstate) ---

per_store! {
    #[btf_tracepoint(function = "inet_sock_set_state")]
    fn btf_inet_sock_set_state / btf_inet_sock_set_state_local(ctx: BtfTracePointContext) -> u32, S => {
        let old: i32 = ctx.arg(1);
        let new: i32 = ctx.arg(2);
        close::on_state::<Direct, S>(ctx.arg(0), old as u32, new as u32);
        0
    }
}

#[tracepoint]
pub fn tp_inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let (sk, old, new) = (
        config!(tp.state_sk),
        config!(tp.state_old),
        config!(tp.state_new),
    );
    // SAFETY: offsets come from this tracepoint's tracefs format and are bounds-checked by the
    // agent; `read_at` itself goes through bpf_probe_read.
    let args = unsafe {
        (
            ctx.read_at::<u64>(sk as usize),
            ctx.read_at::<i32>(old as usize),
            ctx.read_at::<i32>(new as usize),
        )
    };
    if let (Ok(sk), Ok(old), Ok(new)) = args {
        close::on_state::<Probe, Shared>(sk, old as u32, new as u32);
    }
    0
}

// --- tcp:tcp_destroy_sock (struct sock *sk), for the LRU map only ---

#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn btf_tcp_destroy_sock(ctx: BtfTracePointContext) -> u32 {
    track::on_destroy(ctx.arg(0));
    0
}

#[tracepoint]
pub fn tp_tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    let off = config!(tp.destroy_sk) as usize;
    // SAFETY: see tp_inet_sock_set_state.
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(off) } {
        track::on_destroy(sk);
    }
    0
}

// --- tcp:tcp_receive_reset (struct sock *sk) ---

per_store! {
    #[btf_tracepoint(function = "tcp_receive_reset")]
    fn btf_tcp_receive_reset / btf_tcp_receive_reset_local(ctx: BtfTracePointContext) -> u32, S => {
        close::on_receive_reset::<Direct, S>(ctx.arg(0));
        0
    }
}

#[tracepoint]
pub fn tp_tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let off = config!(tp.receive_reset_sk) as usize;
    // SAFETY: see tp_inet_sock_set_state.
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(off) } {
        close::on_receive_reset::<Probe, Shared>(sk);
    }
    0
}

// --- tcp:tcp_send_reset (const struct sock *sk, const struct sk_buff *skb[, enum sk_rst_reason]) ---

per_store! {
    #[btf_tracepoint(function = "tcp_send_reset")]
    fn btf_tcp_send_reset / btf_tcp_send_reset_local(ctx: BtfTracePointContext) -> u32, S => {
        // `sk` is NULL for resets answering segments that match no socket; the verifier
        // refuses arithmetic on the pointer until it is checked.
        let sk: u64 = ctx.arg(0);
        if sk != 0 {
            close::on_send_reset::<Direct, S>(sk, NO_REASON);
        }
        0
    }
}

// The same, on kernels whose tracepoint has the reason argument (Linux 6.10+). A separate
// program because reading a third argument that does not exist fails verification.
per_store! {
    #[btf_tracepoint(function = "tcp_send_reset")]
    fn btf_tcp_send_reset_reason / btf_tcp_send_reset_reason_local(ctx: BtfTracePointContext) -> u32, S => {
        let sk: u64 = ctx.arg(0);
        if sk != 0 {
            close::on_send_reset::<Direct, S>(sk, ctx.arg::<u32>(2));
        }
        0
    }
}

#[tracepoint]
pub fn tp_tcp_send_reset(ctx: TracePointContext) -> u32 {
    let (sk_off, reason_off) = (config!(tp.send_reset_sk), config!(tp.send_reset_reason));
    // SAFETY: see tp_inet_sock_set_state.
    let sk = unsafe { ctx.read_at::<u64>(sk_off as usize) };
    let reason = match reason_off {
        0 => NO_REASON,
        // SAFETY: see tp_inet_sock_set_state.
        off => unsafe { ctx.read_at::<u32>(off as usize) }.unwrap_or(NO_REASON),
    };
    if let Ok(sk) = sk {
        close::on_send_reset::<Probe, Shared>(sk, reason);
    }
    0
}

// --- sched:sched_process_exec (struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm),
// only with the Go runtime hooks: a new program image, which may be a Go binary ---

#[btf_tracepoint(function = "sched_process_exec")]
pub fn btf_sched_process_exec(_ctx: BtfTracePointContext) -> u32 {
    go::on_exec();
    0
}

#[tracepoint]
pub fn tp_sched_process_exec(_ctx: TracePointContext) -> u32 {
    go::on_exec();
    0
}

// --- raw syscalls, only with --detect-ebadf: sys_enter(regs, id), sys_exit(regs, ret) ---

#[btf_tracepoint(function = "sys_enter")]
pub fn btf_sys_enter(ctx: BtfTracePointContext) -> u32 {
    let id: i64 = ctx.arg(1);
    if id as u64 == agent_common::nr::CLOSE {
        let regs: u64 = ctx.arg(0);
        if let Some(fd) = kernel::read::<u64>(regs, config!(fd.regs_arg0)) {
            ebadf::on_close(fd);
        }
    }
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn btf_sys_exit(ctx: BtfTracePointContext) -> u32 {
    let ret: i64 = ctx.arg(1);
    if ret == -(agent_common::errno::EBADF as i64) {
        let regs: u64 = ctx.arg(0);
        let nr = kernel::read::<u64>(regs, config!(fd.regs_nr)).unwrap_or(u64::MAX);
        let fd = kernel::read::<u64>(regs, config!(fd.regs_arg0)).unwrap_or(u64::MAX);
        let count = kernel::read::<u64>(regs, config!(fd.regs_arg2)).unwrap_or(0);
        ebadf::on_ebadf(nr, fd, count);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
