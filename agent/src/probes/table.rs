//! The compatibility table: probe mode -> hooks -> programs, which detector needs which hook,
//! and which state store each program can use.
//!
//! Every mode feeds the same handlers in the eBPF crate; a mode differs only in where the
//! send/close facts come from. The TCP state tracepoints (Linux 4.16+) serve every mode. The
//! per-socket state lives in one of two stores ([`StateStore`]): the BTF programs come in one
//! program per store, the others work only with the LRU map.

use super::Detector::{self, UnansweredClose, UndeliveredBytes, WriteAfterClose};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeMode {
    Fentry,
    Kprobe,
    Tracepoint,
}

/// Where the programs keep each connection's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateStore {
    /// Socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`): a slot on the socket, freed with it.
    SkStorage,
    /// The `SOCKS` LRU hash map, keyed by socket address, of `--max-sockets` entries.
    Lru,
}

impl StateStore {
    /// The order `--socket-state auto` tries them in: cheapest first.
    pub const ALL: [Self; 2] = [Self::SkStorage, Self::Lru];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SkStorage => "sk_storage",
            Self::Lru => "lru",
        }
    }
}

/// Which stores a hook's programs work with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stores {
    /// Both: each BTF program has a twin for socket-local storage, named `<program>_local`
    /// (a classic tracepoint's program works with the LRU map only).
    Both,
    /// Only the LRU map needs the hook (it deletes the map's entries): not attached with
    /// socket-local storage.
    LruCleanup,
    /// Only the LRU map: the programs see the socket as a plain address (kprobes), which
    /// socket-local storage does not take. A mode with such a hook keeps state in the map.
    LruOnly,
}

impl ProbeMode {
    /// The order `--probe-mode auto` tries them in: cheapest first.
    pub const ALL: [Self; 3] = [Self::Fentry, Self::Kprobe, Self::Tracepoint];

    /// The stores this mode's programs can keep state in, cheapest first.
    pub fn stores(self) -> &'static [StateStore] {
        if self.hooks().any(|h| h.stores == Stores::LruOnly) {
            &[StateStore::Lru]
        } else {
            &StateStore::ALL
        }
    }

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
    pub stores: Stores,
}

impl Hook {
    /// Whether `store` needs this hook at all.
    pub(super) fn used_with(&self, store: StateStore) -> bool {
        store == StateStore::Lru || self.stores != Stores::LruCleanup
    }
}

/// The name of `program`'s twin for `store`.
pub(super) fn program_for(program: &str, store: StateStore) -> std::borrow::Cow<'_, str> {
    match store {
        StateStore::Lru => program.into(),
        StateStore::SkStorage => format!("{program}_local").into(),
    }
}

/// No mode hooks a receive: what a process read is taken from the socket's own sequence numbers
/// when a record is written (see `agent_common::SockState::settle`).
const FENTRY_HOOKS: &[Hook] = &[
    Hook {
        target: "tcp_sendmsg",
        attach: Attach::Trampoline(&[(3, "fexit_tcp_sendmsg")]),
        needed_by: &[UnansweredClose, WriteAfterClose],
        if_present: false,
        stores: Stores::Both,
    },
    Hook {
        target: "tcp_sendpage",
        attach: Attach::Trampoline(&[(5, "fexit_tcp_sendpage")]),
        needed_by: &[UnansweredClose, WriteAfterClose],
        if_present: true,
        stores: Stores::Both,
    },
    Hook {
        target: "tcp_close",
        attach: Attach::Trampoline(&[(2, "fentry_tcp_close")]),
        needed_by: &[],
        if_present: false,
        stores: Stores::Both,
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
        stores: Stores::LruOnly,
    },
    Hook {
        target: "tcp_sendpage",
        attach: Attach::Kprobe {
            entry: &[(5, "kprobe_tcp_sendpage")],
            ret: Some("kretprobe_tcp_send"),
        },
        needed_by: &[UnansweredClose, WriteAfterClose],
        if_present: true,
        stores: Stores::LruOnly,
    },
    Hook {
        target: "sk_stream_error",
        attach: Attach::Kprobe {
            entry: &[(3, "kprobe_sk_stream_error")],
            ret: None,
        },
        needed_by: &[WriteAfterClose],
        if_present: false,
        stores: Stores::LruOnly,
    },
    Hook {
        target: "tcp_close",
        attach: Attach::Kprobe {
            entry: &[(2, "kprobe_tcp_close")],
            ret: None,
        },
        needed_by: &[],
        if_present: false,
        stores: Stores::LruOnly,
    },
];

const fn tracepoint(
    category: &'static str,
    target: &'static str,
    btf_program: &'static str,
    classic_program: &'static str,
    needed_by: &'static [Detector],
    stores: Stores,
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
        stores,
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
    Stores::Both,
)];

const STATE_HOOKS: &[Hook] = &[
    tracepoint(
        "sock",
        "inet_sock_set_state",
        "btf_inet_sock_set_state",
        "tp_inet_sock_set_state",
        &[UnansweredClose, UndeliveredBytes],
        Stores::Both,
    ),
    // Frees the socket's entry in the LRU map; without it a recycled `struct sock` could
    // inherit stale counts. Socket-local storage is freed with the socket.
    tracepoint(
        "tcp",
        "tcp_destroy_sock",
        "btf_tcp_destroy_sock",
        "tp_tcp_destroy_sock",
        &[UnansweredClose, UndeliveredBytes],
        Stores::LruCleanup,
    ),
    // Tells a close caused by the peer's RST from one the process started.
    tracepoint(
        "tcp",
        "tcp_receive_reset",
        "btf_tcp_receive_reset",
        "tp_tcp_receive_reset",
        &[UndeliveredBytes],
        Stores::Both,
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
        stores: Stores::Both,
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
