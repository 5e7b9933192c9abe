//! 100k concurrent idle connections against a bounded kernel map: the agent keeps tracking new
//! connections, its memory stays flat, and the map is the size it was configured to be.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    bpf_objects::{self, status_kib},
    harness::{Agent, Process, own_comm, root_or_skip},
    servers::rust_server_reads_and_closes,
};

/// RLIMIT_NOFILE is 20000 here and cannot be raised without CAP_SYS_RESOURCE: each holder keeps
/// both ends of its connections, so 9100 connections (18200 fds) per process, 11 processes.
const PER_PROCESS: usize = 9100;
const PROCESSES: usize = 11;
/// Smaller than the object's default, so the figure bpftool reports can only come from the flag.
const MAX_SOCKETS: u64 = 32768;

#[test]
fn hundred_thousand_idle_connections_keep_the_agent_bounded() {
    if !root_or_skip("hundred_thousand_idle_connections_keep_the_agent_bounded") {
        return;
    }
    let agent = Agent::start(&["--max-sockets", &MAX_SOCKETS.to_string()]);
    let pid = agent.pid();
    let socks = bpf_objects::held(pid)
        .maps
        .into_iter()
        .map(bpf_objects::map)
        .find(|m| m["name"] == "SOCKS")
        .expect("the agent holds the SOCKS map");
    let socks_id = socks["id"].as_u64().unwrap();
    assert_eq!(socks["max_entries"].as_u64(), Some(MAX_SOCKETS), "{socks}");
    let memlock = socks["bytes_memlock"].as_u64().expect("bytes_memlock");
    let rss_before = status_kib(pid, "VmRSS");
    let before = agent.scrape();

    let started = Instant::now();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/servers/hold_connections.py"
    );
    let mut holders: Vec<Process> = (0..PROCESSES)
        .map(|i| {
            Process(
                Command::new("python3")
                    .arg(script)
                    .arg(format!("127.0.0.{}", 10 + i))
                    .arg(PER_PROCESS.to_string())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("start python3 (installed by `cargo xtask setup`)"),
            )
        })
        .collect();
    for h in &mut holders {
        let mut line = String::new();
        BufReader::new(h.0.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            format!("ready {PER_PROCESS}"),
            "a holder failed"
        );
    }
    let open = PER_PROCESS * PROCESSES;
    let opened_in = started.elapsed();

    // The agent still sees a new connection, and attributes it.
    let (port, _) = rust_server_reads_and_closes();
    let after = agent.settled(
        "an unanswered close with 100k connections open",
        Duration::from_secs(10),
        "lostwrite_unanswered_closes_total",
        &[("port", &port.to_string()), ("comm", &own_comm())],
    );

    let observed = after.total("lostwrite_sockets_observed_total")
        - before.total("lostwrite_sockets_observed_total");
    let evicted = after.total("lostwrite_socket_evictions_total")
        - before.total("lostwrite_socket_evictions_total");
    let tracked = after.total("lostwrite_tracked_sockets");
    let rss_after = status_kib(pid, "VmRSS");
    let hwm = status_kib(pid, "VmHWM");
    let socks_after = bpf_objects::map(socks_id);
    eprintln!(
        "{open} connections opened in {opened_in:.1?}: sockets observed {observed}, evicted \
         {evicted}, tracked now {tracked} (max {MAX_SOCKETS}); SOCKS memlock {memlock} bytes; \
         agent VmRSS {rss_before} KiB -> {rss_after} KiB, VmHWM {hwm} KiB"
    );
    // Both ends of every connection were seen.
    assert!(
        observed >= 2.0 * open as f64,
        "only {observed} sockets observed for {open} connections"
    );
    assert!(
        tracked <= MAX_SOCKETS as f64,
        "{tracked} tracked over --max-sockets"
    );
    // Everything beyond what the map holds was evicted, and counted.
    assert!(
        evicted >= observed - MAX_SOCKETS as f64,
        "{evicted} evictions counted for {observed} sockets in a {MAX_SOCKETS}-entry map"
    );
    assert_eq!(socks_after["max_entries"].as_u64(), Some(MAX_SOCKETS));
    assert_eq!(
        socks_after["bytes_memlock"].as_u64(),
        Some(memlock),
        "the map's memory changed: {socks_after}"
    );
    assert!(
        rss_after < rss_before + 8 * 1024,
        "the agent grew from {rss_before} to {rss_after} KiB with 100k connections"
    );

    drop(holders);
}
