//! Real protocols: the messages each side sends, with their sizes; and the verdicts of
//! `--explain-port`.

use super::*;

// --- Real protocols (README: What it detects): the messages each side sends, with
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
pub(super) fn tls_session() -> Conn {
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

/// The seed over TLS: its 101-byte request unanswered, only the TLS layer's alert written.
fn assert_the_seed_behind_its_alert(i: &Incident) {
    assert!(
        matches!(
            i.detail,
            Detail::UnansweredClose {
                unanswered_bytes: 101,
                protocol: "tls",
                goodbye_sent: true,
                ..
            }
        ),
        "{:?}",
        i.detail
    );
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
    assert_the_seed_behind_its_alert(&got[0]);
    assert!(
        got[0]
            .sentence()
            .ends_with("2.0 s later without writing a response (only its TLS close alert)"),
        "{}",
        got[0].sentence()
    );
}

#[test]
fn seed_over_tls_counts_one_when_the_client_closes_on_the_alert_first() {
    // The client answers the server's alert by closing (curl, which cannot decrypt it after
    // the failed write), and its FIN arrives before the server's close(): it answered the
    // goodbye; it did not leave first. Read or not, its own alert changes nothing.
    let alert_then_fin = |read_reply: bool| {
        let c = tls_session().recv(2 * SEC, 101).send(4 * SEC, 24);
        let c = if read_reply { c.recv(4 * SEC, 24) } else { c };
        incidents(c.peer_fin().close(4 * SEC))
    };
    for read_reply in [false, true] {
        let got = alert_then_fin(read_reply);
        assert_eq!(got.len(), 1, "client's alert read: {read_reply}");
        assert_the_seed_behind_its_alert(&got[0]);
        assert_eq!(got[0].ended_by, EndedBy::Local);
    }
    // The client closed before the server's alert: it left first, and was not waiting.
    assert!(
        incidents(
            tls_session()
                .recv(2 * SEC, 101)
                .peer_fin()
                .send(4 * SEC, 24)
                .close(4 * SEC)
        )
        .is_empty()
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
