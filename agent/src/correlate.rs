//! The one place that decides what is a loss (SPEC §2, §3).
//!
//! Plain values in, plain values out: no aya, tokio or prometheus types, so every rule is unit
//! tested on hand-written event sequences below.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
    time::Duration,
};

use agent_common::{AF_INET6, SockState, TeardownEvent, flag, role, tcp_state};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Server,
    Client,
    Unknown,
}

impl Role {
    pub fn from_wire(r: u8) -> Self {
        match r {
            role::SERVER => Self::Server,
            role::CLIENT => Self::Client,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
            Self::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    UnansweredClose,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnansweredClose => "unanswered_close",
        }
    }
}

/// How the local side ended the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseHow {
    /// FIN (close() or shutdown() with nothing unread).
    Fin,
    /// Straight to CLOSE: close() with unread input, SO_LINGER{1,0}, or another abort (RST).
    Reset,
}

/// One loss, attributed.
#[derive(Clone, Debug, PartialEq)]
pub struct Incident {
    pub kind: Kind,
    pub how: CloseHow,
    pub pid: u32,
    pub comm: String,
    pub role: Role,
    /// The metric `port` label: local port for servers, remote port for clients, and for an
    /// unknown role whichever of the two is not ephemeral.
    pub port: u16,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Input received after the last output: the request that got no answer.
    pub unanswered_bytes: u64,
    pub undelivered_bytes: u64,
    /// From the last input to the close.
    pub delay: Duration,
    pub cgroup_id: u64,
    /// The peer had sent FIN before the close (a client that gave up waiting).
    pub peer_closed: bool,
}

impl Incident {
    /// One sentence a person understands.
    pub fn sentence(&self) -> String {
        match self.kind {
            Kind::UnansweredClose => {
                let verb = match self.how {
                    CloseHow::Fin => "closed",
                    CloseHow::Reset => "reset",
                };
                let what = if self.bytes_out == 0 {
                    "without writing a response"
                } else {
                    "without writing anything after that read"
                };
                let peer = if self.peer_closed {
                    " (the peer had already closed its side: it gave up waiting)"
                } else {
                    ""
                };
                format!(
                    "pid {} ({}) read {} bytes on {} from {} and {verb} the connection {:.1} s \
                     later {what}{peer}",
                    self.pid,
                    self.comm,
                    self.unanswered_bytes,
                    self.local,
                    self.remote,
                    self.delay.as_secs_f64(),
                )
            }
        }
    }
}

/// Turns kernel records into incidents.
#[derive(Clone, Debug)]
pub struct Correlator {
    /// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`).
    pub ephemeral: RangeInclusive<u16>,
}

impl Default for Correlator {
    fn default() -> Self {
        Self {
            ephemeral: 32768..=60999,
        }
    }
}

/// Answers "does process `pid` have a TCP socket listening on local port `port`?" for sockets
/// opened before the agent started (their role was never observed).
pub trait Listeners {
    fn listening(&self, pid: u32, port: u16) -> bool;
}

impl<F: Fn(u32, u16) -> bool> Listeners for F {
    fn listening(&self, pid: u32, port: u16) -> bool {
        self(pid, port)
    }
}

impl Correlator {
    /// SPEC §2 "unanswered close": the local process read ≥1 byte, wrote nothing after that last
    /// read, and then closed the connection itself (FIN or RST, in its own context).
    pub fn teardown(&self, ev: &TeardownEvent, listeners: &impl Listeners) -> Option<Incident> {
        let s = &ev.sock;
        // The kernel pre-filter applies the same rule; repeating it keeps this function the
        // single, complete statement of the detector.
        if !s.may_owe_answer() || s.tgid == 0 {
            return None;
        }
        // The RST came from the peer: the connection was torn down, not closed by the process.
        if s.flags & flag::PEER_RESET != 0 {
            return None;
        }
        // A timer or softirq (keepalive, retransmission timeout) ended it, not the process.
        if ev.closer_tgid != s.tgid {
            return None;
        }
        let role = Role::from_wire(s.role);
        // A socket older than the agent is a server's only if its process listens on its local
        // port; otherwise it may be a client that read a response, which owes nothing.
        if role == Role::Unknown && !listeners.listening(s.tgid, s.lport) {
            return None;
        }
        let (local, remote) = addrs(s);
        Some(Incident {
            kind: Kind::UnansweredClose,
            how: if ev.newstate == tcp_state::CLOSE {
                CloseHow::Reset
            } else {
                CloseHow::Fin
            },
            pid: s.tgid,
            comm: comm(&s.comm),
            role,
            port: self.port_label(role, s.lport, s.rport),
            local,
            remote,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            unanswered_bytes: s.bytes_in.saturating_sub(s.bytes_in_at_last_out),
            undelivered_bytes: 0,
            delay: Duration::from_nanos(ev.header.ts_ns.saturating_sub(s.last_in_ns)),
            cgroup_id: s.cgroup_id,
            peer_closed: s.flags & flag::PEER_FIN != 0,
        })
    }

    fn port_label(&self, role: Role, lport: u16, rport: u16) -> u16 {
        match role {
            Role::Server => lport,
            Role::Client => rport,
            // Only unknown sockets on a listening port are reported, so the local port is the
            // service's; prefer the non-ephemeral one anyway if the two disagree.
            Role::Unknown
                if self.ephemeral.contains(&lport) && !self.ephemeral.contains(&rport) =>
            {
                rport
            }
            Role::Unknown => lport,
        }
    }
}

/// A task comm, up to its NUL.
pub fn comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn addrs(s: &SockState) -> (SocketAddr, SocketAddr) {
    let ip = |raw: &[u8; 16]| -> IpAddr {
        if s.family == AF_INET6 {
            let v6 = Ipv6Addr::from(*raw);
            // A dual-stack socket talking IPv4 shows ::ffff:a.b.c.d; print it as IPv4.
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        } else {
            IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
        }
    };
    (
        SocketAddr::new(ip(&s.laddr), s.lport),
        SocketAddr::new(ip(&s.raddr), s.rport),
    )
}

#[cfg(test)]
mod tests;

/// `--port` / `--comm`: which incidents the user wants reported. Empty lists allow everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub ports: Vec<u16>,
    pub comms: Vec<String>,
}

impl Filter {
    pub fn allows(&self, i: &Incident) -> bool {
        let port_ok = self.ports.is_empty()
            || self.ports.contains(&i.local.port())
            || self.ports.contains(&i.remote.port());
        let comm_ok = self.comms.is_empty() || self.comms.contains(&i.comm);
        port_ok && comm_ok
    }
}
