//! The seed and the Go runtime hooks' causes.

use super::*;

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
