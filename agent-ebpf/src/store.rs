//! Where a socket's state lives: the two backends every handler is written over.
//!
//! - [`Shared`]: the `SOCKS` LRU hash map, keyed by the `struct sock` address. Works from every
//!   program type (kprobes and classic tracepoints pass the socket as a plain number), costs a
//!   hash lookup per event, an insert per connection, and a `tcp:tcp_destroy_sock` program run
//!   to delete the entry. Bounded by `--max-sockets`; a full map evicts its oldest entries.
//! - [`Local`]: socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`), a slot hanging off the socket
//!   itself. A lookup is a pointer walk from the socket (no hashing, no shared LRU lists), and
//!   the kernel frees the slot with the socket, so nothing runs at its destruction. Only BTF
//!   programs (tp_btf, fentry/fexit) may use it, and only from Linux 5.11, with the socket as a
//!   BTF pointer. Each slot is charged to its socket's option memory (`sk_omem_alloc`, within
//!   `net.core.optmem_max`), so it is bounded by the sockets themselves.
//!
//! The agent picks one per load (its compatibility table); the BTF entry points come in one
//! program per backend, generated from the same handler.

use agent_common::{SockState, flag, stat};
use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    btf_maps::SkStorage,
    cty::c_void,
    helpers::generated::bpf_sk_storage_get,
    macros::{btf_map, map},
    maps::Array,
};

use crate::maps::{SOCKS, bump, updated};

/// `SOCKS.insert` flags.
const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;

/// Per-socket state in socket-local storage, for [`Local`].
#[btf_map]
pub static SOCK_STATES: SkStorage<SockState> = SkStorage::new();

/// Set to 1 by the Go runtime hooks once any Go write deadline has expired (see
/// [`Store::go_deadline_possible`]).
#[map(name = "GO_MARKED")]
pub static GO_MARKED: Array<u64> = Array::with_max_entries(1, 0);

/// A place for socket states.
pub trait Store {
    /// The state is freed with the socket (no program runs at its destruction).
    const FREED_WITH_SOCKET: bool;

    /// `sk`'s state, if it is tracked.
    fn get(sk: u64) -> Option<*mut SockState>;

    /// Starts tracking `sk` with `st` (copied). `replace`: a state already there is stale (a
    /// recycled `struct sock` address, or a socket connecting again) and is overwritten; else it
    /// belongs to a concurrent adopter on another CPU and is kept. True if `st` went in.
    fn put(sk: u64, st: &SockState, replace: bool) -> bool;

    /// The connection reached CLOSE: where the state is freed with the socket, this is where it
    /// stops counting as tracked.
    fn closed(st: &mut SockState);

    /// Whether an expired Go write deadline may be recorded for a socket in this state (a lookup
    /// in `GO_DEADLINES` is then worth it).
    fn go_deadline_possible(flags: u16) -> bool;
}

/// The `SOCKS` LRU hash map.
pub struct Shared;

impl Store for Shared {
    const FREED_WITH_SOCKET: bool = false;

    #[inline(always)]
    fn get(sk: u64) -> Option<*mut SockState> {
        SOCKS.get_ptr_mut(sk)
    }

    #[inline(always)]
    fn put(sk: u64, st: &SockState, replace: bool) -> bool {
        let flags = if replace { BPF_ANY } else { BPF_NOEXIST };
        updated(SOCKS.insert(sk, st, flags))
    }

    /// `tcp:tcp_destroy_sock` deletes the entry and counts it released.
    #[inline(always)]
    fn closed(_st: &mut SockState) {}

    /// The Go hooks mark a tracked socket's state ([`flag::GO_DEADLINE`]).
    #[inline(always)]
    fn go_deadline_possible(flags: u16) -> bool {
        flags & flag::GO_DEADLINE != 0
    }
}

/// Socket-local storage.
pub struct Local;

impl Local {
    #[inline(always)]
    fn storage(sk: u64, value: *const SockState, flags: u64) -> *mut SockState {
        // SAFETY: `sk` is the program's BTF-typed socket pointer (the verifier refuses anything
        // else), and `value` is null or a whole `SockState`, the map's value type.
        unsafe {
            bpf_sk_storage_get(
                (&raw const SOCK_STATES).cast_mut().cast::<c_void>(),
                sk as *mut c_void,
                value.cast_mut().cast::<c_void>(),
                flags,
            )
        }
        .cast::<SockState>()
    }
}

impl Store for Local {
    const FREED_WITH_SOCKET: bool = true;

    #[inline(always)]
    fn get(sk: u64) -> Option<*mut SockState> {
        let st = Self::storage(sk, core::ptr::null(), 0);
        (!st.is_null()).then_some(st)
    }

    #[inline(always)]
    fn put(sk: u64, st: &SockState, replace: bool) -> bool {
        if let Some(old) = Self::get(sk) {
            if !replace {
                return false;
            }
            // SAFETY: this socket's own slot.
            unsafe { *old = *st };
            return true;
        }
        if !Self::storage(sk, st, BPF_SK_STORAGE_GET_F_CREATE.into()).is_null() {
            return true;
        }
        // A concurrent adopter created it first, or the kernel refused (no memory, a socket
        // already being freed, over optmem_max).
        if Self::get(sk).is_none() {
            bump(stat::MAP_UPDATE_FAILED);
        }
        false
    }

    #[inline(always)]
    fn closed(st: &mut SockState) {
        if st.flags & flag::RELEASED == 0 {
            st.flags |= flag::RELEASED;
            bump(stat::SOCKETS_RELEASED);
        }
    }

    /// The Go hooks, uprobes, cannot reach socket-local storage: once any deadline expired,
    /// every close that may be explained by one looks it up.
    #[inline(always)]
    fn go_deadline_possible(_flags: u16) -> bool {
        GO_MARKED.get(0).is_some_and(|m| *m != 0)
    }
}
