use crate::*;

#[test]
fn bytes_out_come_from_write_seq_without_the_fin() {
    let mut st = SockState {
        write_at_start: u32::MAX - 10,
        ..SockState::default()
    };
    // 30 bytes written across the wrap.
    st.settle(0, 0, 0, 19, false);
    assert_eq!(st.bytes_out, 30);
    // The same with the FIN queued after them.
    st.settle(0, 0, 0, 20, true);
    assert_eq!(st.bytes_out, 30);
    // Nothing written, FIN queued: zero, not 4 GiB.
    st.settle(0, 0, 0, u32::MAX - 10, true);
    assert_eq!(st.bytes_out, 0);
}

#[test]
fn record_send_keeps_the_last_read_position() {
    let mut st = SockState {
        copied_at_start: 100,
        ..SockState::default()
    };
    st.record_send(178, 120, &head(b"HTTP/1.1 200 OK\r\n"), || None);
    assert_eq!(
        st.flags & (flag::SENT | flag::PEER_FIRST),
        flag::SENT | flag::PEER_FIRST
    );
    assert_eq!(st.proto, proto::HTTP);
    assert_eq!(st.copied_at_last_out, 178);
    st.record_send(178, 120, &Head::default(), || None);
    st.record_send(258, 120, &Head::default(), || None);
    assert_eq!(st.copied_at_last_out, 258);
}

fn head(bytes: &[u8]) -> Head {
    let mut h = Head::default();
    let n = bytes.len().min(HEAD_LEN);
    h[..n].copy_from_slice(&bytes[..n]);
    h
}

#[test]
fn first_messages_name_their_protocol() {
    let cases: &[(&[u8], u32, bool, u8)] = &[
        (b"HTTP/1.1 200 OK\r\n", 200, true, proto::HTTP),
        (b"GET / HTTP/1.1\r\n", 78, false, proto::HTTP),
        (b"HTTP/1.1 101 Switching", 129, true, proto::WEBSOCKET),
        (b"\x16\x03\x03\x00\x7a\x02", 1400, true, proto::TLS),
        (b"\x16\x03\x01\x02\x00\x01", 517, false, proto::TLS),
        (b"PRI * HTTP/2.0\r\n", 24, false, proto::H2),
        // A server's SETTINGS frame: 18 bytes of settings, type 4, no flags, stream 0.
        (
            b"\x00\x00\x12\x04\x00\x00\x00\x00\x00",
            27,
            false,
            proto::H2,
        ),
        (b"N", 1, true, proto::POSTGRES),
        (
            b"R\x00\x00\x00\x08\x00\x00\x00\x00S",
            300,
            true,
            proto::POSTGRES,
        ),
        (
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
            8,
            false,
            proto::POSTGRES,
        ),
        (
            b"\x00\x00\x00\x54\x00\x03\x00\x00user",
            84,
            false,
            proto::POSTGRES,
        ),
        (b"\x5b\x00\x00\x00\x0a5.5.5-10.11", 95, false, proto::MYSQL),
        (b"\xb4\x00\x00\x01\x85\xa6\xff\x01", 184, true, proto::MYSQL),
        (b"220 mail.example ESMTP", 30, false, proto::TEXT),
        (b"+OK POP3 ready\r\n", 16, false, proto::TEXT),
        (b"ehlo [127.0.0.1]\r\n", 18, true, proto::TEXT),
        (b"*1\r\n$4\r\nPING\r\n", 14, false, proto::REDIS),
        (b"+PONG\r\n", 7, true, proto::REDIS),
        (b"\x00\x01\x02", 3, true, proto::UNKNOWN),
    ];
    for &(bytes, len, replying, want) in cases {
        assert_eq!(
            proto::name(proto::of_first_message(&head(bytes), len, replying)),
            proto::name(want),
            "{bytes:?}"
        );
    }
}

#[test]
fn goodbyes_are_told_by_protocol_and_bytes_or_size() {
    let none = Head::default();
    assert_eq!(SendKind::of(proto::TLS, &none, 24), SendKind::GOODBYE);
    assert_eq!(SendKind::of(proto::TLS, &none, 31), SendKind::GOODBYE);
    assert_eq!(SendKind::of(proto::TLS, &none, 90), SendKind::ANSWER);
    // The size of an alert means nothing outside TLS.
    assert_eq!(SendKind::of(proto::HTTP, &none, 24), SendKind::ANSWER);
    let ws_close = head(b"\x88\x02\x03\xe8");
    assert_eq!(
        SendKind::of(proto::WEBSOCKET, &ws_close, 4),
        SendKind::ANSWER_AND_GOODBYE
    );
    assert_eq!(
        SendKind::of(proto::WEBSOCKET, &head(b"\x81\x05hello"), 7),
        SendKind::ANSWER
    );
    let goaway = head(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00");
    assert_eq!(
        SendKind::of(proto::H2, &goaway, 17),
        SendKind::ANSWER_AND_GOODBYE
    );
    let settings_ack = head(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00");
    assert_eq!(SendKind::of(proto::H2, &settings_ack, 9), SendKind::ANSWER);
    assert_eq!(
        SendKind::of(proto::TEXT, &head(b"QUIT\r\n"), 6),
        SendKind::ANSWER_AND_GOODBYE
    );
    assert_eq!(
        SendKind::of(proto::TEXT, &head(b"NOOP\r\n"), 6),
        SendKind::ANSWER
    );
    // A failed write after the process's goodbye, or of a close alert, loses nothing.
    let mut st = SockState {
        proto: proto::H2,
        ..SockState::default()
    };
    st.record_send(
        0,
        27,
        &head(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00"),
        || None,
    );
    assert!(!st.failed_write_loses_nothing(None));
    st.record_send(0, 17, &goaway, || None);
    assert!(st.failed_write_loses_nothing(None));
    let tls = SockState {
        proto: proto::TLS,
        flags: flag::SENT,
        ..SockState::default()
    };
    assert!(tls.failed_write_loses_nothing(Some(24)));
    assert!(!tls.failed_write_loses_nothing(Some(4000)));
    assert!(!tls.failed_write_loses_nothing(None));
    // Received: sizes only.
    assert!(proto::is_goodbye_size(proto::POSTGRES, 5));
    assert!(proto::is_goodbye_size(proto::POSTGRES, 27));
    assert!(proto::is_goodbye_size(proto::POSTGRES, 27 + 24));
    assert!(!proto::is_goodbye_size(proto::POSTGRES, 28));
    assert!(proto::is_goodbye_size(proto::MYSQL, 5));
    assert!(proto::is_goodbye_size(proto::TLS, 24));
    // A SETTINGS ack and the alert, TLS 1.3; a GOAWAY and the alert, TLS 1.2.
    assert!(proto::is_goodbye_size(proto::TLS, 31 + 24));
    assert!(proto::is_goodbye_size(proto::TLS, 46 + 31));
    assert!(!proto::is_goodbye_size(proto::TLS, 101));
    // The seed's client Finished and request: no goodbye.
    assert!(!proto::is_goodbye_size(proto::TLS, 165));
    // Bytes at stake at an abort.
    assert!(!data_at_stake(proto::TLS, 24, 0));
    assert!(!data_at_stake(proto::TLS, 0, 31));
    assert!(data_at_stake(proto::TLS, 2_803_712, 0));
    assert!(data_at_stake(proto::HTTP, 24, 0));
    assert!(!data_at_stake(proto::POSTGRES, 5, 0));
    assert!(data_at_stake(proto::UNKNOWN, 0, 5));
    assert!(!proto::is_goodbye_size(proto::HTTP, 5));
    assert!(!proto::is_goodbye_size(proto::UNKNOWN, 5));
}

#[test]
fn an_expired_go_deadline_explains_only_the_close_of_its_request() {
    let d = GoDeadline {
        copied: 500,
        which: go_deadline::WRITE,
        ..GoDeadline::default()
    };
    assert_eq!(d.explains(Verdict::Owes, 500), GoLoss::Dropped);
    // A request read since re-armed the deadline.
    assert_eq!(d.explains(Verdict::Owes, 578), GoLoss::None);
    // Answered, nothing waiting: the idle keep-alive expiry.
    assert_eq!(d.explains(Verdict::Answered, 500), GoLoss::None);
    assert_eq!(d.explains(Verdict::PeerClosed, 500), GoLoss::None);
    let blocked = GoDeadline {
        writer_waiting: 1,
        ..d
    };
    assert_eq!(blocked.explains(Verdict::Answered, 500), GoLoss::CutShort);
    assert_eq!(
        blocked.explains(Verdict::GoodbyeSent, 500),
        GoLoss::CutShort
    );
    assert_eq!(blocked.explains(Verdict::PeerClosed, 500), GoLoss::None);
    // A stream's expiry is reported on its own, never at the connection's close.
    let stream = GoDeadline {
        which: go_deadline::H2_STREAM,
        ..blocked
    };
    assert_eq!(stream.explains(Verdict::Owes, 500), GoLoss::None);
    assert_eq!(
        GoDeadline::default().explains(Verdict::Owes, 0),
        GoLoss::None
    );
}

#[test]
fn a_stake_counts_data_not_control_flags() {
    let seqs = Seqs {
        write_seq: 1001,
        snd_una: 900,
        snd_nxt: 950,
        rcv_nxt: 2001,
        copied: 2000,
    };
    let plain = Stake::of(0, trigger::RECEIVE_RESET, &seqs);
    assert_eq!((plain.unacked, plain.unsent, plain.unread), (101, 51, 1));
    // Our FIN is the last "byte" written, the peer's the last received.
    let fins = Stake::of(flag::FIN_SENT | flag::PEER_FIN, trigger::SEND_RESET, &seqs);
    assert_eq!((fins.unacked, fins.unsent, fins.unread), (100, 50, 0));
    assert!(fins.local() && !fins.drops_input());
}

#[test]
fn a_client_that_drops_its_unread_response_loses_nothing() {
    let stake = Stake {
        unread: 5000,
        trigger: trigger::SEND_RESET,
        ..Stake::default()
    };
    let client = SockState {
        role: role::CLIENT,
        ..SockState::default()
    };
    let server = SockState {
        role: role::SERVER,
        ..SockState::default()
    };
    assert!(!stake.loses_data(&client));
    assert!(stake.loses_data(&server));
    // The client's record is still sent: it pairs with its peer's, if that is on this host.
    assert!(stake.worth_a_record(&client));
}

#[test]
fn write_errors_by_errno_and_what_the_process_said_last() {
    let tracked = SockState::default();
    let goodbye = SockState {
        flags: flag::GOODBYE_SENT,
        ..SockState::default()
    };
    assert!(write_error_loses(errno::EPIPE, None, None));
    assert!(write_error_loses(
        errno::ECONNRESET,
        Some(&tracked),
        Some(100)
    ));
    assert!(
        !write_error_loses(errno::ENOTCONN, None, None),
        "never connected"
    );
    assert!(write_error_loses(errno::ENOTCONN, Some(&tracked), None));
    assert!(!write_error_loses(errno::EPIPE, Some(&goodbye), None));
    assert!(write_error_loses(errno::EBADF, Some(&goodbye), None));
    assert!(!write_error_loses(errno::ETIMEDOUT, Some(&tracked), None));
}

#[test]
fn tracking_starts_at_the_handshake_or_by_adoption() {
    let server = Start::established(tcp_state::SYN_RECV, 10, 20).unwrap();
    assert_eq!(
        (server.role, server.copied_at_start, server.write_at_start),
        (role::SERVER, 10, 20)
    );
    assert_eq!(
        Start::established(tcp_state::SYN_SENT, 0, 0).unwrap().role,
        role::CLIENT
    );
    assert_eq!(Start::established(tcp_state::CLOSE_WAIT, 0, 0), None);
    // Adopted at a send of 5 bytes already queued: they are its first output.
    let live = Start::at_send(300, 105, 5);
    assert_eq!(
        (live.role, live.copied_at_start, live.write_at_start),
        (role::UNKNOWN, 300, 100)
    );
    assert!(Start::adoptable_at_send(tcp_state::CLOSE_WAIT));
    assert!(!Start::adoptable_at_send(tcp_state::SYN_SENT));
    // First seen at its close: judged only if it never sent a data segment.
    assert_eq!(Start::unwritten(1, 500, 78, 7), None);
    let unwritten = Start::unwritten(0, 500, 78, 7).unwrap();
    assert_eq!(
        (unwritten.copied_at_start, unwritten.write_at_start),
        (422, 7)
    );
    let mut st = SockState::default();
    st.begin(&unwritten, tcp_state::CLOSE_WAIT);
    assert_ne!(st.flags & flag::PEER_FIN, 0, "adopted after the peer's FIN");
    assert!(st.local_close(tcp_state::LAST_ACK));
    assert_ne!(st.flags & flag::FIN_SENT, 0);
    assert!(!st.local_close(tcp_state::CLOSE), "examined once");
}

#[test]
fn detectors_are_named_once() {
    for d in Detector::ALL.into_iter().chain([Detector::GoWriteTimeout]) {
        assert_eq!(Detector::from_name(d.as_str()), Some(d));
    }
    assert_eq!(Detector::from_name("false_positive"), None);
}

#[test]
fn a_session_ends_on_a_small_message_closed_at_once() {
    // memcached after `set` and `get`, reading `quit`: answered twice, 6 bytes unanswered.
    let mut st = SockState {
        role: role::SERVER,
        ..SockState::default()
    };
    st.record_send(23, 8, &head(b"STORED\r\n"), || None);
    st.record_send(32, 27, &head(b"VALUE k 0 5\r\n"), || None);
    assert_eq!(st.answers, 2);
    st.settle(38, 38, 38, 35, false);
    assert_eq!(st.unanswered_in, 6);
    assert!(st.may_end_a_session());
    // A close 60 ms after the input: work, a timer or a kill, not the goodbye's reaction.
    let mut late = st;
    late.note_close(|| Some(60_000_000));
    assert_eq!(late.verdict(), Verdict::Owes);
    st.note_close(|| Some(PROMPT_CLOSE_NS));
    assert_eq!(st.verdict(), Verdict::SessionEnd);
    // On HTTP every request is owed its answer, however small and soon.
    st.proto = proto::HTTP;
    assert_eq!(st.verdict(), Verdict::Owes);
    // Nothing answered, nothing said first: no session yet.
    let mut first = SockState {
        role: role::SERVER,
        flags: flag::PROMPT_CLOSE,
        unanswered_in: 78,
        ..SockState::default()
    };
    assert!(!first.may_end_a_session());
    assert_eq!(first.verdict(), Verdict::Owes);
    // A greeting makes one.
    first.record_send(0, 30, &head(b"220 ready\r\n"), || None);
    assert!(first.may_end_a_session());
    assert_eq!(first.verdict(), Verdict::SessionEnd);
}

#[test]
fn a_request_method_is_http_only_from_the_side_speaking_first() {
    // NATS: the server's INFO first, then the client's CONNECT.
    let connect = head(b"CONNECT {\"verbose\"");
    assert_eq!(proto::of_first_message(&connect, 120, true), proto::UNKNOWN);
    assert_eq!(proto::of_first_message(&connect, 120, false), proto::HTTP);
    // A client that answered its server once owes it nothing after.
    let mut st = SockState {
        role: role::CLIENT,
        ..SockState::default()
    };
    st.record_send(400, 120, &connect, || None);
    st.settle(4400, 4400, 4400, 120, false);
    assert_eq!(st.verdict(), Verdict::Client);
    assert!(!st.send_needs_read_position());
}

#[test]
fn a_failed_send_recorded_at_its_entry_is_undone_whole() {
    // kprobe mode records a send at its entry; the send then fails (the peer reset).
    let mut st = SockState {
        role: role::SERVER,
        ..SockState::default()
    };
    st.record_send(78, 120, &head(b"HTTP/1.1 200 OK\r\n"), || None);
    let before = st;
    let undo = st.undo_point();
    st.record_send(156, 120, &Head::default(), || None);
    assert_eq!(st.answers, 2);
    st.undo_send(&undo);
    assert_eq!(st, before, "the answer it never gave is not counted");
}

#[test]
fn a_fin_that_acknowledged_the_goodbye_answered_it_whichever_program_ran_first() {
    // A TLS server: the handshake answered, a 101-byte request, then only its close alert;
    // the client's FIN acknowledges everything up to the alert's end (write_seq 1424).
    let session = || {
        let mut st = SockState {
            role: role::SERVER,
            ..SockState::default()
        };
        st.record_send(517, 1400, &head(b"\x16\x03\x03\x00\x7a\x02"), || None);
        st
    };
    let alert = |st: &mut SockState| st.record_send(618, 24, &Head::default(), || None);
    let judged = |mut st: SockState| {
        st.settle(618, 619, 619, 1424, false);
        st.verdict()
    };
    // The FIN's state change before the alert's send is recorded (fentry records a send
    // when it returns), and after.
    let mut early = session();
    early.peer_fin(1424);
    alert(&mut early);
    let mut late = session();
    alert(&mut late);
    late.peer_fin(1424);
    assert_eq!(judged(early), Verdict::Owes);
    assert_eq!(judged(late), Verdict::Owes);
    // A FIN sent before the alert reached the peer: the peer left first.
    let mut first = session();
    first.peer_fin(1400);
    alert(&mut first);
    assert_eq!(judged(first), Verdict::PeerClosed);
}

#[test]
fn a_close_from_close_wait_knows_the_peer_closed_first_though_its_fin_went_unrecorded() {
    // A request read, then the peer's FIN, whose state change the kernel did not run the
    // program for; the server's close goes CLOSE_WAIT -> LAST_ACK.
    let mut st = SockState {
        role: role::SERVER,
        ..SockState::default()
    };
    st.settle(78, 79, 79, 0, false);
    assert_eq!(st.verdict(), Verdict::Owes);
    st.closing_from(tcp_state::CLOSE_WAIT);
    assert_eq!(st.verdict(), Verdict::PeerClosed);
    let mut open = SockState {
        role: role::SERVER,
        ..SockState::default()
    };
    open.closing_from(tcp_state::ESTABLISHED);
    open.settle(78, 78, 78, 0, false);
    assert_eq!(open.verdict(), Verdict::Owes);
}
