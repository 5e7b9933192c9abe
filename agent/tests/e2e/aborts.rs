//! Undelivered bytes on real servers: every way a connection ends abortively.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use crate::{
    harness::{Agent, Process, assert_own_thread, free_port, own_comm, root_or_skip, wait_for},
    servers::{SETTLE, set_linger_zero, start_nginx},
};

const UNDELIVERED: &str = "lostwrite_undelivered_bytes_total";
const ABORTED: &str = "lostwrite_aborted_connections_total";

#[test]
fn python_server_closing_with_unread_request_bytes() {
    if !root_or_skip("python_server_closing_with_unread_request_bytes") {
        return;
    }
    let agent = Agent::start(&[]);
    let port = free_port();
    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/servers/partial_read.py"
        ))
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python3");
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let _server = Process(child);

    // 19 request bytes; the server reads 3, answers and closes with 16 unread.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n!").unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply); // the answer, then EOF or ECONNRESET

    let port = port.to_string();
    let labels = [
        ("comm", "python3"),
        ("port", port.as_str()),
        ("role", "server"),
        ("reason", "close_with_unread_input"),
    ];
    let m = agent.settled("the aborted connection", SETTLE, ABORTED, &labels);
    assert_eq!(
        m.value(ABORTED, &labels),
        Some(1.0),
        "{:?}",
        m.series(ABORTED)
    );
    assert_eq!(m.total(ABORTED), 1.0, "{:?}", m.series(ABORTED));
    let i = agent
        .incidents()
        .into_iter()
        .find(|i| i["kind"] == "undelivered_bytes")
        .expect("an undelivered_bytes incident");
    assert_eq!(i["unread_bytes"], 16, "{i}");
}

/// Bytes in the socket's send queue not yet acknowledged (SIOCOUTQ).
fn outq(s: &TcpStream) -> u64 {
    let mut n: libc::c_int = 0;
    // SAFETY: ioctl(SIOCOUTQ) writes one int.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(rc, 0, "ioctl(SIOCOUTQ)");
    n as u64
}

#[test]
fn linger_zero_close_with_megabytes_queued() {
    if !root_or_skip("linger_zero_close_with_megabytes_queued") {
        return;
    }
    let agent = Agent::start(&[]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // The peer connects and never reads.
    let _peer = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let queued = thread::Builder::new()
        .name("lingersrv".into())
        .spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_nonblocking(true).unwrap();
            let chunk = vec![b'z'; 64 * 1024];
            while conn.write(&chunk).is_ok() {}
            thread::sleep(Duration::from_millis(200));
            let queued = outq(&conn);
            set_linger_zero(&conn);
            drop(conn);
            queued
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(queued > 1_000_000, "only {queued} bytes queued");

    let port = port.to_string();
    let comm = own_comm();
    let labels = [
        ("comm", comm.as_str()),
        ("port", port.as_str()),
        ("role", "server"),
        ("reason", "linger_zero"),
    ];
    let m = agent.settled("the linger_zero abort", SETTLE, UNDELIVERED, &labels);
    let lost = m.value(UNDELIVERED, &labels).unwrap();
    let error = (lost - queued as f64).abs() / queued as f64;
    assert!(
        error <= 0.05,
        "undelivered {lost} vs SIOCOUTQ {queued} ({:.1} %)",
        error * 100.0
    );
    assert_eq!(m.value(ABORTED, &labels), Some(1.0));
    let incidents = agent.incidents();
    let aborts: Vec<_> = incidents
        .iter()
        .filter(|i| i["kind"] == "undelivered_bytes")
        .collect();
    assert_eq!(aborts.len(), 1, "{incidents:?}");
    assert_own_thread(aborts[0], "lingersrv");
}

#[test]
fn nginx_send_timeout_resets_a_slow_reader() {
    if !root_or_skip("nginx_send_timeout_resets_a_slow_reader") {
        return;
    }
    let nginx = start_nginx(
        "nginx-send-timeout",
        "send_timeout 1s; reset_timedout_connection on;",
    );
    let (port, dir) = (nginx.port, &nginx.dir);
    let agent = Agent::start(&[]);

    // A client that asks for 20 MB, reads 4 KiB and stops reading.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = vec![0u8; 4096];
    s.read_exact(&mut first).unwrap();

    let port_s = port.to_string();
    let labels = [
        ("comm", "nginx"),
        ("port", port_s.as_str()),
        ("role", "server"),
    ];
    let m = agent.settled("nginx's reset", SETTLE, UNDELIVERED, &labels);
    let lost = m.value(UNDELIVERED, &labels).unwrap();
    assert!(
        lost >= 1_000_000.0,
        "nginx lost only {lost} bytes: {:?}",
        m.series(UNDELIVERED)
    );
    assert_eq!(
        m.value(ABORTED, &[("comm", "nginx"), ("port", port_s.as_str())]),
        Some(1.0),
        "{:?}",
        m.series(ABORTED)
    );
    // nginx itself believes it served the request.
    let log = wait_for("nginx's access log line", Duration::from_secs(5), || {
        std::fs::read_to_string(dir.join("access.log"))
            .ok()
            .filter(|l| l.contains("GET /big"))
    });
    assert!(log.contains("\"GET /big HTTP/1.1\" 200 "), "{log}");
    drop(s);
}

#[test]
fn killed_server_with_unsent_data_still_delivers_it() {
    if !root_or_skip("killed_server_with_unsent_data_still_delivers_it") {
        return;
    }
    // A process killed with data in its send queue and nothing unread: the kernel keeps the
    // orphaned socket and delivers the queue, then FIN. Nothing is lost, nothing is counted.
    let port = free_port();
    let agent = crate::false_positives::explaining_agent("killed server", port, &[]);
    let script = format!(
        "import socket,os,signal\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('127.0.0.1',{port}))\ns.listen()\nprint('ready',flush=True)\nc,_=s.accept()\n\
         c.setblocking(False)\nn=0\ntry:\n  while True: n+=c.send(b'k'*65536)\nexcept BlockingIOError: pass\n\
         print(n,flush=True)\nos.kill(os.getpid(),signal.SIGKILL)\n"
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python3");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let sent: usize = line.trim().parse().unwrap();
    assert!(child.wait().unwrap().code().is_none(), "killed by a signal");
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(
        got.len(),
        sent,
        "everything the killed server wrote arrived"
    );
    drop(s);

    // Both ends' closes of this connection were judged.
    let (m, _) = crate::false_positives::judged_exactly("killed server", &agent, port, 2.0);
    let port = port.to_string();
    assert_eq!(m.value(UNDELIVERED, &[("port", port.as_str())]), None);
    assert_eq!(m.value(ABORTED, &[("port", port.as_str())]), None);
}

/// A network namespace joined to this one by a veth pair, removed on drop.
struct PeerNamespace {
    name: String,
    host_if: String,
}

impl PeerNamespace {
    fn create() -> Self {
        let id = std::process::id() % 10_000;
        let ns = Self {
            name: format!("lwpeer{id}"),
            host_if: format!("lwh{id}"),
        };
        let peer_if = format!("lwp{id}");
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("run ip (iproute2)");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", &ns.name]);
        ip(&["addr", "add", "10.213.0.1/24", "dev", &ns.host_if]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            "10.213.0.2/24",
            "dev",
            &peer_if,
        ]);
        ip(&["-n", &ns.name, "link", "set", &peer_if, "up"]);
        ns
    }

    /// Cuts the peer off: its side of the link goes down, so nothing is acknowledged anymore.
    fn cut(&self) {
        let id = &self.host_if[3..];
        let status = Command::new("ip")
            .args(["-n", &self.name, "link", "set", &format!("lwp{id}"), "down"])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for PeerNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn retransmission_timeout_with_unacknowledged_bytes() {
    if !root_or_skip("retransmission_timeout_with_unacknowledged_bytes") {
        return;
    }
    let ns = PeerNamespace::create();
    let agent = Agent::start(&[]);
    let mut server = Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c"])
        .arg(
            "import socket,time\ns=socket.socket()\ns.bind(('10.213.0.2',9800))\ns.listen()\n\
             print('ready',flush=True)\nc,_=s.accept()\ntime.sleep(30)\n",
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the peer");
    let mut ready = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let _server = Process(server);

    let err = thread::Builder::new()
        .name("rtoclient".into())
        .spawn(move || {
            let mut s = TcpStream::connect("10.213.0.2:9800").unwrap();
            let timeout_ms: libc::c_uint = 1000;
            // SAFETY: setsockopt(TCP_USER_TIMEOUT) with a correctly sized int.
            let rc = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_USER_TIMEOUT,
                    (&raw const timeout_ms).cast(),
                    size_of::<libc::c_uint>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0);
            ns.cut();
            s.write_all(&[b'u'; 10_000]).unwrap();
            thread::sleep(Duration::from_secs(3));
            let err = s.write(b"v").unwrap_err();
            (ns, err)
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(err.1.raw_os_error(), Some(libc::ETIMEDOUT), "{}", err.1);

    let comm = own_comm();
    let labels = [
        ("comm", comm.as_str()),
        ("port", "9800"),
        ("role", "client"),
        ("reason", "timeout"),
    ];
    let m = agent.settled("the timeout abort", SETTLE, UNDELIVERED, &labels);
    assert_eq!(
        m.value(UNDELIVERED, &labels),
        Some(10_000.0),
        "{:?}",
        m.series(UNDELIVERED)
    );
    assert_eq!(m.value(ABORTED, &labels), Some(1.0));
    let incidents = agent.incidents();
    let aborts: Vec<_> = incidents
        .iter()
        .filter(|i| i["kind"] == "undelivered_bytes")
        .collect();
    assert_eq!(aborts.len(), 1, "{incidents:?}");
    assert_own_thread(aborts[0], "rtoclient");
    drop(err);
}
