//! What the agent needs from its credentials.

use caps::{CapSet, Capability};

#[derive(Debug, thiserror::Error)]
#[error(
    "missing privileges: loading eBPF programs needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), \
     this process has {have}; run it as root (sudo agent run)"
)]
pub struct PrivilegeError {
    have: String,
}

/// The capabilities that matter to the agent, for `agent check`.
pub const RELEVANT: [Capability; 4] = [
    Capability::CAP_BPF,
    Capability::CAP_PERFMON,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_RESOURCE,
];

pub fn has(cap: Capability) -> bool {
    caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false)
}

/// Fails unless the process can load and attach tracing programs.
pub fn require() -> Result<(), PrivilegeError> {
    let ok = (has(Capability::CAP_BPF) && has(Capability::CAP_PERFMON))
        || has(Capability::CAP_SYS_ADMIN);
    if ok {
        return Ok(());
    }
    let held: Vec<String> = RELEVANT
        .iter()
        .filter(|c| has(**c))
        .map(|c| c.to_string())
        .collect();
    Err(PrivilegeError {
        have: if held.is_empty() {
            "none of them".to_owned()
        } else {
            held.join(", ")
        },
    })
}

/// Lifts RLIMIT_MEMLOCK. Kernels before 5.11 charge BPF maps against it; newer ones use memcg
/// accounting and ignore it, so a failure here only matters on old kernels.
pub fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid pointer to an initialised struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "could not lift RLIMIT_MEMLOCK (only kernels before 5.11 need it)"
        );
    }
}
