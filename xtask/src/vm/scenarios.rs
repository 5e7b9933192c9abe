//! The end-to-end tests the kernel matrix runs, and which detector each one proves.
//!
//! Only tests that need nothing beyond the test binary, the agent, the prebuilt Go seed server
//! and curl: the guests have no Python, nginx, wrk, Prometheus or network namespaces.

use std::fmt;

pub use agent_common::Detector;

/// A column of the support table: a detector proven to count its loss, or healthy traffic
/// proven to count nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Column {
    Loss(Detector),
    NoFalsePositives,
}

impl Column {
    pub const ALL: [Self; 4] = [
        Self::Loss(Detector::UnansweredClose),
        Self::Loss(Detector::UndeliveredBytes),
        Self::Loss(Detector::WriteAfterClose),
        Self::NoFalsePositives,
    ];

    /// The column heading in the support table.
    pub fn heading(self) -> &'static str {
        match self {
            Self::Loss(Detector::UnansweredClose) => "unanswered close",
            Self::Loss(Detector::UndeliveredBytes) => "undelivered bytes",
            Self::Loss(Detector::WriteAfterClose) => "write after close",
            Self::Loss(d) => d.as_str(),
            Self::NoFalsePositives => "no false positives",
        }
    }
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Loss(d) => d.as_str(),
            Self::NoFalsePositives => "false_positive",
        })
    }
}

/// Programs a scenario runs besides the agent and the test binary.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The Go seed server (prebuilt on the host).
    SeedServer,
    Curl,
}

pub struct Scenario {
    /// Short name, used on the command line, in result lines and in the summary.
    pub name: &'static str,
    /// The test's full path in the e2e binary (for `--exact`).
    pub test: &'static str,
    pub detector: Column,
    pub needs: &'static [Need],
    /// Run once per guest with the agent's default probe mode (no `--probe-mode`), instead of
    /// once in each chosen mode. Its result is reported under the mode [`DEFAULT_MODE`].
    pub default_mode: bool,
}

/// The mode name the result lines, the summary and the support table give the agent's default.
pub const DEFAULT_MODE: &str = "auto";

impl Scenario {
    /// The modes this scenario runs in, out of the chosen `modes`.
    pub fn modes<'m>(&self, modes: &'m [String]) -> Vec<&'m str> {
        if self.default_mode {
            vec![DEFAULT_MODE]
        } else {
            modes.iter().map(String::as_str).collect()
        }
    }
}

pub const SCENARIOS: &[Scenario] = &[
    // The agent as users and the DaemonSet start it: it must choose the kernel's best mode
    // (`KernelLine::default_mode`) and count the seed in it.
    Scenario {
        name: "default-mode",
        test: "defaults::default_probe_mode_is_the_best_this_kernel_allows_and_counts_the_seed",
        detector: Column::Loss(Detector::UnansweredClose),
        needs: &[Need::SeedServer, Need::Curl],
        default_mode: true,
    },
    Scenario {
        name: "seed-go-write-timeout",
        test: "unanswered::seed_go_write_timeout_counts_exactly_one",
        detector: Column::Loss(Detector::UnansweredClose),
        needs: &[Need::SeedServer, Need::Curl],
        default_mode: false,
    },
    // The seed over HTTPS, its cause named by the Go runtime hooks (uprobes) in each mode.
    Scenario {
        name: "go-seed-https",
        test: "go_runtime::go_seed_over_https_names_the_expired_write_timeout",
        detector: Column::Loss(Detector::UnansweredClose),
        needs: &[Need::SeedServer, Need::Curl],
        default_mode: false,
    },
    Scenario {
        name: "rust-read-and-close",
        test: "unanswered::rust_server_that_reads_and_closes_counts_one",
        detector: Column::Loss(Detector::UnansweredClose),
        needs: &[],
        default_mode: false,
    },
    Scenario {
        name: "ipv6-read-and-close",
        test: "unanswered::ipv6_server_that_reads_and_closes_counts_one",
        detector: Column::Loss(Detector::UnansweredClose),
        needs: &[],
        default_mode: false,
    },
    Scenario {
        name: "keep-alive-second-unanswered",
        test: "unanswered::second_keep_alive_request_left_unanswered_counts_one",
        detector: Column::Loss(Detector::UnansweredClose),
        needs: &[],
        default_mode: false,
    },
    Scenario {
        name: "query-then-close",
        test: "close_shapes::query_then_close_counts_one",
        detector: Column::Loss(Detector::UnansweredClose),
        needs: &[],
        default_mode: false,
    },
    Scenario {
        name: "session-closed-after-work",
        test: "close_shapes::session_message_closed_on_after_work_counts_one",
        detector: Column::Loss(Detector::UnansweredClose),
        needs: &[],
        default_mode: false,
    },
    Scenario {
        name: "tls-alert-sized-writes",
        test: "close_shapes::tls_alert_sized_final_writes_count_only_the_dropped_request",
        detector: Column::Loss(Detector::UnansweredClose),
        needs: &[],
        default_mode: false,
    },
    // The seed over TLS as curl meets it, without the race: the client's FIN answers the
    // server's close alert before the server's close.
    Scenario {
        name: "tls-alert-then-client-close",
        test: "close_shapes::client_that_closes_on_the_server_s_close_alert_still_lost_the_request",
        detector: Column::Loss(Detector::UnansweredClose),
        needs: &[],
        default_mode: false,
    },
    Scenario {
        name: "pre-existing-unanswered",
        test: "unanswered::connection_from_before_the_agent_closed_unanswered_counts_one",
        detector: Column::Loss(Detector::UnansweredClose),
        needs: &[],
        default_mode: false,
    },
    Scenario {
        name: "thread-pool-process-name",
        test: "unanswered::thread_pool_counts_under_the_process_name",
        detector: Column::Loss(Detector::UnansweredClose),
        needs: &[],
        default_mode: false,
    },
    Scenario {
        name: "linger-zero",
        test: "aborts::linger_zero_close_with_megabytes_queued",
        detector: Column::Loss(Detector::UndeliveredBytes),
        needs: &[],
        default_mode: false,
    },
    Scenario {
        name: "epipe-after-close",
        test: "writes::client_writing_after_the_server_closed_gets_epipe",
        detector: Column::Loss(Detector::WriteAfterClose),
        needs: &[],
        default_mode: false,
    },
    Scenario {
        name: "write-family-after-reset",
        test: "writes::every_write_family_call_after_reset_is_counted",
        detector: Column::Loss(Detector::WriteAfterClose),
        needs: &[],
        default_mode: false,
    },
    Scenario {
        name: "blocked-writers-reset",
        test: "writes::many_blocked_writers_reset_at_once_are_each_counted",
        detector: Column::Loss(Detector::WriteAfterClose),
        needs: &[],
        default_mode: false,
    },
    Scenario {
        name: "blocked-responses",
        test: "writes::many_blocked_responses_then_delivered_count_nothing",
        detector: Column::NoFalsePositives,
        needs: &[],
        default_mode: false,
    },
    Scenario {
        name: "healthy-seed",
        test: "healthy::healthy_traffic_on_the_seed_server_counts_zero",
        detector: Column::NoFalsePositives,
        needs: &[Need::SeedServer, Need::Curl],
        default_mode: false,
    },
    Scenario {
        name: "http-shapes",
        test: "false_positives::http_shapes_against_a_rust_server",
        detector: Column::NoFalsePositives,
        needs: &[Need::Curl],
        default_mode: false,
    },
    Scenario {
        name: "goodbye-then-close",
        test: "close_shapes::goodbye_then_close_counts_zero",
        detector: Column::NoFalsePositives,
        needs: &[],
        default_mode: false,
    },
    Scenario {
        name: "session-goodbye",
        test: "close_shapes::session_goodbye_of_a_protocol_in_no_table_counts_zero",
        detector: Column::NoFalsePositives,
        needs: &[],
        default_mode: false,
    },
    Scenario {
        name: "peer-fin-first",
        test: "close_shapes::peer_fin_first_counts_zero",
        detector: Column::NoFalsePositives,
        needs: &[],
        default_mode: false,
    },
    Scenario {
        name: "simultaneous-close",
        test: "close_shapes::simultaneous_close_counts_zero",
        detector: Column::NoFalsePositives,
        needs: &[],
        default_mode: false,
    },
    Scenario {
        name: "pre-existing-keep-alive",
        test: "close_shapes::keep_alive_connection_from_before_the_agent_closed_by_its_client_counts_zero",
        detector: Column::NoFalsePositives,
        needs: &[],
        default_mode: false,
    },
    Scenario {
        name: "udp-unix-listen",
        test: "false_positives::udp_unix_and_listening_sockets",
        detector: Column::NoFalsePositives,
        needs: &[],
        default_mode: false,
    },
];

pub fn by_name(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_detector_has_a_scenario() {
        for (i, s) in SCENARIOS.iter().enumerate() {
            assert!(
                SCENARIOS[i + 1..].iter().all(|o| o.name != s.name),
                "{}",
                s.name
            );
            // The guest's init script splits result lines on spaces.
            assert!(!s.name.contains(char::is_whitespace), "{}", s.name);
        }
        for d in Column::ALL {
            assert!(SCENARIOS.iter().any(|s| s.detector == d), "{d}");
        }
    }
}
