//! Every map the programs share with each other and with the agent.

use agent_common::{ClosedFd, Config, GoDeadline, SockState, stat};
use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
};

/// Written by the agent before load (`EbpfLoader::set_global`); read with `read_volatile` so the
/// compiler cannot constant-fold the zeroed initialiser (see `config!`).
#[unsafe(no_mangle)]
pub static CONFIG: Config = unsafe { core::mem::zeroed() };

/// Per-socket state keyed by `struct sock *`. The agent resizes it from `--max-sockets`.
#[map(name = "SOCKS")]
pub static SOCKS: LruHashMap<u64, SockState> = LruHashMap::with_max_entries(65536, 0);

/// One blank socket state per CPU, filled before it is copied into SOCKS (see `track::fresh`).
#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<SockState> = PerCpuArray::with_max_entries(1, 0);

/// Records for userspace (`agent_common::records`).
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// TCP socket fds closed lately, by (tgid, fd), for the EBADF detector.
#[map(name = "CLOSED_FDS")]
pub static CLOSED_FDS: LruHashMap<u64, ClosedFd> = LruHashMap::with_max_entries(16384, 0);

/// Expired Go write deadlines by `struct sock *`, valid while the socket's state has
/// `flag::GO_DEADLINE`. Never deleted: a recycled socket address starts without the flag, and
/// the LRU drops what is old.
#[map(name = "GO_DEADLINES")]
pub static GO_DEADLINES: LruHashMap<u64, GoDeadline> = LruHashMap::with_max_entries(16384, 0);

/// Counters, see `agent_common::stat`.
#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Adds one to a [`stat`] counter.
#[inline(always)]
pub fn bump(idx: u32) {
    if let Some(v) = STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *v += 1 };
    }
}

/// `-EEXIST`: an insert with `BPF_NOEXIST` found the key present (another CPU won the race).
const EEXIST: i32 = -17;

/// Counts a map update the kernel refused ([`stat::MAP_UPDATE_FAILED`]), the lost race of a
/// `BPF_NOEXIST` insert excepted. Returns whether the update took.
#[inline(always)]
pub fn updated(result: Result<(), i32>) -> bool {
    match result {
        Ok(()) => true,
        Err(EEXIST) => false,
        Err(_) => {
            bump(stat::MAP_UPDATE_FAILED);
            false
        }
    }
}
