//! Write after close on real sockets: EPIPE/ECONNRESET from every write-family call, and EBADF
//! on a just-closed socket's fd number.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    thread,
    time::Duration,
};

use crate::{
    harness::{Agent, assert_own_thread, own_comm, probe_mode, root_or_skip, wait_for},
    servers::{REQUEST, SETTLE, set_linger_zero, set_socket_option},
};

const UNDELIVERED: &str = "lostwrite_undelivered_bytes_total";
const ABORTED: &str = "lostwrite_aborted_connections_total";
const WRITES: &str = "lostwrite_writes_after_close_total";
const UNANSWERED: &str = "lostwrite_unanswered_closes_total";

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
    let comm = own_comm();
    let labels = [
        ("comm", comm.as_str()),
        ("port", port.as_str()),
        ("role", "client"),
        ("errno", "EPIPE"),
    ];
    let m = agent.settled("the EPIPE write", SETTLE, WRITES, &labels);
    assert_eq!(m.value(WRITES, &labels), Some(1.0));
    assert_eq!(m.total(WRITES), 1.0, "{:?}", m.series(WRITES));
    // The accepted first send never reached the peer: the server's RST discarded it.
    let peer_reset = [
        ("comm", comm.as_str()),
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
    assert_own_thread(epipe, "eagerclient");
    // fentry and kprobe modes hook tcp_sendmsg and see the size the call attempted; tracepoint
    // mode only sees the call's result.
    let bytes = m.value("lostwrite_writes_after_close_bytes_total", &labels);
    let wrote = if probe_mode() == "tracepoint" {
        assert_eq!(
            bytes, None,
            "the size is unknown here, so no bytes are claimed"
        );
        "wrote on"
    } else {
        assert_eq!(epipe["attempted_bytes"], 500, "{epipe}");
        assert_eq!(bytes, Some(500.0));
        "wrote 500 bytes on"
    };
    assert!(
        epipe["message"]
            .as_str()
            .unwrap()
            .contains(&format!("({comm}) {wrote} 127.0.0.1:")),
        "{epipe}"
    );
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
    let comm = own_comm();
    let labels = [
        ("comm", comm.as_str()),
        ("port", port_s.as_str()),
        ("role", "client"),
        ("errno", "EBADF"),
    ];
    let m = agent.settled("the EBADF write", SETTLE, WRITES, &labels);
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
    // The thread that wrote, not the one that closed.
    let incidents = agent.incidents();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_own_thread(&incidents[0], "fdwriter");

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
    let comm = own_comm();
    let labels = |errno| {
        [
            ("comm", comm.as_str()),
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
    let writes: Vec<_> = agent
        .incidents()
        .into_iter()
        .filter(|i| i["kind"] == "write_after_close")
        .collect();
    assert_eq!(writes.len(), 6, "{writes:?}");
    writes
        .iter()
        .for_each(|i| assert_own_thread(i, "writefamily"));
    drop(client);
}

/// Writers blocked in `write()` on a full socket, all at once, when their peer resets: each
/// failing call is counted once. In kprobe mode the kernel runs a bounded number of kretprobe
/// instances at once (at least 10, or twice the CPUs), and a send that blocks holds one; more
/// blocked writers than that is the case a return can be missed in.
#[test]
fn many_blocked_writers_reset_at_once_are_each_counted() {
    if !root_or_skip("many_blocked_writers_reset_at_once_are_each_counted") {
        return;
    }
    const WRITERS: usize = 48;
    let agent = Agent::start(&[]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // Small receive buffers (the accepted sockets inherit the listener's), so that the windows
    // close after a few KiB.
    set_socket_option(listener.as_raw_fd(), libc::SO_RCVBUF, &4096);
    let port = listener.local_addr().unwrap().port();
    let ready = std::sync::Arc::new(std::sync::Barrier::new(WRITERS + 1));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let ready = ready.clone();
            thread::Builder::new()
                .name("blockedwriter".into())
                .spawn(move || {
                    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    set_socket_option(s.as_raw_fd(), libc::SO_SNDBUF, &(16 * 1024));
                    // Fill the peer's receive window and then the send queue without blocking,
                    // until the queue stays full (nothing acknowledged frees space any more), so
                    // that the next write waits for space with nothing copied.
                    s.set_nonblocking(true).unwrap();
                    let buf = [b'z'; 16 * 1024];
                    let mut full_for = 0;
                    while full_for < 3 {
                        match s.write(&buf) {
                            Ok(_) => full_for = 0,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                full_for += 1;
                                thread::sleep(Duration::from_millis(50));
                            }
                            Err(e) => panic!("filling the socket: {e}"),
                        }
                    }
                    s.set_nonblocking(false).unwrap();
                    ready.wait();
                    s.write(&buf).unwrap_err()
                })
                .unwrap()
        })
        .collect();
    // The server never reads; it keeps every connection until it resets them all.
    let accepted: Vec<TcpStream> = (0..WRITERS).map(|_| listener.accept().unwrap().0).collect();
    ready.wait();
    wait_for(
        "every writer blocked in write()",
        Duration::from_secs(10),
        || (blocked_in_send("blockedwriter") == WRITERS).then_some(()),
    );
    for s in &accepted {
        set_linger_zero(s);
    }
    drop(accepted);

    let mut by_errno = std::collections::BTreeMap::<&str, f64>::new();
    for w in writers {
        let err = w.join().unwrap();
        let errno = match err.kind() {
            std::io::ErrorKind::ConnectionReset => "ECONNRESET",
            std::io::ErrorKind::BrokenPipe => "EPIPE",
            _ => panic!("a blocked writer got {err}"),
        };
        *by_errno.entry(errno).or_default() += 1.0;
    }
    let (comm, port) = (own_comm(), port.to_string());
    let comm = [("comm", comm.as_str()), ("port", port.as_str())];
    let deadline = std::time::Instant::now() + SETTLE;
    while agent.scrape().sum(WRITES, &comm) < WRITERS as f64 && std::time::Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(50));
    }
    // Anything late would be counted twice.
    thread::sleep(Duration::from_millis(300));
    let m = agent.scrape();
    assert_eq!(
        m.sum(WRITES, &comm),
        WRITERS as f64,
        "{:?}",
        m.series(WRITES)
    );
    for (errno, n) in by_errno {
        assert_eq!(
            m.sum(WRITES, &[comm[0], comm[1], ("errno", errno)]),
            n,
            "{errno}: {:?}",
            m.series(WRITES)
        );
    }
    // One series per errno, and in the log every writer thread by its name.
    let writes: Vec<_> = agent
        .incidents()
        .into_iter()
        .filter(|i| i["kind"] == "write_after_close")
        .collect();
    assert_eq!(writes.len(), WRITERS, "{writes:?}");
    writes
        .iter()
        .for_each(|i| assert_own_thread(i, "blockedwriter"));
}

/// Servers blocked sending their responses to slow readers, more of them at once than kprobe
/// mode's kretprobe instances, then the responses are read and the servers close: no loss. A
/// send whose return was missed must not leave the request looking unanswered.
#[test]
fn many_blocked_responses_then_delivered_count_nothing() {
    if !root_or_skip("many_blocked_responses_then_delivered_count_nothing") {
        return;
    }
    const SERVERS: usize = 48;
    const RESPONSE: usize = 256 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let agent = crate::false_positives::explaining_agent("blocked responses", port, &[]);
    let clients: Vec<TcpStream> = (0..SERVERS)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            set_socket_option(c.as_raw_fd(), libc::SO_RCVBUF, &4096);
            c.write_all(REQUEST).unwrap();
            c
        })
        .collect();
    let servers: Vec<_> = (0..SERVERS)
        .map(|_| {
            let (mut s, _) = listener.accept().unwrap();
            thread::Builder::new()
                .name("blockedserver".into())
                .spawn(move || {
                    set_socket_option(s.as_raw_fd(), libc::SO_SNDBUF, &(16 * 1024));
                    let mut request = vec![0; REQUEST.len()];
                    s.read_exact(&mut request).unwrap();
                    s.write_all(&[b'r'; RESPONSE]).unwrap();
                })
                .unwrap()
        })
        .collect();
    wait_for(
        "every server blocked sending its response",
        Duration::from_secs(10),
        || (blocked_in_send("blockedserver") == SERVERS).then_some(()),
    );
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            thread::spawn(move || {
                let mut got = Vec::new();
                c.read_to_end(&mut got).unwrap();
                got.len()
            })
        })
        .collect();
    for s in servers {
        s.join().unwrap();
    }
    for r in readers {
        assert_eq!(r.join().unwrap(), RESPONSE);
    }
    // Every connection's two closes were judged: the agent saw them all.
    let (m, _) = crate::false_positives::judged_exactly(
        "blocked responses",
        &agent,
        port,
        2.0 * SERVERS as f64,
    );
    // This process's servers and clients alike (the comm is the process's, not its
    // `blockedserver` threads').
    let (comm, port) = (own_comm(), port.to_string());
    for name in [UNANSWERED, WRITES, UNDELIVERED] {
        assert_eq!(
            m.sum(name, &[("comm", comm.as_str()), ("port", port.as_str())]),
            0.0,
            "{:?}",
            m.series(name)
        );
    }
}

/// Threads of this process named `comm` asleep in the send of `TcpStream::write` (sendto(2), or
/// write(2)): the only call that can block them at that point.
fn blocked_in_send(comm: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| t.ok())
        .filter(|t| {
            let read = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
            let stat = read("stat");
            // The state follows the parenthesised name.
            let asleep = stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('S'));
            let in_write = read("syscall")
                .split_whitespace()
                .next()
                .and_then(|nr| nr.parse::<libc::c_long>().ok())
                .is_some_and(|nr| nr == libc::SYS_sendto || nr == libc::SYS_write);
            read("comm").trim() == comm && asleep && in_write
        })
        .count()
}
