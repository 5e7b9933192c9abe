//! Sessions of protocols the agent has no table entry for, ended by the client's goodbye and
//! the server's close (memcached's `quit`, OpenSSH's last packets, an LDAP unbind, an MQTT
//! DISCONNECT, git's flush packet, NATS): nothing counted, by the rule for protocols no table
//! knows. None of these goodbyes is in agent-common's protocol table. And the request a server
//! drops in a crash a millisecond after reading it still counts.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    db_servers::{PYTHON, ServerDir, read_log, run, server_dir, wait_ready},
    false_positives::{assert_no_loss_on, explaining_agent, judged_exactly},
    harness::{Agent, Process, free_port, root_or_skip},
    servers::{GoBuild, go_build_with},
};

/// A server process on a free loopback port, with its directory; both go on drop.
pub struct Server {
    pub port: u16,
    pub dir: PathBuf,
    _process: Process,
    _dir: ServerDir,
}

/// Starts `cmd` (given the port and its directory), logging to `log` in the directory, and waits
/// until the port accepts connections.
pub fn start_server(name: &str, what: &str, cmd: impl FnOnce(u16, &Path) -> Command) -> Server {
    let port = free_port();
    let dir = server_dir(name, "root");
    let log = dir.0.join("log");
    let out = std::fs::File::create(&log).expect("create the server's log");
    let mut process = Process(
        cmd(port, &dir.0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what} (installed by `cargo xtask setup`): {e}")),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_ready(what, port, &mut process, &log, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    });
    Server {
        port,
        dir: dir.0.clone(),
        _process: process,
        _dir: dir,
    }
}

impl Server {
    pub fn log(&self) -> String {
        read_log(&self.dir.join("log"))
    }
}

/// memcached on a free port. (The connection `start_server` made to see the port open is
/// closed before the test's agent starts, so it is not among the closes the test counts.)
fn memcached() -> Server {
    start_server("memcached", "memcached", |port, _| {
        let mut cmd = Command::new("memcached");
        cmd.args(["-l", "127.0.0.1", "-U", "0", "-u", "nobody", "-p"])
            .arg(port.to_string());
        cmd
    })
}

/// pymemcache (Debian's python3-pymemcache): `n` sessions of `set`, `get` and `quit`.
const PYMEMCACHE_SESSIONS: &str = r#"
import sys
from pymemcache.client.base import Client
port, n = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    c = Client(("127.0.0.1", port), connect_timeout=5, timeout=5)
    c.set("k%d" % i, b"value")
    assert c.get("k%d" % i) == b"value"
    c.quit()
print("sessions", n)
"#;

#[test]
fn memcached_quit_counts_nothing() {
    if !root_or_skip("memcached_quit_counts_nothing") {
        return;
    }
    let mc = memcached();
    let verdicts = assert_no_loss_on("memcached quit", mc.port, 40.0, || {
        run(
            "pymemcache",
            Command::new(PYTHON).args(["-c", PYMEMCACHE_SESSIONS, &mc.port.to_string(), "10"]),
        );
        // The same sessions by a client that waits for memcached's close after its `quit`:
        // the server closes first every time, on the goodbye alone.
        for i in 0..10 {
            let mut s = TcpStream::connect(("127.0.0.1", mc.port)).unwrap();
            let mut buf = [0u8; 256];
            for command in [
                format!("set k{i} 0 0 5\r\nhello\r\n"),
                format!("get k{i}\r\n"),
            ] {
                s.write_all(command.as_bytes()).unwrap();
                assert!(s.read(&mut buf).unwrap() > 0);
            }
            s.write_all(b"quit\r\n").unwrap();
            assert_eq!(s.read(&mut buf).unwrap(), 0, "memcached closes on quit");
        }
    });
    assert!(
        verdicts.get("session_end").copied().unwrap_or(0.0) >= 10.0,
        "the waiting client's sessions end by the rule: {verdicts:?}"
    );
}

/// sshd on a free port, as root with a key of its own for root, in a scratch directory.
fn sshd() -> (Server, PathBuf) {
    std::fs::create_dir_all("/run/sshd").expect("create /run/sshd (sshd's privilege separation)");
    let keys = server_dir("sshd-keys", "root");
    for key in ["host", "user"] {
        run(
            "ssh-keygen",
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(keys.0.join(key)),
        );
    }
    std::fs::copy(keys.0.join("user.pub"), keys.0.join("authorized_keys")).unwrap();
    let key_dir = keys.0.clone();
    let server = start_server("sshd", "sshd", move |port, dir| {
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {k}/host\nPidFile {d}/pid\n\
                 AuthorizedKeysFile {k}/authorized_keys\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\n",
                k = key_dir.display(),
                d = dir.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new("/usr/sbin/sshd");
        cmd.args(["-D", "-e", "-f"]).arg(config);
        cmd
    });
    // The keys' directory lives as long as the test's binary: sshd reads them at each login.
    std::mem::forget(keys);
    let key = PathBuf::from("/tmp/lostwrite-e2e/sshd-keys/user");
    (server, key)
}

#[test]
fn openssh_sessions_and_keyscans_count_nothing() {
    if !root_or_skip("openssh_sessions_and_keyscans_count_nothing") {
        return;
    }
    let (sshd, key) = sshd();
    let port = sshd.port.to_string();
    assert_no_loss_on("openssh", sshd.port, 14.0, || {
        for _ in 0..5 {
            run(
                "ssh",
                Command::new("ssh")
                    .args(["-q", "-F", "/dev/null", "-o", "BatchMode=yes"])
                    .args(["-o", "StrictHostKeyChecking=no"])
                    .args(["-o", "UserKnownHostsFile=/dev/null", "-i"])
                    .arg(&key)
                    .args(["-p", &port, "root@127.0.0.1", "true"]),
            );
        }
        for _ in 0..2 {
            let out = run(
                "ssh-keyscan",
                Command::new("ssh-keyscan").args(["-t", "ed25519", "-p", &port, "127.0.0.1"]),
            );
            assert!(out.contains("ssh-ed25519"), "{out}\n{}", sshd.log());
        }
    });
}

/// A NATS client on Debian's nats.go (golang-github-nats-io-go-nats-dev): one subscriber and
/// PUBLISHERS publishers, each on its own connection.
fn natsclient() -> PathBuf {
    go_build_with(
        "natsclient",
        &GoBuild {
            debian_gopath: true,
            ..GoBuild::default()
        },
    )
}

#[test]
fn nats_publishers_and_a_subscriber_count_nothing() {
    if !root_or_skip("nats_publishers_and_a_subscriber_count_nothing") {
        return;
    }
    let client = natsclient();
    let nats = start_server("nats", "nats-server", |port, _| {
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p"]).arg(port.to_string());
        cmd
    });
    let agent = explaining_agent("nats", nats.port, &[]);
    let out = run(
        "natsclient",
        Command::new(&client)
            .arg(format!("nats://127.0.0.1:{}", nats.port))
            .arg("11"),
    );
    assert!(out.contains("published 110"), "{out}");
    // Twelve connections, each closed at both ends.
    let (m, _) = judged_exactly("nats", &agent, nats.port, 24.0);
    for loss in crate::false_positives::LOSSES {
        assert_eq!(m.total(loss), 0.0, "{loss}: {:?}", agent.incidents());
    }
    assert!(agent.incidents().is_empty(), "{:?}", agent.incidents());
    // The clients' `CONNECT {...}` answers the server's `INFO {...}`: no HTTP request.
    let explained = agent.explained();
    assert!(
        explained.iter().all(|e| e["protocol"] == "unknown"),
        "{explained:?}"
    );
}

#[test]
fn mqtt_ldap_and_git_sessions_count_nothing() {
    if !root_or_skip("mqtt_ldap_and_git_sessions_count_nothing") {
        return;
    }
    // mosquitto: each mosquitto_pub connects, publishes, sends DISCONNECT (2 bytes) and
    // closes; the broker closes on the DISCONNECT.
    let mosquitto = start_server("mosquitto", "mosquitto", |port, dir| {
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let mut cmd = Command::new("mosquitto");
        cmd.arg("-c").arg(config);
        cmd
    });
    assert_no_loss_on("mqtt", mosquitto.port, 10.0, || {
        for i in 0..5 {
            run(
                "mosquitto_pub",
                Command::new("mosquitto_pub")
                    .args(["-h", "127.0.0.1", "-p", &mosquitto.port.to_string()])
                    .args(["-t", "lostwrite/test", "-m", &format!("message {i}")]),
            );
        }
    });
    // slapd: ldapsearch binds, reads the root DSE and unbinds (7 bytes); slapd closes on it.
    let slapd = start_server("slapd", "slapd", |port, dir| {
        let config = dir.join("slapd.conf");
        std::fs::write(&config, format!("pidfile {}/pid\n", dir.display())).unwrap();
        let mut cmd = Command::new("slapd");
        cmd.args(["-d", "0", "-u", "root", "-g", "root", "-h"])
            .arg(format!("ldap://127.0.0.1:{port}/"))
            .arg("-f")
            .arg(config);
        cmd
    });
    assert_no_loss_on("ldap", slapd.port, 10.0, || {
        for _ in 0..5 {
            let out = run(
                "ldapsearch",
                Command::new("ldapsearch")
                    .args(["-x", "-H", &format!("ldap://127.0.0.1:{}", slapd.port)])
                    .args(["-b", "", "-s", "base"]),
            );
            assert!(out.contains("result: 0 Success"), "{out}");
        }
    });
    // git daemon: `git ls-remote` asks for the refs, reads them and sends a flush packet
    // ("0000"); the daemon's upload-pack exits on it.
    let git = start_server("git-daemon", "git daemon", |port, dir| {
        run(
            "git init",
            Command::new("git")
                .args(["init", "-q", "--bare"])
                .arg(dir.join("repo.git")),
        );
        let mut cmd = Command::new("git");
        cmd.args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", dir.display()))
        .arg(dir);
        cmd
    });
    let url = format!("git://127.0.0.1:{}/repo.git", git.port);
    assert_no_loss_on("git", git.port, 10.0, || {
        for _ in 0..5 {
            run(
                "git ls-remote",
                Command::new("git").args(["ls-remote", &url]),
            );
        }
    });
}

/// A forking server, one child per connection: the child reads a request (its first `first`
/// bytes only, when not 0) and dies at once by SIGKILL (no core), `answered` requests first
/// answered with an HTTP response.
const CRASHING_SERVER: &str = r#"
import os, signal, socket, sys
port, answered, first = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(16)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
while True:
    conn, _ = srv.accept()
    if os.fork() == 0:
        for _ in range(answered):
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        conn.recv(first or 4096)
        os.kill(os.getpid(), signal.SIGKILL)
    conn.close()
"#;

#[test]
fn a_request_crashed_on_within_a_millisecond_counts_one() {
    if !root_or_skip("a_request_crashed_on_within_a_millisecond_counts_one") {
        return;
    }
    // The first request; the second of a keep-alive connection; a request read in part, whose
    // close with the rest unread resets the connection (one incident, not a second one for
    // the input the reset dropped).
    for (answered, protocol, first, reason) in [
        (0, "unknown", 0, "fin"),
        (1, "http", 0, "fin"),
        (0, "unknown", 10, "rst"),
    ] {
        let server = start_server("crasher", "python3", |port, _| {
            let mut cmd = Command::new(PYTHON);
            cmd.args([
                "-c",
                CRASHING_SERVER,
                &port.to_string(),
                &answered.to_string(),
                &first.to_string(),
            ]);
            cmd
        });
        let agent = Agent::start(&[]);
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut buf = [0u8; 256];
        for _ in 0..answered {
            s.write_all(request).unwrap();
            assert!(s.read(&mut buf).unwrap() > 0);
        }
        s.write_all(request).unwrap();
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)), "the child died");
        let port = server.port.to_string();
        let labels = [
            ("comm", "python3"),
            ("port", port.as_str()),
            ("role", "server"),
            ("protocol", protocol),
            ("ended_by", "local"),
        ];
        let name = "lostwrite_unanswered_closes_total";
        let m = agent.settled(
            "the crash's unanswered close",
            Duration::from_secs(3),
            name,
            &labels,
        );
        assert_eq!(m.value(name, &labels), Some(1.0), "{:?}", m.series(name));
        assert_eq!(m.total(name), 1.0, "{:?}", m.series(name));
        let incidents = agent.incidents();
        assert_eq!(
            incidents.len(),
            1,
            "one incident, no second one for the abort: {incidents:?}"
        );
        assert!(
            incidents[0]["delay_seconds"].as_f64().unwrap() < 0.05,
            "{incidents:?}"
        );
        assert_eq!(incidents[0]["reason"], reason, "{incidents:?}");
        for other in [
            "lostwrite_undelivered_bytes_total",
            "lostwrite_aborted_connections_total",
        ] {
            assert_eq!(m.total(other), 0.0, "{:?}", m.series(other));
        }
    }
}

/// The peer's side: losses the peer chose are counted with `ended_by="peer"` and nothing
/// else, so the shipped alerts (which page on `local` and `network` only) stay silent.
mod peer {
    use super::*;
    use crate::{false_positives::LOSSES, harness::Metrics, servers::start_nginx};

    /// Every loss series of `port` has `ended_by="peer"`; returns their sum per metric.
    fn only_peer_losses(m: &Metrics, agent: &Agent) {
        for loss in LOSSES {
            let by = m.by_label(loss, &[], "ended_by");
            assert!(
                by.keys().all(|k| k == "peer"),
                "{loss}: {:?}\n{:?}",
                m.series(loss),
                agent.incidents()
            );
        }
    }

    /// After the agent judged exactly `closes` closes on `port`: every loss is the peer's, and
    /// `comm` has exactly `writes` writes after close there, all the peer's.
    fn counted_as_the_peers(
        name: &str,
        agent: &Agent,
        port: u16,
        closes: f64,
        comm: &str,
        writes: f64,
    ) {
        let (m, _) = judged_exactly(name, agent, port, closes);
        only_peer_losses(&m, agent);
        let metric = "lostwrite_writes_after_close_total";
        let port = port.to_string();
        let labels = [
            ("comm", comm),
            ("port", port.as_str()),
            ("ended_by", "peer"),
        ];
        assert_eq!(m.sum(metric, &labels), writes, "{:?}", m.series(metric));
    }

    /// Waits until the slow server has logged `n` failed writes (each response written after
    /// its client went away).
    fn failed_writes(server: &Server, n: usize) {
        crate::harness::wait_for("the failed writes", Duration::from_secs(10), || {
            (server.log().matches("write failed").count() == n).then_some(())
        });
    }

    /// An HTTP server whose handler sleeps `delay` seconds before it answers 100 kB.
    const SLOW_SERVER: &str = r#"
import sys, time, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(float(sys.argv[2]))
        body = b"x" * 100000
        try:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError as e:
            print("write failed:", e, flush=True)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

    fn slow_server(delay: &str) -> Server {
        start_server("slow-http", "python3", |port, _| {
            let mut cmd = Command::new(PYTHON);
            cmd.args(["-u", "-c", SLOW_SERVER, &port.to_string(), delay]);
            cmd
        })
    }

    #[test]
    fn a_client_that_gives_up_is_the_peer() {
        if !root_or_skip("a_client_that_gives_up_is_the_peer") {
            return;
        }
        let server = slow_server("1.0");
        let agent = explaining_agent("curl --max-time", server.port, &[]);
        for _ in 0..3 {
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "--max-time", "0.3"])
                .arg(format!("http://127.0.0.1:{}/", server.port))
                .status()
                .expect("run curl");
            assert_eq!(out.code(), Some(28), "curl timed out");
        }
        failed_writes(&server, 3);
        counted_as_the_peers("curl --max-time", &agent, server.port, 6.0, "python3", 3.0);
    }

    #[test]
    fn a_proxy_upstream_timeout_is_the_peer() {
        if !root_or_skip("a_proxy_upstream_timeout_is_the_peer") {
            return;
        }
        let upstream = slow_server("1.0");
        let proxy = start_nginx(
            "peer-proxy",
            &format!(
                "location / {{ proxy_pass http://127.0.0.1:{}; proxy_read_timeout 300ms; }}",
                upstream.port
            ),
        );
        let agent = explaining_agent("proxy_read_timeout", upstream.port, &[]);
        for _ in 0..3 {
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("http://127.0.0.1:{}/", proxy.port))
                .output()
                .expect("run curl");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "504");
        }
        failed_writes(&upstream, 3);
        let port = upstream.port;
        counted_as_the_peers("proxy_read_timeout", &agent, port, 6.0, "python3", 3.0);
    }

    #[test]
    fn a_health_check_that_stops_reading_is_the_peer() {
        if !root_or_skip("a_health_check_that_stops_reading_is_the_peer") {
            return;
        }
        // nginx serves a 64 KiB body; haproxy's check reads the status line and part of the
        // body, then resets.
        let nginx = start_nginx("peer-httpchk", "");
        std::fs::write(nginx.dir.join("html/big.bin"), vec![b'b'; 64 * 1024]).unwrap();
        let agent = explaining_agent("haproxy httpchk", nginx.port, &[]);
        let checker = start_server("haproxy", "haproxy", |port, dir| {
            let config = dir.join("haproxy.cfg");
            std::fs::write(
                &config,
                format!(
                    "global\n  maxconn 100\ndefaults\n  mode http\n  timeout connect 1s\n  \
                     timeout client 5s\n  timeout server 5s\nbackend web\n  option httpchk \
                     GET /big.bin\n  server s1 127.0.0.1:{} check inter 100ms\nfrontend fe\n  \
                     bind 127.0.0.1:{port}\n  default_backend web\n",
                    nginx.port
                ),
            )
            .unwrap();
            let mut cmd = Command::new("haproxy");
            cmd.arg("-db").arg("-f").arg(config);
            cmd
        });
        std::thread::sleep(Duration::from_secs(3));
        drop(checker);
        std::thread::sleep(Duration::from_millis(300));
        // What nginx logged: each check's status and body bytes sent.
        let log = std::fs::read_to_string(nginx.dir.join("access.log")).unwrap();
        let checks: Vec<&str> = log.lines().filter(|l| l.contains("/big.bin")).collect();
        let cut_short = checks.iter().filter(|l| !l.contains(" 200 65536 ")).count() as f64;
        assert!(cut_short >= 10.0, "{log}");
        let closes = 2.0 * checks.len() as f64;
        counted_as_the_peers(
            "haproxy httpchk",
            &agent,
            nginx.port,
            closes,
            "nginx",
            cut_short,
        );
    }
}
