//! The unanswered-close detector on real servers.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant},
};

use crate::{
    harness::{Agent, Metrics, assert_own_thread, gettid, own_comm, root_or_skip, wait_for},
    servers::{
        REQUEST, SEED_PORT, curl, rust_server_reads_and_closes, rust_server_reads_and_closes_on,
        start_seedsrv,
    },
};

pub const UNANSWERED: &str = "lostwrite_unanswered_closes_total";

/// Waits for the unanswered close of `comm` on `port` in `role`, checks that it is the only
/// one counted and the only incident logged, and returns the scrape and that incident.
pub fn the_only_unanswered_close(
    agent: &Agent,
    what: &str,
    comm: &str,
    port: &str,
    role: &str,
) -> (Metrics, serde_json::Value) {
    let labels = [("comm", comm), ("port", port), ("role", role)];
    let m = agent.settled(what, Duration::from_secs(2), UNANSWERED, &labels);
    assert_eq!(m.value(UNANSWERED, &labels), Some(1.0));
    assert_eq!(m.total(UNANSWERED), 1.0, "{:?}", m.series(UNANSWERED));
    let mut incidents = agent.incidents();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    (m, incidents.remove(0))
}

#[test]
fn seed_go_write_timeout_counts_exactly_one() {
    if !root_or_skip("seed_go_write_timeout_counts_exactly_one") {
        return;
    }
    let agent = Agent::start(&[]);
    let before = agent.scrape();
    let (_server, pid) = start_seedsrv();

    // WriteTimeout 1 s, handler sleeps 2 s: the response never leaves the process.
    let (code, _, stderr) = curl(&[format!("http://127.0.0.1:{SEED_PORT}/")]);
    assert_eq!(
        code,
        Some(52),
        "curl should get an empty reply, got {code:?}: {stderr}"
    );
    assert!(stderr.contains("Empty reply from server"), "{stderr}");

    // Within a second of curl's empty reply, the counter shows it.
    let labels = [("comm", "seedsrv"), ("port", "8800"), ("role", "server")];
    let t = Instant::now();
    wait_for(
        "the seed's unanswered close on /metrics",
        Duration::from_secs(1),
        || agent.scrape().value(UNANSWERED, &labels),
    );
    eprintln!(
        "seed incident visible {:?} after curl returned",
        t.elapsed()
    );

    thread::sleep(Duration::from_millis(500));
    let m = agent.scrape();
    assert_eq!(m.value(UNANSWERED, &labels), Some(1.0));
    // Exactly one incident: curl's own socket (it wrote first, then read EOF) is not a loss.
    assert_eq!(m.total(UNANSWERED), 1.0, "{:?}", m.series(UNANSWERED));
    assert!(
        m.total("lostwrite_sockets_observed_total")
            >= before.total("lostwrite_sockets_observed_total") + 2.0,
        "the agent did not see the curl connection"
    );
    let delay_count = "lostwrite_unanswered_close_delay_seconds_count";
    let delay_sum = "lostwrite_unanswered_close_delay_seconds_sum";
    let labels2 = [("comm", "seedsrv"), ("port", "8800")];
    assert_eq!(m.value(delay_count, &labels2), Some(1.0));
    let delay = m.value(delay_sum, &labels2).unwrap();
    assert!((1.9..2.6).contains(&delay), "delay {delay}");

    let incidents = agent.incidents();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let i = &incidents[0];
    assert_eq!(i["kind"], "unanswered_close");
    assert_eq!(i["pid"], pid);
    assert_eq!(i["comm"], "seedsrv");
    assert_eq!(i["role"], "server");
    assert_eq!(i["local"], "127.0.0.1:8800");
    assert_eq!(i["bytes_written"], 0);
    assert_eq!(i["peer_closed"], false);
    let read = i["bytes_read"].as_u64().unwrap();
    assert!(
        read > 40,
        "curl's request is more than 40 bytes, got {read}"
    );
    let msg = i["message"].as_str().unwrap();
    let want = format!("pid {pid} (seedsrv) read {read} bytes on 127.0.0.1:8800 from 127.0.0.1:");
    assert!(msg.starts_with(&want), "{msg}");
    // The sentence gives the delay the histogram measured (2 s and a scheduling moment; under
    // emulation in a guest the moment can reach 0.1 s).
    let said = format!(
        " and closed the connection {:.1} s later without writing a response",
        i["delay_seconds"].as_f64().unwrap()
    );
    assert!(msg.contains(&said), "{msg}");
    // And why: the Go runtime hooks saw net/http's write deadline expire (WriteTimeout, 1 s
    // after the request) while the handler ran, in every probe mode and kernel.
    assert_eq!(i["go_deadline"], "write", "{i}");
    assert!(
        msg.contains(": Go dropped the response: its write deadline (WriteTimeout, ~1."),
        "{msg}"
    );
    assert_eq!(
        m.value(
            "lostwrite_go_write_timeouts_total",
            &[("comm", "seedsrv"), ("port", "8800"), ("protocol", "http1")]
        ),
        Some(1.0)
    );
    assert!(
        (1.9..2.6).contains(&i["delay_seconds"].as_f64().unwrap()),
        "{i}"
    );
}

#[test]
fn rust_server_that_reads_and_closes_counts_one() {
    if !root_or_skip("rust_server_that_reads_and_closes_counts_one") {
        return;
    }
    let agent = Agent::start(&[]);
    let before = agent.scrape().total("lostwrite_sockets_observed_total");
    let (port, reply) = rust_server_reads_and_closes();
    assert_eq!(reply, 0, "the server must not answer");

    let port = port.to_string();
    let (m, i) = the_only_unanswered_close(
        &agent,
        "the Rust server's unanswered close",
        &own_comm(),
        &port,
        "server",
    );
    assert_own_thread(&i, "rustsrv");
    assert!(m.total("lostwrite_sockets_observed_total") >= before + 2.0);
    assert_eq!(i["role"], "server");
    assert_eq!(i["port"].to_string(), port);
    assert_eq!(i["bytes_read"], REQUEST.len());
    assert_eq!(i["unanswered_bytes"], REQUEST.len());
    assert!(
        i["message"].as_str().unwrap().contains(&format!(
            "pid {} ({}) read {} bytes on 127.0.0.1:{port} from 127.0.0.1:",
            std::process::id(),
            own_comm(),
            REQUEST.len()
        )),
        "{i}"
    );
}

/// A thread pool named like Java's (`pool-1-thread-1` to `-4`), each thread accepting two
/// connections, reading the request and closing without an answer. Thread pools number their
/// threads, so the `comm` label is the process's name (its thread-group leader's comm): one
/// series with all eight, not one per thread. The incident log names each thread and its tid.
#[test]
fn thread_pool_counts_under_the_process_name() {
    if !root_or_skip("thread_pool_counts_under_the_process_name") {
        return;
    }
    const THREADS: usize = 4;
    const PER_THREAD: usize = 2;
    const CLOSES: usize = THREADS * PER_THREAD;
    let agent = Agent::start(&[]);
    let listener = std::sync::Arc::new(TcpListener::bind("127.0.0.1:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    let pool: Vec<_> = (1..=THREADS)
        .map(|n| {
            let listener = listener.clone();
            let name = format!("pool-1-thread-{n}");
            let handle = thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    // Every thread takes exactly its share: the clients below connect one at
                    // a time, so each connection is accepted by a thread still waiting.
                    for _ in 0..PER_THREAD {
                        let (mut conn, _) = listener.accept().unwrap();
                        let mut buf = vec![0u8; REQUEST.len()];
                        conn.read_exact(&mut buf).unwrap();
                        drop(conn); // closed without a response
                    }
                    gettid()
                })
                .unwrap();
            (name, handle)
        })
        .collect();
    for _ in 0..CLOSES {
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        client.write_all(REQUEST).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).unwrap();
        assert!(reply.is_empty(), "the pool answered");
    }
    let tids: std::collections::BTreeMap<String, u32> = pool
        .into_iter()
        .map(|(name, h)| (name, h.join().unwrap()))
        .collect();

    let port_s = port.to_string();
    let on_port = [("port", port_s.as_str())];
    wait_for("eight unanswered closes", Duration::from_secs(5), || {
        (agent.scrape().sum(UNANSWERED, &on_port) >= CLOSES as f64).then_some(())
    });
    thread::sleep(Duration::from_millis(300));
    let m = agent.scrape();
    let comm = own_comm();
    let one_series = std::collections::BTreeMap::from([(comm.clone(), CLOSES as f64)]);
    assert_eq!(
        m.by_label(UNANSWERED, &on_port, "comm"),
        one_series,
        "{:?}",
        m.series(UNANSWERED)
    );
    assert_eq!(
        m.value(
            UNANSWERED,
            &[("comm", &comm), ("port", &port_s), ("role", "server")]
        ),
        Some(CLOSES as f64)
    );
    assert_eq!(
        m.by_label(
            "lostwrite_unanswered_close_delay_seconds_count",
            &on_port,
            "comm"
        ),
        one_series
    );

    let local = format!("127.0.0.1:{port}");
    let incidents: Vec<_> = agent
        .incidents()
        .into_iter()
        .filter(|i| i["local"] == local.as_str())
        .collect();
    assert_eq!(incidents.len(), CLOSES, "{incidents:?}");
    let mut by_thread = std::collections::BTreeMap::<String, usize>::new();
    for i in &incidents {
        let thread = i["thread"].as_str().unwrap_or_default().to_owned();
        assert_own_thread(i, &thread);
        let tid = i["tid"].as_u64().map(|t| t as u32);
        assert_eq!(tid, tids.get(&thread).copied(), "{i}");
        *by_thread.entry(thread).or_default() += 1;
    }
    let want: std::collections::BTreeMap<String, usize> =
        tids.keys().map(|name| (name.clone(), PER_THREAD)).collect();
    assert_eq!(by_thread, want, "{incidents:?}");
}

/// Keep-alive: the first request is answered, the second (sent the moment the first response is
/// in, so both arrive within one kernel tick) is read and left unanswered. Only the read
/// position recorded at each write tells the two apart; the kernel's receive and send times
/// (jiffies) are equal here.
#[test]
fn second_keep_alive_request_left_unanswered_counts_one() {
    if !root_or_skip("second_keep_alive_request_left_unanswered_counts_one") {
        return;
    }
    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let agent = Agent::start(&[]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::Builder::new()
        .name("kasrv".into())
        .spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; REQUEST.len()];
            conn.read_exact(&mut buf).unwrap();
            conn.write_all(RESPONSE).unwrap();
            conn.read_exact(&mut buf).unwrap();
            thread::sleep(Duration::from_millis(100));
            drop(conn); // the second request is never answered
        })
        .unwrap();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(REQUEST).unwrap();
    let mut response = vec![0u8; RESPONSE.len()];
    client.read_exact(&mut response).unwrap();
    client.write_all(REQUEST).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    server.join().unwrap();
    assert!(rest.is_empty());

    let (_, i) = the_only_unanswered_close(
        &agent,
        "the keep-alive server's unanswered close",
        &own_comm(),
        &port.to_string(),
        "server",
    );
    // Claimed at its first write, the answered response.
    assert_own_thread(&i, "kasrv");
    assert_eq!(i["bytes_read"], 2 * REQUEST.len(), "{i}");
    assert_eq!(i["unanswered_bytes"], REQUEST.len(), "{i}");
    assert_eq!(i["bytes_written"], RESPONSE.len(), "{i}");
}

/// A connection accepted, and its request read, before the agent started; the server closes it
/// unanswered once the agent runs. It never wrote a byte, so everything it read is unanswered
/// whatever happened before the agent: reported with the role the agent could not observe.
#[test]
fn connection_from_before_the_agent_closed_unanswered_counts_one() {
    if !root_or_skip("connection_from_before_the_agent_closed_unanswered_counts_one") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (read_tx, read_rx) = std::sync::mpsc::channel();
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let server = thread::Builder::new()
        .name("oldsrv".into())
        .spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; REQUEST.len()];
            conn.read_exact(&mut buf).unwrap();
            read_tx.send(()).unwrap();
            close_rx.recv().unwrap();
            drop(conn); // closed without a response, the listener still open
            close_rx.recv().ok();
        })
        .unwrap();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(REQUEST).unwrap();
    read_rx.recv().unwrap();

    let agent = Agent::start(&[]);
    close_tx.send(()).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    let (_, i) = the_only_unanswered_close(
        &agent,
        "the unanswered close of a connection older than the agent",
        &own_comm(),
        &port.to_string(),
        "unknown",
    );
    // Adopted at its close: named like any other.
    assert_own_thread(&i, "oldsrv");
    drop(close_tx); // the listener goes away only now
    server.join().unwrap();
    assert_eq!(i["bytes_read"], REQUEST.len());
    assert_eq!(i["unanswered_bytes"], REQUEST.len());
}

/// A read that never passes through recvmsg: splice() moves the request from the socket into a
/// pipe, as proxies do. It advances the socket's read position like any read, so the close
/// without an answer counts the same (no receive hook would have seen this read).
#[test]
fn server_that_splices_the_request_and_closes_counts_one() {
    if !root_or_skip("server_that_splices_the_request_and_closes_counts_one") {
        return;
    }
    let agent = Agent::start(&[]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::Builder::new()
        .name("splicesrv".into())
        .spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut pipe = [0; 2];
            // SAFETY: pipe(2) fills the two-element array.
            assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
            let mut moved = 0;
            while moved < REQUEST.len() {
                // SAFETY: splice(2) between two fds this thread owns, no offsets.
                let n = unsafe {
                    libc::splice(
                        conn.as_raw_fd(),
                        std::ptr::null_mut(),
                        pipe[1],
                        std::ptr::null_mut(),
                        65536,
                        0,
                    )
                };
                assert!(n > 0, "splice: {}", std::io::Error::last_os_error());
                moved += n as usize;
            }
            thread::sleep(Duration::from_millis(100));
            drop(conn); // closed without a response
            // SAFETY: closing the pipe this thread opened.
            unsafe {
                libc::close(pipe[0]);
                libc::close(pipe[1]);
            }
        })
        .unwrap();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(REQUEST).unwrap();
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).unwrap();
    server.join().unwrap();
    assert!(reply.is_empty());

    let (_, i) = the_only_unanswered_close(
        &agent,
        "the splicing server's unanswered close",
        &own_comm(),
        &port.to_string(),
        "server",
    );
    assert_own_thread(&i, "splicesrv");
    assert_eq!(i["bytes_read"], REQUEST.len());
    assert_eq!(i["unanswered_bytes"], REQUEST.len());
}

#[test]
fn filters_keep_other_processes_out() {
    if !root_or_skip("filters_keep_other_processes_out") {
        return;
    }
    // --comm selects nothing the scenario runs: the loss is seen but not reported.
    let port = crate::harness::free_port();
    let agent = Agent::start(&["--comm", "nginx", "--explain-port", &port.to_string()]);
    rust_server_reads_and_closes_on(&format!("127.0.0.1:{port}"), "rustsrv");
    // The agent judged this connection's two closes, the server's as unanswered (the filter
    // is applied to incidents, not to what is seen)...
    let (m, verdicts) = crate::false_positives::judged_exactly("filters", &agent, port, 2.0);
    assert_eq!(verdicts.get("unanswered"), Some(&1.0), "{verdicts:?}");
    // ...but nothing is counted or logged.
    assert_eq!(
        m.value(UNANSWERED, &[("port", port.to_string().as_str())]),
        None
    );
    assert!(agent.incidents().is_empty());
}

#[test]
fn classic_tracepoint_fallback_detects_the_same() {
    if !root_or_skip("classic_tracepoint_fallback_detects_the_same") {
        return;
    }
    // The path taken where BTF tracepoints are unavailable: record layouts from tracefs.
    let agent = Agent::start(&["--classic-tracepoints"]);
    let hooks = agent.hooks();
    for hook in [
        "sock_send_length(classic)",
        "inet_sock_set_state(classic)",
        "tcp_destroy_sock(classic)",
        "tcp_receive_reset(classic)",
        "tcp_send_reset(classic)",
    ] {
        assert!(hooks.contains(hook), "{hook} not in {hooks:?}");
    }
    let (port, _) = rust_server_reads_and_closes();
    let port = port.to_string();
    let comm = own_comm();
    let labels = [
        ("comm", comm.as_str()),
        ("port", port.as_str()),
        ("role", "server"),
    ];
    let m = agent.settled(
        "the unanswered close via classic tracepoints",
        Duration::from_secs(2),
        UNANSWERED,
        &labels,
    );
    assert_eq!(m.value(UNANSWERED, &labels), Some(1.0));
    let i = &agent.incidents()[0];
    assert_own_thread(i, "rustsrv");
    assert_eq!(i["local"], format!("127.0.0.1:{port}"), "{i}");
    assert_eq!(i["bytes_read"], REQUEST.len());
}

#[test]
fn ipv6_server_that_reads_and_closes_counts_one() {
    if !root_or_skip("ipv6_server_that_reads_and_closes_counts_one") {
        return;
    }
    let agent = Agent::start(&[]);
    let (port, reply) = rust_server_reads_and_closes_on("[::1]:0", "rustsrv6");
    assert_eq!(reply, 0);
    let port = port.to_string();
    let comm = own_comm();
    let labels = [
        ("comm", comm.as_str()),
        ("port", port.as_str()),
        ("role", "server"),
    ];
    wait_for("the IPv6 unanswered close", Duration::from_secs(2), || {
        agent.scrape().value(UNANSWERED, &labels)
    });
    let i = &agent.incidents()[0];
    assert_own_thread(i, "rustsrv6");
    assert_eq!(i["local"], format!("[::1]:{port}"), "{i}");
    assert!(i["remote"].as_str().unwrap().starts_with("[::1]:"), "{i}");
}

#[test]
fn mptcp_listening_server_with_a_tcp_client_counts_one() {
    if !root_or_skip("mptcp_listening_server_with_a_tcp_client_counts_one") {
        return;
    }
    // Go >= 1.21 listens with IPPROTO_MPTCP; a plain-TCP client's connection falls back to TCP
    // and the accepted socket is an ordinary TCP socket.
    let agent = Agent::start(&[]);
    let port = crate::harness::free_port();
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_STREAM,262)\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('127.0.0.1',{port}))\n\
         s.listen()\nprint('ready',flush=True)\nc,_=s.accept()\nc.recv(4096)\nc.close()\n"
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start python3");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready", "MPTCP listen failed");
    let _server = crate::harness::Process(child);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut s, REQUEST).unwrap();
    let mut reply = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut reply);
    assert!(reply.is_empty());

    let port = port.to_string();
    let labels = [
        ("comm", "python3"),
        ("port", port.as_str()),
        ("role", "server"),
    ];
    let m = agent.settled(
        "the MPTCP listener's unanswered close",
        Duration::from_secs(2),
        UNANSWERED,
        &labels,
    );
    assert_eq!(m.value(UNANSWERED, &labels), Some(1.0));
}
