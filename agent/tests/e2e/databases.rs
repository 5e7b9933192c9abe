//! Real database servers and their real clients: sessions that end the way each protocol ends
//! them (PostgreSQL's Terminate, MySQL's COM_QUIT: a last request no server answers) lose
//! nothing, and a PostgreSQL backend killed while its client waits for an answer is one
//! unanswered close.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    db_servers::{PYTHON, run, start_mariadb, start_postgres, start_redis},
    false_positives::{assert_no_loss_counting, assert_no_loss_on},
    harness::{Agent, Process, root_or_skip, wait_for},
    unanswered::the_only_unanswered_close,
};

/// psycopg2: `n` connections, each one query and a commit, then closed.
const PSYCOPG2_SESSIONS: &str = r#"
import sys, psycopg2
port, n = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    conn = psycopg2.connect(
        host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=10
    )
    with conn.cursor() as cur:
        cur.execute("select %s + 1", (i,))
        assert cur.fetchone() == (i + 1,)
    conn.commit()
    conn.close()
print("sessions", n)
"#;

/// PyMySQL: `n` connections, each one query, then closed (COM_QUIT).
const PYMYSQL_SESSIONS: &str = r#"
import sys, pymysql
port, n = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    conn = pymysql.connect(host="127.0.0.1", port=port, user="root", connect_timeout=10)
    with conn.cursor() as cur:
        cur.execute("select %s + 1", (i,))
        assert cur.fetchone() == (i + 1,)
    conn.close()
print("sessions", n)
"#;

/// psycopg2: prints its backend's pid, then waits on a 30 s query and reports how it ended.
const PSYCOPG2_SLEEPER: &str = r#"
import sys, psycopg2
conn = psycopg2.connect(
    host="127.0.0.1", port=int(sys.argv[1]), user="postgres", dbname="postgres", connect_timeout=10
)
conn.autocommit = True
cur = conn.cursor()
cur.execute("select pg_backend_pid()")
print(cur.fetchone()[0], flush=True)
try:
    cur.execute("select pg_sleep(30)")
    print("answered")
except psycopg2.OperationalError as e:
    print("lost:", e)
"#;

/// Runs `script` with Debian's python3 and the arguments `args`; its stdout.
fn python(what: &str, script: &str, args: &[&str]) -> String {
    run(what, Command::new(PYTHON).arg("-c").arg(script).args(args))
}

#[test]
fn postgres_psql_sessions_and_pgbench_lose_nothing() {
    if !root_or_skip("postgres_psql_sessions_and_pgbench_lose_nothing") {
        return;
    }
    let pg = start_postgres("db-pg-psql");
    pg.pgbench_init();
    const SESSIONS: usize = 10;
    const CLIENTS: usize = 4;
    assert_no_loss_counting("psql and pgbench -S", pg.port, || {
        let before = pg.connections_received();
        for i in 0..SESSIONS {
            assert_eq!(pg.psql(&format!("select {i} + 1")), (i + 1).to_string());
        }
        let clients = CLIENTS.to_string();
        let processed = pg.pgbench(&["-S", "-T", "2", "-c", &clients]);
        assert!(processed >= 100, "pgbench -S: {processed} transactions");
        // SESSIONS psql sessions, CLIENTS of pgbench and its own first connection: the
        // server's log counts them.
        let connections = pg.connections_received() - before;
        assert!(connections > SESSIONS + CLIENTS, "{connections}");
        2.0 * connections as f64
    });
}

#[test]
fn postgres_pgbench_connection_per_transaction_loses_nothing() {
    if !root_or_skip("postgres_pgbench_connection_per_transaction_loses_nothing") {
        return;
    }
    let pg = start_postgres("db-pg-bench-c");
    pg.pgbench_init();
    // -C: every transaction on a connection of its own.
    const MIN_TRANSACTIONS: u64 = 20;
    assert_no_loss_counting("pgbench -S -C", pg.port, || {
        let before = pg.connections_received();
        let processed = pg.pgbench(&["-S", "-C", "-T", "2", "-c", "4"]);
        assert!(
            processed >= MIN_TRANSACTIONS,
            "pgbench -S -C: {processed} transactions"
        );
        // The server logs each connection as it accepts it: every one it had is in the log.
        2.0 * (pg.connections_received() - before) as f64
    });
}

#[test]
fn postgres_psycopg2_sessions_lose_nothing() {
    if !root_or_skip("postgres_psycopg2_sessions_lose_nothing") {
        return;
    }
    let pg = start_postgres("db-pg-psycopg2");
    const SESSIONS: usize = 10;
    assert_no_loss_on("psycopg2", pg.port, 2.0 * SESSIONS as f64, || {
        let out = python(
            "psycopg2 sessions",
            PSYCOPG2_SESSIONS,
            &[&pg.port.to_string(), &SESSIONS.to_string()],
        );
        assert_eq!(out.trim(), format!("sessions {SESSIONS}"));
    });
}

#[test]
fn mariadb_cli_and_pymysql_sessions_lose_nothing() {
    if !root_or_skip("mariadb_cli_and_pymysql_sessions_lose_nothing") {
        return;
    }
    let db = start_mariadb("db-mariadb");
    const SESSIONS: usize = 10;
    assert_no_loss_on(
        "mariadb and PyMySQL",
        db.port,
        // SESSIONS connections of the CLI and SESSIONS of PyMySQL, two closes each.
        4.0 * SESSIONS as f64,
        || {
            for i in 0..SESSIONS {
                assert_eq!(db.query(&format!("select {i} + 1")), (i + 1).to_string());
            }
            let out = python(
                "PyMySQL sessions",
                PYMYSQL_SESSIONS,
                &[&db.port.to_string(), &SESSIONS.to_string()],
            );
            assert_eq!(out.trim(), format!("sessions {SESSIONS}"));
        },
    );
}

#[test]
fn redis_benchmark_and_cli_lose_nothing() {
    if !root_or_skip("redis_benchmark_and_cli_lose_nothing") {
        return;
    }
    let redis = start_redis("db-redis");
    const BENCH_CLIENTS: usize = 10;
    const PINGS: usize = 5;
    let port = redis.port.to_string();
    assert_no_loss_counting("redis-benchmark and redis-cli", redis.port, || {
        {
            let first = redis.connections_received();
            let out = run(
                "redis-benchmark",
                Command::new("redis-benchmark")
                    .args(["-h", "127.0.0.1", "-p", &port, "-n", "2000", "-q"])
                    .args(["-c", &BENCH_CLIENTS.to_string()]),
            );
            for test in ["PING_INLINE: ", "SET: ", "GET: ", "MSET (10 keys): "] {
                // Progress lines end in \r, each test's result line in \n.
                assert!(
                    out.split(['\r', '\n'])
                        .any(|l| l.trim_start().starts_with(test)
                            && l.contains("requests per second")),
                    "redis-benchmark did not finish {test}: {out}"
                );
            }
            for _ in 0..PINGS {
                assert_eq!(redis.cli(&["ping"]), "PONG");
            }
            // redis-benchmark opens more connections than its clients (one per test, and
            // one to read the configuration); Redis counts them all, the two INFO queries'
            // own included.
            2.0 * (redis.connections_received() - first + 1) as f64
        }
    });
}

/// The backend's process title (`postgres: user db host(port) STATE`), trimmed.
fn process_title(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline)
        .replace('\0', " ")
        .trim()
        .to_owned()
}

/// A backend SIGKILLed while its client waits on `select pg_sleep(30)`: it read the query and
/// its socket closed with no answer, the one unanswered close. The client (it wrote and then
/// read EOF) is not a loss, and nothing else connects: after a backend crash the postmaster
/// restarts every backend, so this session is the only one.
#[test]
fn postgres_backend_killed_mid_query_counts_one_unanswered_close() {
    if !root_or_skip("postgres_backend_killed_mid_query_counts_one_unanswered_close") {
        return;
    }
    let pg = start_postgres("db-pg-killed");
    let port = pg.port.to_string();
    let agent = Agent::start(&[]);
    let mut child = Command::new(PYTHON)
        .arg("-c")
        .arg(PSYCOPG2_SLEEPER)
        .arg(&port)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3 (python3-psycopg2 is installed by `cargo xtask setup`)");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    let mut client = Process(child);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let backend: u32 = line.trim().parse().unwrap_or_else(|_| {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        panic!(
            "no backend pid from the client: {line:?} {err}\n{}",
            pg.server_log()
        )
    });
    // The process title says SELECT once the backend has read the query and runs it.
    wait_for(
        &format!("backend {backend} to run pg_sleep"),
        Duration::from_secs(10),
        || process_title(backend).ends_with(" SELECT").then_some(()),
    );
    // SAFETY: kill(2) on the backend pid the server just reported.
    assert_eq!(unsafe { libc::kill(backend as i32, libc::SIGKILL) }, 0);
    let status = wait_for("the client to exit", Duration::from_secs(10), || {
        client.0.try_wait().unwrap()
    });
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(
        status.success() && rest.starts_with("lost: server closed the connection unexpectedly"),
        "the client should lose its connection ({status}): {rest}"
    );

    let (_, i) = the_only_unanswered_close(
        &agent,
        "the killed backend's unanswered close",
        "postgres",
        &port,
        "server",
    );
    assert_eq!(i["pid"], backend, "{i}");
    // One Query message: 'Q', its length (4 bytes), the text and its NUL.
    let query = 1 + 4 + "select pg_sleep(30)".len() + 1;
    assert_eq!(i["unanswered_bytes"], query, "{i}");
    assert!(i["bytes_written"].as_u64().unwrap() > 0, "{i}");
}
