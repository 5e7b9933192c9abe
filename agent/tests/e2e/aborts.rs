//! Write after close and undelivered bytes on real servers.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use crate::{
    harness::{Agent, Metrics, Process, free_port, root_or_skip, wait_for},
    servers::start_nginx,
};

const UNDELIVERED: &str = "lostwrite_undelivered_bytes_total";
const ABORTED: &str = "lostwrite_aborted_connections_total";
const WRITES: &str = "lostwrite_writes_after_close_total";

/// Scrapes until `name{labels}` exists, then once more after the dust settles.
fn settled(agent: &Agent, what: &str, name: &str, labels: &[(&str, &str)]) -> Metrics {
    wait_for(what, Duration::from_secs(5), || {
        agent.scrape().value(name, labels)
    });
    thread::sleep(Duration::from_millis(300));
    agent.scrape()
}

#[test]
fn client_writing_after_the_server_closed_gets_epipe() {
    if !root_or_skip("client_writing_after_the_server_closed_gets_epipe") {
        return;
    }
    let agent = Agent::start(&[]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || drop(listener.accept().unwrap()));
    let client = thread::Builder::new()
        .name("eagerclient".into())
        .spawn(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            thread::sleep(Duration::from_millis(200)); // the server has closed by now
            s.write_all(&[b'x'; 1000])
                .expect("the first send is accepted");
            thread::sleep(Duration::from_millis(200)); // its RST has come back
            s.write(&[b'y'; 500]).unwrap_err()
        })
        .unwrap();
    server.join().unwrap();
    let err = client.join().unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe, "{err}");

    let port = port.to_string();
    let labels = [
        ("comm", "eagerclient"),
        ("port", port.as_str()),
        ("role", "client"),
        ("errno", "EPIPE"),
    ];
    let m = settled(&agent, "the EPIPE write", WRITES, &labels);
    assert_eq!(m.value(WRITES, &labels), Some(1.0));
    assert_eq!(m.total(WRITES), 1.0, "{:?}", m.series(WRITES));
    // The accepted first send never reached the peer: the server's RST discarded it.
    let peer_reset = [
        ("comm", "eagerclient"),
        ("port", port.as_str()),
        ("role", "client"),
        ("reason", "peer_reset"),
    ];
    assert_eq!(
        m.value(UNDELIVERED, &peer_reset),
        Some(1000.0),
        "{:?}",
        m.series(UNDELIVERED)
    );
    assert_eq!(m.value(ABORTED, &peer_reset), Some(1.0));
    assert_eq!(m.total(UNDELIVERED), 1000.0, "{:?}", m.series(UNDELIVERED));

    let incidents = agent.incidents();
    let epipe = incidents
        .iter()
        .find(|i| i["kind"] == "write_after_close")
        .expect("a write_after_close incident");
    assert_eq!(epipe["reason"], "EPIPE");
    assert!(
        epipe["message"]
            .as_str()
            .unwrap()
            .contains("(eagerclient) wrote on 127.0.0.1:"),
        "{epipe}"
    );
}

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
    let m = settled(&agent, "the aborted connection", ABORTED, &labels);
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

/// SO_LINGER{1,0}: close() throws the send queue away with an RST.
fn set_linger_zero(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a valid, correctly sized option.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_LINGER)");
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
    let labels = [
        ("comm", "lingersrv"),
        ("port", port.as_str()),
        ("role", "server"),
        ("reason", "linger_zero"),
    ];
    let m = settled(&agent, "the linger_zero abort", UNDELIVERED, &labels);
    let lost = m.value(UNDELIVERED, &labels).unwrap();
    let error = (lost - queued as f64).abs() / queued as f64;
    assert!(
        error <= 0.05,
        "undelivered {lost} vs SIOCOUTQ {queued} ({:.1} %)",
        error * 100.0
    );
    assert_eq!(m.value(ABORTED, &labels), Some(1.0));
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
    let m = settled(&agent, "nginx's reset", UNDELIVERED, &labels);
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
    let agent = Agent::start(&[]);
    let port = free_port();
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

    thread::sleep(Duration::from_millis(300));
    let m = agent.scrape();
    let port = port.to_string();
    assert_eq!(m.value(UNDELIVERED, &[("port", port.as_str())]), None);
    assert_eq!(m.value(ABORTED, &[("port", port.as_str())]), None);
    assert!(m.total("lostwrite_sockets_observed_total") >= 2.0);
}

fn close_fd(fd: i32) {
    // SAFETY: closes a descriptor this test owns (taken with into_raw_fd).
    assert_eq!(unsafe { libc::close(fd) }, 0);
}

/// write(2) on a raw descriptor: Ok(bytes) or the errno.
fn raw_write(fd: i32, buf: &[u8]) -> Result<usize, i32> {
    // SAFETY: writes from a valid buffer; a closed fd just fails with EBADF.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(n as usize)
    }
}

#[test]
fn use_after_close_ebadf_counts_and_a_reused_fd_does_not() {
    if !root_or_skip("use_after_close_ebadf_counts_and_a_reused_fd_does_not") {
        return;
    }
    use std::os::fd::IntoRawFd as _;
    let agent = Agent::start(&["--detect-ebadf", "on"]);
    let m = agent.scrape();
    let ebadf_on = [("detector", "write_after_close_ebadf")];
    assert_eq!(m.value("lostwrite_detector_enabled", &ebadf_on), Some(1.0));
    assert!(agent.hooks().contains("sys_exit(btf)"), "{}", agent.hooks());

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (_server_side, _) = listener.accept().unwrap();
    let fd = client.into_raw_fd();
    // One thread closes the socket, another then writes to the same fd number.
    thread::Builder::new()
        .name("fdcloser".into())
        .spawn(move || close_fd(fd))
        .unwrap()
        .join()
        .unwrap();
    let err = thread::Builder::new()
        .name("fdwriter".into())
        .spawn(move || raw_write(fd, &[b'w'; 10]))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(err, Err(libc::EBADF));

    let port_s = port.to_string();
    let labels = [
        ("comm", "fdwriter"),
        ("port", port_s.as_str()),
        ("role", "client"),
        ("errno", "EBADF"),
    ];
    let m = settled(&agent, "the EBADF write", WRITES, &labels);
    assert_eq!(
        m.value(WRITES, &labels),
        Some(1.0),
        "{:?}",
        m.series(WRITES)
    );
    assert_eq!(
        m.value("lostwrite_writes_after_close_bytes_total", &labels),
        Some(10.0)
    );

    // The same fd number reused by a new socket: writing to it works and is not a loss.
    let second = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut second_server, _) = listener.accept().unwrap();
    let old = second.into_raw_fd();
    close_fd(old);
    let third = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut third_server, _) = listener.accept().unwrap();
    let new = third.into_raw_fd();
    // The kernel hands out the lowest free number, usually the old one; make sure of it.
    if new != old {
        // SAFETY: moves the new socket onto the old number (nothing is open there).
        assert_eq!(unsafe { libc::dup2(new, old) }, old);
        close_fd(new);
    }
    assert_eq!(raw_write(old, b"fresh"), Ok(5));
    let mut got = [0u8; 5];
    third_server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"fresh");
    close_fd(old);
    let _ = second_server.read(&mut [0u8; 1]);

    thread::sleep(Duration::from_millis(300));
    let m = agent.scrape();
    let all_ebadf: f64 = m.total(WRITES);
    assert_eq!(all_ebadf, 1.0, "{:?}", m.series(WRITES));
}

#[test]
fn ebadf_detector_is_off_by_default_in_tracepoint_mode() {
    if !root_or_skip("ebadf_detector_is_off_by_default_in_tracepoint_mode") {
        return;
    }
    let agent = Agent::start(&[]);
    let m = agent.scrape();
    assert_eq!(
        m.value(
            "lostwrite_detector_enabled",
            &[("detector", "write_after_close_ebadf")]
        ),
        Some(0.0)
    );
    assert!(!agent.hooks().contains("sys_exit"), "{}", agent.hooks());
}

/// Each write-family syscall on a connection the peer has reset: the error, as an errno.
fn write_family_calls(fd: i32) -> Vec<(&'static str, i32)> {
    let buf = [b'q'; 100];
    let errno = |rc: isize| -> i32 {
        assert!(rc < 0, "the call succeeded");
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    };
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut _,
        iov_len: buf.len(),
    };
    // SAFETY: every call gets valid buffers of the stated sizes; MSG_NOSIGNAL (and SIGPIPE,
    // which the Rust runtime ignores) keep EPIPE an error instead of a signal.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        let mut mmsg: libc::mmsghdr = std::mem::zeroed();
        mmsg.msg_hdr = msg;
        vec![
            ("write", errno(libc::write(fd, buf.as_ptr().cast(), 100))),
            ("writev", errno(libc::writev(fd, &raw const iov, 1))),
            (
                "send",
                errno(libc::send(fd, buf.as_ptr().cast(), 100, libc::MSG_NOSIGNAL)),
            ),
            (
                "sendto",
                errno(libc::sendto(
                    fd,
                    buf.as_ptr().cast(),
                    100,
                    libc::MSG_NOSIGNAL,
                    std::ptr::null(),
                    0,
                )),
            ),
            (
                "sendmsg",
                errno(libc::sendmsg(fd, &raw const msg, libc::MSG_NOSIGNAL)),
            ),
            (
                "sendmmsg",
                errno(libc::sendmmsg(fd, &raw mut mmsg, 1, libc::MSG_NOSIGNAL) as isize),
            ),
        ]
    }
}

#[test]
fn every_write_family_call_after_reset_is_counted() {
    if !root_or_skip("every_write_family_call_after_reset_is_counted") {
        return;
    }
    let agent = Agent::start(&[]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    // The server resets the connection (SO_LINGER{1,0}); every later write fails.
    set_linger_zero(&server);
    drop(server);
    thread::sleep(Duration::from_millis(100));
    let fd = client.as_raw_fd();
    let results = thread::Builder::new()
        .name("writefamily".into())
        .spawn(move || write_family_calls(fd))
        .unwrap()
        .join()
        .unwrap();
    // The first call reports the reset; the socket is dead after that.
    assert_eq!(results[0], ("write", libc::ECONNRESET), "{results:?}");
    for (call, e) in &results[1..] {
        assert_eq!(*e, libc::EPIPE, "{call}: {results:?}");
    }
    let port = port.to_string();
    let labels = |errno| {
        [
            ("comm", "writefamily"),
            ("port", port.as_str()),
            ("role", "client"),
            ("errno", errno),
        ]
    };
    wait_for("six failed writes", Duration::from_secs(5), || {
        let m = agent.scrape();
        (m.total(WRITES) >= 6.0).then_some(())
    });
    thread::sleep(Duration::from_millis(300));
    let m = agent.scrape();
    assert_eq!(
        m.value(WRITES, &labels("ECONNRESET")),
        Some(1.0),
        "{:?}",
        m.series(WRITES)
    );
    assert_eq!(
        m.value(WRITES, &labels("EPIPE")),
        Some(5.0),
        "{:?}",
        m.series(WRITES)
    );
    drop(client);
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

    let labels = [
        ("comm", "rtoclient"),
        ("port", "9800"),
        ("role", "client"),
        ("reason", "timeout"),
    ];
    let m = settled(&agent, "the timeout abort", UNDELIVERED, &labels);
    assert_eq!(
        m.value(UNDELIVERED, &labels),
        Some(10_000.0),
        "{:?}",
        m.series(UNDELIVERED)
    );
    assert_eq!(m.value(ABORTED, &labels), Some(1.0));
    drop(err);
}
