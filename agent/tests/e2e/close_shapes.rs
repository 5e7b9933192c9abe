//! How connections end, played byte for byte by Rust peers in this process: the goodbyes that
//! protocols answer by closing, a peer that closes first, TLS-sized final records, and
//! connections older than the agent. They need no third-party server, so the kernel matrix runs
//! them in every probe mode; `databases`, `tls` and `streams` play the same shapes with the real
//! servers.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    thread,
    time::Duration,
};

use crate::{
    false_positives::assert_no_loss_on,
    harness::{Agent, assert_own_thread, own_comm, root_or_skip},
    servers::set_socket_option,
    unanswered::the_only_unanswered_close,
};

/// One step of a peer's side of an exchange.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Write these bytes in one call.
    Write(&'static [u8]),
    /// Read exactly this many bytes.
    Read(usize),
    /// Read until the peer's FIN.
    Eof,
    /// shutdown(SHUT_WR): send our FIN, keep reading.
    HalfClose,
    Pause(u64),
}

use Step::{Eof, HalfClose, Pause, Read, Write};

fn play(conn: &mut TcpStream, steps: &[Step]) {
    for step in steps {
        match *step {
            Write(bytes) => conn.write_all(bytes).expect("write"),
            Read(n) => {
                let mut buf = vec![0; n];
                conn.read_exact(&mut buf).expect("read");
            }
            Eof => {
                let mut rest = Vec::new();
                conn.read_to_end(&mut rest).expect("read to the end");
            }
            HalfClose => conn.shutdown(Shutdown::Write).expect("shutdown"),
            Pause(ms) => thread::sleep(Duration::from_millis(ms)),
        }
    }
}

/// A listener on a free loopback port whose accepted connections each play `server` (in a
/// thread named `shapesrv`, the thread the incident log names; the comm is the process's) and
/// are then closed.
fn server(server: &[Step]) -> u16 {
    let server = server.to_vec();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::Builder::new()
        .name("shapesrv".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let server = server.clone();
                thread::Builder::new()
                    .name("shapesrv".into())
                    .spawn(move || {
                        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        play(&mut conn, &server);
                    })
                    .unwrap();
            }
        })
        .unwrap();
    port
}

/// `n` connections to `port`, each playing `client` and then closed.
fn clients(port: u16, n: usize, client: &[Step]) {
    for _ in 0..n {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        play(&mut conn, client);
    }
    // The server's last close of the last connection.
    thread::sleep(Duration::from_millis(100));
}

// --- PostgreSQL-shaped: SSLRequest refused, startup, authentication, a query, Terminate.

const PG_SSL_REQUEST: &[u8] = b"\x00\x00\x00\x08\x04\xd2\x16\x2f";
const PG_STARTUP: &[u8] = b"\x00\x00\x00\x16\x00\x03\x00\x00user\x00postgres\x00\x00";
const PG_AUTH_OK: &[u8] = b"R\x00\x00\x00\x08\x00\x00\x00\x00Z\x00\x00\x00\x05I";
const PG_QUERY: &[u8] = b"Q\x00\x00\x00\x0dselect 1\x00";
const PG_SLEEP: &[u8] = b"Q\x00\x00\x00\x18select pg_sleep(30)\x00";
const PG_RESULT: &[u8] = b"C\x00\x00\x00\x0dSELECT 1\x00Z\x00\x00\x00\x05I";
const PG_TERMINATE: &[u8] = b"X\x00\x00\x00\x04";

/// The server's side up to the last query's answer.
const PG_SERVER_SESSION: &[Step] = &[
    Read(PG_SSL_REQUEST.len()),
    Write(b"N"),
    Read(PG_STARTUP.len()),
    Write(PG_AUTH_OK),
    Read(PG_QUERY.len()),
    Write(PG_RESULT),
];

const PG_CLIENT_SESSION: &[Step] = &[
    Write(PG_SSL_REQUEST),
    Read(1),
    Write(PG_STARTUP),
    Read(PG_AUTH_OK.len()),
    Write(PG_QUERY),
    Read(PG_RESULT.len()),
];

/// The server reads Terminate and closes first, while the client waits for the end of file:
/// at the TCP level, exactly the seed's shape.
#[test]
fn goodbye_then_close_counts_zero() {
    if !root_or_skip("goodbye_then_close_counts_zero") {
        return;
    }
    let port = server(&[PG_SERVER_SESSION, &[Read(PG_TERMINATE.len())]].concat());
    let client = [PG_CLIENT_SESSION, &[Write(PG_TERMINATE), Eof]].concat();
    let verdicts = assert_no_loss_on("goodbye then close", port, 10.0, || {
        clients(port, 5, &client);
    });
    assert_eq!(verdicts.get("peer_goodbye"), Some(&5.0), "{verdicts:?}");
    // MySQL-shaped: the server's greeting first, COM_QUIT last.
    const MYSQL_GREETING: &[u8] = b"\x2a\x00\x00\x00\x0a5.5.5-10.11.6-MariaDB\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11";
    const MYSQL_AUTH: &[u8] = b"\x20\x00\x00\x01\x85\xa6\xff\x01\x00\x00\x00\x01\x21\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    const MYSQL_OK: &[u8] = b"\x07\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00";
    const COM_QUIT: &[u8] = b"\x01\x00\x00\x00\x01";
    const MYSQL_SERVER: &[Step] = &[
        Write(MYSQL_GREETING),
        Read(MYSQL_AUTH.len()),
        Write(MYSQL_OK),
        Read(COM_QUIT.len()),
    ];
    let port = server(MYSQL_SERVER);
    let verdicts = assert_no_loss_on("COM_QUIT then close", port, 10.0, || {
        let client = [
            Read(MYSQL_GREETING.len()),
            Write(MYSQL_AUTH),
            Read(MYSQL_OK.len()),
            Write(COM_QUIT),
            Eof,
        ];
        clients(port, 5, &client);
    });
    assert_eq!(verdicts.get("peer_goodbye"), Some(&5.0), "{verdicts:?}");
}

/// The same server shape, but the last message is a query the server never answers (its
/// backend died): one unanswered close, with the protocol named.
#[test]
fn query_then_close_counts_one() {
    if !root_or_skip("query_then_close_counts_one") {
        return;
    }
    let agent = Agent::start(&[]);
    let port = server(&[PG_SERVER_SESSION, &[Read(PG_SLEEP.len())]].concat());
    clients(
        port,
        1,
        &[PG_CLIENT_SESSION, &[Write(PG_SLEEP), Eof]].concat(),
    );
    let (_, i) = the_only_unanswered_close(
        &agent,
        "the unanswered query",
        &own_comm(),
        &port.to_string(),
        "server",
    );
    assert_own_thread(&i, "shapesrv");
    assert_eq!(i["protocol"], "postgres", "{i}");
    assert_eq!(i["unanswered_bytes"], PG_SLEEP.len());
}

// --- A protocol in no table: a greeting, one answered command, then the client's goodbye.

const GREETING: &[u8] = b"\x01\x02shapes 1.0\n";
const COMMAND: &[u8] = b"\x03get k\n";
const REPLY: &[u8] = b"\x04value\n";
const GOODBYE: &[u8] = b"\x05bye\n";

/// The server's side up to its answer to the client's one command.
const SESSION_SERVER: &[Step] = &[Write(GREETING), Read(COMMAND.len()), Write(REPLY)];
/// The client's side, then its goodbye, and it waits for the server's close.
const SESSION_CLIENT: &[Step] = &[
    Read(GREETING.len()),
    Write(COMMAND),
    Read(REPLY.len()),
    Write(GOODBYE),
    Eof,
];

/// The server reads the goodbye of a protocol no table knows and closes at once, while its
/// client waits for the close: the session's end, by the rule for such protocols.
#[test]
fn session_goodbye_of_a_protocol_in_no_table_counts_zero() {
    if !root_or_skip("session_goodbye_of_a_protocol_in_no_table_counts_zero") {
        return;
    }
    let port = server(&[SESSION_SERVER, &[Read(GOODBYE.len())]].concat());
    let verdicts = assert_no_loss_on("session goodbye", port, 10.0, || {
        clients(port, 5, SESSION_CLIENT);
    });
    assert_eq!(verdicts.get("session_end"), Some(&5.0), "{verdicts:?}");
}

/// The same session, but the server closes 300 ms after the last message (work, a timer, a
/// kill): that message was a request it dropped.
#[test]
fn session_message_closed_on_after_work_counts_one() {
    if !root_or_skip("session_message_closed_on_after_work_counts_one") {
        return;
    }
    let agent = Agent::start(&[]);
    let port = server(&[SESSION_SERVER, &[Read(GOODBYE.len()), Pause(300)]].concat());
    clients(port, 1, SESSION_CLIENT);
    let (_, i) = the_only_unanswered_close(
        &agent,
        "the dropped request",
        &own_comm(),
        &port.to_string(),
        "server",
    );
    assert_own_thread(&i, "shapesrv");
    assert_eq!(i["protocol"], "unknown", "{i}");
    assert_eq!(i["ended_by"], "local", "{i}");
    assert_eq!(i["unanswered_bytes"], GOODBYE.len());
}

/// The client sends its request and its FIN; the server reads both and closes without a word.
/// A peer that closed its side first was not waiting.
#[test]
fn peer_fin_first_counts_zero() {
    if !root_or_skip("peer_fin_first_counts_zero") {
        return;
    }
    let port = server(&[Read(crate::servers::REQUEST.len()), Eof]);
    let verdicts = assert_no_loss_on("peer FIN first", port, 10.0, || {
        clients(port, 5, &[Write(crate::servers::REQUEST), HalfClose, Eof]);
    });
    assert_eq!(verdicts.get("peer_closed"), Some(&5.0), "{verdicts:?}");
}

/// The peer's FIN crosses ours (FIN_WAIT1 -> CLOSING): it closed on its own, not because we
/// did, so it was not waiting. Made certain on loopback by holding our FIN back: it queues
/// behind data the client's full receive window does not let out, and the client shuts its
/// side down before it reads any of it.
#[test]
fn simultaneous_close_counts_zero() {
    if !root_or_skip("simultaneous_close_counts_zero") {
        return;
    }
    const BLOB: usize = 256 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    set_socket_option(
        listener.as_raw_fd(),
        libc::SO_SNDBUF,
        &(4 * BLOB as libc::c_int),
    );
    let (closed, server_closed) = std::sync::mpsc::channel();
    let srv = thread::Builder::new()
        .name("shapesrv".into())
        .spawn(move || {
            for _ in 0..3 {
                let (mut conn, _) = listener.accept().unwrap();
                // A stream the server pushes first (a feed, a replication log), then the
                // client's request, which the server drops after some work (closed at once,
                // the request would be taken for the goodbye of a session).
                conn.write_all(&vec![b'f'; BLOB]).unwrap();
                let mut req = vec![0; crate::servers::REQUEST.len()];
                conn.read_exact(&mut req).unwrap();
                thread::sleep(Duration::from_millis(100));
                drop(conn);
                closed.send(()).unwrap();
            }
        })
        .unwrap();
    let verdicts = assert_no_loss_on("simultaneous close", port, 6.0, || {
        for _ in 0..3 {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            set_socket_option(c.as_raw_fd(), libc::SO_RCVBUF, &4096);
            c.write_all(crate::servers::REQUEST).unwrap();
            // The server has closed; its FIN waits behind the blob.
            server_closed
                .recv_timeout(Duration::from_secs(10))
                .expect("the server closes");
            c.shutdown(Shutdown::Write).unwrap();
            thread::sleep(Duration::from_millis(50));
            // Room for the rest at once, rather than 4 KiB windows at a time.
            set_socket_option(c.as_raw_fd(), libc::SO_RCVBUF, &(4 * BLOB as libc::c_int));
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            assert_eq!(got.len(), BLOB);
        }
        srv.join().unwrap();
    });
    assert_eq!(
        verdicts.get("simultaneous_close"),
        Some(&3.0),
        "{verdicts:?}"
    );
}

// --- TLS-sized records: a handshake record first, then application records; 24 bytes is one
// TLS 1.3 close_notify alert (5 + 2 + 1 + 16).

const CLIENT_HELLO: &[u8] =
    b"\x16\x03\x01\x00\x40\x01\x00\x00\x3c\x03\x03 client random and the rest of a hello";
const SERVER_HELLO: &[u8] =
    b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03 server random, and certificates, and finished";
const TLS_FINISHED: &[u8] = b"\x17\x03\x03\x00\x35 client finished, encrypted";
const TLS_REQUEST: &[u8] = b"\x17\x03\x03\x00\x60 an encrypted request of a hundred bytes or so, GET / and its headers....";
const TLS_RESPONSE: &[u8] = b"\x17\x03\x03\x00\xa0 an encrypted response, status line, headers and a body, which is longer than any alert..............";
const TLS_ALERT: &[u8] = b"\x17\x03\x03\x00\x13close_notify alert.";

const TLS_SERVER_HANDSHAKE: &[Step] = &[
    Read(CLIENT_HELLO.len()),
    Write(SERVER_HELLO),
    Read(TLS_FINISHED.len()),
];
const TLS_CLIENT_HANDSHAKE: &[Step] = &[
    Write(CLIENT_HELLO),
    Read(SERVER_HELLO.len()),
    Write(TLS_FINISHED),
];

#[test]
fn tls_alert_sized_final_writes_count_only_the_dropped_request() {
    if !root_or_skip("tls_alert_sized_final_writes_count_only_the_dropped_request") {
        return;
    }
    assert_eq!(TLS_ALERT.len(), 24);
    // Healthy: the request answered, then the client's alert; the server's alert, then the
    // client's; both; neither.
    let answered = [
        TLS_SERVER_HANDSHAKE,
        &[Read(TLS_REQUEST.len()), Write(TLS_RESPONSE)],
    ]
    .concat();
    let client = [
        TLS_CLIENT_HANDSHAKE,
        &[Write(TLS_REQUEST), Read(TLS_RESPONSE.len())],
    ]
    .concat();
    let shapes: [(&str, Vec<Step>, Vec<Step>); 4] = [
        (
            "client alert",
            [&answered[..], &[Read(24)]].concat(),
            [&client[..], &[Write(TLS_ALERT), Eof]].concat(),
        ),
        (
            "server alert",
            [&answered[..], &[Write(TLS_ALERT), Read(24)]].concat(),
            [&client[..], &[Read(24), Write(TLS_ALERT), Eof]].concat(),
        ),
        (
            "both alerts",
            [&answered[..], &[Read(24), Write(TLS_ALERT)]].concat(),
            [&client[..], &[Write(TLS_ALERT), Read(24), Eof]].concat(),
        ),
        ("no alert", answered.clone(), [&client[..], &[Eof]].concat()),
    ];
    for (name, server_steps, client_steps) in shapes {
        let port = server(&server_steps);
        assert_no_loss_on(name, port, 6.0, || clients(port, 3, &client_steps));
    }
    // The seed over TLS: the request read, no response, and the TLS layer's alert at close.
    let agent = Agent::start(&[]);
    let port = server(
        &[
            TLS_SERVER_HANDSHAKE,
            &[Read(TLS_REQUEST.len()), Pause(200), Write(TLS_ALERT)],
        ]
        .concat(),
    );
    clients(
        port,
        1,
        &[TLS_CLIENT_HANDSHAKE, &[Write(TLS_REQUEST), Read(24), Eof]].concat(),
    );
    let (_, i) = the_only_unanswered_close(
        &agent,
        "the request dropped behind a close alert",
        &own_comm(),
        &port.to_string(),
        "server",
    );
    assert_own_thread(&i, "shapesrv");
    assert_eq!(i["protocol"], "tls", "{i}");
    assert_eq!(
        i["unanswered_bytes"],
        TLS_FINISHED.len() + TLS_REQUEST.len(),
        "{i}"
    );
    let msg = i["message"].as_str().unwrap();
    assert!(
        msg.ends_with("without writing a response (only its TLS close alert)"),
        "{msg}"
    );
}

/// The seed over TLS as curl meets it: the server's close alert instead of the response, which
/// the client answers at once by closing (with its own alert, or without), so that its FIN
/// arrives before the server's close(). The client answered the goodbye; it did not leave
/// first. And the mirror that is healthy: a session's small last record, the server's alert
/// at once, the client's reply before the close.
#[test]
fn client_that_closes_on_the_server_s_close_alert_still_lost_the_request() {
    if !root_or_skip("client_that_closes_on_the_server_s_close_alert_still_lost_the_request") {
        return;
    }
    let server_steps = [
        TLS_SERVER_HANDSHAKE,
        &[Read(TLS_REQUEST.len()), Pause(200), Write(TLS_ALERT), Eof],
    ]
    .concat();
    let client_start = [TLS_CLIENT_HANDSHAKE, &[Write(TLS_REQUEST), Read(24)]].concat();
    for (name, reply) in [("FIN", &[][..]), ("alert and FIN", &[Write(TLS_ALERT)][..])] {
        let agent = Agent::start(&[]);
        let port = server(&server_steps);
        clients(port, 1, &[&client_start[..], reply].concat());
        let (_, i) = the_only_unanswered_close(
            &agent,
            &format!("the request dropped behind a close alert, answered by the client's {name}"),
            &own_comm(),
            &port.to_string(),
            "server",
        );
        assert_eq!(i["protocol"], "tls", "{i}");
        assert_eq!(i["ended_by"], "local", "{i}");
        assert_eq!(
            i["unanswered_bytes"],
            TLS_FINISHED.len() + TLS_REQUEST.len(),
            "{i}"
        );
    }
    // Healthy: two answered requests make a session; its small last record is answered by
    // the server's alert at once, and the client's reply arrives before the close.
    let answered = [Read(TLS_REQUEST.len()), Write(TLS_RESPONSE)];
    let asked = [Write(TLS_REQUEST), Read(TLS_RESPONSE.len())];
    let port = server(
        &[
            TLS_SERVER_HANDSHAKE,
            &answered,
            &answered,
            &[Read(60), Write(TLS_ALERT), Eof],
        ]
        .concat(),
    );
    let last = b"\x17\x03\x03\x00\x37a small last record of a session, which its server read";
    assert_eq!(last.len(), 60);
    assert_no_loss_on(
        "a session's last record, then the alerts",
        port,
        6.0,
        || {
            clients(
                port,
                3,
                &[
                    TLS_CLIENT_HANDSHAKE,
                    &asked,
                    &asked,
                    &[Write(last), Read(24), Write(TLS_ALERT)],
                ]
                .concat(),
            )
        },
    );
}

/// A keep-alive connection whose request was answered before the agent started; then its client
/// closes it and the server closes in turn. Nothing was owed (an agent restart must not count
/// it).
#[test]
fn keep_alive_connection_from_before_the_agent_closed_by_its_client_counts_zero() {
    if !root_or_skip("keep_alive_connection_from_before_the_agent_closed_by_its_client_counts_zero")
    {
        return;
    }
    const REQ: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let port = server(&[Read(REQ.len()), Write(RESP), Eof]);
    let mut conns: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.write_all(REQ).unwrap();
            let mut buf = vec![0; RESP.len()];
            c.read_exact(&mut buf).unwrap();
            c
        })
        .collect();
    assert_no_loss_on("pre-existing keep-alive", port, 2.0, || {
        // The three close; a fresh connection shows the agent watching the port.
        conns.drain(..).for_each(drop);
        clients(port, 1, &[Write(REQ), Read(RESP.len())]);
        thread::sleep(Duration::from_millis(200));
    });
}
