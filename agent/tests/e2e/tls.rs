//! TLS and HTTP/2 over TLS between real servers and clients: nginx (OpenSSL), Go's crypto/tls and
//! net/http (the seed server and a client), Python's ssl module, curl (OpenSSL, nghttp2) and
//! Node's http2 module. One test per server and client pair, end to end, hence the length.
//!
//! At the TCP level a TLS connection ends with a close_notify alert, one 24-byte record with
//! TLS 1.3's AES-GCM, from either end, from both or from neither. The bytes that carry it are
//! neither a request nor an answer: a server that reads the client's close_notify and closes
//! has not left a request unanswered, and a server that closes with its own close_notify after
//! reading a request has not answered it. The false-positive tests below cover every way a
//! healthy TLS connection ends; the true-positive tests lose a response behind one.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    false_positives::{assert_no_loss_on, assert_no_loss_on_with},
    harness::{Agent, Process, free_port, root_or_skip, scratch, wait_for, wait_listening},
    servers::{Nginx, curl, goclient_binary, seedsrv_binary, self_signed_cert, start_nginx_tls},
    unanswered::{UNANSWERED, the_only_unanswered_close},
};

/// Debian's Python, which has the h2 package; the `python3` on PATH may be another one.
const PYTHON: &str = "/usr/bin/python3";
const TLS_HTTP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/servers/tls_http.py");
const H2_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/servers/h2_client.js");

fn https(port: u16, path: &str) -> String {
    format!("https://127.0.0.1:{port}{path}")
}

/// Runs `cmd` to completion and returns its stdout lines; panics with its stderr unless it
/// exits 0.
fn run_ok(what: &str, cmd: &mut Command) -> Vec<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

/// `curl -k` of `urls` with `options`, which must succeed: one line per URL, `HTTP-CODE
/// HTTP-VERSION NEW-CONNECTIONS BODY-BYTES` (bodies are discarded).
fn curl_tls(options: &[&str], urls: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "-k",
        "-w",
        "%{http_code} %{http_version} %{num_connects} %{size_download}\\n",
    ]
    .iter()
    .chain(options)
    .map(|s| s.to_string())
    .collect();
    for url in urls {
        args.extend(["-o".into(), "/dev/null".into(), url.clone()]);
    }
    let (code, out, err) = curl(&args);
    assert_eq!(code, Some(0), "curl {args:?}: {err}");
    out.lines().map(str::to_owned).collect()
}

/// `n` copies of `url`.
fn times(n: usize, url: &str) -> Vec<String> {
    vec![url.to_owned(); n]
}

/// The lines curl's `-w` prints for `n` answers of `bytes` bytes on one connection.
fn on_one_connection(n: usize, version: &str, bytes: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("200 {version} {} {bytes}", u8::from(i == 0)))
        .collect()
}

/// The Go client (tests/servers/goclient) GETting `url` with `flags`: its lines, `INDEX PROTO
/// STATUS BODY-BYTES`.
fn go_client(url: &str, flags: &[&str]) -> Vec<String> {
    run_ok(
        "goclient",
        Command::new(goclient_binary())
            .args(["-url", url])
            .args(flags),
    )
}

/// What the Go client prints for `n` answers of `bytes` bytes in `proto`.
fn go_answers(n: usize, proto: &str, bytes: usize) -> Vec<String> {
    (0..n).map(|i| format!("{i} {proto} 200 {bytes}")).collect()
}

/// A tls_http.py client (`get`, `get-keep-alive` or `ping`) with `args`: its lines.
fn python_client(args: &[&str]) -> Vec<String> {
    run_ok("tls_http.py", Command::new(PYTHON).arg(TLS_HTTP).args(args))
}

/// What tls_http.py's `get` prints for `n` answers of `bytes` bytes.
fn python_answers(n: usize, bytes: usize) -> Vec<String> {
    (0..n).map(|i| format!("{i} 200 {bytes}")).collect()
}

/// The Node HTTP/2 client: `n` GETs of `url` on one session, then session.close() (GOAWAY).
fn node_h2_client(url: &str, n: usize) -> Vec<String> {
    run_ok(
        "h2_client.js",
        Command::new("node")
            .arg(H2_CLIENT)
            .arg(url)
            .arg(n.to_string()),
    )
}

fn node_answers(n: usize, bytes: usize) -> Vec<String> {
    let mut lines: Vec<String> = (0..n).map(|i| format!("{i} 200 {bytes}")).collect();
    lines.push("closed".into());
    lines
}

/// The seed server over TLS (HTTPS with HTTP/2 by ALPN, a certificate it makes itself) on a
/// free port, with `flags` added: (process, port, pid).
fn start_seedsrv_tls(flags: &[&str]) -> (Process, u16, u32) {
    let port = free_port();
    let child = Command::new(seedsrv_binary())
        .args(["-tls", "-addr", &format!("127.0.0.1:{port}")])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start seedsrv");
    let pid = child.id();
    let process = Process(child);
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port)));
    (process, port, pid)
}

/// A tls_http.py server in `mode` (with `args`), its certificate in the scratch dir `name`:
/// (process, port). The server picks its port and prints it once it listens.
fn start_python_tls(name: &str, mode: &str, args: &[&str]) -> (Process, u16) {
    let dir = scratch(name);
    self_signed_cert(&dir);
    let mut child = Command::new(PYTHON)
        .arg(TLS_HTTP)
        .arg(mode)
        .arg(&dir)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start tls_http.py");
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let process = Process(child);
    let port = ready
        .strip_prefix("ready ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("tls_http.py {mode} did not start: {ready:?}"));
    (process, port)
}

/// nginx over TLS with its default protocols: nginx 1.22 offers TLS 1.2 at most unless told
/// otherwise, so its close alerts are 31 bytes (AES-GCM with an explicit nonce).
fn nginx_tls(name: &str) -> Nginx {
    start_nginx_tls(name, "keepalive_timeout 1s;")
}

// nginx over TLS (HTTP/1.1 and HTTP/2 by ALPN, keep-alive timeout 1 s).

#[test]
fn nginx_tls_with_curl() {
    if !root_or_skip("nginx_tls_with_curl") {
        return;
    }
    let n = nginx_tls("tls-nginx-curl");
    let url = https(n.port, "/1k");
    assert_no_loss_on("nginx tls x curl", n.port, 10.0, || {
        // Three requests on one connection, HTTP/2 (curl's default by ALPN) and HTTP/1.1.
        assert_eq!(
            curl_tls(&[], &times(3, &url)),
            on_one_connection(3, "2", 1024)
        );
        assert_eq!(
            curl_tls(&["--http1.1"], &times(3, &url)),
            on_one_connection(3, "1.1", 1024)
        );
        // Three concurrent streams multiplexed on one HTTP/2 connection.
        let mut parallel = curl_tls(&["--parallel"], &times(3, &url));
        parallel.sort();
        assert_eq!(parallel, ["200 2 0 1024", "200 2 0 1024", "200 2 1 1024"]);
        // HTTP/1.0: nginx closes after the body (its status line says HTTP/1.1).
        assert_eq!(
            curl_tls(&["--http1.0"], std::slice::from_ref(&url)),
            ["200 1.1 1 1024"]
        );
        // A 20 MiB download.
        assert_eq!(
            curl_tls(&[], &[https(n.port, "/big")]),
            [format!("200 2 1 {}", 20 * 1024 * 1024)]
        );
    });
}

/// nginx with TLS 1.3 (what Debian's stock nginx.conf allows): 24-byte close alerts.
#[test]
fn nginx_tls_1_3_with_curl_and_the_go_client() {
    if !root_or_skip("nginx_tls_1_3_with_curl_and_the_go_client") {
        return;
    }
    let n = start_nginx_tls(
        "tls-nginx-13",
        "keepalive_timeout 1s;\n    ssl_protocols TLSv1.2 TLSv1.3;",
    );
    let url = https(n.port, "/1k");
    assert_no_loss_on("nginx tls 1.3", n.port, 8.0, || {
        let (code, _, err) = curl(&["-vk".into(), "-o".into(), "/dev/null".into(), url.clone()]);
        assert_eq!(code, Some(0), "{err}");
        assert!(err.contains("SSL connection using TLSv1.3"), "{err}");
        assert_eq!(
            curl_tls(&[], &times(3, &url)),
            on_one_connection(3, "2", 1024)
        );
        assert_eq!(
            curl_tls(&["--http1.1"], &times(3, &url)),
            on_one_connection(3, "1.1", 1024)
        );
        assert_eq!(
            go_client(&url, &["-n", "2", "-idle", "1500ms"]),
            go_answers(2, "HTTP/2.0", 1024)
        );
    });
}

#[test]
fn nginx_tls_with_python_http_client() {
    if !root_or_skip("nginx_tls_with_python_http_client") {
        return;
    }
    let n = nginx_tls("tls-nginx-python");
    let url = https(n.port, "/1k");
    assert_no_loss_on("nginx tls x python", n.port, 8.0, || {
        assert_eq!(python_client(&["get", &url, "3"]), python_answers(3, 1024));
        assert_eq!(
            python_client(&["get-keep-alive", &url, "3"]),
            python_answers(3, 1024)
        );
    });
}

#[test]
fn nginx_tls_with_the_go_client() {
    if !root_or_skip("nginx_tls_with_the_go_client") {
        return;
    }
    let n = nginx_tls("tls-nginx-go");
    let url = https(n.port, "/1k");
    assert_no_loss_on("nginx tls x go", n.port, 12.0, || {
        assert_eq!(
            go_client(&url, &["-n", "3"]),
            go_answers(3, "HTTP/2.0", 1024)
        );
        assert_eq!(
            go_client(&url, &["-n", "3", "-http2=false", "-keep-alive=false"]),
            go_answers(3, "HTTP/1.1", 1024)
        );
        // Idle past nginx's keep-alive timeout, which closes the connection: HTTP/2 (GOAWAY
        // first) and HTTP/1.1, at the same time.
        let h2 = thread::spawn(move || go_client(&url, &["-n", "2", "-idle", "1500ms"]));
        let url = https(n.port, "/1k");
        assert_eq!(
            go_client(&url, &["-n", "2", "-http2=false", "-idle", "1500ms"]),
            go_answers(2, "HTTP/1.1", 1024)
        );
        assert_eq!(h2.join().unwrap(), go_answers(2, "HTTP/2.0", 1024));
    });
}

#[test]
fn nginx_tls_with_a_node_http2_client_closing_with_goaway() {
    if !root_or_skip("nginx_tls_with_a_node_http2_client_closing_with_goaway") {
        return;
    }
    let n = nginx_tls("tls-nginx-node");
    let url = https(n.port, "/1k");
    assert_no_loss_on("nginx tls x node http2", n.port, 4.0, || {
        for _ in 0..2 {
            assert_eq!(node_h2_client(&url, 3), node_answers(3, 1024));
        }
    });
}

// Go's crypto/tls and net/http: the seed server's healthy path, /fast.

#[test]
fn go_tls_server_with_curl() {
    if !root_or_skip("go_tls_server_with_curl") {
        return;
    }
    let (_srv, port, _) = start_seedsrv_tls(&[]);
    let url = https(port, "/fast");
    assert_no_loss_on("go tls x curl", port, 6.0, || {
        assert_eq!(
            curl_tls(&[], &times(3, &url)),
            on_one_connection(3, "2", 11)
        );
        assert_eq!(
            curl_tls(&["--http1.1"], &times(3, &url)),
            on_one_connection(3, "1.1", 11)
        );
        // Connection: close, the server closes after the body (Go's server refuses curl's
        // ALPN "http/1.0": no application protocol).
        assert_eq!(
            curl_tls(
                &["--http1.1", "-H", "Connection: close"],
                std::slice::from_ref(&url)
            ),
            ["200 1.1 1 11"]
        );
    });
}

#[test]
fn go_tls_server_with_python_http_client() {
    if !root_or_skip("go_tls_server_with_python_http_client") {
        return;
    }
    let (_srv, port, _) = start_seedsrv_tls(&[]);
    let url = https(port, "/fast");
    assert_no_loss_on("go tls x python", port, 8.0, || {
        assert_eq!(python_client(&["get", &url, "3"]), python_answers(3, 11));
        assert_eq!(
            python_client(&["get-keep-alive", &url, "3"]),
            python_answers(3, 11)
        );
    });
}

#[test]
fn go_tls_server_with_the_go_client() {
    if !root_or_skip("go_tls_server_with_the_go_client") {
        return;
    }
    let (_srv, port, _) = start_seedsrv_tls(&[]);
    let url = https(port, "/fast");
    assert_no_loss_on("go tls x go", port, 16.0, || {
        assert_eq!(go_client(&url, &["-n", "3"]), go_answers(3, "HTTP/2.0", 11));
        assert_eq!(
            go_client(&url, &["-n", "3", "-keep-alive=false"]),
            go_answers(3, "HTTP/2.0", 11)
        );
        assert_eq!(
            go_client(&url, &["-n", "3", "-http2=false"]),
            go_answers(3, "HTTP/1.1", 11)
        );
        assert_eq!(
            go_client(&url, &["-n", "3", "-http2=false", "-keep-alive=false"]),
            go_answers(3, "HTTP/1.1", 11)
        );
    });
}

// Python's ssl module under http.server (HTTP/1.1 keep-alive, no ALPN): it never sends a
// close_notify, it reads its clients' and closes.

#[test]
fn python_tls_server_with_curl() {
    if !root_or_skip("python_tls_server_with_curl") {
        return;
    }
    let (_srv, port) = start_python_tls("tls-python-curl", "http", &[]);
    let url = https(port, "/fast");
    assert_no_loss_on("python tls x curl", port, 6.0, || {
        assert_eq!(
            curl_tls(&[], &times(3, &url)),
            on_one_connection(3, "1.1", 11)
        );
        for _ in 0..2 {
            assert_eq!(curl_tls(&[], std::slice::from_ref(&url)), ["200 1.1 1 11"]);
        }
    });
}

#[test]
fn python_tls_server_with_python_http_client() {
    if !root_or_skip("python_tls_server_with_python_http_client") {
        return;
    }
    let (_srv, port) = start_python_tls("tls-python-python", "http", &[]);
    let url = https(port, "/fast");
    assert_no_loss_on("python tls x python", port, 8.0, || {
        assert_eq!(python_client(&["get", &url, "3"]), python_answers(3, 11));
        assert_eq!(
            python_client(&["get-keep-alive", &url, "3"]),
            python_answers(3, 11)
        );
    });
}

#[test]
fn python_tls_server_with_the_go_client() {
    if !root_or_skip("python_tls_server_with_the_go_client") {
        return;
    }
    let (_srv, port) = start_python_tls("tls-python-go", "http", &[]);
    let url = https(port, "/fast");
    assert_no_loss_on("python tls x go", port, 8.0, || {
        // The Go client offers HTTP/2 too; the server picks HTTP/1.1.
        assert_eq!(
            go_client(&url, &["-n", "3", "-want-proto", "HTTP/1.1"]),
            go_answers(3, "HTTP/1.1", 11)
        );
        assert_eq!(
            go_client(&url, &["-n", "3", "-http2=false", "-keep-alive=false"]),
            go_answers(3, "HTTP/1.1", 11)
        );
    });
}

// close_notify from the client only, the server only, both or neither: a request line and an
// answer over Python's ssl on both ends, three connections ended by each side in turn.

/// Three connections ended by the client and three by the server, each end's close_notify as
/// `client` and `server` say (tls_http.py's NOTIFY: `yes` sends it and waits for the peer's,
/// `nowait` sends it and closes at once, `no` sends none).
fn close_notify_shapes(name: &str, client: &str, server: &str) {
    let (_srv, port) = start_python_tls(name, "raw", &[server]);
    let port_arg = port.to_string();
    assert_no_loss_on(name, port, 12.0, || {
        for closer in ["client", "server"] {
            assert_eq!(
                python_client(&["ping", &port_arg, "3", closer, client]),
                ["0 pong", "1 pong", "2 pong"]
            );
        }
    });
}

#[test]
fn close_notify_from_the_client_only() {
    if !root_or_skip("close_notify_from_the_client_only") {
        return;
    }
    close_notify_shapes("close-notify-client", "yes", "no");
}

#[test]
fn close_notify_from_the_server_only() {
    if !root_or_skip("close_notify_from_the_server_only") {
        return;
    }
    close_notify_shapes("close-notify-server", "no", "yes");
}

#[test]
fn close_notify_from_both_ends() {
    if !root_or_skip("close_notify_from_both_ends") {
        return;
    }
    close_notify_shapes("close-notify-both", "yes", "yes");
}

/// The closer sends its close_notify and closes without waiting, as Go, nginx and curl do; the
/// other end's close_notify then meets a closed socket, which resets the connection.
#[test]
fn close_notify_from_both_ends_without_waiting_for_the_reply() {
    if !root_or_skip("close_notify_from_both_ends_without_waiting_for_the_reply") {
        return;
    }
    close_notify_shapes("close-notify-nowait", "nowait", "nowait");
}

#[test]
fn close_notify_from_neither_end() {
    if !root_or_skip("close_notify_from_neither_end") {
        return;
    }
    close_notify_shapes("close-notify-neither", "no", "no");
}

// HTTP/2 over TLS against Go's server.

#[test]
fn http2_streams_on_one_connection_to_the_go_server() {
    if !root_or_skip("http2_streams_on_one_connection_to_the_go_server") {
        return;
    }
    let (_srv, port, _) = start_seedsrv_tls(&[]);
    let url = https(port, "/fast");
    assert_no_loss_on("http2 streams", port, 6.0, || {
        // Four streams one after the other, then four at once, each set on one connection.
        assert_eq!(
            curl_tls(&["--http2"], &times(4, &url)),
            on_one_connection(4, "2", 11)
        );
        let mut parallel = curl_tls(&["--http2", "--parallel"], &times(4, &url));
        parallel.sort();
        assert_eq!(
            parallel,
            ["200 2 0 11", "200 2 0 11", "200 2 0 11", "200 2 1 11"]
        );
        assert_eq!(go_client(&url, &["-n", "5"]), go_answers(5, "HTTP/2.0", 11));
    });
}

#[test]
fn http2_goaway_from_the_go_server_after_its_idle_timeout() {
    if !root_or_skip("http2_goaway_from_the_go_server_after_its_idle_timeout") {
        return;
    }
    // Idle for 300 ms, the server sends GOAWAY; a second later it closes, with its
    // close_notify, while the clients still wait.
    let (_srv, port, _) = start_seedsrv_tls(&["-idle-timeout", "300ms"]);
    let url = https(port, "/fast");
    assert_no_loss_on("http2 goaway from the server", port, 4.0, || {
        let clients: Vec<_> = (0..2)
            .map(|_| {
                let url = url.clone();
                thread::spawn(move || go_client(&url, &["-n", "2", "-idle", "1600ms"]))
            })
            .collect();
        for client in clients {
            assert_eq!(client.join().unwrap(), go_answers(2, "HTTP/2.0", 11));
        }
    });
}

#[test]
fn http2_goaway_from_a_node_client_to_the_go_server() {
    if !root_or_skip("http2_goaway_from_a_node_client_to_the_go_server") {
        return;
    }
    let (_srv, port, _) = start_seedsrv_tls(&[]);
    let url = https(port, "/fast");
    assert_no_loss_on("http2 goaway from the client", port, 4.0, || {
        for _ in 0..2 {
            assert_eq!(node_h2_client(&url, 3), node_answers(3, 11));
        }
    });
}

/// The seed's handler outlives WriteTimeout over HTTP/2 too, but there the server answers: Go's
/// HTTP/2 server resets the stream (RST_STREAM INTERNAL_ERROR) when the write deadline passes,
/// and curl reports it. The connection itself ends like any other.
#[test]
fn seed_over_http2_is_answered_with_a_stream_reset() {
    if !root_or_skip("seed_over_http2_is_answered_with_a_stream_reset") {
        return;
    }
    // With the Go runtime hooks the reset stream is a loss of its own (go_runtime.rs counts
    // it); without them, nothing about the connection is one.
    let (_srv, port, _) = start_seedsrv_tls(&[]);
    assert_no_loss_on_with(
        "seed over http2",
        port,
        2.0,
        &["--go-runtime", "off"],
        || {
            let (code, _, err) = curl(&["-k".into(), "--http2".into(), https(port, "/")]);
            assert_eq!(code, Some(92), "{err}");
            assert!(
                err.contains("HTTP/2 stream 1 was not closed cleanly: INTERNAL_ERROR"),
                "{err}"
            );
            // The handler's write, a second after the reset, must not count either.
            thread::sleep(Duration::from_millis(1200));
        },
    );
}

// True positives: a request read and left unanswered behind TLS.

/// The seed incident over HTTPS (HTTP/1.1): WriteTimeout 1 s, handler 2 s. The response never
/// reaches a write; at the close Go's TLS layer writes its close_notify alert, 24 bytes, under
/// a record sequence number the failed response write used up, so curl cannot decrypt it.
#[test]
fn seed_over_https_counts_exactly_one() {
    if !root_or_skip("seed_over_https_counts_exactly_one") {
        return;
    }
    let (_srv, port, pid) = start_seedsrv_tls(&[]);
    let agent = Agent::start(&[]);
    let (code, _, err) = curl(&["-k".into(), "--http1.1".into(), https(port, "/")]);
    assert_eq!(code, Some(56), "curl should fail to read a response: {err}");
    assert!(
        err.contains("SSL_read") && err.contains("bad record mac"),
        "{err}"
    );

    let port_label = port.to_string();
    let labels = [
        ("comm", "seedsrv"),
        ("port", port_label.as_str()),
        ("role", "server"),
    ];
    let t = Instant::now();
    wait_for(
        "the seed's unanswered close over HTTPS on /metrics",
        Duration::from_secs(1),
        || agent.scrape().value(UNANSWERED, &labels),
    );
    eprintln!(
        "seed over https visible {:?} after curl returned",
        t.elapsed()
    );

    let (m, i) = the_only_unanswered_close(
        &agent,
        "the seed's unanswered close over HTTPS",
        "seedsrv",
        &port_label,
        "server",
    );
    let delay = m
        .value(
            "lostwrite_unanswered_close_delay_seconds_sum",
            &[("comm", "seedsrv"), ("port", &port_label)],
        )
        .unwrap();
    assert!((1.9..2.6).contains(&delay), "delay {delay}");
    assert_eq!(i["kind"], "unanswered_close");
    assert_eq!(i["pid"], pid);
    assert_eq!(i["local"], format!("127.0.0.1:{port}"));
    assert_eq!(i["peer_closed"], false, "{i}");
    assert_eq!(i["protocol"], "tls", "{i}");
    eprintln!("seed over https incident: {i}");
    let read = i["bytes_read"].as_u64().unwrap();
    assert!(
        read > 600,
        "the TLS handshake and the request, got {read}: {i}"
    );
    // Since its last write (the handshake) the server read the client's Finished and the
    // request; the close alert it wrote afterwards answers nothing.
    let unanswered = i["unanswered_bytes"].as_u64().unwrap();
    assert!((100..read).contains(&unanswered), "{i}");
    let msg = i["message"].as_str().unwrap();
    assert!(
        msg.contains(
            " and closed the connection 2.0 s later without writing a response (only its TLS \
             close alert): Go dropped the response: its write deadline (WriteTimeout, ~1."
        ),
        "{msg}"
    );
    assert_eq!(i["go_deadline"], "write", "{i}");
}

/// Python's http.server over TLS whose handler raises: the request is read and the connection
/// closed (no close_notify: Python's ssl sends one only on unwrap()); curl reports an empty
/// reply.
#[test]
fn python_tls_handler_that_raises_counts_exactly_one() {
    if !root_or_skip("python_tls_handler_that_raises_counts_exactly_one") {
        return;
    }
    let (_srv, port) = start_python_tls("tls-python-raise", "raise", &[]);
    let agent = Agent::start(&[]);
    let (code, _, err) = curl(&["-k".into(), https(port, "/")]);
    assert_eq!(code, Some(52), "{err}");
    assert!(err.contains("Empty reply from server"), "{err}");

    let port_label = port.to_string();
    let (_, i) = the_only_unanswered_close(
        &agent,
        "the raising Python handler's unanswered close",
        "python3",
        &port_label,
        "server",
    );
    eprintln!("python raise incident: {i}");
    assert_eq!(i["local"], format!("127.0.0.1:{port}"));
    assert_eq!(i["protocol"], "tls", "{i}");
    assert!(i["bytes_read"].as_u64().unwrap() > 600, "{i}");
    // The request, one TLS record: what the server read after its last write (the handshake).
    let unanswered = i["unanswered_bytes"].as_u64().unwrap();
    assert!((60..200).contains(&unanswered), "{i}");
}
