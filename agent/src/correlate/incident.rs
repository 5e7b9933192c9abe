//! What the correlation produces: attributed incidents, and how they read to a person.

use std::{net::SocketAddr, time::Duration};

use agent_common::Detector;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Server,
    Client,
    Unknown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
            Self::Unknown => "unknown",
        }
    }
}

/// How the local side ended a connection it owed an answer on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseHow {
    /// FIN (close() or shutdown() with nothing unread).
    Fin,
    /// Straight to CLOSE: close() with unread input, SO_LINGER{1,0}, or another abort (RST).
    Reset,
}

/// Why a connection ended abortively (bounded label values, README: Metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortReason {
    PeerReset,
    CloseWithUnreadInput,
    LingerZero,
    Timeout,
    Memory,
    Other,
}

impl AbortReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PeerReset => "peer_reset",
            Self::CloseWithUnreadInput => "close_with_unread_input",
            Self::LingerZero => "linger_zero",
            Self::Timeout => "timeout",
            Self::Memory => "memory",
            Self::Other => "other",
        }
    }
}

/// Which side ended the exchange a loss is about (the `ended_by` label, README: Metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndedBy {
    /// This process ended it while its peer was owed data or an answer: an unanswered close,
    /// a close with unread input, SO_LINGER{1,0}, a write after its own shutdown, EBADF.
    Local,
    /// The peer reset or closed first while bytes were in flight: a client whose own timeout
    /// fired, a health checker that stops reading, a cancelled download. A middlebox's reset
    /// looks the same from here.
    Peer,
    /// A retransmission or keepalive timeout.
    Network,
}

impl EndedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Peer => "peer",
            Self::Network => "network",
        }
    }
}

/// The errno of a failed write, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[expect(
    clippy::upper_case_acronyms,
    reason = "errno names are spelled as the kernel and the metric label spell them"
)]
pub enum Errno {
    EPIPE,
    ECONNRESET,
    ENOTCONN,
    EBADF,
}

impl Errno {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EPIPE => "EPIPE",
            Self::ECONNRESET => "ECONNRESET",
            Self::ENOTCONN => "ENOTCONN",
            Self::EBADF => "EBADF",
        }
    }
}

/// Which of Go's deadlines expired (`agent_common::go_deadline`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GoDeadlineKind {
    /// The connection's write deadline (net/http's WriteTimeout for HTTP/1).
    Write,
    /// A read and a write deadline set to the same instant (`SetDeadline`), expired together.
    ReadWrite,
    /// One HTTP/2 stream's WriteTimeout (net/http's `onWriteTimeout`).
    H2Stream,
}

/// The cause the Go runtime hooks found: a write deadline expired while the response was due.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GoWriteTimeout {
    pub deadline: GoDeadlineKind,
    /// From the last input (the request) to the expiry: about the WriteTimeout.
    pub after_input: Duration,
    /// From the expiry to the close (how much longer the handler ran), for a close.
    pub until_close: Option<Duration>,
}

impl GoWriteTimeout {
    /// The `protocol` label of `lostwrite_go_write_timeouts_total`.
    pub fn protocol(&self) -> &'static str {
        match self.deadline {
            GoDeadlineKind::H2Stream => "h2",
            GoDeadlineKind::Write | GoDeadlineKind::ReadWrite => "http1",
        }
    }

    /// "its write deadline (WriteTimeout, ~1.0 s after the request was read) expired".
    fn expired(&self, input: &str) -> String {
        let which = match self.deadline {
            GoDeadlineKind::Write => "its write deadline (WriteTimeout",
            GoDeadlineKind::ReadWrite => "its read and write deadline (SetDeadline",
            GoDeadlineKind::H2Stream => "the stream's write deadline (WriteTimeout",
        };
        format!(
            "{which}, ~{:.1} s after {input}) expired",
            self.after_input.as_secs_f64()
        )
    }
}

/// What kind of loss, with what only that kind has.
#[derive(Clone, Debug, PartialEq)]
pub enum Detail {
    /// Read input, wrote nothing after it, closed.
    UnansweredClose {
        how: CloseHow,
        /// Input received after the last output: the request that got no answer.
        unanswered_bytes: u64,
        /// From the last input to the close.
        delay: Duration,
        /// The protocol told from the process's first message (`agent_common::proto::name`).
        protocol: &'static str,
        /// The process's last message was a goodbye that answers nothing (a TLS close alert).
        goodbye_sent: bool,
    },
    /// A write-family call failed because the connection was already torn down.
    WriteAfterClose {
        errno: Errno,
        /// Bytes the call tried to write, when the probe mode sees them.
        attempted: Option<u64>,
    },
    /// A Go server's write deadline expired while a response was still being written (HTTP/1:
    /// the rest was dropped and the connection closed), or before an HTTP/2 stream's response
    /// was done (the stream was reset; the connection lives). The cause is `Incident::go`.
    GoWriteTimeout {
        /// Bytes written and not yet acknowledged when the deadline expired (HTTP/1).
        unacked_bytes: u64,
        /// The reset stream (HTTP/2).
        stream_id: Option<u32>,
    },
    /// The connection ended abortively with data at stake.
    Undelivered {
        reason: AbortReason,
        /// `write_seq - snd_una`: accepted by write(), never acknowledged by the peer.
        undelivered_bytes: u64,
        /// Of those, never even transmitted.
        unsent_bytes: u64,
        /// Received from the peer but never read by the process (discarded by the abort).
        unread_bytes: u64,
    },
}

/// One loss, attributed.
#[derive(Clone, Debug, PartialEq)]
pub struct Incident {
    pub detail: Detail,
    /// The process (tgid) and its name, the thread-group leader's comm: the `comm` label.
    pub pid: u32,
    pub comm: String,
    /// The thread that acted on the socket (its first write, its close, or the failed write)
    /// and its name, for the log only: thread pools number their threads.
    pub tid: u32,
    pub thread: String,
    pub role: Role,
    /// The metric `port` label: local port for servers, remote port for clients, and for an
    /// unknown role whichever of the two is not ephemeral.
    pub port: u16,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub cgroup_id: u64,
    /// The peer had sent FIN before (a client that gave up waiting, for an unanswered close).
    pub peer_closed: bool,
    /// Which side ended the exchange.
    pub ended_by: EndedBy,
    /// Why, where the Go runtime hooks saw it: the response's write deadline expired.
    pub go: Option<GoWriteTimeout>,
}

impl Incident {
    /// The detector that found it (write-after-close for an EBADF one too).
    pub fn detector(&self) -> Detector {
        match self.detail {
            Detail::UnansweredClose { .. } => Detector::UnansweredClose,
            Detail::WriteAfterClose { .. } => Detector::WriteAfterClose,
            Detail::Undelivered { .. } => Detector::UndeliveredBytes,
            Detail::GoWriteTimeout { .. } => Detector::GoWriteTimeout,
        }
    }

    /// The incident's `kind`, its detector's name.
    pub fn kind(&self) -> &'static str {
        self.detector().as_str()
    }

    /// The bounded reason label of the incident's kind.
    pub fn reason(&self) -> &'static str {
        match &self.detail {
            Detail::UnansweredClose { how, .. } => match how {
                CloseHow::Fin => "fin",
                CloseHow::Reset => "rst",
            },
            Detail::WriteAfterClose { errno, .. } => errno.as_str(),
            Detail::Undelivered { reason, .. } => reason.as_str(),
            Detail::GoWriteTimeout { stream_id, .. } => match stream_id {
                Some(_) => "stream_reset",
                None => "cut_short",
            },
        }
    }

    /// One sentence a person understands.
    pub fn sentence(&self) -> String {
        self.sentence_about(&format!("pid {} ({})", self.pid, self.comm))
    }

    /// The sentence with `who` naming the process (its pod added, on Kubernetes).
    pub fn sentence_about(&self, who: &str) -> String {
        match &self.detail {
            Detail::UnansweredClose {
                how,
                unanswered_bytes,
                delay,
                protocol,
                goodbye_sent,
            } => {
                let verb = match how {
                    CloseHow::Fin => "closed",
                    CloseHow::Reset => "reset",
                };
                let what = if *goodbye_sent && *protocol == "tls" {
                    "without writing a response (only its TLS close alert)"
                } else if self.bytes_out == 0 {
                    "without writing a response"
                } else {
                    "without writing anything after that read"
                };
                let why = match &self.go {
                    Some(go) => format!(
                        ": Go dropped the response: {} while the handler ran; the handler \
                         finished {:.1} s later",
                        go.expired("the request was read"),
                        go.until_close.unwrap_or_default().as_secs_f64()
                    ),
                    None => String::new(),
                };
                format!(
                    "{who} read {unanswered_bytes} bytes on {} from {} and {verb} the connection \
                     {:.1} s later {what}{why}",
                    self.local,
                    self.remote,
                    delay.as_secs_f64(),
                )
            }
            Detail::GoWriteTimeout {
                unacked_bytes,
                stream_id,
            } => {
                let expired = self.go.map_or_else(
                    || "its write deadline expired".to_owned(),
                    |go| go.expired("the request was read"),
                );
                match stream_id {
                    Some(id) => format!(
                        "{who} reset HTTP/2 stream {id} on {} from {}: {expired} before the \
                         response was written, so Go net/http dropped it; the connection stays \
                         open",
                        self.local, self.remote
                    ),
                    None => format!(
                        "{who} cut short a response on {} to {}: {expired} while a write of it \
                         waited for the peer ({unacked_bytes} bytes unacknowledged), and Go \
                         dropped the rest; {} bytes had been written when it closed the \
                         connection {:.1} s later",
                        self.local,
                        self.remote,
                        self.bytes_out,
                        self.go
                            .and_then(|go| go.until_close)
                            .unwrap_or_default()
                            .as_secs_f64()
                    ),
                }
            }
            Detail::WriteAfterClose { errno, attempted } => {
                let size = attempted.map_or(String::new(), |n| format!(" {n} bytes"));
                format!(
                    "{who} wrote{size} on {} to {} after the connection was torn down, and the \
                     write failed with {}",
                    self.local,
                    self.remote,
                    errno.as_str()
                )
            }
            Detail::Undelivered {
                reason,
                undelivered_bytes,
                unsent_bytes,
                unread_bytes,
            } => {
                let why = match reason {
                    AbortReason::PeerReset => "the peer reset the connection".to_owned(),
                    AbortReason::CloseWithUnreadInput => format!(
                        "it closed the connection with {unread_bytes} bytes of input unread, \
                         which resets it"
                    ),
                    AbortReason::LingerZero => {
                        "it closed the connection with SO_LINGER{1,0}, which resets it".to_owned()
                    }
                    AbortReason::Timeout => "the connection timed out".to_owned(),
                    AbortReason::Memory => "the kernel aborted it under memory pressure".to_owned(),
                    AbortReason::Other => "the connection was aborted".to_owned(),
                };
                if *undelivered_bytes == 0 {
                    // Everything written was acknowledged; what was lost is the peer's input.
                    return format!(
                        "{who} closed the connection on {} from {} with {unread_bytes} bytes of \
                         input unread, which resets it: those bytes never reached the process",
                        self.local, self.remote
                    );
                }
                let unsent = if *unsent_bytes > 0 {
                    format!(" ({unsent_bytes} of them never even sent)")
                } else {
                    String::new()
                };
                format!(
                    "{who} lost {undelivered_bytes} bytes it had written on {} to {}{unsent}: {why} \
                     before the peer acknowledged them",
                    self.local, self.remote
                )
            }
        }
    }
}

/// Incidents for other modules' tests.
#[cfg(test)]
pub mod samples {
    use super::*;

    /// The seed: seedsrv read 78 bytes and closed 2 s later without answering.
    pub fn seed() -> Incident {
        Incident {
            detail: Detail::UnansweredClose {
                how: CloseHow::Fin,
                unanswered_bytes: 78,
                delay: Duration::from_millis(2003),
                protocol: "http",
                goodbye_sent: false,
            },
            pid: 4242,
            comm: "seedsrv".into(),
            tid: 4247,
            thread: "seedsrv".into(),
            role: Role::Server,
            port: 8800,
            local: "127.0.0.1:8800".parse().unwrap(),
            remote: "127.0.0.1:60154".parse().unwrap(),
            bytes_in: 78,
            bytes_out: 0,
            cgroup_id: 1,
            peer_closed: false,
            ended_by: EndedBy::Local,
            go: None,
        }
    }

    /// The seed with its cause: the Go runtime hooks saw the write deadline expire 1.0 s after
    /// the request, and the handler finish 1.0 s after that.
    pub fn seed_with_cause() -> Incident {
        Incident {
            go: Some(GoWriteTimeout {
                deadline: GoDeadlineKind::Write,
                after_input: Duration::from_millis(1001),
                until_close: Some(Duration::from_millis(1002)),
            }),
            ..seed()
        }
    }

    /// nginx's reset_timedout_connection: SO_LINGER{1,0} with 2.8 MB never sent.
    pub fn nginx_linger() -> Incident {
        Incident {
            comm: "nginx".into(),
            thread: "nginx".into(),
            detail: Detail::Undelivered {
                reason: AbortReason::LingerZero,
                undelivered_bytes: 2_803_712,
                unsent_bytes: 2_803_712,
                unread_bytes: 0,
            },
            ..seed()
        }
    }
}
