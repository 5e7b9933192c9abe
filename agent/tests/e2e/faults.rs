//! The agent under faults and load: a ring buffer that overflows, stop signals, and a storm of
//! scrapes.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{Arc, Barrier},
    thread,
    time::Duration,
};

use crate::{
    bpf_objects::{self, status_kib},
    harness::{Agent, Metrics, http_get, root_or_skip, wait_for},
    servers::{REQUEST, rust_server_reads_and_closes},
};

const UNANSWERED: &str = "lostwrite_unanswered_closes_total";

/// `n` connections to one server thread (named `floodsrv`) that reads each request and closes
/// without answering: `n` unanswered closes, one ring-buffer record each (the clients wrote
/// first and owe nothing). Returns the server's port.
fn unanswered_flood(n: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::Builder::new()
        .name("floodsrv".into())
        .spawn(move || {
            let mut buf = [0u8; 1024];
            for _ in 0..n {
                let (mut conn, _) = listener.accept().unwrap();
                assert!(conn.read(&mut buf).unwrap() > 0, "no request");
            }
        })
        .unwrap();
    for _ in 0..n {
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        client.write_all(REQUEST).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).unwrap();
        assert!(reply.is_empty(), "the flood server answered");
    }
    server.join().unwrap();
    port
}

fn counters(m: &Metrics) -> (f64, f64, f64) {
    (
        m.total("lostwrite_kernel_events_total"),
        m.total("lostwrite_events_dropped_total"),
        m.total("lostwrite_decode_errors_total"),
    )
}

/// The agent is stopped (SIGSTOP) while 300 unanswered closes happen, so its 4 KiB ring buffer
/// (room for about 23 records) overflows. Every record is then either sent or counted as
/// dropped, every sent one becomes an incident, and the agent goes on working.
#[test]
fn a_full_ring_buffer_counts_its_drops_and_the_agent_goes_on() {
    if !root_or_skip("a_full_ring_buffer_counts_its_drops_and_the_agent_goes_on") {
        return;
    }
    let mut agent = Agent::start(&["--events-ring-bytes", "4096"]);
    // Events are seen at all before the flood.
    let (port, _) = rust_server_reads_and_closes();
    agent.settled(
        "the first unanswered close",
        Duration::from_secs(5),
        UNANSWERED,
        &[("port", &port.to_string())],
    );
    let before = agent.scrape();
    let (sent0, dropped0, errors0) = counters(&before);

    const FLOOD: usize = 300;
    // SAFETY: kill(2) on our own child; it is continued below, and the harness's drop would
    // SIGTERM it anyway (a stopped process still gets SIGTERM once continued).
    unsafe { libc::kill(agent.pid() as i32, libc::SIGSTOP) };
    let flood_port = unanswered_flood(FLOOD);
    // SAFETY: as above.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGCONT) };

    let flood_label = flood_port.to_string();
    let after = wait_for(
        "the flood's records to be read",
        Duration::from_secs(10),
        || {
            let m = agent.scrape();
            let (sent, dropped, _) = counters(&m);
            let reported = m
                .value(UNANSWERED, &[("port", &flood_label)])
                .unwrap_or(0.0);
            (sent - sent0 + dropped - dropped0 >= FLOOD as f64 && reported >= sent - sent0)
                .then_some(m)
        },
    );
    let (sent, dropped, errors) = counters(&after);
    let (sent, dropped, errors) = (sent - sent0, dropped - dropped0, errors - errors0);
    let reported = after.value(UNANSWERED, &[("port", &flood_label)]).unwrap();
    eprintln!("flood of {FLOOD}: sent {sent}, dropped {dropped}, reported {reported}");
    assert!(agent.running(), "the agent died: {}", agent.stderr_text());
    assert!(
        dropped >= (FLOOD - 64) as f64,
        "a 4 KiB ring cannot hold {FLOOD} records, yet only {dropped} were dropped"
    );
    assert_eq!(
        sent + dropped,
        FLOOD as f64,
        "every record is either sent or counted as dropped"
    );
    assert_eq!(errors, 0.0, "decode errors");
    assert_eq!(
        reported,
        sent - errors,
        "every record that arrived is an incident"
    );

    // The ring drains and the agent keeps reporting.
    let (port, _) = rust_server_reads_and_closes();
    agent.settled(
        "an unanswered close after the overflow",
        Duration::from_secs(5),
        UNANSWERED,
        &[("port", &port.to_string())],
    );
    let (status, _) = http_get(&agent.url("/healthz")).unwrap();
    assert_eq!(status, 200);
}

/// Names of the programs `pid` holds, from bpftool.
fn program_names(ids: &BTreeSet<u64>) -> BTreeSet<String> {
    bpf_objects::programs()
        .into_iter()
        .filter(|(id, _)| ids.contains(id))
        .map(|(_, name)| name)
        .collect()
}

/// SIGTERM and SIGINT each detach every program and link and free every map; an agent started
/// right after works at once.
#[test]
fn stop_signals_detach_everything_and_a_restart_works_at_once() {
    if !root_or_skip("stop_signals_detach_everything_and_a_restart_works_at_once") {
        return;
    }
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let before: Vec<(u64, String)> = bpf_objects::programs();
        let mut agent = Agent::start(&[]);
        let held = bpf_objects::held(agent.pid());
        let names = program_names(&held.progs);
        // The BTF tracepoints every mode uses are attached, each through a link, in their
        // socket-local storage form; the LRU map's cleanup at socket destruction is not.
        for prog in [
            "btf_sock_send_length_local",
            "btf_inet_sock_set_state_local",
        ] {
            assert!(names.contains(prog), "{prog} not loaded: {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.starts_with("btf_tcp_destroy_sock")),
            "{names:?}"
        );
        assert!(
            held.links.len() >= 5,
            "{name}: links {:?} for programs {names:?}",
            held.links
        );
        let linked: BTreeSet<u64> = bpf_objects::links()
            .into_iter()
            .filter(|(id, _)| held.links.contains(id))
            .map(|(_, prog)| prog)
            .collect();
        assert!(
            linked.is_subset(&held.progs) && !linked.is_empty(),
            "{name}: links to {linked:?}, programs {:?}",
            held.progs
        );

        let status = agent.stop_with(signal);
        assert!(status.success(), "{name}: the agent exited with {status}");
        let stderr = agent.stderr_text();
        assert!(
            stderr.contains(&format!("{name} received, detaching")),
            "{name}: {stderr}"
        );
        wait_for(
            &format!("the agent's programs, links and maps to go after {name}"),
            Duration::from_secs(5),
            || {
                let progs: BTreeSet<u64> = bpf_objects::programs()
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect();
                let links: BTreeSet<u64> =
                    bpf_objects::links().into_iter().map(|(id, _)| id).collect();
                let maps = bpf_objects::map_ids();
                (progs.is_disjoint(&held.progs)
                    && links.is_disjoint(&held.links)
                    && maps.is_disjoint(&held.maps))
                .then_some(())
            },
        );
        // By name: what runs under the agent's program names now ran before it started.
        let count = |list: &[(u64, String)]| {
            list.iter()
                .filter(|(_, n)| names.contains(n))
                .map(|(id, _)| *id)
                .collect::<BTreeSet<_>>()
        };
        let after = bpf_objects::programs();
        assert!(
            count(&after).is_subset(&count(&before)),
            "{name}: programs named like the agent's remain: {:?}",
            count(&after)
        );

        // A new agent attaches and reports at once.
        let restarted = Agent::start(&[]);
        let (port, _) = rust_server_reads_and_closes();
        restarted.settled(
            &format!("an unanswered close right after the restart ({name})"),
            Duration::from_secs(2),
            UNANSWERED,
            &[("port", &port.to_string())],
        );
    }
}

/// Hundreds of concurrent scrapes: all answered in full, and the agent's memory stays where it
/// was after the first round.
#[test]
fn hundreds_of_concurrent_scrapes_are_answered_in_bounded_memory() {
    if !root_or_skip("hundreds_of_concurrent_scrapes_are_answered_in_bounded_memory") {
        return;
    }
    let agent = Agent::start(&[]);
    // Series with labels, so each scrape renders more than the fixed ones.
    for _ in 0..3 {
        rust_server_reads_and_closes();
    }
    wait_for("the incidents", Duration::from_secs(5), || {
        (agent.scrape().total(UNANSWERED) >= 3.0).then_some(())
    });
    let url = agent.url("/metrics");
    let round = || {
        const CLIENTS: usize = 300;
        const EACH: usize = 4;
        let start = Arc::new(Barrier::new(CLIENTS));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (url, start) = (url.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    for _ in 0..EACH {
                        let (status, body) = http_get(&url).expect("scrape");
                        assert_eq!(status, 200, "{body}");
                        assert!(body.contains("lostwrite_build_info{"), "{body}");
                        assert!(body.contains(UNANSWERED), "{body}");
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().expect("a scraping client failed");
        }
    };
    let pid = agent.pid();
    let start = status_kib(pid, "VmRSS");
    round();
    let first = status_kib(pid, "VmRSS");
    for _ in 0..2 {
        round();
    }
    let last = status_kib(pid, "VmRSS");
    eprintln!("agent VmRSS: {start} KiB before, {first} after one round, {last} after three");
    assert!(
        first < start + 16 * 1024,
        "one round of scrapes grew the agent from {start} to {first} KiB"
    );
    assert!(
        last < first + 2 * 1024,
        "more rounds kept growing the agent: {first} -> {last} KiB"
    );
    let (status, _) = http_get(&agent.url("/healthz")).unwrap();
    assert_eq!(status, 200);
}
