//! Turns kernel records into incidents (README: What it detects). Each detector's decision is
//! agent-common's (`agent_common::detectors`), applied again here to every record; this module
//! adds the judgements only userspace can make: a socket's role from the listening ports, the
//! two ends of a reset on this host, a close whose peer's FIN crossed it, a stream reset
//! reported twice, and the sentence and labels of each incident.
//!
//! Plain values in, plain values out: no aya, tokio or prometheus types, so every rule is unit
//! tested on event sequences (`tests/`) from a socket model that calls the programs' own
//! transitions.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
    time::Duration,
};

mod incident;

use std::collections::HashMap;

use agent_common::{
    AF_INET6, AbortEvent, GoDeadline, GoLoss, GoStreamEvent, SockState, TeardownEvent, Verdict,
    WriteErrorEvent, errno, flag, go_deadline, proto, role, tcp_state, trigger,
};
#[cfg(test)]
pub use incident::samples;
pub use incident::{
    AbortReason, CloseHow, Detail, EndedBy, Errno, GoDeadlineKind, GoWriteTimeout, Incident, Role,
};

impl Role {
    pub fn from_wire(r: u8) -> Self {
        match r {
            role::SERVER => Self::Server,
            role::CLIENT => Self::Client,
            _ => Self::Unknown,
        }
    }
}

/// Turns kernel records into incidents.
#[derive(Clone, Debug)]
pub struct Correlator {
    /// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`).
    pub ephemeral: RangeInclusive<u16>,
    /// This kernel's `enum sk_rst_reason`, value to name (from BTF; empty before Linux 6.10).
    pub rst_reasons: HashMap<u32, String>,
    /// `--explain-port`: closes on these ports are explained, loss or not.
    pub explain_ports: Vec<u16>,
    pairs: ResetPairs,
    held: HeldCloses,
    explained: Vec<Explained>,
    execs: Vec<u32>,
    resets: StreamResets,
}

impl Default for Correlator {
    fn default() -> Self {
        Self::new(32768..=60999, HashMap::new())
    }
}

/// A close on an `--explain-port`, and what was decided about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Explained {
    /// The explain port the connection is on.
    pub port: u16,
    pub verdict: Verdict,
    /// The close, described as the incident it would be.
    pub incident: Incident,
}

/// Unanswered closes held back briefly, in case the peer's FIN turns out to have crossed ours
/// (FIN_WAIT1 -> CLOSING): a peer that closed at the same moment was not waiting for an answer
/// (a client that sent its goodbye and closed). A peer that was waiting reacts to our FIN
/// instead, and its FIN acknowledges ours. Bounded and short-lived.
#[derive(Clone, Debug, Default)]
struct HeldCloses {
    /// By socket address: (when, incident, explain port).
    by_sk: HashMap<u64, (u64, Incident, Option<u16>)>,
}

impl HeldCloses {
    const MAX: usize = 4096;
    /// Long enough for the peer's FIN to cross the network; short enough that the seed is on
    /// /metrics well within a second.
    const WINDOW_NS: u64 = 200_000_000;
}

/// HTTP/2 streams whose reset was reported. A uprobe at a Go function's entry can run twice for
/// one call: when the goroutine's stack must grow, or a preemption is pending, the prologue
/// calls `runtime.morestack`, which starts the function over from its entry. The stream's
/// second record is the same reset. A stream is known by its connection (socket address,
/// addresses, and where its output began) and its id, which HTTP/2 never reuses on one
/// connection. Bounded and short-lived.
#[derive(Clone, Debug, Default)]
struct StreamResets {
    /// (socket, local, remote, write_at_start, stream id) -> when.
    seen: HashMap<(u64, SocketAddr, SocketAddr, u32, u32), u64>,
}

impl StreamResets {
    const MAX: usize = 4096;
    /// Far longer than a preempted goroutine waits to run again.
    const WINDOW_NS: u64 = 10_000_000_000;

    /// Whether this reset is news (and remembers it).
    fn first(&mut self, key: (u64, SocketAddr, SocketAddr, u32, u32), ts: u64) -> bool {
        if self.seen.contains_key(&key) {
            return false;
        }
        // Past the window entries are expired on the tick; a storm inside it starts over.
        if self.seen.len() >= Self::MAX {
            self.seen.clear();
        }
        self.seen.insert(key, ts);
        true
    }

    fn expire(&mut self, now: u64) {
        self.seen
            .retain(|_, t| now.saturating_sub(*t) < Self::WINDOW_NS);
    }
}

/// Pairs the two ends of a connection reset on this host by a process that closed it with input
/// unread. The closer's record says where the data it received ends; the other end's "peer
/// reset" is then not a loss of its own if every byte it wrote had got there: delivered to the
/// closer's kernel (read by the closer or dropped by it) and only not yet acknowledged. Either
/// record may come first (the RST can be processed before the tracepoint of the reset that
/// sent it fires), so peer resets from a local peer wait briefly for their pair. Bounded and
/// short-lived.
#[derive(Clone, Debug, Default)]
struct ResetPairs {
    /// (closer's local, closer's remote) -> (when, where the data it received ends)
    dropped: HashMap<(SocketAddr, SocketAddr), (u64, u32)>,
    /// Peer resets of a local peer, waiting for the peer's record: (local, remote) -> (when,
    /// where the data written ends, incident).
    waiting: HashMap<(SocketAddr, SocketAddr), (u64, u32, Incident)>,
}

/// Whether the data received up to `received` covers the data written up to `written` (the
/// same direction's sequence numbers, modulo 2^32).
fn covers(received: u32, written: u32) -> bool {
    received.wrapping_sub(written) as i32 >= 0
}

impl ResetPairs {
    const MAX: usize = 4096;
    /// Both records of one reset are written within microseconds of each other.
    const WINDOW_NS: u64 = 200_000_000;

    fn dropped_input(&mut self, local: SocketAddr, remote: SocketAddr, ts: u64, received: u32) {
        // The other end may already be waiting.
        if let Some((_, written, _)) = self.waiting.get(&(remote, local))
            && covers(received, *written)
        {
            self.waiting.remove(&(remote, local));
            return;
        }
        Self::bound(&mut self.dropped);
        self.dropped.insert((local, remote), (ts, received));
    }

    /// A peer reset: None if the peer's record already covers it, else it waits (a peer on this
    /// host, whose record may still come) or is returned.
    fn peer_reset(
        &mut self,
        ts: u64,
        written: u32,
        local_peer: bool,
        i: Incident,
    ) -> Option<Incident> {
        if let Some((t, received)) = self.dropped.remove(&(i.remote, i.local))
            && ts.saturating_sub(t) < Self::WINDOW_NS
            && covers(received, written)
        {
            return None;
        }
        if !local_peer {
            return Some(i);
        }
        Self::bound(&mut self.waiting);
        self.waiting.insert((i.local, i.remote), (ts, written, i));
        None
    }

    /// Peer resets whose pair did not come within the window.
    fn expired(&mut self, now: u64) -> Vec<Incident> {
        let due: Vec<_> = self
            .waiting
            .iter()
            .filter(|(_, (t, _, _))| now.saturating_sub(*t) >= Self::WINDOW_NS)
            .map(|(k, _)| *k)
            .collect();
        due.into_iter()
            .filter_map(|k| self.waiting.remove(&k).map(|(_, _, i)| i))
            .collect()
    }

    /// Keeps a map under MAX entries: in a reset storm it starts over rather than grow.
    fn bound<V>(map: &mut HashMap<(SocketAddr, SocketAddr), V>) {
        if map.len() >= Self::MAX {
            map.clear();
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
    pub fn new(ephemeral: RangeInclusive<u16>, rst_reasons: HashMap<u32, String>) -> Self {
        Self {
            ephemeral,
            rst_reasons,
            explain_ports: Vec::new(),
            pairs: ResetPairs::default(),
            held: HeldCloses::default(),
            explained: Vec::new(),
            execs: Vec::new(),
            resets: StreamResets::default(),
        }
    }

    /// A process exec'd a new image (for the Go runtime hooks, which look at it).
    pub fn exec(&mut self, tgid: u32) {
        // Bounded: an exec storm between two drains keeps the first ones.
        if self.execs.len() < 4096 {
            self.execs.push(tgid);
        }
    }

    /// The processes that exec'd since the last call.
    pub fn take_execs(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.execs)
    }

    /// The explanations made since the last call.
    pub fn take_explained(&mut self) -> Vec<Explained> {
        std::mem::take(&mut self.explained)
    }

    fn explain_port(&self, s: &SockState) -> Option<u16> {
        self.explain_ports
            .iter()
            .copied()
            .find(|&p| p == s.lport || p == s.rport)
    }

    /// The unanswered close: the local process read ≥1 byte, wrote nothing after that last
    /// read, and then closed the connection itself (FIN or RST, in its own context), and the
    /// peer was waiting for an answer. The socket's own facts are judged by
    /// [`SockState::verdict`], the function the kernel pre-filter applies too; what only the
    /// agent can tell is judged here.
    ///
    /// A FIN close that owes an answer is held back briefly (see [`HeldCloses`]) and comes out
    /// of [`Correlator::expired`].
    pub fn teardown(&mut self, ev: &TeardownEvent, listeners: &impl Listeners) -> Option<Incident> {
        let s = &ev.sock;
        let role = Role::from_wire(s.role);
        let verdict = match s.verdict() {
            // A timer or softirq (keepalive, retransmission timeout) ended it, not the process.
            Verdict::Owes if s.tgid == 0 || ev.closer_tgid != s.tgid => Verdict::NotTheResponder,
            // A socket older than the agent is a server's only if its process listens on its
            // local port; otherwise it may be a client that read a response, which owes nothing.
            Verdict::Owes if role == Role::Unknown && !listeners.listening(s.tgid, s.lport) => {
                Verdict::NotTheResponder
            }
            v => v,
        };
        let port = self.explain_port(s);
        // The kernel sends an expired Go write deadline only where it explains the close.
        let go = go_cause(&ev.go, s.last_in_ns, ev.header.ts_ns);
        let loss = ev.go.explains(s.verdict(), ev.go.copied);
        if loss == GoLoss::CutShort {
            let detail = Detail::GoWriteTimeout {
                unacked_bytes: u64::from(ev.go.unacked),
                stream_id: None,
            };
            let mut incident = self.incident(s, role, Owner::of(s), detail);
            incident.go = go;
            self.explain(port, verdict, incident.clone());
            return Some(incident);
        }
        if verdict != Verdict::Owes && port.is_none() {
            return None;
        }
        let detail = Detail::UnansweredClose {
            how: if ev.newstate == tcp_state::CLOSE {
                CloseHow::Reset
            } else {
                CloseHow::Fin
            },
            unanswered_bytes: s.unanswered_in,
            delay: Duration::from_nanos(ev.header.ts_ns.saturating_sub(s.last_in_ns)),
            protocol: proto::name(s.proto),
            goodbye_sent: s.flags & flag::GOODBYE_SENT != 0,
        };
        let mut incident = self.incident(s, role, Owner::of(s), detail);
        if loss == GoLoss::Dropped {
            incident.go = go;
        }
        if verdict != Verdict::Owes {
            self.explain(port, verdict, incident);
            return None;
        }
        // Our FIN can still be crossed by the peer's; an abortive close cannot.
        if ev.newstate == tcp_state::FIN_WAIT1 && self.held.by_sk.len() < HeldCloses::MAX {
            // A close held for the same socket address belongs to an earlier connection whose
            // socket was freed and reused: its FIN can no longer be crossed, so it is final.
            let earlier = self
                .held
                .by_sk
                .insert(ev.sk, (ev.header.ts_ns, incident, port));
            return earlier.map(|(_, incident, port)| {
                self.explain(port, Verdict::Owes, incident.clone());
                incident
            });
        }
        self.explain(port, verdict, incident.clone());
        Some(incident)
    }

    /// Go net/http reset an HTTP/2 stream whose WriteTimeout expired: the response was dropped.
    /// Once per stream, however many times the hook ran for it ([`StreamResets`]).
    pub fn stream_reset(&mut self, ev: &GoStreamEvent) -> Option<Incident> {
        let s = &ev.sock;
        let detail = Detail::GoWriteTimeout {
            unacked_bytes: 0,
            stream_id: Some(ev.go.stream_id),
        };
        let owner = Owner {
            pid: ev.tgid,
            ..Owner::of(s)
        };
        let mut incident = self.incident(s, Role::from_wire(s.role), owner, detail);
        let key = (
            ev.sk,
            incident.local,
            incident.remote,
            s.write_at_start,
            ev.go.stream_id,
        );
        if !self.resets.first(key, ev.header.ts_ns) {
            return None;
        }
        incident.go = go_cause(&ev.go, s.last_in_ns, ev.header.ts_ns);
        Some(incident)
    }

    /// The peer's FIN crossed ours on a socket whose teardown was reported: a held unanswered
    /// close is no loss after all.
    pub fn simultaneous_close(&mut self, ev: &TeardownEvent) {
        if let Some((_, incident, port)) = self.held.by_sk.remove(&ev.sk) {
            self.explain(port, Verdict::SimultaneousClose, incident);
        }
    }

    fn explain(&mut self, port: Option<u16>, verdict: Verdict, incident: Incident) {
        if let Some(port) = port {
            self.explained.push(Explained {
                port,
                verdict,
                incident,
            });
        }
    }

    /// Undelivered bytes: the connection ended abortively while bytes write() accepted
    /// were unacknowledged, or a server's local abort discarded input it never read
    /// ([`agent_common::Stake::loses_data`]). A reset by a peer on this host waits for that
    /// peer's own record, which may show it had the bytes ([`ResetPairs`]).
    pub fn abort(&mut self, ev: &AbortEvent) -> Option<Incident> {
        let s = &ev.sock;
        let role = Role::from_wire(s.role);
        let stake = ev.stake();
        if stake.drops_input() {
            let (here, there) = addrs(s);
            self.pairs
                .dropped_input(here, there, ev.header.ts_ns, ev.received_end());
        }
        // The detector's decision, the one the kernel's filter made before sending the record.
        if !stake.loses_data(s) {
            return None;
        }
        let reason = self.abort_reason(ev);
        let ended_by = match (reason, ev.trigger) {
            (AbortReason::PeerReset, _) => EndedBy::Peer,
            (AbortReason::Timeout, _) | (_, trigger::ERROR) => EndedBy::Network,
            _ => EndedBy::Local,
        };
        let detail = Detail::Undelivered {
            reason,
            undelivered_bytes: ev.unacked,
            unsent_bytes: ev.unsent,
            unread_bytes: ev.unread,
        };
        // The owner is whoever read or wrote the socket; a socket never used by a process has
        // nothing written, so it cannot get here without one.
        let owner = if s.tgid != 0 {
            Owner::of(s)
        } else {
            Owner {
                pid: ev.current_tgid,
                ..Owner::default()
            }
        };
        let mut incident = self.incident(s, role, owner, detail);
        incident.ended_by = ended_by;
        if ev.trigger == trigger::RECEIVE_RESET {
            return self.pairs.peer_reset(
                ev.header.ts_ns,
                ev.written_end(),
                s.peer_is_loopback(),
                incident,
            );
        }
        Some(incident)
    }

    /// Incidents held back whose window passed: peer resets whose local peer's record did not
    /// come, and unanswered closes whose peer did not close at the same moment. Call it
    /// periodically with the current CLOCK_MONOTONIC time in nanoseconds.
    pub fn expired(&mut self, now_ns: u64) -> Vec<Incident> {
        self.resets.expire(now_ns);
        let mut out = self.pairs.expired(now_ns);
        let due: Vec<u64> = self
            .held
            .by_sk
            .iter()
            .filter(|(_, (t, _, _))| now_ns.saturating_sub(*t) >= HeldCloses::WINDOW_NS)
            .map(|(sk, _)| *sk)
            .collect();
        for sk in due {
            if let Some((_, incident, port)) = self.held.by_sk.remove(&sk) {
                self.explain(port, Verdict::Owes, incident.clone());
                out.push(incident);
            }
        }
        out
    }

    /// Maps the kernel's facts to a reason label: the reset reason where the kernel gives one,
    /// inferred from the socket's state where it does not.
    fn abort_reason(&self, ev: &AbortEvent) -> AbortReason {
        match ev.trigger {
            trigger::RECEIVE_RESET => AbortReason::PeerReset,
            trigger::ERROR if ev.sk_err == errno::ETIMEDOUT => AbortReason::Timeout,
            trigger::ERROR => AbortReason::Other,
            _ => {
                let name = self
                    .rst_reasons
                    .get(&ev.rst_reason)
                    .map_or("", String::as_str);
                if name.ends_with("ABORT_ON_CLOSE") || (name.is_empty() && ev.unread > 0) {
                    AbortReason::CloseWithUnreadInput
                } else if ev.linger_zero != 0 {
                    // SO_LINGER{1,0} goes through tcp_disconnect, which reports TCP_STATE.
                    AbortReason::LingerZero
                } else if name.ends_with("MEMORY") {
                    AbortReason::Memory
                } else if name.contains("TIMEOUT") {
                    AbortReason::Timeout
                } else {
                    AbortReason::Other
                }
            }
        }
    }

    /// Write after close ([`agent_common::write_error_loses`]).
    pub fn write_error(&self, ev: &WriteErrorEvent) -> Option<Incident> {
        let known = (ev.size_known != 0).then_some(ev.attempted);
        let tracked = (ev.tracked != 0).then_some(&ev.sock);
        // The detector's decision, the one the kernel made before sending the record.
        if !agent_common::write_error_loses(ev.errno, tracked, known) {
            return None;
        }
        let errno = match ev.errno {
            errno::EPIPE => Errno::EPIPE,
            errno::ECONNRESET => Errno::ECONNRESET,
            errno::ENOTCONN => Errno::ENOTCONN,
            errno::EBADF => Errno::EBADF,
            _ => return None,
        };
        let detail = Detail::WriteAfterClose {
            errno,
            attempted: known,
        };
        let s = &ev.sock;
        // The writer, who may not be the socket's owner.
        let writer = Owner {
            pid: ev.tgid,
            comm: comm(&ev.comm),
            tid: ev.pid,
            thread: comm(&ev.thread),
        };
        let mut incident = self.incident(s, Role::from_wire(s.role), writer, detail);
        incident.ended_by = write_ended_by(errno, tracked);
        Some(incident)
    }

    fn incident(&self, s: &SockState, role: Role, owner: Owner, detail: Detail) -> Incident {
        let (local, remote) = addrs(s);
        Incident {
            detail,
            pid: owner.pid,
            comm: owner.comm,
            tid: owner.tid,
            thread: owner.thread,
            role,
            port: self.port_label(role, s.lport, s.rport),
            local,
            remote,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            cgroup_id: s.cgroup_id,
            peer_closed: s.flags & flag::PEER_FIN != 0,
            ended_by: EndedBy::Local,
            go: None,
        }
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

/// Who ended the connection a write failed on: the process itself for EBADF and for a write
/// after its own close or shutdown; the network where the connection timed out; else the
/// peer, whose reset is what EPIPE, ECONNRESET and ENOTCONN mostly follow.
fn write_ended_by(errno: Errno, tracked: Option<&SockState>) -> EndedBy {
    let flags = tracked.map_or(0, |s| s.flags);
    match errno {
        Errno::EBADF => EndedBy::Local,
        _ if flags & flag::PEER_RESET != 0 => EndedBy::Peer,
        _ if flags & flag::TIMED_OUT != 0 => EndedBy::Network,
        Errno::EPIPE | Errno::ENOTCONN if flags & flag::LOCAL_CLOSE != 0 => EndedBy::Local,
        _ => EndedBy::Peer,
    }
}

/// The cause an expired Go deadline gives a record written at `ts_ns` (a close, or the expiry
/// itself) on a socket whose last input came at `last_in_ns`. None when no deadline is recorded.
fn go_cause(d: &GoDeadline, last_in_ns: u64, ts_ns: u64) -> Option<GoWriteTimeout> {
    let deadline = match d.which {
        go_deadline::WRITE => GoDeadlineKind::Write,
        go_deadline::READ_WRITE => GoDeadlineKind::ReadWrite,
        go_deadline::H2_STREAM => GoDeadlineKind::H2Stream,
        _ => return None,
    };
    Some(GoWriteTimeout {
        deadline,
        // The request's arrival as the expiry saw it (0 when the programs could not read it).
        after_input: Duration::from_nanos(d.ns.saturating_sub(if d.input_ns != 0 {
            d.input_ns
        } else {
            last_in_ns
        })),
        until_close: (deadline != GoDeadlineKind::H2Stream)
            .then(|| Duration::from_nanos(ts_ns.saturating_sub(d.ns))),
    })
}

/// Who an incident is about: the process and its name (the thread-group leader's comm), and
/// the thread that acted on the socket and its name.
#[derive(Default)]
struct Owner {
    pid: u32,
    comm: String,
    tid: u32,
    thread: String,
}

impl Owner {
    /// The task that claimed the socket (its first write or its close).
    fn of(s: &SockState) -> Self {
        Self {
            pid: s.tgid,
            comm: comm(&s.comm),
            tid: s.pid,
            thread: comm(&s.thread),
        }
    }
}

/// A task comm, up to its NUL, with its control characters escaped (`\n`, `\u{1b}`): any
/// process can name itself, and a newline in a name must not start a line of the incident log
/// (a forged `INCIDENT`) or of the exposition.
pub fn comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let name = String::from_utf8_lossy(&raw[..end]);
    if !name.chars().any(char::is_control) {
        return name.into_owned();
    }
    name.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
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
