//! `cargo xtask demo`: the seed incident from start to end, in one command.
//!
//! Installs what it needs (the build tools, Go and curl), builds the agent and the Go seed server,
//! starts the agent with its defaults (probe mode `auto`), sends the seed server one healthy and
//! one timed-out request, and prints what a user would otherwise dig for: the client's error, the
//! incident line and the `/metrics` lines that moved. Everything it started is stopped before it
//! returns. It fails, with one line saying so, when the incident does not show.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    build,
    cmd::{self, Started, wait_for},
    net::{free_port, http_get, label, scrape},
    setup,
    workspace::{is_root, target_dir, workspace_root},
};

/// The counter the seed incident moves.
const UNANSWERED: &str = "lostwrite_unanswered_closes_total";

pub fn run() -> Result<ExitCode> {
    let env = setup::demo()?;
    let agent_bin = build::build_agent(&env, false)?;
    let seedsrv_bin = build_seedsrv()?;

    // Own ports, not the seed's usual 8800 or the agent's 9437: either may be in use.
    let metrics_port = free_port()?;
    let seed_port = free_port()?;

    let mut agent = start_agent(&agent_bin, metrics_port, seed_port)?;
    let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, metrics_port));
    wait_for(
        "the agent's /healthz to answer 200",
        Duration::from_secs(60),
        || {
            agent.check_running()?;
            Ok(http_get(metrics, "/healthz").is_ok_and(|(status, _)| status == 200))
        },
    )?;
    let before = scrape(metrics)?;
    let mode = before
        .iter()
        .find(|(series, value)| series.starts_with("lostwrite_probe_mode_info{") && **value == 1.0)
        .map_or("?".to_owned(), |(series, _)| label(series, "mode"));
    println!(
        "demo: agent running (pid {}, probe mode {mode}, only port {seed_port}), metrics on \
         http://{metrics}/metrics",
        agent.child.id()
    );

    let mut seedsrv = Started::spawn(
        "seedsrv",
        Command::new(&seedsrv_bin).args(["-addr", &format!("127.0.0.1:{seed_port}")]),
    )?;
    let seed = SocketAddr::from((Ipv4Addr::LOCALHOST, seed_port));
    wait_for("seedsrv to listen", Duration::from_secs(10), || {
        seedsrv.check_running()?;
        Ok(TcpStream::connect_timeout(&seed, Duration::from_millis(200)).is_ok())
    })?;
    println!("demo: seedsrv listening on {seed} (WriteTimeout 1 s, handler on / sleeps 2 s)");

    let healthy = curl(&format!("http://{seed}/fast"))?;
    println!(
        "demo: healthy request:   curl http://{seed}/fast -> exit {}, {:?}",
        healthy.code,
        healthy.stdout.trim()
    );
    let started = Instant::now();
    let timed_out = curl(&format!("http://{seed}/"))?;
    println!(
        "demo: timed-out request: curl http://{seed}/ -> exit {} after {:.1} s, {}",
        timed_out.code,
        started.elapsed().as_secs_f64(),
        timed_out.stderr.trim()
    );

    // The seed's server never sent a byte, so its protocol is not known from what it sent.
    let wanted = format!(
        "{UNANSWERED}{{comm=\"seedsrv\",ended_by=\"local\",port=\"{seed_port}\",\
         protocol=\"unknown\",role=\"server\"}}"
    );
    let seen = wait_for("the incident", Duration::from_secs(5), || {
        Ok(agent.incident(seed_port).is_some() && scrape(metrics)?.get(&wanted) == Some(&1.0))
    });
    // Late series (the histogram's) settle with the counter; give them the same moment the
    // e2e tests do.
    thread::sleep(Duration::from_millis(300));
    let after = scrape(metrics);
    let incident = agent.incident(seed_port);

    let failure = match (&seen, &incident) {
        _ if healthy.code != 0 => Some(format!(
            "the healthy request failed (curl exit {}): {}",
            healthy.code,
            healthy.stderr.trim()
        )),
        (Ok(()), Some(_)) => None,
        (Err(err), _) => Some(format!("{err:#}")),
        (Ok(()), None) => Some("no incident line".to_owned()),
    };
    if let Some(line) = incident.as_deref() {
        println!("demo: incident line:\n{line}");
    }
    if let Ok(after) = &after {
        println!("demo: /metrics lines that moved (before -> after):");
        for line in moved(&before, after) {
            println!("{line}");
        }
    }
    seedsrv.stop();
    let agent_log = agent.stderr();
    agent.stop();
    println!("demo: stopped seedsrv and the agent");
    match failure {
        None => {
            println!("demo: ok: the lost response was counted as {wanted}");
            Ok(ExitCode::SUCCESS)
        }
        Some(why) => {
            eprintln!("demo: the agent's log:\n{}", agent_log.trim_end());
            println!(
                "demo: FAILED: the seed incident did not show ({why}; curl's timed-out request \
                 exited {}: {})",
                timed_out.code,
                timed_out.stderr.trim()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `go build` of agent/tests/servers/seedsrv into target/demo (its name is the comm reported).
pub fn build_seedsrv() -> Result<PathBuf> {
    let dir = target_dir().join("demo");
    let bin = dir.join("seedsrv");
    let mut go = Command::new("go");
    go.args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(workspace_root().join("agent/tests/servers/seedsrv"))
        .env("GOCACHE", dir.join("go-cache"))
        .env("GOFLAGS", "-buildvcs=false");
    cmd::run(&mut go)?;
    Ok(bin)
}

fn start_agent(bin: &Path, metrics_port: u16, seed_port: u16) -> Result<Agent> {
    // Not root: through sudo, as `cargo xtask run` does (sudo passes SIGTERM on to the agent).
    let mut cmd = if is_root() {
        Command::new(bin)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg("-E").arg(bin);
        cmd
    };
    cmd.args(["run", "--listen", &format!("127.0.0.1:{metrics_port}")])
        // Only the seed server's connections: the demo's own scrapes stay out of the counts.
        .args(["--port", &seed_port.to_string()]);
    let mut child = Started::spawn("agent", &mut cmd)?;
    let stdout = collect(child.child.stdout.take().expect("piped"));
    let stderr = collect(child.child.stderr.take().expect("piped"));
    Ok(Agent {
        started: child,
        stdout,
        stderr,
    })
}

/// The agent, its incident log (stdout) and diagnostics (stderr) as collected so far.
struct Agent {
    started: Started,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl std::ops::Deref for Agent {
    type Target = Started;
    fn deref(&self) -> &Started {
        &self.started
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut Started {
        &mut self.started
    }
}

impl Agent {
    /// The unanswered-close incident line of seedsrv on `port`.
    fn incident(&self, port: u16) -> Option<String> {
        let local = format!("local=127.0.0.1:{port} ");
        self.stdout
            .lock()
            .expect("not poisoned")
            .iter()
            .find(|l| {
                l.contains(" INCIDENT unanswered_close: ")
                    && l.contains(" comm=seedsrv ")
                    && l.contains(&local)
            })
            .cloned()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("not poisoned").join("\n")
    }
}

fn collect(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().expect("not poisoned").push(line);
        }
    });
    lines
}

struct Curl {
    code: i32,
    stdout: String,
    stderr: String,
}

fn curl(url: &str) -> Result<Curl> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15", url])
        .output()
        .context("failed to run curl")?;
    Ok(Curl {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The series whose value changed (or that appeared), as `series before -> after`; histogram
/// buckets only counted (the `_sum` and `_count` lines say what they do).
fn moved(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> Vec<String> {
    let mut lines = Vec::new();
    let mut buckets = 0;
    for (series, value) in after {
        let old = before.get(series).copied().unwrap_or(0.0);
        if old == *value {
            continue;
        }
        if series.contains("_bucket{") {
            buckets += 1;
            continue;
        }
        lines.push(format!("{series} {old} -> {value}"));
    }
    if buckets > 0 {
        lines.push(format!("(and {buckets} histogram bucket lines)"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::parse_metrics;

    #[test]
    fn moved_lines_are_the_changed_and_new_series() {
        let before = parse_metrics(
            "# HELP x y\nlostwrite_a{p=\"1\"} 0\nlostwrite_b 2\nlostwrite_h_bucket{le=\"1\"} 0\n",
        );
        let after = parse_metrics(
            "lostwrite_a{p=\"1\"} 1\nlostwrite_b 2\nlostwrite_c{mode=\"fentry\"} 1\n\
             lostwrite_h_bucket{le=\"1\"} 1\n",
        );
        assert_eq!(
            moved(&before, &after),
            [
                "lostwrite_a{p=\"1\"} 0 -> 1",
                "lostwrite_c{mode=\"fentry\"} 0 -> 1",
                "(and 1 histogram bucket lines)"
            ]
        );
        assert_eq!(
            label("lostwrite_c{x=\"1\",mode=\"fentry\"}", "mode"),
            "fentry"
        );
        assert_eq!(label("lostwrite_b", "mode"), "?");
    }
}
