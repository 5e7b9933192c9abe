//! The goodbye of a protocol no table knows ([`SockState::ends_a_session`]): a session's last
//! small message, closed at once, counts zero; a request dropped by work, a timer or a kill
//! still counts, and so does anything on HTTP. Sizes are the real ones, measured.

use agent_common::proto;

use super::*;

const MS: u64 = 1_000_000;

/// A memcached session: `set` (STORED), `get` (VALUE ... END), the next command at `t`.
fn memcached_session() -> Conn {
    Conn::server()
        .recv(SEC, 23)
        .send_msg(SEC + MS, 8, b"STORED\r\n")
        .recv(2 * SEC, 9)
        .send_msg(2 * SEC + MS, 27, b"VALUE k 0 5\r\n")
}

/// The verdict the agent gives the close on an `--explain-port`.
fn verdict(ev: Option<TeardownEvent>) -> Verdict {
    let mut c = Correlator {
        explain_ports: vec![8800],
        ..Correlator::default()
    };
    let ev = ev.expect("an explained close is always sent");
    let direct = c.teardown(&ev, &|_, _| false);
    let held = c.expired(u64::MAX);
    let explained = c.take_explained();
    assert_eq!(explained.len(), 1, "{explained:?}");
    assert_eq!(
        direct.is_some() || !held.is_empty(),
        explained[0].verdict == Verdict::Owes
    );
    explained[0].verdict
}

#[test]
fn memcached_quit_then_close_counts_zero() {
    let c = memcached_session().recv(3 * SEC, 6);
    assert_eq!(c.st.proto, proto::UNKNOWN);
    // memcached closes within microseconds of reading `quit`.
    assert_eq!(c.close(3 * SEC + 200_000), None, "the kernel drops it");
    let c = memcached_session().recv(3 * SEC, 6);
    assert_eq!(
        verdict(c.close_explained(3 * SEC + 200_000)),
        Verdict::SessionEnd
    );
}

#[test]
fn a_session_request_dropped_after_work_or_a_kill_counts_one() {
    // The same session's third command, its worker killed 2.4 s later.
    let got = incidents(
        memcached_session()
            .recv(3 * SEC, 6)
            .close(5 * SEC + 400 * MS),
    );
    assert_eq!(got.len(), 1);
    assert!(matches!(
        got[0].detail,
        Detail::UnansweredClose {
            unanswered_bytes: 6,
            protocol: "unknown",
            ..
        }
    ));
    assert_eq!(got[0].ended_by, EndedBy::Local);
    // Just past the window.
    let c = memcached_session().recv(3 * SEC, 6);
    assert_eq!(
        incidents(c.close(3 * SEC + agent_common::PROMPT_CLOSE_NS + 1)).len(),
        1
    );
}

#[test]
fn a_large_last_message_closed_at_once_counts_one() {
    let c = memcached_session().recv(3 * SEC, proto::SESSION_GOODBYE_MAX as i64 + 1);
    assert_eq!(incidents(c.close(3 * SEC + MS)).len(), 1);
    let c = memcached_session().recv(3 * SEC, proto::SESSION_GOODBYE_MAX as i64);
    assert_eq!(c.close(3 * SEC + MS), None);
}

#[test]
fn ssh_disconnect_after_a_greeting_counts_zero() {
    // sshd speaks first (its banner), then key exchange and the session; the client's last
    // packets (96 bytes) and sshd closes at once.
    let c = Conn::server()
        .send_msg(0, 21, b"SSH-2.0-OpenSSH_9.2")
        .recv(MS, 21)
        .send_msg(2 * MS, 1080, b"\x00\x00\x04\x34")
        .recv(3 * MS, 1500)
        .send_msg(4 * MS, 500, b"\x00\x00\x01\xf4")
        .recv(SEC, 96);
    assert_eq!(c.close(SEC + 100_000), None);
}

#[test]
fn a_greeting_alone_makes_a_session() {
    // A server that greets, reads one small command and closes at once (a text protocol's
    // QUIT that it answers with nothing).
    let c = Conn::server()
        .send_msg(0, 30, b"220 ready\r\n")
        .recv(SEC, 6);
    assert_eq!(c.close(SEC + MS), None);
}

#[test]
fn a_request_crashed_on_within_a_millisecond_counts_one() {
    // The first request of a connection: nothing answered before, so no session yet, whatever
    // the protocol and however soon the close.
    let got = incidents(Conn::server().recv(SEC, 78).close(SEC + 300_000));
    assert_eq!(got.len(), 1);
    // On HTTP every request is owed an answer: the second request of a keep-alive connection,
    // crashed on at once, counts.
    let c = Conn::server()
        .recv(SEC, 78)
        .send_msg(SEC + MS, 120, b"HTTP/1.1 200 OK\r\n")
        .recv(2 * SEC, 78);
    assert_eq!(c.st.proto, proto::HTTP);
    assert_eq!(incidents(c.close(2 * SEC + 300_000)).len(), 1);
}

#[test]
fn tls_needs_an_answer_beyond_its_handshake() {
    let handshake = || {
        Conn::server()
            .recv(SEC, 517)
            .send_msg(SEC + MS, 1400, b"\x16\x03\x03\x00\x7a\x02")
            .recv(SEC + 2 * MS, 80)
            .send(SEC + 3 * MS, 250)
    };
    // The first request, crashed on at once: the handshake's two answers are no session.
    let c = handshake().recv(2 * SEC, 150);
    assert_eq!(c.st.proto, proto::TLS);
    assert_eq!(incidents(c.close(2 * SEC + MS)).len(), 1);
    // After an answered request, a small last record closed at once is a goodbye.
    let c = handshake()
        .recv(2 * SEC, 150)
        .send(2 * SEC + MS, 300)
        .recv(3 * SEC, 150);
    assert_eq!(c.close(3 * SEC + MS), None);
}

#[test]
fn a_goodbye_is_timed_at_the_process_s_own_goodbye_not_at_its_reply() {
    // A TLS session's last record, then the server's close alert; the client answers the alert
    // with its own and its FIN, all before the server's close(). The alert is the server's
    // reaction: at once, a goodbye; a second later (a deadline, then the TLS layer's alert),
    // the record was dropped, however soon the close follows the client's reply.
    let session = || tls_session().recv(2 * SEC, 150);
    let ended = |alert_at: u64| {
        session()
            .send(alert_at, 24)
            .recv(alert_at + MS, 24)
            .peer_fin()
            .close(alert_at + 2 * MS)
    };
    assert_eq!(ended(2 * SEC + MS), None);
    assert_eq!(incidents(ended(3 * SEC)).len(), 1);
    // An answer after the goodbye takes the goodbye back, and its timing with it.
    let c = session()
        .send(2 * SEC + MS, 24)
        .send(2 * SEC + 2 * MS, 300)
        .recv(4 * SEC, 150);
    assert_eq!(incidents(c.close(5 * SEC)).len(), 1);
}

#[test]
fn a_client_that_answered_owes_nothing() {
    // A NATS subscriber: the server's INFO, the client's CONNECT and SUB, then messages pushed
    // to it until it closes.
    let c = Conn::client()
        .recv(SEC, 400)
        .send_msg(SEC + MS, 120, b"CONNECT {\"verb")
        .recv(2 * SEC, 4000);
    assert_eq!(
        c.st.proto,
        proto::UNKNOWN,
        "CONNECT is HTTP's only from a client speaking first"
    );
    assert!(!c.st.send_needs_read_position());
    assert_eq!(c.close(5 * SEC), None);
}

#[test]
fn an_abort_that_drops_an_unanswered_request_is_one_incident() {
    // A worker killed mid-request with 8 bytes of the request unread: the close resets the
    // connection. The unanswered close is the incident; the abort's dropped input is not a
    // second one.
    let conn = Conn::server().recv(SEC, 900).arrive(SEC, 8);
    let ev = conn
        .close_by(3 * SEC, tcp_state::CLOSE, OWNER)
        .expect("an unanswered close");
    assert!(ev.sock.flags & flag::OWES_SENT != 0);
    let mut c = correlator_with_reasons();
    assert!(c.teardown(&ev, &|_, _| false).is_some());
    let closed = Conn {
        st: ev.sock,
        ..Conn::server()
    };
    assert_eq!(
        c.abort(&abort_ev(closed, trigger::SEND_RESET, 10, 0, 8)),
        None
    );
    // Bytes written and lost beside it are still their own loss.
    let closed = Conn {
        st: ev.sock,
        ..Conn::server()
    };
    assert!(
        c.abort(&abort_ev(closed, trigger::SEND_RESET, 10, 4096, 8))
            .is_some()
    );
}
