//! Unanswered close: healthy shapes that count zero, losses that count one, adoption.

use super::*;

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
    // A client whose peer spoke first records it at its first write, its answer, and owes
    // nothing after it.
    let c = Conn::client().recv(SEC, 40).send(SEC + 1, 10);
    assert!(!c.st.send_needs_read_position());
    assert_eq!(c.st.copied_at_last_out, PEER_ISN.wrapping_add(40));
    assert_eq!(c.st.answers, 1);
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
    // A peer that closed or reset its side before the local close was not waiting
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
