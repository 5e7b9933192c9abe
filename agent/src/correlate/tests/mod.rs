//! Synthetic event sequences for every detector rule and every not-a-loss case (README: What it detects),
//! driven through a model socket ([`Conn`]) that calls the same agent-common transitions the
//! programs do. One file per detector.

use agent_common::{
    AF_INET, AF_INET6, AbortEvent, Closing, EventHeader, NO_REASON, Start, WriteErrorEvent, errno,
    kind, trigger,
};

use super::*;

const SEC: u64 = 1_000_000_000;
const OWNER: u32 = 4242;
/// The owner's thread that claimed the socket.
const OWNER_THREAD: u32 = 4250;

/// The first sequence number the peer's data takes; close to the wrap, so that every test also
/// crosses it.
const PEER_ISN: u32 = u32::MAX - 100;
/// Our own first sequence number after the SYN, near the wrap too.
const OWN_ISN: u32 = u32::MAX - 40;

/// One socket as the kernel keeps it (`copied_seq`, `rcv_nxt`, `bytes_received`, `write_seq`,
/// the last arrival), with its `SockState` driven by the same agent-common transitions the
/// programs call (agent-ebpf's track, send and close): `Start` and `begin` when tracking starts
/// (at the handshake, or adopted), `record_send` per send, `Closing`, `local_close`, `settle`
/// and `mark_teardown_record` at the local close. What stays here is only what the kernel
/// itself does to the socket (sequence numbers moving, state changes).
struct Conn {
    st: SockState,
    copied: u32,
    rcv_nxt: u32,
    received: u64,
    /// `tcp_sock.write_seq`: where the process's writes have got to.
    write_seq: u32,
    last_arrival: u64,
    /// The Go write deadline that expired on it, as the uprobe records it.
    go: GoDeadline,
}

impl Conn {
    /// A socket on 127.0.0.1 between `lport` and `rport`, its sequence numbers at their first
    /// data byte, not yet tracked.
    fn socket(lport: u16, rport: u16) -> Self {
        let mut st = SockState {
            family: AF_INET,
            lport,
            rport,
            ..SockState::default()
        };
        st.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        st.raddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        Self {
            st,
            copied: PEER_ISN,
            rcv_nxt: PEER_ISN,
            received: 0,
            write_seq: OWN_ISN,
            last_arrival: 0,
            go: GoDeadline::default(),
        }
    }

    /// Tracked from the handshake, which came from `old` (SYN_RECV or SYN_SENT).
    fn established(mut self, old: u32) -> Self {
        let start = Start::established(old, self.copied, self.write_seq).expect("a handshake");
        self.st.begin(&start, tcp_state::ESTABLISHED);
        self
    }

    fn server() -> Self {
        Self::socket(8800, 60154).established(tcp_state::SYN_RECV)
    }

    fn client() -> Self {
        Self::socket(60154, 8800).established(tcp_state::SYN_SENT)
    }

    /// The socket as it stands, adopted at a send of `n` bytes by an agent that started after
    /// it opened ([`Start::at_send`]); the send is recorded as the programs record it.
    fn adopted_at_send(mut self, t: u64, n: u32, state: u32) -> Self {
        assert!(Start::adoptable_at_send(state));
        // The programs adopt it after the send queued its bytes: write_seq is n further on.
        let start = Start::at_send(self.copied, self.write_seq.wrapping_add(n), n);
        self.st = Self::socket(self.st.lport, self.st.rport).st;
        self.st.begin(&start, state);
        // The send that adopted it, recorded as any other.
        self.send(t, n as i64)
    }

    /// The socket, never tracked, adopted as it closes ([`Start::unwritten`]): `None` where it
    /// ever sent a data segment (`data_segs_out`).
    fn adopted_unwritten(mut self, data_segs_out: u32) -> Option<Self> {
        let start = Start::unwritten(data_segs_out, self.rcv_nxt, self.received, self.write_seq)?;
        let state = if self.st.flags & flag::PEER_FIN != 0 {
            tcp_state::CLOSE_WAIT
        } else {
            tcp_state::ESTABLISHED
        };
        self.st = Self::socket(self.st.lport, self.st.rport).st;
        self.st.begin(&start, state);
        Some(self)
    }

    fn claim(&mut self) {
        if self.st.tgid == 0 {
            // A worker thread of the process: the incident names both.
            self.st.tgid = OWNER;
            self.st.pid = OWNER_THREAD;
            self.st.comm[..7].copy_from_slice(b"seedsrv");
            self.st.thread[..8].copy_from_slice(b"worker-1");
        }
    }

    /// `ret` bytes arrive at `t` and the process reads them (0 = it reads the end of file after
    /// the peer's FIN, <0 = an error such as EAGAIN).
    fn recv(mut self, t: u64, ret: i64) -> Self {
        if ret > 0 {
            self.rcv_nxt = self.rcv_nxt.wrapping_add(ret as u32);
            self.received += ret as u64;
            self.copied = self.copied.wrapping_add(ret as u32);
            self.last_arrival = t;
        } else if ret == 0 && self.st.flags & flag::PEER_FIN != 0 {
            // Reading the end of file steps copied_seq over the FIN.
            self.copied = self.rcv_nxt;
        }
        self
    }

    /// What the connection carried before the agent started: `read` bytes in, read, and
    /// `wrote` out, none of it seen by the programs.
    fn before_the_agent(mut self, read: u32, wrote: u32) -> Self {
        self.rcv_nxt = self.rcv_nxt.wrapping_add(read);
        self.received += read as u64;
        self.copied = self.copied.wrapping_add(read);
        self.write_seq = self.write_seq.wrapping_add(wrote);
        self
    }

    /// `n` bytes arrive at `t`; the process has not read them yet.
    fn arrive(mut self, t: u64, n: u32) -> Self {
        self.rcv_nxt = self.rcv_nxt.wrapping_add(n);
        self.received += n as u64;
        self.last_arrival = t;
        self
    }

    /// The process reads `n` of the bytes that have arrived.
    fn read(mut self, n: u32) -> Self {
        self.copied = self.copied.wrapping_add(n);
        self
    }

    /// A write that returned `ret` (the programs see only successful ones here), of a message
    /// whose first bytes do not matter.
    fn send(self, t: u64, ret: i64) -> Self {
        self.send_msg(t, ret, b"")
    }

    /// A write of `ret` bytes of a message starting with `head`, as the programs record it:
    /// its first bytes are read only where `send_needs_peek` asks for them.
    fn send_msg(mut self, t: u64, ret: i64, head: &[u8]) -> Self {
        if ret > 0 {
            self.claim();
            self.write_seq = self.write_seq.wrapping_add(ret as u32);
            if self.st.send_needs_read_position() {
                let mut h = agent_common::Head::default();
                if self.st.send_needs_peek(ret as u32) {
                    let n = head.len().min(h.len());
                    h[..n].copy_from_slice(&head[..n]);
                }
                let since = t.saturating_sub(self.last_arrival);
                self.st
                    .record_send(self.copied, ret as u32, &h, || Some(since));
            }
        }
        self
    }

    /// The peer's FIN arrives: it takes a sequence number, and the socket goes to CLOSE_WAIT.
    fn peer_fin(mut self) -> Self {
        self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
        self.received += 1;
        self.st.peer_fin(self.write_seq);
        self
    }

    fn peer_reset(mut self) -> Self {
        self.st.flags |= flag::PEER_RESET;
        self
    }

    /// The local close transition at time `t`, run by task `closer` (0: no task held the
    /// socket). Returns the record the kernel would emit (None when its pre-filter drops it).
    fn close_by(self, t: u64, newstate: u32, closer: u32) -> Option<TeardownEvent> {
        self.close_as(t, newstate, closer, false)
    }

    /// The owner's close of a connection on an `--explain-port`.
    fn close_explained(self, t: u64) -> Option<TeardownEvent> {
        self.close_as(t, tcp_state::FIN_WAIT1, OWNER, true)
    }

    fn close_as(
        mut self,
        t: u64,
        newstate: u32,
        closer: u32,
        explained: bool,
    ) -> Option<TeardownEvent> {
        let old = if self.st.flags & flag::PEER_FIN != 0 {
            tcp_state::CLOSE_WAIT
        } else {
            tcp_state::ESTABLISHED
        };
        if closer == OWNER {
            self.claim();
        }
        let mut st = self.st;
        st.closing_from(old);
        let closing = Closing::of(old, newstate, 0);
        assert!(closing.open && st.local_close(newstate));
        // This state change comes before the kernel queues the FIN it announces.
        st.settle(
            self.copied,
            self.rcv_nxt,
            self.received,
            self.write_seq,
            false,
        );
        st.note_close(|| Some(t.saturating_sub(self.last_arrival)));
        st.last_in_ns = self.last_arrival;
        let go = if st.flags & flag::GO_DEADLINE != 0
            && self.go.explains(st.verdict(), self.copied) != GoLoss::None
        {
            self.go
        } else {
            GoDeadline::default()
        };
        st.mark_teardown_record(explained, go.which != 0)
            .then_some(TeardownEvent {
                header: EventHeader {
                    kind: kind::TEARDOWN,
                    len: size_of::<TeardownEvent>() as u32,
                    ts_ns: t,
                },
                sock: st,
                sk: 0xffff_8880_0000_1000,
                closer_tgid: closer,
                oldstate: old,
                newstate,
                _pad: 0,
                go,
            })
    }

    /// The Go runtime's write deadline expires at `t`; `waiting`: a write was blocked on a full
    /// send buffer (SOCK_NOSPACE), with `unacked` bytes not acknowledged.
    fn deadline_expires(mut self, t: u64, waiting: bool, unacked: u32) -> Self {
        self.go = GoDeadline {
            ns: t,
            input_ns: self.last_arrival,
            copied: self.copied,
            unacked,
            write_seq: self.write_seq,
            which: go_deadline::WRITE,
            writer_waiting: u8::from(waiting),
            ..GoDeadline::default()
        };
        self.st.flags |= flag::GO_DEADLINE;
        self
    }

    fn close(self, t: u64) -> Option<TeardownEvent> {
        let new = if self.st.flags & flag::PEER_FIN != 0 {
            tcp_state::LAST_ACK
        } else {
            tcp_state::FIN_WAIT1
        };
        self.close_by(t, new, OWNER)
    }
}

/// Correlates with nothing listening anywhere.
fn incidents(ev: Option<TeardownEvent>) -> Vec<Incident> {
    incidents_with(ev, |_, _| false)
}

/// What the agent reports for the record, once every held-back close has come out.
fn incidents_with(ev: Option<TeardownEvent>, listeners: impl Listeners) -> Vec<Incident> {
    let mut c = Correlator::default();
    let mut out: Vec<Incident> = ev
        .iter()
        .filter_map(|e| c.teardown(e, &listeners))
        .collect();
    out.extend(c.expired(u64::MAX));
    out
}

use protocols::tls_session;
use undelivered::{abort_ev, correlator_with_reasons};

mod go;
mod protocols;
mod sessions;
mod unanswered;
mod undelivered;
mod write_after_close;
