//! The Go runtime hooks' userspace half: finding Go binaries, at start and at every exec, and
//! attaching the deadline uprobes to each one once.
//!
//! A process's image is read through `/proc/<pid>/exe`, which opens the file itself whatever
//! mount namespace (container) the process runs in; a uprobe attached through that path is on
//! the file's inode, so it fires in every process that runs it, started before or after.

pub mod binary;

use std::{collections::HashMap, os::unix::fs::MetadataExt as _, path::PathBuf};

pub use binary::{GoBinary, InspectError};

/// How many distinct binaries are remembered (hooked, or known not to be Go). Past it, new
/// binaries are no longer looked at, and the agent says so once.
pub const MAX_BINARIES: usize = 4096;

/// A process image not looked at yet.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub pid: u32,
    /// `/proc/<pid>/exe`.
    pub path: PathBuf,
    /// The file's device and inode.
    pub key: (u64, u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// Being inspected.
    Pending,
    /// Not Go, or Go the hooks cannot serve: never looked at again.
    Settled,
    /// Hooked.
    Hooked,
}

/// Which binaries were looked at, by device and inode.
#[derive(Debug, Default)]
pub struct Discovery {
    seen: HashMap<(u64, u64), Seen>,
    full_warned: bool,
    denied_warned: bool,
}

impl Discovery {
    /// `pid`'s image, if it is one this agent has not looked at yet (None too when the process
    /// is already gone, or the bound is reached).
    pub fn candidate(&mut self, pid: u32) -> Option<Candidate> {
        let path = PathBuf::from(format!("/proc/{pid}/exe"));
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                if !self.denied_warned {
                    self.denied_warned = true;
                    tracing::warn!(
                        "cannot read {}: {e}; the Go binaries of processes the agent may not \
                         inspect are not hooked (it needs CAP_SYS_PTRACE)",
                        path.display()
                    );
                }
                return None;
            }
            Err(_) => return None,
        };
        let key = (meta.dev(), meta.ino());
        if self.seen.contains_key(&key) {
            return None;
        }
        if self.seen.len() >= MAX_BINARIES {
            if !self.full_warned {
                self.full_warned = true;
                tracing::warn!(
                    "{MAX_BINARIES} binaries looked at already; Go binaries started from now on \
                     are not hooked"
                );
            }
            return None;
        }
        self.seen.insert(key, Seen::Pending);
        Some(Candidate { pid, path, key })
    }

    /// The outcome of inspecting and attaching a candidate. `settled`: do not look at this
    /// file again (hooked, not Go, or Go the hooks cannot serve). A failure that may pass (the
    /// process exited before its image was read) lets the next process of it be looked at.
    pub fn done(&mut self, key: (u64, u64), outcome: Outcome) {
        match outcome {
            Outcome::Hooked => self.seen.insert(key, Seen::Hooked),
            Outcome::Settled => self.seen.insert(key, Seen::Settled),
            Outcome::Retry => self.seen.remove(&key),
        };
    }

    /// Binaries hooked so far.
    pub fn hooked(&self) -> usize {
        self.seen.values().filter(|s| **s == Seen::Hooked).count()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Hooked,
    Settled,
    Retry,
}

/// Every process running now, for the scan at start.
pub fn running() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Inspects a candidate (blocking: it reads the whole binary when it is Go). A binary whose
/// parse panics (any workload can ship a crafted one) is an error for that binary alone, not
/// the end of the thread that reads every binary after it.
pub fn inspect(c: &Candidate) -> Result<Option<GoBinary>, InspectError> {
    contained(c, || binary::inspect(&c.path))
}

/// Runs `inspect`, turning its panic into [`InspectError::Panicked`] for `c`.
fn contained(
    c: &Candidate,
    inspect: impl FnOnce() -> Result<Option<GoBinary>, InspectError>,
) -> Result<Option<GoBinary>, InspectError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(inspect)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(InspectError::Panicked(c.path.display().to_string(), why))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_whose_parse_panics_is_an_error_of_its_own() {
        let c = Candidate {
            pid: 1,
            path: PathBuf::from("/proc/1/exe"),
            key: (0, 0),
        };
        let got = contained(&c, || panic!("index out of range in the pclntab"));
        match got {
            Err(InspectError::Panicked(path, why)) => {
                assert_eq!(path, "/proc/1/exe");
                assert!(why.contains("pclntab"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_binary_is_looked_at_once() {
        let mut d = Discovery::default();
        let me = std::process::id();
        let c = d.candidate(me).expect("this test's own image");
        assert!(d.candidate(me).is_none(), "pending: not handed out twice");
        d.done(c.key, Outcome::Retry);
        let c = d.candidate(me).expect("a failure that may pass is retried");
        d.done(c.key, Outcome::Settled);
        assert!(d.candidate(me).is_none());
        assert_eq!(d.hooked(), 0);
        assert!(d.candidate(u32::MAX).is_none(), "no such process");
    }
}
