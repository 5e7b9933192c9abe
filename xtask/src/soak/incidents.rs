//! True incidents of every detector, caused at a steady pace by the shapes the end-to-end tests
//! provoke them with (agent/tests/e2e), played by Rust peers in this process on ports fixed for
//! the run, and by the Go seed server; bursts of many unanswered closes at once, which can fill
//! the ring buffer; and what the agent counted of them, from /metrics and from its incident log.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::load::{Shared, paced};
use crate::net::label;

/// The detectors the agent exports, as `lostwrite_detector_enabled` and the incident log name
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Detector {
    UnansweredClose,
    WriteAfterClose,
    UndeliveredBytes,
    GoWriteTimeout,
}

impl Detector {
    pub const ALL: [Self; 4] = [
        Self::UnansweredClose,
        Self::WriteAfterClose,
        Self::UndeliveredBytes,
        Self::GoWriteTimeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::UnansweredClose => "unanswered_close",
            Self::WriteAfterClose => "write_after_close",
            Self::UndeliveredBytes => "undelivered_bytes",
            Self::GoWriteTimeout => "go_write_timeout",
        }
    }

    /// The counter with one increment per incident (undelivered bytes: per connection).
    pub fn counter(self) -> &'static str {
        match self {
            Self::UnansweredClose => "lostwrite_unanswered_closes_total",
            Self::WriteAfterClose => "lostwrite_writes_after_close_total",
            Self::UndeliveredBytes => "lostwrite_aborted_connections_total",
            Self::GoWriteTimeout => "lostwrite_go_write_timeouts_total",
        }
    }

    pub fn enabled_series(self) -> String {
        format!("lostwrite_detector_enabled{{detector=\"{}\"}}", self.name())
    }

    fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == kind)
    }
}

/// Incidents by detector and `port` label.
pub type ByPort = BTreeMap<(Detector, u16), u64>;

/// What /metrics counted, by detector and port.
pub fn counted(metrics: &BTreeMap<String, f64>) -> ByPort {
    let mut out = ByPort::new();
    for d in Detector::ALL {
        let prefix = format!("{}{{", d.counter());
        for (series, value) in metrics.range(prefix.clone()..) {
            if !series.starts_with(&prefix) {
                break;
            }
            if let Ok(port) = label(series, "port").parse() {
                *out.entry((d, port)).or_default() += *value as u64;
            }
        }
    }
    out
}

/// What the incident log said: incidents by detector and port, and lines by port and pod (every
/// line once, the rest of the host's too).
#[derive(Debug, Default)]
pub struct LogCounts {
    pub by_port: ByPort,
    /// (port, the `pod` field, empty when none) → incident lines.
    pub pods: BTreeMap<(u16, String), u64>,
}

impl LogCounts {
    /// Counts one line of the agent's stdout if it is an incident. An unanswered close with a Go
    /// cause (`go_deadline=`) is also a `go_write_timeout`, as on /metrics.
    pub fn add(&mut self, line: &str) {
        let Some(incident) = parse_incident(line) else {
            return;
        };
        for d in incident.detectors {
            *self.by_port.entry((d, incident.port)).or_default() += 1;
        }
        *self
            .pods
            .entry((incident.port, incident.pod.unwrap_or_default()))
            .or_default() += 1;
    }
}

/// One incident line of the text log.
#[derive(Debug, PartialEq)]
pub struct Incident {
    pub detectors: Vec<Detector>,
    pub port: u16,
    pub pod: Option<String>,
}

/// `… INCIDENT <kind>: <sentence> [reason=… port=P … pod=… go_deadline=… …]`. The fields are
/// read from the bracket that starts with `[reason=` (a sentence never holds one).
pub fn parse_incident(line: &str) -> Option<Incident> {
    let (_, rest) = line.split_once(" INCIDENT ")?;
    let (kind, rest) = rest.split_once(": ")?;
    let detector = Detector::from_kind(kind)?;
    let (_, fields) = rest.rsplit_once(" [reason=")?;
    let field = |key: &str| {
        fields
            .split(' ')
            .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim_end_matches(']'))
    };
    let port = field("port")?.parse().ok()?;
    let mut detectors = vec![detector];
    if detector != Detector::GoWriteTimeout && field("go_deadline").is_some() {
        detectors.push(Detector::GoWriteTimeout);
    }
    Some(Incident {
        detectors,
        port,
        pod: field("pod").map(str::to_owned),
    })
}

/// The request the unanswered shapes send (the e2e tests' `REQUEST`).
const REQUEST: &[u8] = b"GET /order/42 HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n";

/// The listeners of the Rust shapes, one per shape, bound for the whole run.
pub struct Listeners {
    unanswered: TcpListener,
    epipe: TcpListener,
    linger: TcpListener,
    unread: TcpListener,
    burst: TcpListener,
}

impl Listeners {
    pub fn bind() -> Result<Self> {
        let bind = || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a listener");
        Ok(Self {
            unanswered: bind()?,
            epipe: bind()?,
            linger: bind()?,
            unread: bind()?,
            burst: bind()?,
        })
    }

    pub fn ports(&self) -> Vec<u16> {
        [
            &self.unanswered,
            &self.epipe,
            &self.linger,
            &self.unread,
            &self.burst,
        ]
        .iter()
        .filter_map(|l| l.local_addr().ok().map(|a| a.port()))
        .collect()
    }

    fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            unanswered: self.unanswered.try_clone()?,
            epipe: self.epipe.try_clone()?,
            linger: self.linger.try_clone()?,
            unread: self.unread.try_clone()?,
            burst: self.burst.try_clone()?,
        })
    }
}

/// Connections closed at once in a burst, at most (both ends are this process's for the while:
/// see [`burst_size`]).
pub const BURST: usize = 8000;

/// Open files left for everything but a burst.
const SPARE_FILES: usize = 4096;

/// Raises this process's open-file limit (and so its children's) toward what a burst of
/// [`BURST`] needs, the hard limit too where that is allowed (CAP_SYS_RESOURCE), and returns the
/// burst the limit then holds.
pub fn burst_size() -> Result<usize> {
    let want = (2 * BURST + SPARE_FILES) as libc::rlim_t;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a live rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        if limit.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: limit.rlim_max.max(want),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            } else if limit.rlim_cur < limit.rlim_max {
                // Not allowed past the hard limit: up to it, then.
                limit.rlim_cur = limit.rlim_max;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    bail!("setrlimit: {}", std::io::Error::last_os_error());
                }
            }
        }
    }
    let files = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    let n = (files.saturating_sub(SPARE_FILES) / 2).min(BURST);
    if n < 1000 {
        bail!("an open-file limit of {files} leaves no room for a burst of 1000 connections");
    }
    Ok(n)
}

/// Every shape on its own thread: an unanswered close every 2 s, the seed (Go write timeout)
/// every 3 s, a write after close every 3 s, a linger-zero reset every 5 s, a close with unread
/// input every 2 s, and a burst of `burst` unanswered closes every 60 s from 20 s in.
pub fn start(
    shared: &Arc<Shared>,
    listeners: &Listeners,
    seed: SocketAddr,
    go_on: bool,
    burst_size: usize,
) -> Result<Vec<JoinHandle<()>>> {
    let l = listeners.try_clone()?;
    let port = |l: &TcpListener| l.local_addr().map(|a| a.port());
    let s = |secs: u64| Duration::from_secs(secs);
    let mut threads = Vec::new();

    let (sh, p) = (shared.clone(), port(&l.unanswered)?);
    threads.push(paced(
        shared,
        "unanswered closes (Rust server)",
        s(0),
        s(2),
        move || {
            read_and_close(&l.unanswered)?;
            sh.cause(Detector::UnansweredClose, p, 1);
            Ok(1)
        },
    )?);
    let sh = shared.clone();
    threads.push(paced(
        shared,
        "seed requests (Go WriteTimeout)",
        s(0),
        s(3),
        move || {
            seed_request(seed)?;
            sh.cause(Detector::UnansweredClose, seed.port(), 1);
            if go_on {
                sh.cause(Detector::GoWriteTimeout, seed.port(), 1);
            }
            Ok(1)
        },
    )?);
    let l = listeners.try_clone()?;
    let (sh, p) = (shared.clone(), port(&l.epipe)?);
    threads.push(paced(
        shared,
        "writes after close (EPIPE)",
        s(0),
        s(3),
        move || {
            write_after_close(&l.epipe)?;
            sh.cause(Detector::WriteAfterClose, p, 1);
            // The first write's bytes, reset by the server: peer_reset.
            sh.cause(Detector::UndeliveredBytes, p, 1);
            Ok(1)
        },
    )?);
    let l = listeners.try_clone()?;
    let (sh, p) = (shared.clone(), port(&l.linger)?);
    threads.push(paced(
        shared,
        "linger-zero resets",
        s(0),
        s(5),
        move || {
            linger_zero(&l.linger)?;
            sh.cause(Detector::UndeliveredBytes, p, 1);
            Ok(1)
        },
    )?);
    let l = listeners.try_clone()?;
    let (sh, p) = (shared.clone(), port(&l.unread)?);
    threads.push(paced(
        shared,
        "closes with unread input",
        s(0),
        s(2),
        move || {
            close_with_unread_input(&l.unread)?;
            sh.cause(Detector::UndeliveredBytes, p, 1);
            Ok(1)
        },
    )?);
    let l = listeners.try_clone()?;
    let (sh, p) = (shared.clone(), port(&l.burst)?);
    threads.push(paced(
        shared,
        "bursts of unanswered closes",
        s(20),
        s(60),
        move || {
            sh.set_bursting(true);
            let n = burst(&l.burst, burst_size);
            sh.set_bursting(false);
            let n = n?;
            sh.cause(Detector::UnansweredClose, p, n);
            Ok(n)
        },
    )?);
    Ok(threads)
}

/// The client's side of an unanswered request: it waits for the reply and reads EOF, nothing
/// else.
fn expect_empty_reply(client: &mut TcpStream) -> Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reply = Vec::new();
    client
        .read_to_end(&mut reply)
        .context("waiting for the server's close")?;
    if !reply.is_empty() {
        bail!("the server answered {} bytes", reply.len());
    }
    Ok(())
}

/// The e2e tests' `rust_server_reads_and_closes`: the server reads the request and closes
/// 100 ms later without a word.
fn read_and_close(listener: &TcpListener) -> Result<()> {
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    client.write_all(REQUEST)?;
    let (mut server, _) = listener.accept()?;
    let mut buf = [0u8; 1024];
    if server.read(&mut buf)? == 0 {
        bail!("the server read nothing");
    }
    thread::sleep(Duration::from_millis(100));
    drop(server);
    expect_empty_reply(&mut client)
}

/// The e2e tests' `client_writing_after_the_server_closed_gets_epipe`: the server closes at
/// once; the client's first write is accepted and reset by the server (peer_reset), its second
/// fails with EPIPE.
fn write_after_close(listener: &TcpListener) -> Result<()> {
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    drop(listener.accept()?);
    thread::sleep(Duration::from_millis(200));
    client
        .write_all(&[b'x'; 1000])
        .context("the first send after the server's close")?;
    thread::sleep(Duration::from_millis(200));
    match client.write(&[b'y'; 500]) {
        Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => Ok(()),
        Err(e) => bail!("the write after close failed with {e}, not EPIPE"),
        Ok(n) => bail!("the write after close wrote {n} bytes"),
    }
}

/// The e2e tests' `linger_zero_close_with_megabytes_queued`: the server fills a peer that never
/// reads, then closes with SO_LINGER{1,0}.
fn linger_zero(listener: &TcpListener) -> Result<()> {
    let peer = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    server.set_nonblocking(true)?;
    let chunk = vec![b'z'; 64 * 1024];
    while server.write(&chunk).is_ok() {}
    thread::sleep(Duration::from_millis(200));
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt(SO_LINGER) with a live, correctly sized value.
    let rc = unsafe {
        libc::setsockopt(
            server.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("setsockopt(SO_LINGER): {}", std::io::Error::last_os_error());
    }
    drop(server);
    thread::sleep(Duration::from_millis(50));
    drop(peer);
    Ok(())
}

/// The e2e tests' `partial_read.py`: the server reads 3 bytes of a 19-byte request, answers and
/// closes with the rest unread, which resets the connection.
fn close_with_unread_input(listener: &TcpListener) -> Result<()> {
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    client.write_all(b"GET / HTTP/1.0\r\n\r\n!")?;
    let (mut server, _) = listener.accept()?;
    let mut first = [0u8; 3];
    server.read_exact(&mut first)?;
    server.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")?;
    drop(server);
    client.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reply = Vec::new();
    // The answer, then EOF or ECONNRESET.
    let _ = client.read_to_end(&mut reply);
    Ok(())
}

/// `n` clients each send the request; the server reads every one; then the server ends are
/// handed to a child process (`sleep`), which is killed: its exit closes them all inside the
/// kernel, back to back, faster than the agent drains their records (a loop of close() calls
/// is not). `n` unanswered closes within milliseconds, counted under the child's name, as a
/// worker's crash with that many requests read would be. Returns how many clients read the
/// close and nothing else.
fn burst(listener: &TcpListener, n: usize) -> Result<u64> {
    let addr = listener.local_addr()?;
    // The acceptor gives up at a deadline rather than wait for clients that failed to connect.
    listener.set_nonblocking(true)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (clients, servers) = thread::scope(|scope| {
        let acceptor = scope.spawn(|| -> Result<Vec<TcpStream>> {
            let mut servers = Vec::with_capacity(n);
            let mut buf = [0u8; 1024];
            while servers.len() < n {
                let mut s = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        if std::time::Instant::now() > deadline {
                            bail!("only {} of {n} burst connections came", servers.len());
                        }
                        thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                // The whole request (one segment): nothing unread at the close, which would
                // make it a reset.
                if s.read(&mut buf)? == 0 {
                    bail!("a burst connection sent nothing");
                }
                servers.push(s);
            }
            Ok(servers)
        });
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            let mut c = TcpStream::connect(addr)?;
            c.write_all(REQUEST)?;
            clients.push(c);
        }
        let servers = acceptor
            .join()
            .map_err(|_| anyhow::anyhow!("the burst's acceptor panicked"))??;
        anyhow::Ok((clients, servers))
    })?;
    let fds: Vec<i32> = servers.iter().map(|s| s.as_raw_fd()).collect();
    let mut holder = Command::new("sleep");
    holder
        .arg("60")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec this only calls fcntl(2), async-signal-safe, on fds of
    // this process, reading a vector allocated before the fork.
    unsafe {
        holder.pre_exec(move || {
            for &fd in &fds {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut holder = holder.spawn().context("starting sleep to hold the burst")?;
    // The child holds them now: these closes only drop references.
    drop(servers);
    thread::sleep(Duration::from_millis(100));
    crate::cmd::kill_if_running(&mut holder);
    let mut empty = 0;
    for mut c in clients {
        if expect_empty_reply(&mut c).is_ok() {
            empty += 1;
        }
    }
    Ok(empty)
}

/// The seed incident: a request to the Go seed server, whose WriteTimeout expires while its
/// handler sleeps; the client gets an empty reply.
pub fn seed_request(addr: SocketAddr) -> Result<()> {
    let mut client = TcpStream::connect(addr)?;
    client.write_all(b"GET / HTTP/1.1\r\nHost: soak\r\n\r\n")?;
    expect_empty_reply(&mut client)
}

/// The Go seed server with a WriteTimeout of 300 ms and a handler of 600 ms (the seed's 1 s and
/// 2 s, shorter), optionally moved into a cgroup before it runs. Killed on drop.
pub struct Seedsrv {
    child: Child,
}

impl Seedsrv {
    /// Starts it on `port`, in the cgroup whose `cgroup.procs` is `cgroup_procs` if given, and
    /// waits until it accepts connections.
    pub fn start(binary: &Path, port: u16, cgroup_procs: Option<&Path>) -> Result<Self> {
        let mut cmd = Command::new(binary);
        cmd.args(["-addr", &format!("127.0.0.1:{port}")])
            .args(["-write-timeout", "300ms", "-sleep", "600ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(procs) = cgroup_procs {
            let procs = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes())?;
            // SAFETY: between fork and exec this only makes async-signal-safe calls (open,
            // write, close) on memory prepared before the fork. Writing "0" moves the writer.
            unsafe {
                cmd.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let n = libc::write(fd, c"0".as_ptr().cast(), 1);
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    if n == 1 { Ok(()) } else { Err(err) }
                });
            }
        }
        let child = cmd.spawn().context("starting seedsrv")?;
        let mut server = Self { child };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        crate::cmd::wait_for("seedsrv to listen", Duration::from_secs(10), || {
            if let Some(status) = server.child.try_wait()? {
                bail!("seedsrv exited ({status})");
            }
            Ok(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
        })?;
        Ok(server)
    }
}

impl Drop for Seedsrv {
    fn drop(&mut self) {
        crate::cmd::kill_if_running(&mut self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::parse_metrics;

    #[test]
    fn metrics_are_counted_by_detector_and_port() {
        let m = parse_metrics(
            "# HELP x\n\
             lostwrite_unanswered_closes_total{comm=\"seedsrv\",ended_by=\"local\",port=\"8800\",protocol=\"unknown\",role=\"server\"} 3\n\
             lostwrite_unanswered_closes_total{comm=\"xtask\",ended_by=\"local\",port=\"8800\",protocol=\"http\",role=\"server\"} 2\n\
             lostwrite_unanswered_close_delay_seconds_count{comm=\"seedsrv\",port=\"8800\"} 5\n\
             lostwrite_aborted_connections_total{comm=\"xtask\",ended_by=\"peer\",port=\"41000\",reason=\"peer_reset\",role=\"client\"} 1\n\
             lostwrite_undelivered_bytes_total{comm=\"xtask\",ended_by=\"peer\",port=\"41000\",reason=\"peer_reset\",role=\"client\"} 1000\n\
             lostwrite_go_write_timeouts_total{comm=\"seedsrv\",ended_by=\"local\",port=\"8800\",protocol=\"http1\"} 3\n\
             lostwrite_writes_after_close_total{comm=\"xtask\",ended_by=\"peer\",errno=\"EPIPE\",port=\"41000\",role=\"client\"} 1\n",
        );
        let c = counted(&m);
        assert_eq!(c.get(&(Detector::UnansweredClose, 8800)), Some(&5));
        assert_eq!(c.get(&(Detector::UndeliveredBytes, 41000)), Some(&1));
        assert_eq!(c.get(&(Detector::GoWriteTimeout, 8800)), Some(&3));
        assert_eq!(c.get(&(Detector::WriteAfterClose, 41000)), Some(&1));
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn incident_lines_are_parsed() {
        let seed = "2026-12-02T02:18:35.345Z INCIDENT unanswered_close: pid 19324 (seedsrv) read \
                    79 bytes on 127.0.0.1:34065 from 127.0.0.1:36670 and closed the connection \
                    2.0 s later without writing a response: Go dropped the response [reason=fin \
                    role=server port=34065 pid=19324 comm=seedsrv tid=19328 thread=seedsrv \
                    local=127.0.0.1:34065 remote=127.0.0.1:36670 bytes_read=79 bytes_written=0 \
                    protocol=unknown unanswered=79 delay=2.004s go_deadline=write@1.004s \
                    cgroup_id=1 namespace=soak pod=soak-2 container=app peer_closed=false \
                    ended_by=local]";
        assert_eq!(
            parse_incident(seed),
            Some(Incident {
                detectors: vec![Detector::UnansweredClose, Detector::GoWriteTimeout],
                port: 34065,
                pod: Some("soak-2".into()),
            })
        );
        let epipe = "2026-12-02T02:18:36.000Z INCIDENT write_after_close: pid 6053 (xtask) wrote \
                     on 127.0.0.1:43272 to 127.0.0.1:9701 after the connection was torn down \
                     [reason=EPIPE role=client port=9701 pid=6053 comm=xtask tid=6060 \
                     thread=\"soak writes\" cgroup_id=1 peer_closed=true ended_by=peer]";
        assert_eq!(
            parse_incident(epipe),
            Some(Incident {
                detectors: vec![Detector::WriteAfterClose],
                port: 9701,
                pod: None,
            })
        );
        assert_eq!(parse_incident("2026 INFO lostwrite: attached"), None);
        assert_eq!(
            parse_incident("x EXPLAIN unanswered_close: … [reason=fin port=1]"),
            None
        );

        let mut log = LogCounts::default();
        log.add(seed);
        log.add(epipe);
        log.add("not an incident");
        assert_eq!(log.pods.values().sum::<u64>(), 2);
        assert_eq!(
            log.by_port.get(&(Detector::GoWriteTimeout, 34065)),
            Some(&1)
        );
        assert_eq!(log.pods.get(&(34065, "soak-2".into())), Some(&1));
        assert_eq!(log.pods.get(&(9701, String::new())), Some(&1));
    }
}
