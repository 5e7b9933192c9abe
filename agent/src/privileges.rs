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

/// Why `bpf()` may be refused although the capabilities are held: a seccomp filter on this
/// process (`Seccomp: 2` in /proc/self/status), as container runtimes install by default.
/// podman's default profile (4.x) allows `bpf()` only with `CAP_SYS_ADMIN`; containerd's, the
/// one behind Kubernetes' `RuntimeDefault`, allows it with `CAP_BPF`.
pub fn seccomp_hint() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    seccomp_hint_from(&status, has(Capability::CAP_BPF))
}

fn seccomp_hint_from(status: &str, cap_bpf: bool) -> Option<String> {
    let mode = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))?
        .trim();
    (mode == "2" && cap_bpf).then(|| {
        "bpf() is refused although this process has CAP_BPF, and it runs under a seccomp \
         filter (Seccomp: 2 in /proc/self/status): the container runtime's seccomp profile \
         refuses bpf() (podman's default does without CAP_SYS_ADMIN); run it with a profile \
         that allows bpf() and perf_event_open() (Kubernetes' RuntimeDefault on containerd \
         1.6+ and CRI-O does) or unconfined"
            .to_owned()
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_seccomp_hint_needs_a_filter_and_cap_bpf() {
        let filtered = "Name:\tagent\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        assert!(super::seccomp_hint_from(filtered, true).is_some());
        assert!(super::seccomp_hint_from(filtered, false).is_none());
        assert!(super::seccomp_hint_from("Seccomp:\t0\n", true).is_none());
    }
}
