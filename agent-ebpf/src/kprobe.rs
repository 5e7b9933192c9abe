//! Entry points for the `kprobe` probe mode: the same functions as [`crate::fentry`], for kernels
//! without BPF trampolines.
//!
//! The kernel runs a bounded number of kretprobe instances at once (at least 10, or twice the
//! CPUs), and a send blocked waiting for space holds one until it returns: with more blocked
//! sends than that, returns are missed. So nothing depends on a send's return here:
//! - the entry kprobe does what a successful send needs ([`send::on_send_entry`]: the owner,
//!   and where the process's reading stood), and parks in [`CALLS`], keyed by the calling
//!   thread, the size asked for and what it replaced;
//! - a failing send is seen at `sk_stream_error()`, which every failing return of `tcp_sendmsg`
//!   and `tcp_sendpage` passes through: the failure is counted and the entry's record undone;
//! - the kretprobe only removes the parked call (a missed one is overwritten by the thread's
//!   next send).

use agent_common::{SIZE_UNKNOWN, Undo, errno};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{kprobe, kretprobe, map},
    maps::HashMap,
    programs::{ProbeContext, RetProbeContext},
};

use crate::{
    close,
    kernel::{self, Probe},
    send,
    store::Shared,
};

/// A send in flight on one thread.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Call {
    sk: u64,
    /// Bytes asked for.
    size: u64,
    /// What the entry's record replaced (`undo_valid` says whether it recorded anything).
    undo: Undo,
    undo_valid: u64,
}

/// In-flight calls by `pid_tgid`. A thread is in at most one of these functions at a time.
#[map(name = "CALLS")]
static CALLS: HashMap<u64, Call> = HashMap::with_max_entries(16384, 0);

#[inline(always)]
fn send_entry(ctx: &ProbeContext, sk: Option<u64>, size: Option<u64>) {
    let (Some(sk), Some(size)) = (sk, size) else {
        return;
    };
    let undo = send::on_send_entry::<Probe, Shared, _>(ctx, sk, size);
    let call = Call {
        sk,
        size,
        undo: undo.unwrap_or(Undo::NONE),
        undo_valid: undo.is_some() as u64,
    };
    let _ = CALLS.insert(bpf_get_current_pid_tgid(), call, 0);
}

// int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)
#[kprobe]
pub fn kprobe_tcp_sendmsg(ctx: ProbeContext) -> u32 {
    send_entry(&ctx, ctx.arg(0), ctx.arg(2));
    0
}

// int tcp_sendpage(struct sock *sk, struct page *page, int offset, size_t size, int flags),
// before Linux 6.5.
#[kprobe]
pub fn kprobe_tcp_sendpage(ctx: ProbeContext) -> u32 {
    send_entry(&ctx, ctx.arg(0), ctx.arg(3));
    0
}

/// The return of tcp_sendmsg and tcp_sendpage: the call is over.
#[kretprobe]
pub fn kretprobe_tcp_send(_ctx: RetProbeContext) -> u32 {
    let _ = CALLS.remove(bpf_get_current_pid_tgid());
    0
}

// int sk_stream_error(struct sock *sk, int flags, int err): the error a failing send returns,
// on its way out of tcp_sendmsg or tcp_sendpage.
#[kprobe]
pub fn kprobe_sk_stream_error(ctx: ProbeContext) -> u32 {
    let (Some(sk), Some(err)) = (ctx.arg::<u64>(0), ctx.arg::<i32>(2)) else {
        return 0;
    };
    // It returns the socket's pending error, if there is one, in place of EPIPE. (Read only then:
    // a non-blocking sender meets this function at every EAGAIN.)
    let err = if err == -(errno::EPIPE as i32) {
        match kernel::sk_err::<Probe>(sk) {
            0 => err,
            e => -(e as i32),
        }
    } else {
        err
    };
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let call = unsafe { CALLS.get(id) }.copied().filter(|c| c.sk == sk);
    let _ = CALLS.remove(id);
    let attempted = match call {
        Some(call) => {
            if call.undo_valid != 0 {
                send::undo_send::<Shared>(sk, call.undo);
            }
            call.size
        }
        // Not inside tcp_sendmsg (kernel TLS fails sends this way too).
        None => SIZE_UNKNOWN,
    };
    send::on_send::<Probe, Shared, _>(&ctx, sk, err, attempted);
    0
}

// void tcp_close(struct sock *sk, long timeout)
#[kprobe]
pub fn kprobe_tcp_close(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg(0) {
        close::on_close::<Shared>(sk);
    }
    0
}
