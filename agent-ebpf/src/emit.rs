//! Writing a record to the `EVENTS` ring buffer, the same way for every kind.

use agent_common::{
    AbortEvent, EventHeader, ExecEvent, GoStreamEvent, TeardownEvent, WriteErrorEvent, stat,
};
use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::ring_buf::RingBufEntry};

use crate::maps::{EVENTS, bump};

/// The monotonic clock records are stamped with.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// A ring-buffer record.
///
/// # Safety
/// The type is `#[repr(C)]` and starts with its [`EventHeader`].
pub unsafe trait Record {
    /// Whether the record counts in `stat::EVENTS_SENT`, which the bench holds at zero for
    /// healthy traffic: exec records, sent for every exec whatever the traffic, are left out.
    const COUNTED: bool = true;
}

// SAFETY: each is `#[repr(C)]` with `header: EventHeader` first (agent_common::records).
unsafe impl Record for TeardownEvent {}
// SAFETY: as above.
unsafe impl Record for AbortEvent {}
// SAFETY: as above.
unsafe impl Record for WriteErrorEvent {}
// SAFETY: as above.
unsafe impl Record for GoStreamEvent {}
// SAFETY: as above.
unsafe impl Record for ExecEvent {
    const COUNTED: bool = false;
}

/// A record reserved on the ring buffer, its header written: the caller writes every other
/// field in place (not on the 512-byte stack), padding included so that nothing stale from the
/// ring buffer's memory leaks out, then sends it.
///
/// A guard rather than a function taking a closure to fill the record: a closure's captures go
/// to the stack, and an `Option` among them can leave a payload slot unwritten, which the
/// verifier refuses to read.
pub struct Reserved<T: Record + 'static>(RingBufEntry<T>);

/// Reserves a `T` and writes its header (`kind`, size, time). A full ring buffer loses the
/// record and counts it in `stat::EVENTS_DROPPED`.
#[inline(always)]
pub fn reserve<T: Record + 'static>(kind: u32) -> Option<Reserved<T>> {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        bump(stat::EVENTS_DROPPED);
        return None;
    };
    // SAFETY: the entry is ring-buffer memory sized for a T, which starts with its header.
    unsafe {
        entry.as_mut_ptr().cast::<EventHeader>().write(EventHeader {
            kind,
            len: core::mem::size_of::<T>() as u32,
            ts_ns: now(),
        })
    };
    Some(Reserved(entry))
}

impl<T: Record + 'static> Reserved<T> {
    /// The record, to write its fields.
    #[inline(always)]
    pub fn ptr(&mut self) -> *mut T {
        self.0.as_mut_ptr()
    }

    /// Hands the record to userspace.
    #[inline(always)]
    pub fn send(self) {
        self.0.submit(0);
        if T::COUNTED {
            bump(stat::EVENTS_SENT);
        }
    }
}

/// Zeroes `*p` (a record or state, a whole number of aligned words) with one 8-byte store per
/// word: `write_bytes` would call the target's byte-at-a-time `memset`.
#[inline(always)]
pub fn zero<T>(p: *mut T) {
    let words = p.cast::<u64>();
    for i in 0..core::mem::size_of::<T>() / 8 {
        // SAFETY: `p` is an aligned T, a whole number of words long (the wire structs have no
        // implicit padding and 8-byte alignment). Volatile, so that the loop is not turned back
        // into a memset call.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

const _: () = assert!(core::mem::size_of::<agent_common::SockState>().is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<agent_common::GoDeadline>().is_multiple_of(8));
