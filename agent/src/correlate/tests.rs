//! Synthetic event sequences for every detector rule and every not-a-loss case of SPEC §2.

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
/// and `worth_a_teardown_record` at the local close. What stays here is only what the kernel
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
        self.write_seq = self.write_seq.wrapping_add(n);
        let start = Start::at_send(self.copied, self.write_seq, n);
        self.st = Self::socket(self.st.lport, self.st.rport).st;
        self.st.begin(&start, state);
        // The send that adopted it, recorded as any other (its bytes are in write_seq already).
        self.write_seq = self.write_seq.wrapping_sub(n);
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
    fn send_msg(mut self, _t: u64, ret: i64, head: &[u8]) -> Self {
        if ret > 0 {
            self.claim();
            self.write_seq = self.write_seq.wrapping_add(ret as u32);
            if self.st.send_needs_read_position() {
                let mut h = agent_common::Head::default();
                if self.st.send_needs_peek(ret as u32) {
                    let n = head.len().min(h.len());
                    h[..n].copy_from_slice(&head[..n]);
                }
                self.st.record_send(self.copied, ret as u32, &h);
            }
        }
        self
    }

    /// The peer's FIN arrives: it takes a sequence number, and the socket goes to CLOSE_WAIT.
    fn peer_fin(mut self) -> Self {
        self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
        self.received += 1;
        self.st.flags |= flag::PEER_FIN;
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
        st.last_in_ns = self.last_arrival;
        let go = if st.flags & flag::GO_DEADLINE != 0
            && self.go.explains(st.verdict(), self.copied) != GoLoss::None
        {
            self.go
        } else {
            GoDeadline::default()
        };
        st.worth_a_teardown_record(explained, go.which != 0)
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

#[test]
fn seed_go_write_timeout_counts_one() {
    // Go net/http, WriteTimeout 1 s, handler sleeps 2 s: 78 bytes in, nothing out, FIN 2 s later.
    let got = incidents(
        Conn::server()
            .recv(SEC, 78)
            .recv(SEC + 5, -11)
            .close(3 * SEC),
    );
    assert_eq!(got.len(), 1);
    let i = &got[0];
    assert_eq!(
        i.detail,
        Detail::UnansweredClose {
            how: CloseHow::Fin,
            unanswered_bytes: 78,
            delay: Duration::from_secs(2),
            protocol: "unknown",
            goodbye_sent: false,
        }
    );
    assert_eq!((i.kind(), i.reason()), ("unanswered_close", "fin"));
    assert_eq!((i.role, i.port), (Role::Server, 8800));
    assert_eq!((i.pid, i.comm.as_str()), (OWNER, "seedsrv"));
    assert_eq!((i.tid, i.thread.as_str()), (OWNER_THREAD, "worker-1"));
    assert_eq!((i.bytes_in, i.bytes_out), (78, 0));
    assert!(!i.peer_closed);
    assert_eq!(
        i.sentence(),
        "pid 4242 (seedsrv) read 78 bytes on 127.0.0.1:8800 from 127.0.0.1:60154 and closed the \
         connection 2.0 s later without writing a response"
    );
}

#[test]
fn seed_with_the_go_runtime_hooks_names_the_cause() {
    let got = incidents(
        Conn::server()
            .recv(SEC, 78)
            .deadline_expires(2 * SEC, false, 0)
            .close(3 * SEC),
    );
    assert_eq!(got.len(), 1);
    let i = &got[0];
    assert_eq!(i.kind(), "unanswered_close");
    let go = i.go.expect("the cause");
    assert_eq!(go.deadline, GoDeadlineKind::Write);
    assert_eq!(go.protocol(), "http1");
    assert_eq!(go.after_input, Duration::from_secs(1));
    assert_eq!(go.until_close, Some(Duration::from_secs(1)));
    assert_eq!(
        i.sentence(),
        "pid 4242 (seedsrv) read 78 bytes on 127.0.0.1:8800 from 127.0.0.1:60154 and closed the \
         connection 2.0 s later without writing a response: Go dropped the response: its write \
         deadline (WriteTimeout, ~1.0 s after the request was read) expired while the handler \
         ran; the handler finished 1.0 s later"
    );
}

#[test]
fn go_deadline_is_timed_from_the_request_not_from_a_later_goodbye() {
    // The peer's TLS close alert arrives, unread, between the expiry and the close: the
    // deadline still expired 1 s after the request.
    let got = incidents(
        Conn::server()
            .recv(SEC, 78)
            .deadline_expires(2 * SEC, false, 0)
            .arrive(3 * SEC - 1000, 24)
            .close(3 * SEC),
    );
    assert_eq!(got.len(), 1);
    let go = got[0].go.expect("the cause");
    assert_eq!(go.after_input, Duration::from_secs(1));
    assert_eq!(go.until_close, Some(Duration::from_secs(1)));
}

#[test]
fn go_deadline_on_an_idle_keep_alive_connection_is_no_incident() {
    // The response went out; net/http leaves the write deadline armed, and it expires while the
    // connection idles. The server's idle close then owes nothing, and neither does the expiry.
    let idle = Conn::server()
        .recv(SEC, 78)
        .send(SEC + 1, 120)
        .deadline_expires(2 * SEC, false, 0);
    assert_eq!(idle.close(5 * SEC), None, "no record at all");
}

#[test]
fn go_deadline_before_the_next_request_is_not_its_cause() {
    // The first request's deadline expired while idle; a second request re-armed it, and is
    // then left unanswered for another reason: the unanswered close has no Go cause.
    let got = incidents(
        Conn::server()
            .recv(SEC, 78)
            .send(SEC + 1, 120)
            .deadline_expires(2 * SEC, false, 0)
            .recv(3 * SEC, 78)
            .close(4 * SEC),
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].go, None);
}

#[test]
fn go_deadline_cutting_a_blocked_response_short_is_one_incident() {
    let got = incidents(
        Conn::server()
            .recv(SEC, 78)
            .send(SEC + 1, 4_000_000)
            .deadline_expires(2 * SEC, true, 2_500_000)
            .close(2 * SEC + 1000),
    );
    assert_eq!(got.len(), 1);
    let i = &got[0];
    assert_eq!((i.kind(), i.reason()), ("go_write_timeout", "cut_short"));
    assert_eq!(
        i.detail,
        Detail::GoWriteTimeout {
            unacked_bytes: 2_500_000,
            stream_id: None
        }
    );
    assert_eq!(i.bytes_out, 4_000_000);
    assert_eq!(i.go.map(|g| g.protocol()), Some("http1"));
    // The same expiry with no write waiting on the peer cut nothing a socket can show.
    let idle = Conn::server()
        .recv(SEC, 78)
        .send(SEC + 1, 4_000_000)
        .deadline_expires(2 * SEC, false, 0);
    assert_eq!(idle.close(3 * SEC), None);
}

#[test]
fn go_h2_stream_reset_is_one_incident() {
    let conn = Conn::server().recv(SEC, 300).send(SEC + 1, 60);
    let mut sock = conn.st;
    sock.last_in_ns = SEC;
    let ev = GoStreamEvent {
        header: EventHeader {
            kind: kind::GO_STREAM_RESET,
            len: size_of::<GoStreamEvent>() as u32,
            ts_ns: 2 * SEC,
        },
        sock,
        sk: 1,
        go: GoDeadline {
            ns: 2 * SEC,
            input_ns: SEC,
            stream_id: 3,
            which: go_deadline::H2_STREAM,
            ..GoDeadline::default()
        },
        tgid: OWNER,
        pid: OWNER + 1,
    };
    let mut c = Correlator::default();
    let i = c.stream_reset(&ev).expect("an incident");
    // The hook ran again for the same call (the goroutine's stack grew in the prologue).
    let again = GoStreamEvent {
        header: EventHeader {
            ts_ns: 2 * SEC + 300,
            ..ev.header
        },
        ..ev
    };
    assert_eq!(c.stream_reset(&again), None, "one stream, one reset");
    let next_stream = GoStreamEvent {
        go: GoDeadline {
            stream_id: 5,
            ..ev.go
        },
        ..again
    };
    assert!(c.stream_reset(&next_stream).is_some(), "another stream");
    // The socket freed and reused by another connection, whose stream 3 is its own.
    let mut other = ev;
    other.sock.rport += 1;
    other.sock.write_at_start = 7;
    assert!(c.stream_reset(&other).is_some(), "another connection");
    assert!(c.expired(20 * SEC).is_empty());
    assert!(
        c.stream_reset(&again).is_some(),
        "forgotten after the window"
    );
    assert_eq!((i.kind(), i.reason()), ("go_write_timeout", "stream_reset"));
    assert_eq!(i.go.map(|g| g.protocol()), Some("h2"));
    assert_eq!(i.go.and_then(|g| g.until_close), None);
    assert_eq!(
        i.sentence(),
        "pid 4242 (seedsrv) reset HTTP/2 stream 3 on 127.0.0.1:8800 from 127.0.0.1:60154: the \
         stream's write deadline (WriteTimeout, ~1.0 s after the request was read) expired \
         before the response was written, so Go net/http dropped it; the connection stays open"
    );
}

#[test]
fn keep_alive_traffic_counts_zero() {
    let mut c = Conn::server();
    for n in 0..5 {
        c = c.recv(n * SEC, 78).send(n * SEC + 1000, 120);
    }
    // The client closes the idle connection: the server reads EOF (not input) and closes.
    let c = c.peer_fin().recv(6 * SEC, 0);
    assert_eq!(c.close(6 * SEC + 10), None, "the kernel must not even emit");
}

#[test]
fn idle_keep_alive_closed_by_server_counts_zero() {
    let c = Conn::server().recv(SEC, 78).send(SEC + 10, 120);
    assert_eq!(c.close(70 * SEC), None);
}

#[test]
fn client_closing_after_reading_full_response_counts_zero() {
    // The client wrote first, so it owes nothing even though its last operation was a read.
    let c = Conn::client()
        .send(SEC, 78)
        .recv(SEC + 10, 4096)
        .recv(SEC + 20, 2000);
    assert_eq!(c.close(SEC + 30), None);
}

#[test]
fn keep_alive_client_records_its_reading_only_at_its_first_write() {
    let c = Conn::client()
        .send(SEC, 78)
        .recv(SEC + 10, 120)
        .send(2 * SEC, 78)
        .recv(2 * SEC + 10, 120);
    // The later write skipped the read position: a client that spoke first never owes.
    assert_eq!(c.st.copied_at_last_out, PEER_ISN);
    assert!(!c.st.send_needs_read_position());
    assert_eq!(c.close(3 * SEC), None);
    // A client whose peer spoke first keeps recording it.
    let c = Conn::client().recv(SEC, 40).send(SEC + 1, 10);
    assert!(c.st.send_needs_read_position());
    assert_eq!(c.st.copied_at_last_out, PEER_ISN.wrapping_add(40));
}

#[test]
fn half_close_with_delivered_response_counts_zero() {
    // Client: request, shutdown(SHUT_WR) (FIN_WAIT1 from the client), response read.
    let client = Conn::client().send(SEC, 78).recv(SEC + 20, 120);
    assert_eq!(client.close(SEC + 5), None);
    // Server: request, the client's FIN, the response, then close.
    let server = Conn::server()
        .recv(SEC, 78)
        .peer_fin()
        .recv(SEC + 1, 0)
        .send(SEC + 10, 120);
    assert_eq!(server.close(SEC + 11), None);
}

#[test]
fn input_that_arrived_before_a_write_and_was_read_before_the_next_counts_zero() {
    // The request arrives while a response is being written; the process reads it, answers,
    // and then writes a stream with nothing more arriving.
    let c = Conn::server()
        .arrive(SEC, 78)
        .send(SEC + 1, 4096)
        .read(78)
        .send(SEC + 2, 120)
        .send(SEC + 3, 64)
        .send(SEC + 4, 64);
    assert_eq!(c.close(2 * SEC), None);
    // The same, but the last input is read after the last write: unanswered.
    let c = Conn::server()
        .arrive(SEC, 78)
        .send(SEC + 1, 4096)
        .send(SEC + 2, 64)
        .read(78);
    let got = incidents(c.close(3 * SEC));
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].detail,
        Detail::UnansweredClose {
            how: CloseHow::Fin,
            unanswered_bytes: 78,
            delay: Duration::from_secs(2),
            protocol: "unknown",
            goodbye_sent: false,
        }
    );
}

#[test]
fn reads_returning_eof_or_eagain_are_not_input() {
    let c = Conn::server().recv(SEC, 0).recv(SEC, -11).recv(SEC, -104);
    assert_eq!(c.close(2 * SEC), None);
}

#[test]
fn pipelined_requests_answered_count_zero() {
    let c = Conn::server()
        .recv(SEC, 234)
        .send(SEC + 10, 120)
        .send(SEC + 20, 120)
        .send(SEC + 30, 120);
    assert_eq!(c.close(2 * SEC), None);
}

#[test]
fn connection_reset_by_peer_counts_zero() {
    // The request is in, then the peer resets: the RST closed it, not the process.
    let ev = Conn::server()
        .recv(SEC, 78)
        .peer_reset()
        .close_by(2 * SEC, tcp_state::CLOSE, OWNER);
    assert!(
        ev.is_none(),
        "the shared decision drops it in the kernel already"
    );
}

#[test]
fn close_outside_the_process_context_counts_zero() {
    // A keepalive or retransmission timer fired in softirq on some other task.
    let ev = Conn::server()
        .recv(SEC, 78)
        .close_by(600 * SEC, tcp_state::CLOSE, 0);
    assert!(incidents(ev).is_empty());
}

#[test]
fn abortive_close_with_unanswered_request_counts_as_reset() {
    // close() with unread input goes straight to CLOSE with an RST.
    let got = incidents(Conn::server().recv(SEC, 3).close_by(
        SEC + SEC / 2,
        tcp_state::CLOSE,
        OWNER,
    ));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].reason(), "rst");
    assert!(
        got[0]
            .sentence()
            .contains("and reset the connection 0.5 s later")
    );
}

#[test]
fn peer_that_closed_its_side_first_was_not_waiting() {
    // SPEC §2: a peer that closed or reset its side before the local close was not waiting
    // (a one-way stream's sender, a client that gave up).
    assert!(incidents(Conn::server().recv(SEC, 78).peer_fin().close(5 * SEC)).is_empty());
    assert!(incidents(Conn::server().recv(SEC, 78).peer_reset().close(5 * SEC)).is_empty());
}

#[test]
fn second_request_on_keep_alive_unanswered_counts_one() {
    let got = incidents(
        Conn::server()
            .recv(SEC, 78)
            .send(SEC + 10, 120)
            .recv(2 * SEC, 80)
            .close(3 * SEC),
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].bytes_in, 158);
    // From write_seq, across its wrap: what the one response queued.
    assert_eq!(got[0].bytes_out, 120);
    assert!(matches!(
        got[0].detail,
        Detail::UnansweredClose {
            unanswered_bytes: 80,
            ..
        }
    ));
    assert!(got[0].sentence().contains("read 80 bytes"));
    assert!(
        got[0]
            .sentence()
            .ends_with("without writing anything after that read")
    );
}

#[test]
fn server_that_writes_first_still_owes_the_answer() {
    // HTTP/2 servers send SETTINGS before reading the client's request.
    let got = incidents(
        Conn::server()
            .send(SEC, 27)
            .recv(SEC + 10, 90)
            .close(2 * SEC),
    );
    assert_eq!(got.len(), 1);
}

#[test]
fn client_of_a_server_speaks_first_protocol_owes_an_answer() {
    // The server greets first (SMTP-like); the client reads the greeting and hangs up.
    let got = incidents(Conn::client().recv(SEC, 40).close(2 * SEC));
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].role, got[0].port), (Role::Client, 8800));
}

#[test]
fn unknown_role_uses_the_non_ephemeral_port() {
    let c = Correlator::default();
    assert_eq!(c.port_label(Role::Unknown, 8800, 60154), 8800);
    assert_eq!(c.port_label(Role::Unknown, 60154, 5432), 5432);
    assert_eq!(c.port_label(Role::Client, 60154, 5432), 5432);
    assert_eq!(c.port_label(Role::Server, 443, 50000), 443);
}

#[test]
fn pre_existing_socket_counts_only_on_a_listening_port() {
    let listening_8800 = |pid: u32, port: u16| pid == OWNER && port == 8800;
    // A server socket older than the agent: request in, closed without an answer.
    let server = || {
        Conn::socket(8800, 40000)
            .recv(SEC, 78)
            .adopted_unwritten(0)
            .expect("it never sent a data segment")
    };
    let got = incidents_with(server().close(2 * SEC), listening_8800);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].role, got[0].port), (Role::Unknown, 8800));
    // Even if the first bytes the agent saw were the server's own (a response in flight).
    let mid_exchange = Conn::socket(8800, 40000)
        .adopted_at_send(SEC, 120, tcp_state::ESTABLISHED)
        .recv(2 * SEC, 78)
        .close(3 * SEC);
    assert_eq!(incidents_with(mid_exchange, listening_8800).len(), 1);
    // A client older than the agent that reads a response and closes: its local port is
    // ephemeral and nobody listens there, so it owes nothing.
    let client = Conn::socket(56320, 9437)
        .adopted_at_send(SEC, 78, tcp_state::ESTABLISHED)
        .recv(2 * SEC, 300)
        .close(3 * SEC);
    assert!(
        client.is_some(),
        "the kernel cannot tell it apart and reports it"
    );
    assert!(incidents_with(client, listening_8800).is_empty());
}

#[test]
fn adoption_takes_what_came_before_the_agent_as_answered() {
    let listening = |_: u32, port: u16| port == 8800;
    // A keep-alive connection that served requests before the agent started, then reads one
    // more and answers it: the answer adopts it, and its client's close owes nothing.
    let answered = Conn::socket(8800, 40000)
        .before_the_agent(400, 1200)
        .recv(SEC, 78)
        .adopted_at_send(SEC, 120, tcp_state::ESTABLISHED)
        .peer_fin()
        .close(2 * SEC);
    assert_eq!(answered, None, "no record");
    // The same connection, its next request left unanswered: only that one counts.
    let got = incidents_with(
        Conn::socket(8800, 40000)
            .before_the_agent(400, 1200)
            .recv(SEC, 78)
            .adopted_at_send(SEC, 120, tcp_state::ESTABLISHED)
            .recv(2 * SEC, 90)
            .close(3 * SEC),
        listening,
    );
    assert_eq!(got.len(), 1);
    // Unanswered: the request after the adopting answer. (Bytes read count the connection's
    // whole life: the socket's own `bytes_received`.)
    assert!(
        matches!(
            got[0].detail,
            Detail::UnansweredClose {
                unanswered_bytes: 90,
                ..
            }
        ),
        "{:?}",
        got[0].detail
    );
    assert_eq!(got[0].bytes_in, 400 + 78 + 90);
    // Adopted after the peer's FIN (CLOSE_WAIT): the state says the peer closed first.
    let close_wait = Conn::socket(8800, 40000)
        .recv(SEC, 78)
        .peer_fin()
        .adopted_at_send(SEC, 120, tcp_state::CLOSE_WAIT);
    assert_ne!(close_wait.st.flags & flag::PEER_FIN, 0);
    assert_eq!(close_wait.close(2 * SEC), None);
}

#[test]
fn a_socket_first_seen_at_its_close_is_judged_only_if_it_never_wrote() {
    let listening = |_: u32, port: u16| port == 8800;
    // Read its request before the agent started and never answered: every byte it ever
    // received is unanswered.
    let got = incidents_with(
        Conn::socket(8800, 40000)
            .recv(SEC, 78)
            .adopted_unwritten(0)
            .unwrap()
            .close(2 * SEC),
        listening,
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].kind(), "unanswered_close");
    // An idle keep-alive connection from before an agent restart, closed by its client: it
    // sent data segments in its life, so it is not adopted, and nothing is reported.
    let idle = Conn::socket(8800, 40000)
        .before_the_agent(400, 1200)
        .peer_fin();
    assert!(idle.adopted_unwritten(3).is_none());
}

#[test]
fn ipv6_and_mapped_ipv4_addresses() {
    let mut c = Conn::server();
    c.st.family = AF_INET6;
    c.st.laddr = Ipv6Addr::LOCALHOST.octets();
    c.st.raddr = Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped().octets();
    let got = incidents(c.recv(SEC, 10).close(2 * SEC));
    assert_eq!(got[0].local.to_string(), "[::1]:8800");
    assert_eq!(got[0].remote.to_string(), "10.0.0.7:60154");
}

#[test]
fn comm_stops_at_nul() {
    assert_eq!(comm(b"nginx\0\0\0garbage\0"), "nginx");
    assert_eq!(comm(b"exactly15bytes!\0"), "exactly15bytes!");
}

// --- undelivered bytes ---

fn abort_ev(conn: Conn, trig: u32, reason: u32, unacked: u64, unread: u64) -> AbortEvent {
    AbortEvent {
        header: EventHeader {
            kind: kind::ABORT,
            len: size_of::<AbortEvent>() as u32,
            ts_ns: 5 * SEC,
        },
        sock: conn.st,
        sk: 1,
        unacked,
        unsent: 0,
        unread,
        current_tgid: OWNER,
        trigger: trig,
        rst_reason: reason,
        sk_err: 0,
        linger_zero: 0,
        state: tcp_state::CLOSE,
        rcv_nxt: 0,
        write_seq: 0,
    }
}

/// A 6.18-like sk_rst_reason table (values as in include/net/rstreason.h there).
fn correlator_with_reasons() -> Correlator {
    let mut c = Correlator::default();
    for (v, n) in [
        (10, "SK_RST_REASON_TCP_ABORT_ON_CLOSE"),
        (11, "SK_RST_REASON_TCP_ABORT_ON_LINGER"),
        (12, "SK_RST_REASON_TCP_ABORT_ON_MEMORY"),
        (14, "SK_RST_REASON_TCP_STATE"),
        (15, "SK_RST_REASON_TCP_KEEPALIVE_TIMEOUT"),
    ] {
        c.rst_reasons.insert(v, n.to_owned());
    }
    c
}

fn reason_of(c: &mut Correlator, ev: &AbortEvent) -> Option<(AbortReason, u64)> {
    // Peer resets from a loopback peer are held back for their pair; release them.
    let got = c.abort(ev).or_else(|| c.expired(u64::MAX).pop());
    got.map(|i| match i.detail {
        Detail::Undelivered {
            reason,
            undelivered_bytes,
            ..
        } => (reason, undelivered_bytes),
        other => panic!("{other:?}"),
    })
}

#[test]
fn abort_reasons_from_the_kernel_reason_and_the_socket() {
    let c = &mut correlator_with_reasons();
    let server = || Conn::server().recv(SEC, 19).send(SEC, 4096);
    let cases = [
        (trigger::RECEIVE_RESET, NO_REASON, 0, AbortReason::PeerReset),
        (
            trigger::SEND_RESET,
            10,
            0,
            AbortReason::CloseWithUnreadInput,
        ),
        // SO_LINGER{1,0} goes through tcp_disconnect, which reports TCP_STATE.
        (trigger::SEND_RESET, 14, 1, AbortReason::LingerZero),
        (trigger::SEND_RESET, 12, 0, AbortReason::Memory),
        (trigger::SEND_RESET, 15, 0, AbortReason::Timeout),
        (trigger::SEND_RESET, 14, 0, AbortReason::Other),
    ];
    for (trig, reason, linger, want) in cases {
        let mut ev = abort_ev(server(), trig, reason, 4096, 0);
        ev.linger_zero = linger;
        assert_eq!(
            reason_of(c, &ev),
            Some((want, 4096)),
            "{trig} {reason} {linger}"
        );
    }
    // Retransmission timeout: CLOSE with sk_err = ETIMEDOUT and no RST.
    let mut ev = abort_ev(server(), trigger::ERROR, NO_REASON, 4096, 0);
    ev.sk_err = errno::ETIMEDOUT;
    assert_eq!(reason_of(c, &ev), Some((AbortReason::Timeout, 4096)));
    // A kernel without the reason field: unread input tells close() from the rest.
    let ev = abort_ev(server(), trigger::SEND_RESET, NO_REASON, 10, 16);
    let old_kernel = &mut Correlator::default();
    assert_eq!(
        reason_of(old_kernel, &ev),
        Some((AbortReason::CloseWithUnreadInput, 10))
    );
}

#[test]
fn server_closing_with_unread_request_counts_even_if_all_was_acknowledged() {
    // Reads 3 of 19 request bytes, answers, closes: the RST discards 16 bytes of input.
    let mut c = correlator_with_reasons();
    let ev = abort_ev(
        Conn::server().recv(SEC, 3).send(SEC, 20),
        trigger::SEND_RESET,
        10,
        0,
        16,
    );
    let i = c.abort(&ev).expect("an aborted connection");
    assert_eq!(
        (i.kind(), i.reason()),
        ("undelivered_bytes", "close_with_unread_input")
    );
    assert!(
        i.sentence().contains("with 16 bytes of input unread"),
        "{}",
        i.sentence()
    );
}

#[test]
fn aborts_with_nothing_at_stake_count_zero() {
    let mut c = correlator_with_reasons();
    // Peer reset after everything was acknowledged.
    let ev = abort_ev(Conn::server(), trigger::RECEIVE_RESET, NO_REASON, 0, 0);
    assert_eq!(c.abort(&ev), None);
    // A client (wrk at the end of a run) closing with a response it no longer wants unread.
    let client = Conn::client().send(SEC, 40).recv(SEC, 1264);
    let ev = abort_ev(client, trigger::SEND_RESET, 10, 0, 1264);
    assert_eq!(c.abort(&ev), None);
}

#[test]
fn crossing_tls_close_alerts_put_nothing_at_stake() {
    let mut c = correlator_with_reasons();
    // The client's alert answering the server's, reset by the server's closed socket.
    let client = Conn::client()
        .send_msg(SEC, 517, b"\x16\x03\x01\x02\x00\x01")
        .recv(SEC, 1400)
        .send(SEC, 24);
    assert_eq!(client.st.proto, agent_common::proto::TLS);
    let ev = abort_ev(client, trigger::RECEIVE_RESET, NO_REASON, 24, 0);
    assert_eq!(c.abort(&ev), None);
    // A server closing with the client's alert (TLS 1.2, 31 bytes) unread.
    let server = tls_session();
    let ev = abort_ev(server, trigger::SEND_RESET, 10, 0, 31);
    assert_eq!(c.abort(&ev), None);
    // More than an alert is still at stake.
    let server = tls_session();
    let ev = abort_ev(server, trigger::SEND_RESET, 10, 2_803_712, 0);
    assert_eq!(c.abort(&ev).map(|i| i.kind()), Some("undelivered_bytes"));
}

// --- write after close ---

fn write_ev(conn: Conn, e: u32, tracked: bool) -> WriteErrorEvent {
    WriteErrorEvent {
        header: EventHeader {
            kind: kind::WRITE_ERROR,
            len: size_of::<WriteErrorEvent>() as u32,
            ts_ns: 5 * SEC,
        },
        sock: conn.st,
        sk: 1,
        attempted: 0,
        errno: e,
        tracked: u32::from(tracked),
        tgid: 77,
        pid: 78,
        comm: *b"client\0\0\0\0\0\0\0\0\0\0",
        thread: *b"client-io-2\0\0\0\0\0",
        size_known: 0,
        _pad: 0,
    }
}

#[test]
fn write_after_close_by_errno_name() {
    let c = Correlator::default();
    for (e, name) in [(errno::EPIPE, "EPIPE"), (errno::ECONNRESET, "ECONNRESET")] {
        let i = c.write_error(&write_ev(Conn::client(), e, false)).unwrap();
        assert_eq!(
            (i.kind(), i.reason(), i.role, i.port),
            ("write_after_close", name, Role::Client, 8800)
        );
        assert_eq!(
            (i.pid, i.comm.as_str(), i.tid, i.thread.as_str()),
            (77, "client", 78, "client-io-2"),
            "the writer, not the owner"
        );
        assert!(
            i.sentence()
                .ends_with(&format!("the write failed with {name}"))
        );
    }
    // ENOTCONN counts only when the connection was seen: a never-connected socket gets it too.
    assert!(
        c.write_error(&write_ev(Conn::client(), errno::ENOTCONN, true))
            .is_some()
    );
    assert!(
        c.write_error(&write_ev(Conn::client(), errno::ENOTCONN, false))
            .is_none()
    );
    // EBADF records come only from the use-after-close hooks.
    let i = c
        .write_error(&write_ev(Conn::client(), errno::EBADF, true))
        .unwrap();
    assert_eq!(i.reason(), "EBADF");
    assert!(
        c.write_error(&write_ev(Conn::client(), 22, true)).is_none(),
        "EINVAL"
    );
    // Probe modes that see the size report it.
    let mut ev = write_ev(Conn::client(), errno::EPIPE, true);
    (ev.attempted, ev.size_known) = (500, 1);
    let i = c.write_error(&ev).unwrap();
    assert_eq!(
        i.detail,
        Detail::WriteAfterClose {
            errno: Errno::EPIPE,
            attempted: Some(500)
        }
    );
    assert!(
        i.sentence().contains(") wrote 500 bytes on "),
        "{}",
        i.sentence()
    );
    let unknown = c
        .write_error(&write_ev(Conn::client(), errno::EPIPE, true))
        .unwrap();
    assert!(
        unknown.sentence().contains(") wrote on "),
        "{}",
        unknown.sentence()
    );
}

#[test]
fn peer_reset_by_a_local_client_dropping_its_unread_response_counts_zero() {
    // wrk stops: its socket resets with 1264 response bytes unread; nginx's socket on the same
    // host sees the RST with those 1264 bytes not yet acknowledged (delayed ACK).
    let wrk = abort_ev(
        Conn::client().send(SEC, 40).recv(SEC, 1264),
        trigger::SEND_RESET,
        10,
        0,
        1264,
    );
    let mut nginx = abort_ev(
        Conn::server().recv(SEC, 40).send(SEC, 2528),
        trigger::RECEIVE_RESET,
        NO_REASON,
        1264,
        0,
    );
    nginx.header.ts_ns = wrk.header.ts_ns + 50_000;
    // Either order: the closer's record first...
    let mut c = correlator_with_reasons();
    assert_eq!(c.abort(&wrk), None);
    assert_eq!(
        c.abort(&nginx),
        None,
        "delivered to the peer's kernel, dropped by the peer"
    );
    assert!(c.expired(u64::MAX).is_empty());
    // ...or the peer reset first: it waits for its pair, which then cancels it.
    let mut c = correlator_with_reasons();
    assert_eq!(c.abort(&nginx), None);
    assert_eq!(c.abort(&wrk), None);
    assert!(c.expired(u64::MAX).is_empty());
    // Without the pair, the held-back peer reset is reported once the window has passed.
    let mut c = correlator_with_reasons();
    assert_eq!(c.abort(&nginx), None);
    assert!(
        c.expired(nginx.header.ts_ns + 1000).is_empty(),
        "still within the window"
    );
    let late = c.expired(nginx.header.ts_ns + SEC);
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].reason(), "peer_reset");
    // A peer whose received data ends short of what was written does not cover the loss:
    // the rest never got there.
    let mut c = correlator_with_reasons();
    let (mut short, mut nginx) = (wrk, nginx);
    nginx.write_seq = 9000;
    short.rcv_nxt = 9000 - 1164;
    c.abort(&short);
    assert_eq!(c.abort(&nginx), None);
    assert_eq!(c.expired(u64::MAX).len(), 1);
}

#[test]
fn peer_reset_by_a_local_tls_client_that_read_its_response_counts_zero() {
    // A Go TLS client reads its 169-byte HTTP/2 response and closes with only the server's
    // close_notify (24 bytes) and FIN unread, before its delayed ACK went out: the server's
    // socket (FIN sent) sees the RST with 193 bytes unacknowledged. All of them had arrived.
    let mut client = abort_ev(
        Conn::client().send(SEC, 444).recv(SEC, 892).peer_fin(),
        trigger::SEND_RESET,
        10,
        0,
        24,
    );
    client.rcv_nxt = 5917 + 1; // data ends at 5917, then the server's FIN
    let mut sent_fin = Conn::server().recv(SEC, 444).send(SEC, 892);
    sent_fin.st.flags |= flag::FIN_SENT;
    let mut server = abort_ev(sent_fin, trigger::RECEIVE_RESET, NO_REASON, 193, 0);
    server.write_seq = 5917 + 1;
    server.header.ts_ns = client.header.ts_ns + 20_000;
    for order in [[&client, &server], [&server, &client]] {
        let mut c = correlator_with_reasons();
        assert_eq!(c.abort(order[0]), None);
        assert_eq!(c.abort(order[1]), None);
        assert!(c.expired(u64::MAX).is_empty(), "delivered, then read");
    }
    // The same close from a client on another host is not paired here (its record is the
    // other host's), and the server's record stands.
    let mut remote = server;
    remote.sock.raddr[..4].copy_from_slice(&[10, 1, 2, 3]);
    assert!(correlator_with_reasons().abort(&remote).is_some());
}

#[test]
fn only_a_loopback_peer_pairs_on_this_host() {
    let mut s = Conn::client().st;
    assert!(s.peer_is_loopback(), "the test peer is 127.0.0.1");
    // A client's local reset that dropped only a close alert from a loopback peer: no loss,
    // but the kernel sends it, to pair with the peer's record.
    s.proto = agent_common::proto::TLS;
    let alert = |unread| agent_common::Stake {
        unread,
        trigger: trigger::SEND_RESET,
        ..Default::default()
    };
    assert!(!alert(24).loses_data(&s));
    assert!(alert(24).worth_a_record(&s));
    assert!(!alert(0).worth_a_record(&s), "nothing dropped");
    s.raddr[..4].copy_from_slice(&[10, 1, 2, 3]);
    assert!(!s.peer_is_loopback());
    assert!(
        !alert(24).worth_a_record(&s),
        "a remote peer's record is not here"
    );
    s.family = AF_INET6;
    s.raddr = Ipv6Addr::LOCALHOST.octets();
    assert!(s.peer_is_loopback());
    s.raddr = Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped().octets();
    assert!(s.peer_is_loopback());
    s.raddr = Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped().octets();
    assert!(!s.peer_is_loopback());
    s.raddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
    assert!(!s.peer_is_loopback());
}

#[test]
fn peer_reset_from_a_remote_peer_is_reported_at_once() {
    let mut conn = Conn::server().recv(SEC, 40).send(SEC, 2528);
    conn.st.raddr[..4].copy_from_slice(&[10, 1, 2, 3]);
    let ev = abort_ev(conn, trigger::RECEIVE_RESET, NO_REASON, 1264, 0);
    assert!(correlator_with_reasons().abort(&ev).is_some());
}

#[test]
fn server_reset_by_a_client_that_had_closed_first_counts_zero() {
    // wrk stopped between a request and its response: FIN first, then an RST for the late
    // response. The client gave up; the server dropped nothing.
    let nginx = Conn::server().recv(SEC, 40).send(SEC, 2528).peer_fin();
    let mut ev = abort_ev(nginx, trigger::RECEIVE_RESET, NO_REASON, 1264, 0);
    ev.sock.raddr[..4].copy_from_slice(&[10, 1, 2, 3]);
    let mut c = correlator_with_reasons();
    assert_eq!(c.abort(&ev), None);
    assert!(c.expired(u64::MAX).is_empty());
    // A client whose server closed first and then reset its late request still counts: that is
    // the request the server dropped (the EPIPE scenario).
    let client = Conn::client().send(SEC, 1000).peer_fin();
    let mut ev = abort_ev(client, trigger::RECEIVE_RESET, NO_REASON, 1000, 0);
    ev.sock.raddr[..4].copy_from_slice(&[10, 1, 2, 3]);
    assert!(c.abort(&ev).is_some());
}

// --- Real protocols (SPEC §2 "not loss" and "still loss"): the messages each side sends, with
// their sizes and first bytes as the programs see them.

/// A PostgreSQL session as `psql -c` has it: SSLRequest refused, startup, trust, one query.
fn postgres_session() -> Conn {
    Conn::server()
        .recv(SEC, 8)
        .send_msg(SEC, 1, b"N")
        .recv(SEC, 84)
        .send_msg(SEC, 330, b"R\x00\x00\x00\x08\x00\x00\x00\x00")
        .recv(SEC, 14)
        .send_msg(SEC, 60, b"T\x00\x00\x00\x21")
}

#[test]
fn postgres_terminate_then_close_counts_zero() {
    let ev = postgres_session().recv(SEC, 5).close(SEC + 1);
    assert_eq!(
        ev, None,
        "the kernel drops it: PostgreSQL's Terminate asks for no answer"
    );
    // Terminate in a TLS record (5 + 22), with the client's close alert behind it.
    assert_eq!(postgres_session().recv(SEC, 27 + 24).close(SEC + 1), None);
}

#[test]
fn postgres_backend_killed_during_a_query_counts_one() {
    // `select pg_sleep(30)`: a Query message of 25 bytes, then SIGKILL.
    let got = incidents(postgres_session().recv(SEC, 25).close(3 * SEC));
    assert_eq!(got.len(), 1);
    assert!(matches!(
        got[0].detail,
        Detail::UnansweredClose {
            unanswered_bytes: 25,
            protocol: "postgres",
            ..
        }
    ));
}

#[test]
fn mysql_com_quit_then_close_counts_zero() {
    // The server speaks first (its greeting), the client authenticates and queries.
    let c = Conn::server()
        .send_msg(0, 95, b"\x5b\x00\x00\x00\x0a5.5.5-10.11")
        .recv(SEC, 184)
        .send_msg(SEC, 11, b"\x07\x00\x00\x02\x00")
        .recv(SEC, 13)
        .send_msg(SEC, 70, b"\x01\x00\x00\x01\x01");
    assert_eq!(c.st.proto, agent_common::proto::MYSQL);
    assert_eq!(c.recv(SEC, 5).close(SEC + 1), None);
}

/// A TLS server after its handshake and one answered request.
fn tls_session() -> Conn {
    Conn::server()
        .recv(SEC, 517)
        .send_msg(SEC, 1400, b"\x16\x03\x03\x00\x7a\x02")
        .recv(SEC, 64)
        .send_msg(SEC, 250, b"\x17\x03\x03")
        .recv(SEC, 101)
        .send_msg(SEC, 180, b"\x17\x03\x03")
}

#[test]
fn tls_close_alerts_in_either_direction_count_zero() {
    // The client's alert, read before the close.
    assert_eq!(tls_session().recv(2 * SEC, 24).close(2 * SEC), None);
    // Both: the client's alert, then the server's own.
    assert_eq!(
        tls_session()
            .recv(2 * SEC, 24)
            .send(2 * SEC, 24)
            .close(2 * SEC),
        None
    );
    // The server's alert first, then the client's answer to it.
    assert_eq!(
        tls_session()
            .send(2 * SEC, 24)
            .recv(2 * SEC, 24)
            .close(2 * SEC),
        None
    );
    // Neither.
    assert_eq!(tls_session().close(2 * SEC), None);
}

#[test]
fn seed_over_tls_counts_one_although_a_close_alert_was_written() {
    // WriteTimeout expired: nothing for the request, then Go's TLS layer writes its alert.
    let got = incidents(
        tls_session()
            .recv(2 * SEC, 101)
            .send(4 * SEC, 24)
            .close(4 * SEC),
    );
    assert_eq!(got.len(), 1);
    assert!(matches!(
        got[0].detail,
        Detail::UnansweredClose {
            unanswered_bytes: 101,
            protocol: "tls",
            goodbye_sent: true,
            ..
        }
    ));
    assert!(
        got[0]
            .sentence()
            .ends_with("2.0 s later without writing a response (only its TLS close alert)"),
        "{}",
        got[0].sentence()
    );
}

#[test]
fn websocket_close_handshake_from_either_side_counts_zero() {
    let upgraded = || {
        Conn::server()
            .recv(SEC, 250)
            .send_msg(SEC, 129, b"HTTP/1.1 101 Switching Protocols")
            .recv(SEC, 11)
            .send_msg(SEC, 7, b"\x81\x05hello")
    };
    // The server starts it; the client's masked close frame answers.
    assert_eq!(
        upgraded()
            .send_msg(SEC, 4, b"\x88\x02\x03\xe8")
            .recv(SEC, 8)
            .close(SEC),
        None
    );
    // The client starts it; the server answers with its own.
    assert_eq!(
        upgraded()
            .recv(SEC, 8)
            .send_msg(SEC, 4, b"\x88\x02\x03\xe8")
            .close(SEC),
        None
    );
}

#[test]
fn http2_goaway_then_the_peers_reply_counts_zero() {
    let c = Conn::server()
        .send_msg(0, 27, b"\x00\x00\x12\x04\x00\x00\x00\x00\x00")
        .recv(SEC, 100)
        .send_msg(SEC, 60, b"\x00\x00\x10\x01\x04\x00\x00\x00\x01");
    // The server's GOAWAY; the client's own GOAWAY and a WINDOW_UPDATE after it.
    let c = c
        .send_msg(SEC, 17, b"\x00\x00\x08\x07\x00\x00\x00\x00\x00")
        .recv(SEC, 30);
    assert_eq!(c.close(SEC), None);
}

#[test]
fn server_first_text_session_ended_by_quit_counts_zero() {
    // SMTP's client side: greeting, EHLO, NOOP, QUIT, 221.
    let c = Conn::client()
        .recv(SEC, 30)
        .send_msg(SEC, 18, b"ehlo [127.0.0.1]\r\n")
        .recv(SEC, 60)
        .send_msg(SEC, 6, b"NOOP\r\n")
        .recv(SEC, 14)
        .send_msg(SEC, 6, b"QUIT\r\n")
        .recv(SEC, 9);
    assert_eq!(c.st.proto, agent_common::proto::TEXT);
    assert_eq!(c.close(SEC), None);
}

#[test]
fn one_way_stream_ended_by_its_sender_counts_zero() {
    let c = Conn::server()
        .recv(SEC, 400)
        .recv(SEC, 400)
        .peer_fin()
        .recv(SEC, 0);
    assert_eq!(c.close(SEC), None);
}

#[test]
fn a_peer_whose_fin_crossed_ours_was_not_waiting() {
    let ev = Conn::server()
        .recv(SEC, 78)
        .close(2 * SEC)
        .expect("owes an answer");
    let mut c = Correlator::default();
    let listening = |_: u32, _: u16| false;
    assert_eq!(c.teardown(&ev, &listening), None, "held back");
    let crossed = TeardownEvent {
        header: EventHeader {
            kind: kind::SIMULTANEOUS_CLOSE,
            ts_ns: 2 * SEC + 1000,
            ..ev.header
        },
        oldstate: tcp_state::FIN_WAIT1,
        newstate: tcp_state::CLOSING,
        ..ev
    };
    c.simultaneous_close(&crossed);
    assert!(c.expired(u64::MAX).is_empty());
    // A second connection's close on the same (reused) socket address makes the first final.
    let next = TeardownEvent {
        header: EventHeader {
            ts_ns: 2 * SEC + 5000,
            ..ev.header
        },
        ..ev
    };
    assert_eq!(c.teardown(&ev, &listening), None);
    assert!(c.teardown(&next, &listening).is_some());
    assert_eq!(c.expired(u64::MAX).len(), 1);
    // Without the crossing FIN it comes out once its window has passed, not before.
    assert_eq!(c.teardown(&ev, &listening), None);
    assert!(c.expired(2 * SEC + 1000).is_empty());
    assert_eq!(c.expired(3 * SEC).len(), 1);
}

#[test]
fn explained_ports_get_a_verdict_for_every_close() {
    let mut c = Correlator {
        explain_ports: vec![8800],
        ..Correlator::default()
    };
    let listening = |_: u32, _: u16| false;
    let mut judge = |conn: Conn| {
        let ev = conn
            .close_explained(SEC)
            .expect("a close on an --explain-port is always sent");
        assert_eq!(c.teardown(&ev, &listening), None);
        c.take_explained().pop().map(|e| (e.port, e.verdict))
    };
    assert_eq!(
        judge(postgres_session().recv(SEC, 5)),
        Some((8800, Verdict::PeerGoodbye))
    );
    assert_eq!(judge(postgres_session()), Some((8800, Verdict::Answered)));
    assert_eq!(
        judge(Conn::client().send(SEC, 78).recv(SEC, 100)),
        Some((8800, Verdict::Client))
    );
}
