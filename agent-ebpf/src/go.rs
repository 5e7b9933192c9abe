//! The Go runtime's deadline timers, hooked with uprobes in each Go binary the agent finds.
//!
//! They run only when a deadline expires, never per request: `runtime.netpollWriteDeadline`
//! (the write deadline alone) and `runtime.netpollDeadline` (a read and a write deadline set to
//! the same instant share one timer) for a connection, and net/http's HTTP/2
//! `(*http2stream).onWriteTimeout` for a stream. An expiry only marks the connection's socket
//! ([`GoDeadline`] in [`GO_DEADLINES`]); the close that follows says what it cost
//! (`GoDeadline::explains`). A reset HTTP/2 stream is the loss itself, reported at once.
//!
//! Uprobes cannot reach socket-local storage: with that backend a mark is only the
//! `GO_DEADLINES` entry (and [`GO_MARKED`]), and the close looks the entry up.
//!
//! Go passes arguments in registers (ABIInternal, Go 1.17+ on x86_64): RAX, RBX, RCX, ...

use agent_common::{
    ExecEvent, GoDeadline, GoStreamEvent, SOCK_NOSPACE_BIT, flag, go_deadline, kind, role,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::uprobe,
    programs::ProbeContext,
};

use crate::{
    ebadf,
    emit::{now, reserve, zero},
    kernel::{self, Mem as _, Probe, read},
    maps::{GO_DEADLINES, SOCKS, updated},
    store::GO_MARKED,
    track::{claim, last_input_ns},
};

/// `runtime.pollDesc.fd`: after the `link *pollDesc` that opens the struct in every Go release.
const POLLDESC_FD: u64 = 8;
/// `net.netFD.pfd.Sysfd`: `poll.FD` opens `netFD`, and its 16-byte `fdMutex` precedes `Sysfd`.
const NETFD_SYSFD: u64 = 16;
/// `http2stream.sc` and `http2stream.id`, the first two fields.
const STREAM_SC: u64 = 0;
const STREAM_ID: u64 = 8;
/// `http2serverConn.conn` (a `net.Conn`), after two pointers: its itab, then its data.
const SERVERCONN_CONN: u64 = 16;

#[inline(always)]
fn user<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user tolerates any address; a bad one returns an error.
    unsafe { bpf_probe_read_user(addr as *const T).ok() }
}

#[inline(always)]
fn regs(ctx: &ProbeContext) -> (u64, u64) {
    // SAFETY: `regs` is the probe's context, readable for its whole run.
    unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx) }
}

/// `netpollWriteDeadline(arg any, seq uintptr, ...)`: `arg` is the `*pollDesc` as an interface
/// (type in RAX, data in RBX). A pollDesc lives outside the Go heap, so the interface holds it
/// indirectly: the data word points at `pd.self`, which holds the pointer (`makeArg`).
#[uprobe]
pub fn go_write_deadline(ctx: ProbeContext) -> u32 {
    on_poll_deadline(&ctx, go_deadline::WRITE);
    0
}

/// `netpollDeadline(arg any, seq uintptr, ...)`: the same, for a shared read and write timer.
#[uprobe]
pub fn go_read_write_deadline(ctx: ProbeContext) -> u32 {
    on_poll_deadline(&ctx, go_deadline::READ_WRITE);
    0
}

#[inline(always)]
fn on_poll_deadline(ctx: &ProbeContext, which: u8) {
    skip_if_empty!();
    let (_, data) = regs(ctx);
    let Some(pd) = user::<u64>(data) else {
        return;
    };
    if let Some(fd) = user::<u64>(pd + POLLDESC_FD) {
        mark(fd, which, 0);
    }
}

/// `(*http2stream).onWriteTimeout()`: the stream in RAX. Its connection is `sc.conn`, a
/// `net.Conn` that is a `*net.TCPConn`, or a `*tls.Conn` (or another wrapper) whose first field
/// is the `net.Conn` it wraps. A wrapper is recognised by that first field: an itab for the
/// same interface as the outer one.
#[uprobe]
pub fn go_h2_write_timeout(ctx: ProbeContext) -> u32 {
    skip_if_empty!(0);
    let (st, _) = regs(&ctx);
    let _ = h2_stream(st);
    0
}

/// The method-value wrapper `(*http2stream).onWriteTimeout-fm` that the timer calls, where the
/// method itself was inlined into it: the stream is in the closure, whose context pointer is in
/// RDX (`struct { F uintptr; R *http2stream }`).
#[uprobe]
pub fn go_h2_write_timeout_fm(ctx: ProbeContext) -> u32 {
    skip_if_empty!(0);
    // SAFETY: see regs().
    let closure = unsafe { (*ctx.regs).rdx };
    if let Some(st) = user::<u64>(closure + 8) {
        let _ = h2_stream(st);
    }
    0
}

#[inline(always)]
fn h2_stream(st: u64) -> Option<()> {
    let sc: u64 = user(st + STREAM_SC)?;
    let stream_id: u32 = user(st + STREAM_ID)?;
    let itab: u64 = user(sc + SERVERCONN_CONN)?;
    let mut conn: u64 = user(sc + SERVERCONN_CONN + 8)?;
    let net_conn: u64 = user(itab)?;
    let mut depth = 0;
    while depth < 3 {
        let first: u64 = user(conn)?;
        if user::<u64>(first) != Some(net_conn) {
            break;
        }
        conn = user(conn + 8)?;
        depth += 1;
    }
    let netfd: u64 = user(conn)?;
    let fd: u64 = user(netfd + NETFD_SYSFD)?;
    mark(fd, go_deadline::H2_STREAM, stream_id)
}

/// Marks the tracked TCP socket behind the current process's `fd` with an expired deadline.
#[inline(always)]
fn mark(fd: u64, which: u8, stream_id: u32) -> Option<()> {
    let file = ebadf::fd_file(fd)?;
    let socket: u64 = read(file, config!(fd.file_private_data))?;
    let sk: u64 = read(socket, config!(fd.socket_sk))?;
    if !Probe::is_inet_tcp(sk) {
        return None;
    }
    let socket_flags: u64 = read(socket, config!(fd.socket_flags)).unwrap_or(0);
    let write_seq = kernel::write_seq::<Probe>(sk);
    let snd_una: u32 = read(sk, config!(sock.tcp_snd_una)).unwrap_or(write_seq);
    let deadline = GoDeadline {
        ns: now(),
        input_ns: last_input_ns::<Probe>(sk),
        copied: kernel::copied_seq::<Probe>(sk),
        unacked: write_seq.wrapping_sub(snd_una),
        write_seq,
        stream_id,
        which,
        writer_waiting: ((socket_flags >> SOCK_NOSPACE_BIT) & 1) as u8,
        _pad: [0; 6],
    };
    // An entry uprobe on a Go function can run twice for one call (a prologue that calls
    // runtime.morestack starts the function over): a second mark overwrites the first with
    // the same facts, and a second stream reset is dropped by the agent.
    if which == go_deadline::H2_STREAM {
        emit_stream_reset(sk, &deadline);
        return Some(());
    }
    if !updated(GO_DEADLINES.insert(sk, deadline, 0)) {
        return None;
    }
    if let Some(marked) = GO_MARKED.get_ptr_mut(0) {
        // SAFETY: one word, only ever set to 1.
        unsafe { *marked = 1 };
    }
    // A state in the LRU map is marked (with socket-local storage there is none here).
    if let Some(st) = SOCKS.get_ptr_mut(sk) {
        // SAFETY: a live map value; concurrent updaters only set flags.
        unsafe { (*st).flags |= flag::GO_DEADLINE };
    }
    Some(())
}

/// The stream's connection as its LRU map state has it, or else as the socket and the current
/// task (the Go server, which owns it) tell.
#[inline(always)]
fn emit_stream_reset(sk: u64, deadline: &GoDeadline) {
    let Some(mut r) = reserve::<GoStreamEvent>(kind::GO_STREAM_RESET) else {
        return;
    };
    let ev = r.ptr();
    let id = bpf_get_current_pid_tgid();
    // SAFETY: `ev` is the reserved record (see `Reserved`).
    unsafe {
        match SOCKS.get_ptr(sk) {
            Some(st) => (*ev).sock = *st,
            None => {
                zero(core::ptr::addr_of_mut!((*ev).sock));
                kernel::fill_identity::<Probe>(sk, &mut (*ev).sock);
                claim(&mut (*ev).sock);
                (*ev).sock.role = role::SERVER;
            }
        }
        (*ev).sock.last_in_ns = last_input_ns::<Probe>(sk);
        (*ev).sk = sk;
        (*ev).go = *deadline;
        (*ev).tgid = (id >> 32) as u32;
        (*ev).pid = id as u32;
    }
    r.send();
}

/// The expired deadline recorded for `sk` (see `Store::go_deadline_possible` for when to look).
#[inline(always)]
pub fn deadline_of(sk: u64) -> Option<GoDeadline> {
    // SAFETY: a live map value, copied out.
    GO_DEADLINES.get_ptr(sk).map(|d| unsafe { *d })
}

/// `sched:sched_process_exec`, in the task that exec'd: the agent looks at its new image.
#[inline(always)]
pub fn on_exec() {
    skip_if_empty!();
    let Some(mut r) = reserve::<ExecEvent>(kind::EXEC) else {
        return;
    };
    let ev = r.ptr();
    // SAFETY: `ev` is the reserved record (see `Reserved`).
    unsafe {
        (*ev).tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*ev)._pad = 0;
    }
    r.send();
}
