//! Healthy sessions of protocols that are not HTTP/1 request/response, between real servers and
//! real clients, must count no loss: HTTP/2 and gRPC (GOAWAY from either side), WebSockets
//! (the close handshake started by either side), SMTP (the server speaks first and last) and a
//! one-way stream (the server never writes).
//!
//! The peers are the scripts in tests/servers: Node's built-in http2 module, and Debian's
//! /usr/bin/python3 with grpcio and websockets (installed by `cargo xtask setup`), plus curl,
//! nghttp and h2load as HTTP/2 clients. Every client checks every reply and exits non-zero
//! otherwise, and the tests check its exit status and summary line, so a client that broke
//! cannot make a test pass.
//!
//! (A client that half-closes after its request and reads the whole response is covered by
//! `false_positives::half_close_with_the_response_delivered` and the Rust-server variant.)

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fmt::Debug,
    io::{BufRead as _, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    false_positives::assert_no_loss_on,
    harness::{Process, free_port, root_or_skip},
};

/// Debian's Python, which has grpcio and websockets (a `python3` earlier on PATH may not).
const PYTHON: &str = "/usr/bin/python3";

/// How long any one client run may take before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// Reads `pipe` to its end in a thread: each line goes to the returned channel and to `all`.
fn lines_of(pipe: impl Read + Send + 'static, all: Arc<Mutex<String>>) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut text = all.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
            let _ = tx.send(line);
        }
    });
    rx
}

/// A peer's server role, stopped on drop.
struct Server {
    process: Process,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `program args` and waits for the "ready" line it prints once listening.
    fn start<S: AsRef<OsStr> + Debug>(program: &str, args: &[S]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program} {args:?}: {e}"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let lines = lines_of(child.stdout.take().unwrap(), stdout);
        let _ = lines_of(child.stderr.take().unwrap(), stderr.clone());
        let server = Self {
            process: Process(child),
            lines,
            stderr,
        };
        let ready = server.next_line();
        assert_eq!(ready, "ready", "{program} {args:?}: {}", server.stderr());
        server
    }

    /// The next line of the server's output (waiting up to 10 s for it).
    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("no line from the server ({e}): {}", self.stderr()))
    }

    /// Waits for the server to exit by itself and asserts it succeeded.
    fn assert_exits_cleanly(&mut self) {
        let child = &mut self.process.0;
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the server did not exit");
            thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "the server exited {status}: {}",
            self.stderr()
        );
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

/// Runs a client to completion (failing after [`CLIENT_TIMEOUT`]), asserts it exited 0, and
/// returns its standard output.
fn run_client<S: AsRef<OsStr> + Debug>(program: &str, args: &[S]) -> String {
    let mut child: Child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program} {args:?}: {e}"));
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let out_done = lines_of(child.stdout.take().unwrap(), stdout.clone());
    let err_done = lines_of(child.stderr.take().unwrap(), stderr.clone());
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    // The pipes reach their end once the client is gone: drain them before reading.
    while out_done.recv().is_ok() {}
    while err_done.recv().is_ok() {}
    let (stdout, stderr) = (
        stdout.lock().unwrap().clone(),
        stderr.lock().unwrap().clone(),
    );
    match status {
        Some(status) if status.success() => stdout,
        Some(status) => panic!("{program} {args:?} exited {status}\n{stdout}\n{stderr}"),
        None => panic!("{program} {args:?} timed out after {CLIENT_TIMEOUT:?}\n{stdout}\n{stderr}"),
    }
}

/// The command line of the peer script tests/servers/`name` with `args`.
fn peer(name: &str, args: &[&str]) -> Vec<String> {
    let path = format!("{}/tests/servers/{name}", env!("CARGO_MANIFEST_DIR"));
    std::iter::once(path)
        .chain(args.iter().map(|a| (*a).to_owned()))
        .collect()
}

/// Asserts that at least `n` of the closes were judged `verdict`: why they were not losses,
/// where the shape fixes which end closes first (it decides most verdicts).
fn assert_verdict(name: &str, verdicts: &BTreeMap<String, f64>, verdict: &str, n: f64) {
    let got = verdicts.get(verdict).copied().unwrap_or(0.0);
    assert!(
        got >= n,
        "{name}: {got} closes judged {verdict}, not {n}: {verdicts:?}"
    );
}

#[test]
fn h2c_curl_against_node() {
    if !root_or_skip("h2c_curl_against_node") {
        return;
    }
    let port = free_port();
    let p = port.to_string();
    let _srv = Server::start("node", &peer("h2c_peer.js", &["server", &p]));
    // curl closes without a GOAWAY once it has the response.
    assert_no_loss_on("h2c curl", port, 8.0, || {
        for i in 0..4 {
            let path = format!("/curl/{i}");
            let out = run_client(
                "curl",
                &[
                    "-sS",
                    "--http2-prior-knowledge",
                    "-w",
                    " %{http_version}",
                    &format!("http://127.0.0.1:{port}{path}"),
                ],
            );
            assert_eq!(out, format!("ok {path} 2\n"));
        }
    });
}

#[test]
fn h2c_nghttp_and_h2load_against_node() {
    if !root_or_skip("h2c_nghttp_and_h2load_against_node") {
        return;
    }
    let port = free_port();
    let p = port.to_string();
    let _srv = Server::start("node", &peer("h2c_peer.js", &["server", &p]));
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    // Several URLs on one connection, which Debian 12's curl 7.88 cannot do on a
    // prior-knowledge h2c connection ("Error in the HTTP2 framing layer", curl#10634). Both
    // clients end with a GOAWAY and close without waiting for the server's.
    assert_no_loss_on("h2c nghttp and h2load", port, 6.0, || {
        // One connection, three streams; nghttp prints each body.
        let out = run_client("nghttp", &[&url("/a"), &url("/b"), &url("/c")]);
        assert_eq!(out, "ok /aok /bok /c\n");
        // 12 requests on 2 connections, up to 4 concurrent streams on each.
        let out = run_client(
            "h2load",
            &["-c2", "-n12", "-m4", &url("/x"), &url("/y"), &url("/z")],
        );
        assert!(
            out.contains("requests: 12 total, 12 started, 12 done, 12 succeeded, 0 failed"),
            "{out}"
        );
        assert!(out.contains("status codes: 12 2xx"), "{out}");
    });
}

#[test]
fn h2c_node_client_closes_its_session() {
    if !root_or_skip("h2c_node_client_closes_its_session") {
        return;
    }
    let port = free_port();
    let p = port.to_string();
    let _srv = Server::start("node", &peer("h2c_peer.js", &["server", &p]));
    // Three connections of six requests each (three sequential, three concurrent), each ended
    // by the client's GOAWAY and close; the server answers with its own GOAWAY, so either end
    // may close first.
    assert_no_loss_on("h2c client GOAWAY", port, 6.0, || {
        for _ in 0..3 {
            let out = run_client("node", &peer("h2c_peer.js", &["client", &p, "6", "close"]));
            assert_eq!(out, "done close 6\n");
        }
    });
}

#[test]
fn h2c_node_server_closes_the_session_after_its_streams() {
    if !root_or_skip("h2c_node_server_closes_the_session_after_its_streams") {
        return;
    }
    let port = free_port();
    let p = port.to_string();
    let _srv = Server::start(
        "node",
        &peer("h2c_peer.js", &["server", &p, "--close-after", "4"]),
    );
    // Three connections: after four streams the server sends GOAWAY and closes; the client
    // waits for both. The server's GOAWAY is its goodbye.
    assert_no_loss_on("h2c server GOAWAY", port, 6.0, || {
        for _ in 0..3 {
            let out = run_client("node", &peer("h2c_peer.js", &["client", &p, "4", "wait"]));
            assert_eq!(out, "done wait 4\n");
        }
    });
}

#[test]
fn h2c_node_server_closes_an_idle_session() {
    if !root_or_skip("h2c_node_server_closes_an_idle_session") {
        return;
    }
    let port = free_port();
    let p = port.to_string();
    let _srv = Server::start(
        "node",
        &peer("h2c_peer.js", &["server", &p, "--idle-timeout", "300"]),
    );
    // Three connections, each closed by the server (GOAWAY, then close) after 300 ms idle.
    assert_no_loss_on("h2c idle GOAWAY", port, 6.0, || {
        for _ in 0..3 {
            let out = run_client("node", &peer("h2c_peer.js", &["client", &p, "4", "wait"]));
            assert_eq!(out, "done wait 4\n");
        }
    });
}

#[test]
fn grpc_client_closes_its_channels() {
    if !root_or_skip("grpc_client_closes_its_channels") {
        return;
    }
    let port = free_port();
    let p = port.to_string();
    let _srv = Server::start(PYTHON, &peer("grpc_peer.py", &["server", &p]));
    // 4 channels, one connection each, 4 calls on each (3 unary, 1 server-streaming), then
    // the client closes them. grpcio sends no GOAWAY: it shuts the socket down, often right
    // after a BDP PING of its own that the server has acknowledged.
    assert_no_loss_on("gRPC client close", port, 8.0, || {
        let out = run_client(PYTHON, &peer("grpc_peer.py", &["client", &p, "4", "close"]));
        assert_eq!(out, "done close 16\n");
    });
}

#[test]
fn grpc_server_stops_with_idle_channels() {
    if !root_or_skip("grpc_server_stops_with_idle_channels") {
        return;
    }
    let port = free_port();
    let p = port.to_string();
    let mut srv = Server::start(
        PYTHON,
        &peer("grpc_peer.py", &["server", &p, "--stop-after", "16"]),
    );
    // 4 idle channels when the server stops: its GOAWAY on each, to which grpcio closes the
    // connection; then the server closes its end and exits.
    assert_no_loss_on("gRPC server stop", port, 8.0, || {
        let out = run_client(PYTHON, &peer("grpc_peer.py", &["client", &p, "4", "wait"]));
        assert_eq!(out, "done wait 16\n");
        assert_eq!(srv.next_line(), "stopped");
        srv.assert_exits_cleanly();
    });
}

#[test]
fn websocket_client_starts_the_close_handshake() {
    if !root_or_skip("websocket_client_starts_the_close_handshake") {
        return;
    }
    let port = free_port();
    let p = port.to_string();
    let _srv = Server::start(PYTHON, &peer("ws_peer.py", &["server", &p]));
    // 4 connections of 5 echoed messages, each ended by the client's close frame; the server
    // answers it with its own and closes the TCP connection first (RFC 6455 §7.1.1; the client
    // waits for that), so its last write is its goodbye.
    let verdicts = assert_no_loss_on("WebSocket client close", port, 8.0, || {
        let out = run_client(
            PYTHON,
            &peer("ws_peer.py", &["client", &p, "4", "5", "close"]),
        );
        assert_eq!(out, "done close 4\n");
    });
    assert_verdict("WebSocket client close", &verdicts, "goodbye_sent", 4.0);
}

#[test]
fn websocket_server_starts_the_close_handshake() {
    if !root_or_skip("websocket_server_starts_the_close_handshake") {
        return;
    }
    let port = free_port();
    let p = port.to_string();
    let _srv = Server::start(
        PYTHON,
        &peer("ws_peer.py", &["server", &p, "--close-after", "5"]),
    );
    // 4 connections; after 5 echoes the server sends its close frame, reads the client's
    // reply and closes first: what it read last was the answer to its own goodbye.
    let verdicts = assert_no_loss_on("WebSocket server close", port, 8.0, || {
        let out = run_client(
            PYTHON,
            &peer("ws_peer.py", &["client", &p, "4", "5", "wait"]),
        );
        assert_eq!(out, "done wait 4\n");
    });
    assert_verdict("WebSocket server close", &verdicts, "goodbye_sent", 4.0);
}

#[test]
fn smtp_session_where_the_server_speaks_first_and_last() {
    if !root_or_skip("smtp_session_where_the_server_speaks_first_and_last") {
        return;
    }
    let port = free_port();
    let p = port.to_string();
    // smtpd and asyncore are deprecated: no warnings.
    let mut args = vec!["-W".to_owned(), "ignore".to_owned()];
    args.extend(peer("smtp_peer.py", &["server", &p]));
    let _srv = Server::start(PYTHON, &args);
    // 5 sessions: greeting, EHLO, NOOP, QUIT. The client reads the 221 after its last write
    // and closes first: what it read is the reply to its goodbye (QUIT), not a request.
    assert_no_loss_on("SMTP sessions", port, 10.0, || {
        let out = run_client(PYTHON, &peer("smtp_peer.py", &["client", &p, "5"]));
        assert_eq!(out, "done 5\n");
    });
}

#[test]
fn one_way_stream_read_to_end_of_file() {
    if !root_or_skip("one_way_stream_read_to_end_of_file") {
        return;
    }
    let port = free_port();
    let p = port.to_string();
    let srv = Server::start(PYTHON, &peer("oneway_peer.py", &["server", &p]));
    // The server reads 100 lines, never writes, and closes at end of file: 5 clients close
    // right after sending, 5 shut down their sending side and wait for the server's close.
    let verdicts = assert_no_loss_on("one-way streams", port, 20.0, || {
        for mode in ["close", "shutdown"] {
            let out = run_client(
                PYTHON,
                &peer("oneway_peer.py", &["client", &p, "5", "100", mode]),
            );
            assert_eq!(out, format!("done {mode} 5\n"));
        }
        for _ in 0..10 {
            assert_eq!(srv.next_line(), "got 100 lines 1490 bytes");
        }
    });
    // Every client closes first (the server closes only at end of file): the server's closes
    // follow the peer's, and the clients were never asked anything.
    assert_verdict("one-way streams", &verdicts, "peer_closed", 10.0);
    assert_verdict("one-way streams", &verdicts, "client", 10.0);
}
