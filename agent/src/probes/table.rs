//! The compatibility table: probe mode -> hooks -> programs, and which detector needs which hook.
//!
//! Every mode feeds the same handlers in the eBPF crate's `state` module; a mode differs only in
//! where the send/receive/close facts come from. The TCP state tracepoints (Linux 4.16+) serve
//! every mode.

use super::Detector::{self, UnansweredClose, UndeliveredBytes, WriteAfterClose};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeMode {
    Fentry,
    Kprobe,
    Tracepoint,
}

impl ProbeMode {
    /// The order `--probe-mode auto` tries them in: cheapest first.
    pub const ALL: [Self; 3] = [Self::Fentry, Self::Kprobe, Self::Tracepoint];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::Tracepoint => "tracepoint",
        }
    }

    /// This mode's hooks, then the state tracepoints every mode uses.
    pub(super) fn hooks(self) -> impl Iterator<Item = &'static Hook> {
        self.own_hooks().iter().chain(STATE_HOOKS)
    }

    /// The hooks that make this mode what it is (not the shared state tracepoints).
    pub(super) fn own_hooks(self) -> &'static [Hook] {
        match self {
            Self::Fentry => FENTRY_HOOKS,
            Self::Kprobe => KPROBE_HOOKS,
            Self::Tracepoint => TRACEPOINT_HOOKS,
        }
    }
}

/// How a hook attaches.
pub(super) enum Attach {
    /// A BTF tracepoint (typed arguments: plain loads, no helper call per field), falling back
    /// to the classic tracefs tracepoint.
    Tracepoint {
        category: &'static str,
        btf_program: &'static str,
        /// A variant that reads more arguments, used when the kernel's tracepoint has at least
        /// that many: `(program, arguments)`.
        btf_extended: Option<(&'static str, usize)>,
        classic_program: &'static str,
    },
    /// fentry/fexit on the function: one program per parameter count of the function, as
    /// `(parameters, program)`.
    Trampoline(&'static [(usize, &'static str)]),
    /// A kprobe (one program per parameter count) and, when the return value matters, a
    /// kretprobe.
    Kprobe {
        entry: &'static [(usize, &'static str)],
        ret: Option<&'static str>,
    },
}

pub(super) struct Hook {
    /// The tracepoint or kernel function.
    pub target: &'static str,
    pub attach: Attach,
    /// Detectors that are wrong, not just less precise, without this hook.
    pub needed_by: &'static [Detector],
    /// Only hooked on kernels whose BTF has the function (tcp_sendpage is gone since 6.5).
    pub if_present: bool,
}

/// No mode hooks a receive: what a process read is taken from the socket's own sequence numbers
/// when a record is written (see `agent_common::SockState::settle`).
const FENTRY_HOOKS: &[Hook] = &[
    Hook {
        target: "tcp_sendmsg",
        attach: Attach::Trampoline(&[(3, "fexit_tcp_sendmsg")]),
        needed_by: &[UnansweredClose, WriteAfterClose],
        if_present: false,
    },
    Hook {
        target: "tcp_sendpage",
        attach: Attach::Trampoline(&[(5, "fexit_tcp_sendpage")]),
        needed_by: &[UnansweredClose, WriteAfterClose],
        if_present: true,
    },
    Hook {
        target: "tcp_close",
        attach: Attach::Trampoline(&[(2, "fentry_tcp_close")]),
        needed_by: &[],
        if_present: false,
    },
];

const KPROBE_HOOKS: &[Hook] = &[
    Hook {
        target: "tcp_sendmsg",
        attach: Attach::Kprobe {
            entry: &[(3, "kprobe_tcp_sendmsg")],
            ret: Some("kretprobe_tcp_send"),
        },
        needed_by: &[UnansweredClose, WriteAfterClose],
        if_present: false,
    },
    Hook {
        target: "tcp_sendpage",
        attach: Attach::Kprobe {
            entry: &[(5, "kprobe_tcp_sendpage")],
            ret: Some("kretprobe_tcp_send"),
        },
        needed_by: &[UnansweredClose, WriteAfterClose],
        if_present: true,
    },
    Hook {
        target: "sk_stream_error",
        attach: Attach::Kprobe {
            entry: &[(3, "kprobe_sk_stream_error")],
            ret: None,
        },
        needed_by: &[WriteAfterClose],
        if_present: false,
    },
    Hook {
        target: "tcp_close",
        attach: Attach::Kprobe {
            entry: &[(2, "kprobe_tcp_close")],
            ret: None,
        },
        needed_by: &[],
        if_present: false,
    },
];

const fn tracepoint(
    category: &'static str,
    target: &'static str,
    btf_program: &'static str,
    classic_program: &'static str,
    needed_by: &'static [Detector],
) -> Hook {
    Hook {
        target,
        attach: Attach::Tracepoint {
            category,
            btf_program,
            btf_extended: None,
            classic_program,
        },
        needed_by,
        if_present: false,
    }
}

/// `sock:sock_send_length` exists since Linux 6.3. Every detector needs it here: it is where this
/// mode learns which process owns a socket before a peer's reset (the handshake and the reset
/// both run in softirq), so without it an undelivered-bytes count could not name its process.
const TRACEPOINT_HOOKS: &[Hook] = &[tracepoint(
    "sock",
    "sock_send_length",
    "btf_sock_send_length",
    "tp_sock_send_length",
    &[UnansweredClose, WriteAfterClose, UndeliveredBytes],
)];

const STATE_HOOKS: &[Hook] = &[
    tracepoint(
        "sock",
        "inet_sock_set_state",
        "btf_inet_sock_set_state",
        "tp_inet_sock_set_state",
        &[UnansweredClose, UndeliveredBytes],
    ),
    // Frees the socket's entry; without it a recycled `struct sock` could inherit stale counts.
    tracepoint(
        "tcp",
        "tcp_destroy_sock",
        "btf_tcp_destroy_sock",
        "tp_tcp_destroy_sock",
        &[UnansweredClose, UndeliveredBytes],
    ),
    // Tells a close caused by the peer's RST from one the process started.
    tracepoint(
        "tcp",
        "tcp_receive_reset",
        "btf_tcp_receive_reset",
        "tp_tcp_receive_reset",
        &[UndeliveredBytes],
    ),
    // Local aborts: close() with unread input, SO_LINGER{1,0}, memory pressure, keepalive. The
    // reset reason argument exists since Linux 6.10.
    Hook {
        target: "tcp_send_reset",
        attach: Attach::Tracepoint {
            category: "tcp",
            btf_program: "btf_tcp_send_reset",
            btf_extended: Some(("btf_tcp_send_reset_reason", 3)),
            classic_program: "tp_tcp_send_reset",
        },
        needed_by: &[UndeliveredBytes],
        if_present: false,
    },
];

/// The EBADF detector's hooks as (tracepoint, program): close() entry and write-family exits.
/// BTF only (no classic fallback), and both or neither.
pub(super) const EBADF_HOOKS: [(&str, &str); 2] =
    [("sys_enter", "btf_sys_enter"), ("sys_exit", "btf_sys_exit")];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_feeds_every_detector() {
        for mode in ProbeMode::ALL {
            for d in Detector::CORE {
                assert!(
                    mode.hooks().any(|h| h.needed_by.contains(&d)),
                    "{} has no hook for {}",
                    mode.as_str(),
                    d.as_str()
                );
            }
        }
    }

    #[test]
    fn variants_are_unique_per_parameter_count() {
        for mode in ProbeMode::ALL {
            for hook in mode.hooks() {
                let variants = match &hook.attach {
                    Attach::Trampoline(v) | Attach::Kprobe { entry: v, .. } => *v,
                    Attach::Tracepoint { .. } => continue,
                };
                let mut arities: Vec<usize> = variants.iter().map(|(n, _)| *n).collect();
                arities.sort_unstable();
                arities.dedup();
                assert_eq!(arities.len(), variants.len(), "{}", hook.target);
            }
        }
    }
}
