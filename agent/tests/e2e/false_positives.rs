//! Healthy traffic of every shape must leave every loss counter at zero.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream, UdpSocket},
    os::unix::net::UnixStream,
    process::Command,
    thread,
    time::Duration,
};

use crate::{
    harness::{Agent, Metrics, root_or_skip},
    servers::{Nginx, curl, start_nginx, start_rust_http},
};

pub const LOSSES: [&str; 6] = [
    "lostwrite_unanswered_closes_total",
    "lostwrite_go_write_timeouts_total",
    "lostwrite_writes_after_close_total",
    "lostwrite_writes_after_close_bytes_total",
    "lostwrite_undelivered_bytes_total",
    "lostwrite_aborted_connections_total",
];

/// The detectors every false-positive test needs switched on: a detector that is off counts
/// nothing, which would make the test pass for the wrong reason.
const DETECTORS: [&str; 3] = ["unanswered_close", "write_after_close", "undelivered_bytes"];

/// Runs `scenario` under a fresh agent that explains every close on `port`
/// (`--explain-port`), and asserts:
/// - every detector was enabled;
/// - the agent judged exactly `closes` closes of connections on `port`: the test's own
///   connections, by their port (each loopback connection is two closes, one per end);
/// - no record was dropped or failed to decode;
/// - no loss counter moved and no incident was logged.
///
/// Returns the verdicts the agent gave the closes on `port` (verdict -> count), for tests that
/// also assert why the closes were not losses.
pub fn assert_no_loss_on(
    name: &str,
    port: u16,
    closes: f64,
    scenario: impl FnOnce(),
) -> BTreeMap<String, f64> {
    assert_no_loss_on_with(name, port, closes, &[], scenario)
}

/// [`assert_no_loss_on`] with more agent arguments.
pub fn assert_no_loss_on_with(
    name: &str,
    port: u16,
    closes: f64,
    extra: &[&str],
    scenario: impl FnOnce(),
) -> BTreeMap<String, f64> {
    assert_no_loss_counting_with(name, port, extra, || {
        scenario();
        closes
    })
}

/// [`assert_no_loss_on`] for a scenario whose number of connections only the server can tell
/// (a load generator's): `scenario` returns the closes it made on `port`.
pub fn assert_no_loss_counting(
    name: &str,
    port: u16,
    scenario: impl FnOnce() -> f64,
) -> BTreeMap<String, f64> {
    assert_no_loss_counting_with(name, port, &[], scenario)
}

fn assert_no_loss_counting_with(
    name: &str,
    port: u16,
    extra: &[&str],
    scenario: impl FnOnce() -> f64,
) -> BTreeMap<String, f64> {
    let agent = explaining_agent(name, port, extra);
    let closes = scenario();
    let (m, verdicts) = judged_exactly(name, &agent, port, closes);
    assert_counted_nothing(name, &agent, &m);
    verdicts
}

const EXPLAINED: &str = "lostwrite_explained_closes_total";

/// Starts an agent that explains every close on `port` (`--explain-port`, and `extra`), and
/// asserts every detector is enabled (a detector that is off counts nothing, which would make
/// a test pass for the wrong reason).
pub fn explaining_agent(name: &str, port: u16, extra: &[&str]) -> Agent {
    let port_label = port.to_string();
    let mut args = vec!["--explain-port", &port_label];
    args.extend(extra);
    let agent = Agent::start(&args);
    let m = agent.scrape();
    let go = (!extra.contains(&"--go-runtime")).then_some("go_write_timeout");
    for detector in DETECTORS.into_iter().chain(go) {
        assert_eq!(
            m.value("lostwrite_detector_enabled", &[("detector", detector)]),
            Some(1.0),
            "{name}: detector {detector} is not enabled"
        );
    }
    agent
}

/// Waits until the agent has judged exactly `closes` closes of connections on `port` (the
/// test's own, by their port: two per loopback connection, one per end), and checks that no
/// more come within 300 ms and that no record was dropped or failed to decode (a lost record
/// would make any "nothing lost" pass). Returns a scrape taken after that, and the verdicts
/// of the closes (verdict -> count).
pub fn judged_exactly(
    name: &str,
    agent: &Agent,
    port: u16,
    closes: f64,
) -> (Metrics, BTreeMap<String, f64>) {
    let port_label = port.to_string();
    let judged = |m: &Metrics| m.by_label(EXPLAINED, &[("port", &port_label)], "verdict");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n: f64 = judged(&agent.scrape()).values().sum();
        if n >= closes || std::time::Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(300));
    let m = agent.scrape();
    let verdicts = judged(&m);
    let n: f64 = verdicts.values().sum();
    assert_eq!(
        n,
        closes,
        "{name}: the agent judged {n} closes on port {port}, not {closes}: {verdicts:?}\n{:?}",
        agent.explained()
    );
    for counter in [
        "lostwrite_events_dropped_total",
        "lostwrite_decode_errors_total",
    ] {
        assert_eq!(m.total(counter), 0.0, "{name}: {counter}");
    }
    (m, verdicts)
}

fn assert_counted_nothing(name: &str, agent: &Agent, m: &Metrics) {
    for loss in LOSSES {
        assert_eq!(
            m.total(loss),
            0.0,
            "{name}: {:?}\n{:?}",
            m.series(loss),
            agent.incidents()
        );
    }
    assert!(
        agent.incidents().is_empty(),
        "{name}: {:?}",
        agent.incidents()
    );
}

/// Connections nginx has accepted, from its `stub_status` at `/connections` (this query's own
/// connection included).
fn nginx_accepts(port: u16) -> u64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /connections HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    // "server accepts handled requests\n 12 12 345"
    text.lines()
        .skip_while(|l| !l.starts_with("server accepts"))
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no accepts in nginx's status: {text}"))
}

fn nginx(name: &str) -> Nginx {
    start_nginx(name, "keepalive_timeout 1s;")
}

fn http(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

#[test]
fn wrk_keep_alive_load_against_nginx() {
    if !root_or_skip("wrk_keep_alive_load_against_nginx") {
        return;
    }
    let n = start_nginx(
        "fp-wrk",
        "keepalive_timeout 1s;\n    location = /connections { stub_status; }",
    );
    // wrk's connections (nginx closes each after 100 requests, and wrk opens another), each
    // closed at both ends; nginx counts them.
    let verdicts = assert_no_loss_counting("wrk", n.port, || {
        let accepted = || nginx_accepts(n.port);
        let first = accepted();
        let out = Command::new("wrk")
            .args(["-t1", "-c10", "-d3s", &http(n.port, "/1k")])
            .output()
            .expect("run wrk (installed by `cargo xtask setup`)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("Requests/sec"),
            "{text}"
        );
        // The two status connections are on the port too.
        2.0 * (accepted() - first + 1) as f64
    });
    assert!(
        verdicts.get("client").copied().unwrap_or(0.0) >= 10.0,
        "{verdicts:?}"
    );
}

#[test]
fn idle_keep_alive_closed_by_either_side() {
    if !root_or_skip("idle_keep_alive_closed_by_either_side") {
        return;
    }
    let n = nginx("fp-idle");
    assert_no_loss_on("idle keep-alive", n.port, 4.0, || {
        idle_keep_alive_closed_by_server_and_by_client(n.port);
    });
}

/// Two keep-alive connections with one complete exchange each (GET /1k): one left idle until
/// the server's 1 s keep-alive timeout closes it, one closed by the client.
fn idle_keep_alive_closed_by_server_and_by_client(port: u16) {
    let req = b"GET /1k HTTP/1.1\r\nHost: x\r\n\r\n";
    let read_response = |s: &mut TcpStream| {
        let mut buf = vec![0u8; 4096];
        let mut got = 0;
        while !buf[..got].ends_with(&[b'a'; 16]) {
            got += s.read(&mut buf[got..]).unwrap();
        }
    };
    // Closed by the server: its keep-alive timeout expires.
    let mut by_server = TcpStream::connect(("127.0.0.1", port)).unwrap();
    by_server.write_all(req).unwrap();
    read_response(&mut by_server);
    // Closed by the client after a complete exchange.
    let mut by_client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    by_client.write_all(req).unwrap();
    read_response(&mut by_client);
    drop(by_client);
    let mut rest = Vec::new();
    by_server.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the server closed the idle connection");
}

#[test]
fn half_close_with_the_response_delivered() {
    if !root_or_skip("half_close_with_the_response_delivered") {
        return;
    }
    let n = nginx("fp-half-close");
    assert_no_loss_on("half-close", n.port, 2.0, || {
        let mut s = TcpStream::connect(("127.0.0.1", n.port)).unwrap();
        s.write_all(b"GET /1k HTTP/1.0\r\n\r\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        assert!(all.ends_with(&[b'a'; 1024]));
    });
}

/// HTTP/1.0 (the server closes after the body), three pipelined requests, a 20 MiB download
/// and clients closing right after the full response, against a server on `port` serving
/// `/1k` and `/big`.
fn close_delimited_pipelined_large_and_close_after_read(port: u16) {
    // HTTP/1.0: the server closes after the body.
    let (code, body, err) = curl(&["--http1.0".into(), http(port, "/1k")]);
    assert_eq!((code, body.len()), (Some(0), 1024), "{err}");
    // Pipelined: three requests in one write, three responses.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let one = "GET /1k HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(
        format!("{one}{one}GET /1k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    assert_eq!(String::from_utf8_lossy(&all).matches("200 OK").count(), 3);
    // A 20 MiB download that completes.
    let (code, body, err) = curl(&[http(port, "/big")]);
    assert_eq!((code, body.len()), (Some(0), 20 * 1024 * 1024), "{err}");
    // Clients that close right after reading the full response.
    for _ in 0..3 {
        let (code, _, err) = curl(&[http(port, "/1k")]);
        assert_eq!(code, Some(0), "{err}");
    }
}

#[test]
fn http_1_0_close_delimited_pipelined_large_and_close_after_read() {
    if !root_or_skip("http_1_0_close_delimited_pipelined_large_and_close_after_read") {
        return;
    }
    let n = nginx("fp-shapes");
    assert_no_loss_on("http shapes", n.port, 12.0, || {
        close_delimited_pipelined_large_and_close_after_read(n.port);
    });
}

#[test]
fn udp_unix_and_listening_sockets() {
    if !root_or_skip("udp_unix_and_listening_sockets") {
        return;
    }
    // Nothing here is a TCP connection, so the agent must not even track it; one plain TCP
    // exchange proves the agent was watching.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    assert_no_loss_on("udp/unix/listen", port, 2.0, || {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.send_to(b"ping", b.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 16];
        b.recv_from(&mut buf).unwrap();
        // A UDP "connection" whose peer is gone: ECONNREFUSED, not a TCP write error.
        a.connect("127.0.0.1:9").unwrap();
        let _ = a.send(b"x");
        let (mut u1, mut u2) = UnixStream::pair().unwrap();
        u1.write_all(b"request").unwrap();
        u2.read_exact(&mut [0u8; 7]).unwrap();
        drop(u2);
        let _ = u1.write_all(b"after close"); // EPIPE on a unix socket is not a TCP loss
        for _ in 0..5 {
            drop(TcpListener::bind("127.0.0.1:0").unwrap());
        }
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(b"hi").unwrap();
        s.read_exact(&mut [0u8; 2]).unwrap();
        s.write_all(b"ok").unwrap();
        c.read_exact(&mut [0u8; 2]).unwrap();
    });
}

#[test]
fn http_shapes_against_a_rust_server() {
    if !root_or_skip("http_shapes_against_a_rust_server") {
        return;
    }
    // The nginx tests' shapes against a server that needs nothing installed, so that the
    // kernel-matrix guests (which have no nginx) check them in every probe mode too.
    let srv = start_rust_http();
    let port = srv.port;
    assert_no_loss_on("rust http shapes", port, 18.0, || {
        // Idle keep-alive, closed by the server (1 s idle timeout) and by the client.
        idle_keep_alive_closed_by_server_and_by_client(port);
        // Half-close with the response delivered.
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /1k HTTP/1.0\r\n\r\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        assert!(all.ends_with(&[b'a'; 1024]));
        close_delimited_pipelined_large_and_close_after_read(port);
    });
}
