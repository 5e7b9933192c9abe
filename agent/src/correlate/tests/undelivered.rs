//! Undelivered bytes: aborts, and the pairing of a reset's two ends on this host.

use super::*;

pub(super) fn abort_ev(
    conn: Conn,
    trig: u32,
    reason: u32,
    unacked: u64,
    unread: u64,
) -> AbortEvent {
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
pub(super) fn correlator_with_reasons() -> Correlator {
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
