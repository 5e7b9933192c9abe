//! The send path: what a successful send leaves in the socket's state (the only program that
//! runs per message), and the record of a send that failed because the connection was gone.

use agent_common::{
    Head, SIZE_UNKNOWN, SockState, Undo, WriteErrorEvent, errno, flag, kind, write_error_loses,
};
use aya_ebpf::{EbpfContext, helpers::bpf_get_current_pid_tgid};

use crate::{
    emit::reserve,
    kernel::{self, Mem},
    store::Store,
    track::{self, claim},
};

/// A send on `sk` returned `ret` (bytes queued or -errno). `attempted` is the size asked for, or
/// [`SIZE_UNKNOWN`] (function probes know it, `sock:sock_send_length` does not).
///
/// A plain integer, not an `Option`: passing a constant `None` to a function the compiler keeps
/// out of line leaves the payload register unset, and the verifier rejects reading it.
pub fn on_send<M: Mem, S: Store, C: EbpfContext>(ctx: &C, sk: u64, ret: i32, attempted: u64) {
    skip_if_empty!();
    if ret < 0 {
        let e = ret.unsigned_abs();
        if e == errno::EPIPE || e == errno::ECONNRESET || e == errno::ENOTCONN {
            on_write_error::<M, S>(sk, e, attempted);
        }
        return;
    }
    if ret > 0 {
        record_write::<M, S, C>(ctx, sk, ret as u32, ret as u32);
    }
}

/// What a send of `len` bytes on `sk` leaves in its state: the owner, where the process's
/// reading stood, and what the message was (an answer, a goodbye). `queued` is what this send
/// queued, if that is in `write_seq` already (0 at a send's entry). Returns what it replaced,
/// when it recorded anything.
///
/// Nothing is stored per write that the socket itself keeps (bytes written: `write_seq`): a store
/// on every send dirties the map value's cache line, which the other CPU then has to fetch back
/// (entries share lines with their neighbours).
#[inline(always)]
fn record_write<M: Mem, S: Store, C: EbpfContext>(
    ctx: &C,
    sk: u64,
    queued: u32,
    len: u32,
) -> Option<Undo> {
    // SAFETY: a live state; concurrent updaters can only make the counters approximate.
    let st = unsafe { &mut *track::lookup_or_adopt::<M, S, C>(ctx, sk, queued)? };
    claim(st);
    // Where the process's reading stood at this write: input read after it is unanswered.
    // (Not gated on `rcv_nxt`: that field's cache line is the one the acknowledgements keep
    // writing, so reading it to spare this read costs more than it saves.)
    if !st.send_needs_read_position() {
        return None;
    }
    let tp = M::tcp(sk)?;
    let undo = st.undo_point();
    // The message's first bytes, only where its kind depends on them: once per connection, and
    // for the small messages of a few protocols. Two words zeroed by volatile stores: a plain
    // `[0u64; 2]` whose address is taken compiles to a call of the target's byte-at-a-time
    // memset, on every server send (`cargo xtask bench --profile` showed it).
    let mut head = core::mem::MaybeUninit::<[u64; 2]>::uninit();
    let words = head.as_mut_ptr().cast::<u64>();
    // SAFETY: both words of `head`, written before any read.
    unsafe {
        core::ptr::write_volatile(words, 0);
        core::ptr::write_volatile(words.add(1), 0);
    }
    if st.send_needs_peek(len) {
        // SAFETY: two u64s are HEAD_LEN bytes.
        kernel::peek_send(len, unsafe { &mut *head.as_mut_ptr().cast::<Head>() });
    }
    // SAFETY: as above.
    let head = unsafe { &*head.as_ptr().cast::<Head>() };
    st.record_send(kernel::copied_seq::<M>(tp), len, head, || {
        track::since_last_input_ns::<M>(tp)
    });
    Some(undo)
}

/// kprobe mode: a send of `size` bytes starts on `sk`, in the caller's context. What
/// [`on_send`] does for a send that succeeds ([`record_write`]) is done here, at the entry,
/// which a kprobe never misses. A kretprobe can miss a return: the kernel runs a bounded number
/// of instances at once, and a send blocked on a slow reader holds one; a missed response would
/// then leave the request looking unanswered. Returns what it replaced, for [`undo_send`] if
/// the send fails.
pub fn on_send_entry<M: Mem, S: Store, C: EbpfContext>(
    ctx: &C,
    sk: u64,
    size: u64,
) -> Option<Undo> {
    skip_if_empty!(None);
    if size == 0 {
        return None;
    }
    let len = if size > u32::MAX as u64 {
        u32::MAX
    } else {
        size as u32
    };
    record_write::<M, S, C>(ctx, sk, 0, len)
}

/// The send [`on_send_entry`] recorded failed: it wrote nothing, so the read position, the
/// goodbye and the first-write flags go back to what they were.
pub fn undo_send<S: Store>(sk: u64, undo: Undo) {
    skip_if_empty!();
    if let Some(st) = S::get(sk) {
        // SAFETY: see record_write.
        unsafe { (*st).undo_send(&undo) };
    }
}

/// EPIPE / ECONNRESET / ENOTCONN from a send on a TCP socket: a record where
/// [`write_error_loses`] says the write lost data.
fn on_write_error<M: Mem, S: Store>(sk: u64, e: u32, attempted: u64) {
    let Some(tp) = M::tcp(sk) else {
        return;
    };
    if !M::is_inet_tcp(tp) {
        return;
    }
    let tracked = S::get(tp);
    let known = (attempted != SIZE_UNKNOWN).then_some(attempted);
    // SAFETY: a live map value, read in place.
    if !write_error_loses(e, tracked.map(|st| unsafe { &*st }), known) {
        return;
    }
    emit_write_error(tp, e, attempted, |sock| match S::get(tp) {
        Some(st) => {
            // SAFETY: a live map value, copied out.
            *sock = unsafe { *st };
            track::settle::<M>(tp, sock, sock.flags & flag::FIN_SENT != 0);
            sock.last_in_ns = track::last_input_ns::<M>(tp);
            true
        }
        None => {
            *sock = SockState::default();
            kernel::fill_identity::<M>(tp, sock);
            false
        }
    });
}

/// Writes a write-error record for the current task. `fill` puts the socket's state into the
/// record in place (not on the 512-byte stack) and says whether the socket was tracked.
#[inline(always)]
pub fn emit_write_error(
    sk: u64,
    e: u32,
    attempted: u64,
    fill: impl FnOnce(&mut SockState) -> bool,
) {
    let Some(mut r) = reserve::<WriteErrorEvent>(kind::WRITE_ERROR) else {
        return;
    };
    let ev = r.ptr();
    let id = bpf_get_current_pid_tgid();
    // SAFETY: `ev` is the reserved record (see `Reserved`).
    unsafe {
        (*ev).tracked = fill(&mut (*ev).sock) as u32;
        (*ev).sk = sk;
        (*ev).size_known = (attempted != SIZE_UNKNOWN) as u32;
        (*ev).attempted = if attempted == SIZE_UNKNOWN {
            0
        } else {
            attempted
        };
        (*ev).errno = e;
        (*ev).tgid = (id >> 32) as u32;
        (*ev).pid = id as u32;
        kernel::owner_names(&mut (*ev).comm, &mut (*ev).thread, (*ev).pid, (*ev).tgid);
        (*ev)._pad = 0;
    }
    r.send();
}
