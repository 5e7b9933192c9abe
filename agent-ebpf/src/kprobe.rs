//! Entry points for the `kprobe` probe mode: the same functions as [`crate::fentry`], for kernels
//! without BPF trampolines.
//!
//! A kretprobe sees only the return value, so the entry probe parks the arguments it needs in
//! [`CALLS`], keyed by the calling thread, and the return probe takes them back.
//!
//! The kernel runs a bounded number of kretprobe instances at once (at least 10, or twice the
//! CPUs), and a send blocked waiting for space holds one until it returns: with more blocked
//! sends than that, returns are missed. So a failed send is not taken from the kretprobe but from
//! a plain kprobe on `sk_stream_error()`, which every failing return of `tcp_sendmsg` and
//! `tcp_sendpage` passes through; the kretprobe handles the sends that succeed.

use agent_common::{SIZE_UNKNOWN, errno};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{kprobe, kretprobe, map},
    maps::HashMap,
    programs::{ProbeContext, RetProbeContext},
};

use crate::{
    kernel::{self, Probe},
    state,
};

/// Arguments of a send in flight on one thread.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Call {
    sk: u64,
    /// Bytes asked for.
    arg: u64,
}

/// In-flight calls by `pid_tgid`. A thread is in at most one of these functions at a time; an
/// entry left by a probe that missed its return is overwritten by the thread's next call.
#[map(name = "CALLS")]
static CALLS: HashMap<u64, Call> = HashMap::with_max_entries(16384, 0);

#[inline(always)]
fn park(sk: Option<u64>, arg: Option<u64>) {
    if let (Some(sk), Some(arg)) = (sk, arg) {
        let _ = CALLS.insert(bpf_get_current_pid_tgid(), Call { sk, arg }, 0);
    }
}

#[inline(always)]
fn take() -> Option<Call> {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let call = unsafe { CALLS.get(id) }.copied();
    let _ = CALLS.remove(id);
    call
}

// int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)
#[kprobe]
pub fn kprobe_tcp_sendmsg(ctx: ProbeContext) -> u32 {
    park(ctx.arg(0), ctx.arg(2));
    0
}

// int tcp_sendpage(struct sock *sk, struct page *page, int offset, size_t size, int flags),
// before Linux 6.5.
#[kprobe]
pub fn kprobe_tcp_sendpage(ctx: ProbeContext) -> u32 {
    park(ctx.arg(0), ctx.arg(3));
    0
}

/// The return of tcp_sendmsg and tcp_sendpage: the sends that succeed (a failure was handled at
/// `sk_stream_error`).
#[kretprobe]
pub fn kretprobe_tcp_send(ctx: RetProbeContext) -> u32 {
    if let Some(call) = take() {
        let ret: i32 = ctx.ret();
        if ret >= 0 {
            state::on_send::<Probe, _>(&ctx, call.sk, ret, call.arg);
        }
    }
    0
}

// int sk_stream_error(struct sock *sk, int flags, int err): the error a failing send returns,
// at its way out of tcp_sendmsg or tcp_sendpage, with no kretprobe instance involved.
#[kprobe]
pub fn kprobe_sk_stream_error(ctx: ProbeContext) -> u32 {
    let (Some(sk), Some(err)) = (ctx.arg::<u64>(0), ctx.arg::<i32>(2)) else {
        return 0;
    };
    // It returns the socket's pending error, if there is one, in place of EPIPE.
    let err = match kernel::sk_err::<Probe>(sk) {
        e if err == -(errno::EPIPE as i32) && e != 0 => -(e as i32),
        _ => err,
    };
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out; the kretprobe removes the entry.
    let attempted = match unsafe { CALLS.get(id) }.copied() {
        Some(call) if call.sk == sk => call.arg,
        // Not inside tcp_sendmsg (kernel TLS fails sends this way too), or a stale entry.
        _ => SIZE_UNKNOWN,
    };
    state::on_send::<Probe, _>(&ctx, sk, err, attempted);
    0
}

// void tcp_close(struct sock *sk, long timeout)
#[kprobe]
pub fn kprobe_tcp_close(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg(0) {
        state::on_close::<Probe, _>(&ctx, sk);
    }
    0
}
