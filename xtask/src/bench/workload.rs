//! The three workloads. Each runs for a fixed time and counts its units; none of them touches the
//! agent.

use std::{
    fs,
    io::{ErrorKind, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{Case, Run};
use crate::net::free_port;

/// Called when the workload's steady state starts (`true`) and ends (`false`): the agent's
/// ring-buffer records are counted between the two, so that a load generator's own abrupt exit
/// (wrk resets connections with responses in flight, which the agent rightly reports) is not
/// charged to healthy requests.
pub type Steady<'a> = &'a mut dyn FnMut(bool) -> Result<()>;

/// What a run did: all of it, and the steady window inside it.
pub struct Measured {
    pub run: Run,
    /// Units done inside the steady window (estimated from the rate where the load generator
    /// cannot say).
    pub steady_units: f64,
}

pub fn run(
    case: Case,
    duration: Duration,
    nginx: Option<&Nginx>,
    steady: Steady<'_>,
) -> Result<Measured> {
    match (case, nginx) {
        (Case::Writes, _) => small_writes(duration, steady),
        (Case::Http, Some(n)) => wrk(n, duration, steady),
        (Case::Churn, Some(n)) => churn(n, duration, steady),
        (_, None) => bail!("case {case:?} needs nginx"),
    }
}

fn whole(run: Run) -> Measured {
    Measured {
        steady_units: run.units as f64,
        run,
    }
}

const WRITE_SIZE: usize = 64;

/// 64-byte write() calls in a loop on one loopback connection, with a thread draining the other
/// end. TCP_NODELAY, so every write is its own segment. At the end the reader answers with one
/// byte before closing: a reader that took input and closed without a word would be exactly
/// the unanswered close the agent reports.
fn small_writes(duration: Duration, steady: Steady<'_>) -> Result<Measured> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = thread::spawn(move || -> std::io::Result<u64> {
        let (mut conn, _) = listener.accept()?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut bytes = 0u64;
        loop {
            match conn.read(&mut buf) {
                Ok(0) => {
                    conn.write_all(b"k")?;
                    return Ok(bytes);
                }
                Ok(n) => bytes += n as u64,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    });
    let mut conn = TcpStream::connect(addr)?;
    conn.set_nodelay(true)?;
    let payload = [b'w'; WRITE_SIZE];
    let mut writes = 0u64;
    steady(true)?;
    let started = Instant::now();
    let seconds = loop {
        for _ in 0..1024 {
            // One write(2) per iteration: a short write would still be one call, so it counts.
            conn.write(&payload).context("write on loopback")?;
        }
        writes += 1024;
        let elapsed = started.elapsed();
        if elapsed >= duration {
            break elapsed.as_secs_f64();
        }
    };
    conn.shutdown(Shutdown::Write)?;
    let mut ack = [0u8; 1];
    conn.read_exact(&mut ack)
        .context("waiting for the reader's answer")?;
    let bytes = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    steady(false)?;
    if bytes != writes * WRITE_SIZE as u64 {
        bail!(
            "the reader got {bytes} bytes of {}",
            writes * WRITE_SIZE as u64
        );
    }
    Ok(whole(Run {
        units: writes,
        seconds,
    }))
}

/// nginx serving a 1 KiB file on loopback: one worker, so wrk gets the other core.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
}

impl Nginx {
    pub fn start(dir: &Path) -> Result<Self> {
        let dir = dir.join("nginx");
        fs::create_dir_all(dir.join("html"))?;
        fs::create_dir_all(dir.join("tmp"))?;
        fs::write(dir.join("html/1k"), [b'a'; 1024])?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        // keepalive_requests: wrk's connections stay up for the whole run, so the keep-alive case
        // measures requests, not reconnects. No access log: disk writes would dominate the noise.
        let conf = format!(
            "worker_processes 1;\ndaemon off;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  \
             keepalive_requests 100000000;\n  client_body_temp_path {d}/tmp;\n  \
             proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  \
             scgi_temp_path {d}/tmp;\n  server {{\n    listen {addr} backlog=4096;\n    \
             root {d}/html;\n  }}\n}}\n",
            d = dir.display()
        );
        fs::write(dir.join("nginx.conf"), conf)?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(&dir)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (cargo xtask setup installs it)")?;
        let nginx = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not listen on {addr} within 10 s");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: nginx's master stops its worker too.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Time left out at both ends of a wrk run's steady window: connection set-up, and wrk's exit.
const WRK_MARGIN: Duration = Duration::from_millis(400);

/// `wrk -t1 -c32` for the run's duration; requests/s from its own count and clock.
fn wrk(nginx: &Nginx, duration: Duration, steady: Steady<'_>) -> Result<Measured> {
    let secs = duration.as_secs_f64().ceil().max(1.0);
    let child = Command::new("wrk")
        .args(["-t1", "-c32", "--timeout", "5s"])
        .arg(format!("-d{secs}s"))
        .arg(format!("http://{}/1k", nginx.addr))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running wrk (cargo xtask setup installs it)")?;
    thread::sleep(WRK_MARGIN);
    steady(true)?;
    let window = Instant::now();
    thread::sleep(Duration::from_secs_f64(secs).saturating_sub(WRK_MARGIN * 2));
    steady(false)?;
    let window = window.elapsed().as_secs_f64();
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed ({}): {text}", out.status);
    }
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk saw errors:\n{text}");
    }
    let run = parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))?;
    Ok(Measured {
        steady_units: run.rate() * window,
        run,
    })
}

/// `N requests in 3.00s, …`.
fn parse_wrk(text: &str) -> Option<Run> {
    let line = text.lines().find(|l| l.contains(" requests in "))?;
    let mut words = line.split_whitespace();
    let units = words.next()?.parse().ok()?;
    let seconds = words.nth(2)?.trim_end_matches(',');
    let seconds = match seconds.strip_suffix("ms") {
        Some(ms) => ms.parse::<f64>().ok()? / 1e3,
        None => seconds.strip_suffix('s')?.parse().ok()?,
    };
    Some(Run { units, seconds })
}

const CHURN_REQUEST: &[u8] = b"GET /1k HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

/// One connection of the churn: connect, send one request, read the response until nginx
/// closes, close. `buf` holds the response (4 KiB is room for nginx's 1 KiB file).
pub fn churn_once(addr: SocketAddr, buf: &mut [u8]) -> Result<()> {
    let mut conn = TcpStream::connect(addr)?;
    conn.write_all(CHURN_REQUEST)?;
    let mut got = 0;
    loop {
        match conn.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
        if got == buf.len() {
            bail!("response larger than {} bytes", buf.len());
        }
    }
    if !buf.starts_with(b"HTTP/1.1 200") {
        bail!(
            "nginx answered {:?}",
            String::from_utf8_lossy(&buf[..got.min(64)])
        );
    }
    Ok(())
}

/// Two client threads, each: connect, send one request, read the response until nginx closes,
/// close. nginx closes first, so TIME_WAIT lands on its side and the client's ephemeral ports
/// never run out.
fn churn(nginx: &Nginx, duration: Duration, steady: Steady<'_>) -> Result<Measured> {
    let stop = Arc::new(AtomicBool::new(false));
    steady(true)?;
    let started = Instant::now();
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            let addr = nginx.addr;
            thread::spawn(move || -> Result<u64> {
                let mut done = 0;
                let mut buf = vec![0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    churn_once(addr, &mut buf)?;
                    done += 1;
                }
                Ok(done)
            })
        })
        .collect();
    thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut units = 0;
    for c in clients {
        units += c
            .join()
            .map_err(|_| anyhow::anyhow!("churn client panicked"))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    steady(false)?;
    Ok(whole(Run { units, seconds }))
}

/// `send()` calls per [`failing_send_ns`] measurement (about half a second here).
pub const DISPATCH_CALLS: u64 = 3_000_000;

/// The CPU time of one `send()` that fails at once, in ns: an unconnected UDP socket has no
/// destination (EDESTADDRREQ). `sock:sock_send_length` fires for it all the same, so a program
/// attached there adds the tracepoint's dispatch into it and its own run, and nothing else: no
/// packet, no wake-up, no other task. Thread CPU time, so that whatever else runs on the CPU is
/// not counted.
pub fn failing_send_ns(calls: u64) -> Result<f64> {
    use std::os::fd::AsRawFd as _;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let fd = socket.as_raw_fd();
    let buf = [0u8; WRITE_SIZE];
    // SAFETY: send(2) from a live buffer of the length given, on a socket this function owns.
    let send = || unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), 0) };
    if send() != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EDESTADDRREQ) {
        bail!("send() on an unconnected UDP socket did not fail with EDESTADDRREQ");
    }
    for _ in 0..calls / 10 {
        send();
    }
    let t0 = thread_cpu_ns();
    for _ in 0..calls {
        send();
    }
    Ok((thread_cpu_ns() - t0) as f64 / calls as f64)
}

/// CPU time of the calling thread, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) into a timespec on the stack.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let text = "Running 3s test @ http://127.0.0.1:1/1k\n  1 threads and 32 connections\n  \
                    Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   338.07us  \
                    95.66us   4.29ms   92.38%\n  285311 requests in 3.00s, 346.00MB read\n\
                    Requests/sec:  95102.45\nTransfer/sec:    115.33MB\n";
        let run = parse_wrk(text).unwrap();
        assert_eq!(run.units, 285_311);
        assert_eq!(run.seconds, 3.0);
        assert!(parse_wrk("nothing").is_none());
    }

    #[test]
    fn a_failing_send_takes_some_cpu() {
        let ns = failing_send_ns(1000).unwrap();
        assert!(ns > 0.0 && ns < 1e6, "{ns}");
    }
}
