//! The healthy part of the load, each on a thread of its own at a steady, moderate rate (the
//! machine has two cores and must stay usable): keep-alive requests and connection churn against
//! the bench's nginx, scrapes of the agent's /metrics, and an exec storm. Also what every load
//! thread shares: the stop flag, what each part did, and the incidents caused.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::incidents::{ByPort, Detector};
use crate::{
    bench::workload::churn_once,
    net::{free_port, http_get},
};

/// What one part of the load did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Activity {
    /// How often it runs, as the report says it ("every 20 ms").
    pub pace: String,
    pub done: u64,
    pub failed: u64,
    /// The first failure, and the last.
    pub first_error: Option<String>,
    pub last_error: Option<String>,
    /// The longest step, in seconds.
    pub slowest: f64,
}

/// What the load threads share.
#[derive(Default)]
pub struct Shared {
    stop: AtomicBool,
    activities: Mutex<BTreeMap<&'static str, Activity>>,
    caused: Mutex<ByPort>,
    caused_total: AtomicU64,
    /// A burst's connections are open: the tracked sockets are not the steady load's then.
    bursting: AtomicBool,
}

impl Shared {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps `d`, or less when the run stops; false then.
    pub fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while !self.stopping() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            thread::sleep(left.min(Duration::from_millis(100)));
        }
        false
    }

    /// Records `n` incidents of `detector` caused on `port` (counted by the agent with that port
    /// label).
    pub fn cause(&self, detector: Detector, port: u16, n: u64) {
        *self
            .caused
            .lock()
            .expect("not poisoned")
            .entry((detector, port))
            .or_default() += n;
        self.caused_total.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_bursting(&self, on: bool) {
        self.bursting.store(on, Ordering::Relaxed);
    }

    pub fn bursting(&self) -> bool {
        self.bursting.load(Ordering::Relaxed)
    }

    pub fn caused(&self) -> ByPort {
        self.caused.lock().expect("not poisoned").clone()
    }

    pub fn caused_total(&self) -> u64 {
        self.caused_total.load(Ordering::Relaxed)
    }

    pub fn activities(&self) -> BTreeMap<&'static str, Activity> {
        self.activities.lock().expect("not poisoned").clone()
    }

    fn record(&self, name: &'static str, pace: &str, took: Duration, outcome: Result<u64>) {
        let mut all = self.activities.lock().expect("not poisoned");
        let a = all.entry(name).or_default();
        if a.pace.is_empty() {
            a.pace = pace.to_owned();
        }
        a.slowest = a.slowest.max(took.as_secs_f64());
        match outcome {
            Ok(n) => a.done += n,
            Err(e) => {
                a.failed += 1;
                let e = format!("{e:#}");
                a.first_error.get_or_insert_with(|| e.clone());
                a.last_error = Some(e);
            }
        }
    }
}

/// Runs `step` on a thread of its own, first after `first`, then every `period` (at once when a
/// step took longer), until the run stops. A step returns how many units it did (requests,
/// processes, incidents); its failures are counted, and the next step runs all the same.
pub fn paced(
    shared: &Arc<Shared>,
    name: &'static str,
    first: Duration,
    period: Duration,
    mut step: impl FnMut() -> Result<u64> + Send + 'static,
) -> Result<JoinHandle<()>> {
    let shared = shared.clone();
    let pace = pace(period);
    thread::Builder::new()
        .name(format!("soak {name}"))
        .spawn(move || {
            if !shared.sleep(first) {
                return;
            }
            loop {
                let t0 = Instant::now();
                let outcome = step();
                shared.record(name, &pace, t0.elapsed(), outcome);
                if !shared.sleep(period.saturating_sub(t0.elapsed())) {
                    return;
                }
            }
        })
        .with_context(|| format!("starting the {name} thread"))
}

/// "every 20 ms", "every 3 s".
fn pace(period: Duration) -> String {
    if period < Duration::from_secs(1) {
        format!("every {} ms", period.as_millis())
    } else {
        format!("every {} s", period.as_secs_f64())
    }
}

/// Keep-alive connections to nginx, each one request per tick.
const KEEP_ALIVE_CONNECTIONS: usize = 4;
/// A keep-alive connection is closed by its client after this many requests, and opened again.
const REQUESTS_PER_CONNECTION: u64 = 500;
const KEEP_ALIVE_REQUEST: &[u8] = b"GET /1k HTTP/1.1\r\nHost: soak\r\n\r\n";

/// Keep-alive requests (4 connections, 200 requests/s in all), connection churn (50/s) and
/// scrapes of /metrics (10/s).
pub fn healthy(
    shared: &Arc<Shared>,
    nginx: SocketAddr,
    agent: SocketAddr,
) -> Result<Vec<JoinHandle<()>>> {
    let mut conns: Vec<Option<(TcpStream, u64)>> =
        (0..KEEP_ALIVE_CONNECTIONS).map(|_| None).collect();
    let mut buf = vec![0u8; 4096];
    let keep_alive = paced(
        shared,
        "keep-alive requests (nginx)",
        Duration::ZERO,
        Duration::from_millis(20),
        move || {
            let mut done = 0;
            for slot in &mut conns {
                let (conn, served) = match slot {
                    Some(c) => c,
                    None => slot.insert((TcpStream::connect(nginx)?, 0)),
                };
                let answered = conn
                    .write_all(KEEP_ALIVE_REQUEST)
                    .map_err(anyhow::Error::from)
                    .and_then(|()| read_response(conn, &mut buf));
                if let Err(e) = answered {
                    *slot = None;
                    return Err(e);
                }
                *served += 1;
                done += 1;
                if *served >= REQUESTS_PER_CONNECTION {
                    // The client closes first, after the whole response: nothing is owed.
                    *slot = None;
                }
            }
            Ok(done)
        },
    )?;
    let mut buf = vec![0u8; 4096];
    let churn = paced(
        shared,
        "churned connections (nginx)",
        Duration::ZERO,
        Duration::from_millis(20),
        move || churn_once(nginx, &mut buf).map(|()| 1),
    )?;
    let scrapes = paced(
        shared,
        "scrapes of /metrics",
        Duration::ZERO,
        Duration::from_millis(100),
        move || match http_get(agent, "/metrics")? {
            (200, _) => Ok(1),
            (status, _) => bail!("/metrics answered {status}"),
        },
    )?;
    Ok(vec![keep_alive, churn, scrapes])
}

/// Reads one HTTP/1.1 response with a Content-Length from a keep-alive connection into `buf`;
/// an error unless its status is 200.
pub fn read_response(conn: &mut TcpStream, buf: &mut [u8]) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut got = 0;
    let (head_len, body_len) = loop {
        if got == buf.len() {
            bail!("response headers larger than {} bytes", buf.len());
        }
        match conn.read(&mut buf[got..])? {
            0 => bail!("the server closed the connection before a whole response"),
            n => got += n,
        }
        if let Some(end) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                bail!("answered {:?}", head.lines().next().unwrap_or_default());
            }
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .context("a response without Content-Length")?;
            break (end + 4, length);
        }
    };
    let mut left = (head_len + body_len).saturating_sub(got);
    while left > 0 {
        let room = left.min(buf.len());
        let n = conn.read(&mut buf[..room])?;
        if n == 0 {
            bail!("the server closed the connection in the middle of a body");
        }
        left -= n;
    }
    Ok(())
}

/// The short-lived commands of the exec storm, in turn: one every 100 ms.
const COMMANDS: &[&[&str]] = &[
    &["true"],
    &["sh", "-c", ":"],
    &["sh", "-c", "echo soak >/dev/null"],
    &["env", "true"],
];

/// Short-lived processes, started and gone continuously: a command every 100 ms, and every 2 s
/// the Go seed server on a free port, asked for /fast once and killed.
pub fn exec_storm(shared: &Arc<Shared>, seedsrv: &Path) -> Result<JoinHandle<()>> {
    let seedsrv: PathBuf = seedsrv.to_owned();
    let mut turn = 0usize;
    let commands = paced(
        shared,
        "short-lived processes",
        Duration::ZERO,
        Duration::from_millis(100),
        move || {
            turn += 1;
            if turn.is_multiple_of(20) {
                return go_process(&seedsrv).map(|()| 1);
            }
            let argv = COMMANDS[turn % COMMANDS.len()];
            let status = Command::new(argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .with_context(|| format!("running {argv:?}"))?;
            if !status.success() {
                bail!("{argv:?} failed ({status})");
            }
            Ok(1)
        },
    )?;
    Ok(commands)
}

/// The seed server started on a free port, one healthy request, then SIGKILL.
fn go_process(seedsrv: &Path) -> Result<()> {
    let port = free_port()?;
    let mut child = Command::new(seedsrv)
        .args(["-addr", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting seedsrv")?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let answered = crate::cmd::wait_for("seedsrv to listen", Duration::from_secs(5), || {
        if let Some(status) = child.try_wait()? {
            bail!("seedsrv exited ({status})");
        }
        Ok(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
    })
    .and_then(|()| match http_get(addr, "/fast")? {
        (200, _) => Ok(()),
        (status, _) => bail!("seedsrv answered /fast with {status}"),
    });
    crate::cmd::kill_if_running(&mut child);
    answered
}
