//! The kernel-side counters, and how many sockets the `SOCKS` LRU map holds right now.
//!
//! With socket-local storage there is no map to walk and nothing is evicted: a socket counts as
//! tracked from its state's creation until the connection reaches CLOSE (`SOCKETS_RELEASED`).
//!
//! A BPF LRU map evicts silently when it is full: no program runs, no counter moves. The agent
//! therefore derives evictions at scrape time. Every entry that ever entered the map was counted
//! in `SOCKETS_TRACKED`; it leaves either through `tcp:tcp_destroy_sock` (counted in
//! `SOCKETS_RELEASED`) or by eviction (an in-place replacement of a stale entry counts as one
//! too), or it is still there. So `evictions = tracked - released - live`, with `live` counted
//! by walking the map.
//!
//! The walk uses `BPF_MAP_LOOKUP_BATCH` (Linux 5.6): it walks bucket by bucket with a cursor, so
//! unlike `BPF_MAP_GET_NEXT_KEY` it never restarts from the first key when the current one is
//! deleted under it, and it takes a few syscalls for the whole map instead of one per entry.
//! `tracked` is read before the walk and `released` after it, so entries that come or go during
//! the walk can only make the figure lag, not overshoot (save for the nanoseconds between a
//! program's map update and its counter increment).

use std::os::fd::{AsFd as _, AsRawFd as _};

use agent_common::{SockState, stat};
use aya::maps::{MapData, PerCpuArray};
use tracing::warn;

/// Totals read from the programs' per-CPU counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub events_dropped: u64,
    pub events_sent: u64,
    pub sockets_tracked: u64,
    pub sockets_released: u64,
    /// Map updates the programs' maps refused, and kernel reads that failed.
    pub map_update_failed: u64,
    pub read_failed: u64,
    /// Entries in the SOCKS map right now, when they could be counted.
    pub sockets_live: Option<u64>,
    /// Runs of the agent's programs the kernel skipped because the same program was already
    /// running on that CPU (`recursion_misses` in their fdinfo).
    pub runs_skipped: u64,
}

/// The sum of `recursion_misses` over this process's BPF programs, from their fdinfo: the kernel
/// does not run a tracing program inside itself (a state change in a softirq that interrupts the
/// same program in a process), and counts each run it skipped there (Linux 5.12+; 0 before).
pub fn runs_skipped() -> u64 {
    let Ok(fds) = std::fs::read_dir("/proc/self/fdinfo") else {
        return 0;
    };
    fds.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|info| recursion_misses(&info))
        .sum()
}

fn recursion_misses(fdinfo: &str) -> u64 {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Entries per batch call; the key and value buffers are kept between scrapes.
const BATCH: usize = 4096;

pub struct StatsReader {
    array: PerCpuArray<MapData, u64>,
    /// The LRU map of socket states, when the programs use it.
    socks: Option<MapData>,
    keys: Vec<u64>,
    values: Vec<u8>,
    /// The batch walk failed once (a kernel without it); not retried.
    walk_unavailable: bool,
}

impl StatsReader {
    pub fn new(array: PerCpuArray<MapData, u64>, socks: Option<MapData>) -> Self {
        Self {
            array,
            socks,
            keys: vec![0; BATCH],
            values: vec![0; BATCH * size_of::<SockState>()],
            walk_unavailable: false,
        }
    }

    fn total(&self, idx: u32) -> u64 {
        self.array
            .get(&idx, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    pub fn read(&mut self) -> KernelStats {
        let sockets_tracked = self.total(stat::SOCKETS_TRACKED);
        let sockets_live = if self.walk_unavailable || self.socks.is_none() {
            None
        } else {
            match self.count_live() {
                Ok(n) => Some(n),
                Err(e) => {
                    warn!(
                        "cannot count the entries of the SOCKS map ({e}); \
                         lostwrite_socket_evictions_total stays 0"
                    );
                    self.walk_unavailable = true;
                    None
                }
            }
        };
        KernelStats {
            events_dropped: self.total(stat::EVENTS_DROPPED),
            events_sent: self.total(stat::EVENTS_SENT),
            sockets_tracked,
            sockets_released: self.total(stat::SOCKETS_RELEASED),
            map_update_failed: self.total(stat::MAP_UPDATE_FAILED),
            read_failed: self.total(stat::READ_FAILED),
            sockets_live,
            runs_skipped: runs_skipped(),
        }
    }

    /// Entries in the SOCKS map, by batch lookups over all of it.
    fn count_live(&mut self) -> std::io::Result<u64> {
        let Some(socks) = &self.socks else {
            return Ok(0);
        };
        let fd = socks.fd().as_fd().as_raw_fd();
        let mut cursor = 0u64;
        let mut first = true;
        let mut live = 0u64;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { &raw const cursor as u64 },
                out_batch: &raw mut cursor as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: BATCH as u32,
                map_fd: fd as u32,
                elem_flags: 0,
                flags: 0,
            };
            first = false;
            // SAFETY: `attr` is a valid `bpf_attr` prefix for this command; the key, value and
            // cursor buffers outlive the call and hold `count` entries (the cursor of a hash
            // map is a u32 bucket index, which fits in the u64).
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &raw mut attr,
                    size_of::<BatchAttr>(),
                )
            };
            if rc == 0 {
                live += u64::from(attr.count);
                continue;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                // The walk is over; `count` holds the last entries.
                Some(libc::ENOENT) => return Ok(live + u64::from(attr.count)),
                Some(libc::EINTR) => {}
                _ => return Err(err),
            }
        }
    }
}

/// `BPF_MAP_LOOKUP_BATCH` in `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h); the kernel zero-fills the
/// rest of the union when a shorter size is passed.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

#[cfg(test)]
mod tests {
    #[test]
    fn recursion_misses_come_from_a_program_s_fdinfo() {
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2070\nprog_type:\t26\n\
                    prog_jited:\t1\nprog_tag:\tfbd264ae98c726a5\nmemlock:\t20480\n\
                    prog_id:\t23849\nrun_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t512\n";
        assert_eq!(super::recursion_misses(prog), 512);
        assert_eq!(super::recursion_misses("pos:\t0\nflags:\t02\n"), 0);
    }
}
