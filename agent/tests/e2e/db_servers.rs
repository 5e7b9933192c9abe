//! Real database servers (PostgreSQL, MariaDB, Redis from the Debian packages `cargo xtask setup`
//! installs), run as plain processes on free loopback ports. Each gets a fresh directory under
//! /tmp that its unprivileged user can reach (the cargo target dir may sit under a root-only
//! home), and is stopped and its directory removed on drop, also when the test panics.

use std::{
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::harness::{Process, free_port};

/// Debian's interpreter: it has python3-psycopg2 and python3-pymysql (another `python3` on PATH
/// may not).
pub const PYTHON: &str = "/usr/bin/python3";

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// How long a server may take to come up before the test fails with its log.
const STARTUP: Duration = Duration::from_secs(30);

/// A server's directory, removed on drop.
pub struct ServerDir(pub PathBuf);

impl Drop for ServerDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh `/tmp/lostwrite-e2e/<name>` owned by `user`, every directory above it traversable.
pub fn server_dir(name: &str, user: &str) -> ServerDir {
    let root = Path::new("/tmp/lostwrite-e2e");
    std::fs::create_dir_all(root).expect("create /tmp/lostwrite-e2e");
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("create the server's directory");
    let dir = ServerDir(dir);
    run("chown", Command::new("chown").arg(user).arg(&dir.0));
    dir
}

/// Runs `cmd` to completion and returns its stdout; panics with both outputs unless it exits 0.
pub fn run(what: &str, cmd: &mut Command) -> String {
    let out = output(what, cmd);
    assert!(
        out.status.success(),
        "{what} failed ({}): {cmd:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn output(what: &str, cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {what} (installed by `cargo xtask setup`): {e}"))
}

/// The file's text, or why it could not be read (for failure messages).
pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
}

/// Polls `ready` every 50 ms until it holds; panics with the server's log if the server exits
/// first or [`STARTUP`] passes.
pub fn wait_ready(
    what: &str,
    port: u16,
    server: &mut Process,
    log: &Path,
    mut ready: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!(
                "{what} exited ({status}) before it served port {port}; its log:\n{}",
                read_log(log)
            );
        }
        if ready() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not serve port {port} within {STARTUP:?}; its log:\n{}",
            read_log(log)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A PostgreSQL 15 cluster (trust authentication, superuser `postgres`) listening on
/// 127.0.0.1:`port`, its data, socket and log in a directory of its own. Each backend's process
/// title shows what it is doing (`... idle`, `... SELECT`). Stopped (`pg_ctl -m immediate`) and
/// removed on drop.
pub struct Postgres {
    pub port: u16,
    dir: ServerDir,
}

pub fn start_postgres(name: &str) -> Postgres {
    let pg = Postgres {
        port: free_port(),
        dir: server_dir(name, "postgres"),
    };
    run(
        "initdb",
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/initdb"))
            .args(["--no-sync", "-A", "trust", "-U", "postgres", "-D"])
            .arg(pg.data()),
    );
    let out = output(
        "pg_ctl start",
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .args(["-w", "-t", &STARTUP.as_secs().to_string(), "-D"])
            .arg(pg.data())
            .arg("-l")
            .arg(pg.log())
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c update_process_title=on \
                 -c log_connections=on",
                pg.port,
                pg.dir.0.display()
            ))
            .arg("start"),
    );
    assert!(
        out.status.success(),
        "PostgreSQL did not start on port {} ({}): {}\nserver log:\n{}",
        pg.port,
        out.status,
        String::from_utf8_lossy(&out.stderr),
        read_log(&pg.log())
    );
    // pg_ctl -w waited for the postmaster to report itself ready; the first query proves it.
    assert_eq!(pg.psql("select 1"), "1", "{}", read_log(&pg.log()));
    pg
}

impl Postgres {
    fn data(&self) -> PathBuf {
        self.dir.0.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.0.join("log")
    }

    /// The server log, for failure messages.
    pub fn server_log(&self) -> String {
        read_log(&self.log())
    }

    /// The TCP connections the server has received so far, by its log (`log_connections`).
    pub fn connections_received(&self) -> usize {
        self.server_log()
            .matches("connection received: host=127.0.0.1")
            .count()
    }

    /// `psql -c sql` in a session of its own over TCP: the unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        run(
            "psql",
            Command::new("psql")
                .args(["-X", "-w", "-At", "-h", "127.0.0.1", "-U", "postgres"])
                .args(["-p", &self.port.to_string(), "-d", "postgres", "-c", sql]),
        )
        .trim()
        .to_owned()
    }

    /// `pgbench -i`: its tables, at scale 1.
    pub fn pgbench_init(&self) {
        run("pgbench -i", &mut self.pgbench_command(&["-i", "-q"]));
    }

    fn pgbench_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("pgbench");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &self.port.to_string(),
        ])
        .args(args)
        .arg("postgres");
        cmd
    }

    /// `pgbench args...` against the `postgres` database: the number of transactions it reports
    /// processed (it must have exited 0).
    pub fn pgbench(&self, args: &[&str]) -> u64 {
        let out = run("pgbench", &mut self.pgbench_command(args));
        let processed = out
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .unwrap_or_else(|| panic!("no transaction count in pgbench's output: {out}"));
        processed
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("bad transaction count in pgbench's output: {out}"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(format!("{PG_BIN}/pg_ctl"))
                .args(["-w", "-m", "immediate", "-D"])
                .arg(self.data())
                .arg("stop")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// MariaDB 10.11 listening on 127.0.0.1:`port` without grant tables (any user, no password),
/// its data, socket and error log in a directory of its own. Stopped and removed on drop.
pub struct MariaDb {
    pub port: u16,
    _server: Process,
    _dir: ServerDir,
}

pub fn start_mariadb(name: &str) -> MariaDb {
    let port = free_port();
    let dir = server_dir(name, "mysql");
    let data = dir.0.join("data");
    let log = dir.0.join("error.log");
    run(
        "mariadb-install-db",
        Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=mysql", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display())),
    );
    let mut server = Process(
        Command::new("mariadbd")
            .arg("--no-defaults")
            .args([
                "--user=mysql",
                "--bind-address=127.0.0.1",
                "--skip-grant-tables",
            ])
            .args(["--skip-name-resolve", "--skip-log-bin"])
            .arg(format!("--port={port}"))
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.0.join("sock").display()))
            .arg(format!("--pid-file={}", dir.0.join("pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd (installed by `cargo xtask setup`)"),
    );
    wait_ready("MariaDB", port, &mut server, &log, || {
        let out = output("mariadb", &mut mariadb_command(port, "select 1"));
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "1"
    });
    MariaDb {
        port,
        _server: server,
        _dir: dir,
    }
}

/// `mariadb -e sql` as `root` over TCP to 127.0.0.1:`port`, no option files read.
fn mariadb_command(port: u16, sql: &str) -> Command {
    let mut cmd = Command::new("mariadb");
    cmd.args(["--no-defaults", "-N", "-B", "-h", "127.0.0.1", "-u", "root"])
        .args(["-P", &port.to_string(), "-e", sql]);
    cmd
}

impl MariaDb {
    /// `mariadb -e sql` in a session of its own over TCP: the batch output without column names.
    pub fn query(&self, sql: &str) -> String {
        run("mariadb", &mut mariadb_command(self.port, sql))
            .trim()
            .to_owned()
    }
}

/// Redis on 127.0.0.1:`port`, persistence off, in a directory of its own. Stopped and removed on
/// drop.
pub struct Redis {
    pub port: u16,
    _server: Process,
    _dir: ServerDir,
}

pub fn start_redis(name: &str) -> Redis {
    let port = free_port();
    let dir = server_dir(name, "root");
    let log = dir.0.join("log");
    let mut server = Process(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir.0)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (installed by `cargo xtask setup`)"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_ready("Redis", port, &mut server, &log, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    });
    let redis = Redis {
        port,
        _server: server,
        _dir: dir,
    };
    assert_eq!(redis.cli(&["ping"]), "PONG", "{}", read_log(&log));
    redis
}

impl Redis {
    /// `total_connections_received` of `INFO stats` (this query's connection included).
    pub fn connections_received(&self) -> usize {
        let info = self.cli(&["info", "stats"]);
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no total_connections_received in INFO: {info}"))
    }

    /// `redis-cli -p port args...` (one connection): its output.
    pub fn cli(&self, args: &[&str]) -> String {
        run(
            "redis-cli",
            Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(args),
        )
        .trim()
        .to_owned()
    }
}
