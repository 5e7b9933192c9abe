//! Write after close.

use super::*;

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
