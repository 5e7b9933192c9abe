//! The servers the scenarios run: the Go seed server and small Rust servers.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use crate::harness::{Process, wait_listening};

pub const SEED_PORT: u16 = 8800;

/// Builds tests/servers/seedsrv once per test run; the binary name is the comm the agent reports.
/// `LOSTWRITE_SEEDSRV` names a prebuilt one instead (the kernel-matrix guests have no Go).
pub fn seedsrv_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("LOSTWRITE_SEEDSRV") {
        Some(prebuilt) if !prebuilt.is_empty() => PathBuf::from(prebuilt),
        _ => go_build("seedsrv"),
    })
}

/// Builds tests/servers/goclient (a net/http client over TLS) once per test run.
pub fn goclient_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| go_build("goclient"))
}

/// `go build` of the Go program in tests/servers/`name`, into a binary called `name`.
fn go_build(name: &str) -> PathBuf {
    go_build_with(name, &GoBuild::default())
}

/// A Go toolchain and build options for [`go_build_with`].
#[derive(Clone, Debug, Default)]
pub struct GoBuild {
    /// `GOROOT` of another Go than Debian's `go` on PATH ([`newer_goroot`]).
    pub goroot: Option<PathBuf>,
    /// `-ldflags` (`-s -w` strips the symbol table and DWARF).
    pub ldflags: Option<&'static str>,
    /// `CGO_ENABLED=0`: a static binary that runs in an empty root.
    pub static_binary: bool,
    /// The binary's name, when not the program's (it is the process's comm).
    pub name: Option<&'static str>,
    /// Build against Debian's Go libraries (`golang-*-dev` packages), which are a GOPATH in
    /// `/usr/share/gocode`, not modules.
    pub debian_gopath: bool,
}

/// The newer Go that `cargo xtask setup` unpacks from bookworm-backports (`NEWER_GO` there).
pub fn newer_goroot() -> PathBuf {
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".local/share")
        });
    let goroot = data_home.join("lostwrite/go-1.23/usr/lib/go-1.23");
    assert!(
        goroot.join("bin/go").exists(),
        "{} is missing: `cargo xtask setup` installs it",
        goroot.display()
    );
    goroot
}

/// `go build` of tests/servers/`name` with `build`'s toolchain and options.
pub fn go_build_with(name: &str, build: &GoBuild) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-bin");
    std::fs::create_dir_all(&out).unwrap();
    let bin = out.join(build.name.unwrap_or(name));
    let mut cmd = match &build.goroot {
        Some(root) => {
            let mut cmd = Command::new(root.join("bin/go"));
            cmd.env("GOROOT", root).env(
                "GOCACHE",
                out.join(format!("cache-{}", root.display()).replace('/', "_")),
            );
            cmd
        }
        None => {
            let mut cmd = Command::new("go");
            cmd.env("GOCACHE", out.join("cache"));
            cmd
        }
    };
    cmd.args(["build", "-o"]).arg(&bin);
    if let Some(flags) = build.ldflags {
        cmd.arg(format!("-ldflags={flags}"));
    }
    if build.static_binary {
        cmd.env("CGO_ENABLED", "0");
    }
    if build.debian_gopath {
        cmd.env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode");
    }
    let status = cmd
        .arg(".")
        .current_dir(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/servers")
                .join(name),
        )
        .env("GOFLAGS", "-buildvcs=false")
        .status()
        .expect("run `go build` (golang-go is installed by `cargo xtask setup`)");
    assert!(status.success(), "go build of {name} failed: {status}");
    bin
}

/// Starts the seed server on 127.0.0.1:8800 and waits until it accepts connections.
pub fn start_seedsrv() -> (Process, u32) {
    let child = Command::new(seedsrv_binary())
        .args(["-addr", &format!("127.0.0.1:{SEED_PORT}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start seedsrv");
    let pid = child.id();
    let proc = Process(child);
    wait_listening(SocketAddr::from(([127, 0, 0, 1], SEED_PORT)));
    (proc, pid)
}

/// `curl -sS <url>...`: (exit code, stdout, stderr).
pub fn curl(urls: &[String]) -> (Option<i32>, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15"])
        .args(urls)
        .output()
        .expect("run curl (installed by `cargo xtask setup`)");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub const REQUEST: &[u8] = b"GET /order/42 HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n";

/// A Rust server thread (comm `rustsrv`) that accepts one connection, reads the request, and
/// closes without answering. A client sends [`REQUEST`] and waits for a reply that never comes.
/// Returns the server's port and what the client read (nothing, then EOF).
pub fn rust_server_reads_and_closes() -> (u16, usize) {
    rust_server_reads_and_closes_on("127.0.0.1:0", "rustsrv")
}

/// The same on any address (IPv6 too), with the server thread named `comm`.
pub fn rust_server_reads_and_closes_on(bind: &str, comm: &str) -> (u16, usize) {
    let listener = TcpListener::bind(bind).unwrap();
    let addr = listener.local_addr().unwrap();
    let port = addr.port();
    let server = thread::Builder::new()
        .name(comm.into())
        .spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0, "the server got no request");
            thread::sleep(Duration::from_millis(100));
            drop(conn); // closed without a response
        })
        .unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    client.write_all(REQUEST).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reply = Vec::new();
    client
        .read_to_end(&mut reply)
        .expect("read until the server closes");
    server.join().unwrap();
    (port, reply.len())
}

/// A small HTTP/1.x server in this process (threads named `rusthttp`), for the healthy shapes
/// where nginx is not installed (the kernel-matrix guests). It serves `/1k` (1 KiB of `a`) and
/// `/big` (20 MiB of `n`) with Content-Length, keeps HTTP/1.1 connections alive for 1 s of
/// idleness like nginx's `keepalive_timeout 1s`, closes after the response for HTTP/1.0 or
/// `Connection: close`, and answers pipelined requests in order. Stopped on drop.
pub struct RustHttp {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

pub fn start_rust_http() -> RustHttp {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    thread::Builder::new()
        .name("rusthttp".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(conn) = conn {
                    thread::Builder::new()
                        .name("rusthttp".into())
                        .spawn(move || serve_http(conn))
                        .unwrap();
                }
            }
        })
        .unwrap();
    RustHttp { port, stop }
}

impl Drop for RustHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_http(mut conn: TcpStream) {
    conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end + 4);
            let close = head.contains(" http/1.0") || head.contains("\r\nconnection: close");
            let (status, body) = match head.split_whitespace().nth(1) {
                Some("/1k") => ("200 OK", vec![b'a'; 1024]),
                Some("/big") => ("200 OK", vec![b'n'; 20 * 1024 * 1024]),
                _ => ("404 Not Found", Vec::new()),
            };
            let header = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
                body.len(),
                if close { "close" } else { "keep-alive" }
            );
            if conn.write_all(header.as_bytes()).is_err() || conn.write_all(&body).is_err() {
                return;
            }
            if close {
                return;
            }
        }
        match conn.read(&mut chunk) {
            // The client closed, or the connection was idle for a second: close it.
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// nginx on a free loopback port serving `root` (html/ in a scratch dir, with a 1 KiB and a
/// 20 MiB file), with `directives` added to its server block. Stopped (workers too) on drop.
pub struct Nginx {
    _process: Process,
    pub port: u16,
    pub dir: PathBuf,
}

pub fn start_nginx(name: &str, directives: &str) -> Nginx {
    start_nginx_listening(name, "", |_| directives.to_owned())
}

/// The same over TLS, HTTP/1.1 and HTTP/2 (by ALPN), with a self-signed certificate for
/// localhost made by openssl in the scratch dir.
pub fn start_nginx_tls(name: &str, directives: &str) -> Nginx {
    start_nginx_listening(name, " ssl http2", |dir| {
        let (cert, key) = self_signed_cert(dir);
        format!(
            "ssl_certificate {};\n    ssl_certificate_key {};\n    {directives}",
            cert.display(),
            key.display()
        )
    })
}

/// A self-signed RSA certificate for CN=localhost, made by `openssl req` in `dir`: the
/// certificate and key files.
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (installed by `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// nginx listening on `127.0.0.1:PORT{listen_options}`, its server block ending with what
/// `directives` returns for the scratch dir.
fn start_nginx_listening(
    name: &str,
    listen_options: &str,
    directives: impl FnOnce(&Path) -> String,
) -> Nginx {
    let dir = crate::harness::scratch(name);
    let port = crate::harness::free_port();
    std::fs::create_dir_all(dir.join("html")).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::fs::write(dir.join("html/1k"), vec![b'a'; 1024]).unwrap();
    std::fs::write(dir.join("html/big"), vec![b'n'; 20 * 1024 * 1024]).unwrap();
    let directives = directives(&dir);
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "worker_processes 1;\ndaemon off;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\nhttp {{\n  access_log {d}/access.log;\n  \
             client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n  \
             uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n  server {{\n    listen \
             127.0.0.1:{port}{listen_options};\n    root {d}/html;\n    {directives}\n  }}\n}}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let process = Process(
        Command::new("nginx")
            .args(["-c", &dir.join("nginx.conf").display().to_string()])
            .args(["-p", &dir.display().to_string()])
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (installed by `cargo xtask setup`)"),
    );
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port)));
    Nginx {
        _process: process,
        port,
        dir,
    }
}

/// How long the abort and write-error scenarios wait for their records: they arrive within
/// microseconds, but peer resets from a loopback peer are held back 200 ms for their pair.
pub const SETTLE: Duration = Duration::from_secs(5);

/// SO_LINGER{1,0}: close() throws the send queue away with an RST.
pub fn set_linger_zero(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    set_socket_option(s.as_raw_fd(), libc::SO_LINGER, &linger);
}

/// setsockopt(2) at `SOL_SOCKET` on socket `fd`: `option` set to `value` (`SO_LINGER`'s
/// `libc::linger`, a `c_int` for buffer sizes).
pub fn set_socket_option<T>(fd: std::os::fd::RawFd, option: libc::c_int, value: &T) {
    // SAFETY: `value` is a live, correctly sized option value for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt({option}): {}",
        std::io::Error::last_os_error()
    );
}
