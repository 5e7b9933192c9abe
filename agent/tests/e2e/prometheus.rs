//! A real Prometheus server scrapes the agent and finds the series; promtool accepts the format.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    harness::{Agent, Process, free_port, http_get, own_comm, root_or_skip, scratch, wait_for},
    servers::rust_server_reads_and_closes,
};

#[test]
fn exposition_passes_promtool() {
    if !root_or_skip("exposition_passes_promtool") {
        return;
    }
    let agent = Agent::start(&[]);
    let (port, _) = rust_server_reads_and_closes();
    let port = port.to_string();
    wait_for("its own incident", Duration::from_secs(2), || {
        agent
            .scrape()
            .value("lostwrite_unanswered_closes_total", &[("port", &port)])
            .filter(|n| *n == 1.0)
    });
    let text = agent.metrics_text();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian's prometheus package)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_server_finds_the_series() {
    if !root_or_skip("prometheus_server_finds_the_series") {
        return;
    }
    let agent = Agent::start(&[]);
    let dir = scratch("prometheus");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
             - job_name: lostwrite\n    static_configs:\n      - targets: ['{}']\n",
            agent.listen
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let _prometheus = Process(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (Debian's prometheus package)"),
    );

    let (port, _) = rust_server_reads_and_closes();
    let port = port.to_string();
    let url = format!("http://{web}/api/v1/query?query=lostwrite_unanswered_closes_total");
    let series = wait_for("the series in Prometheus", Duration::from_secs(60), || {
        let (status, body) = http_get(&url).ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"]
            .as_array()?
            .iter()
            .find(|r| r["metric"]["port"] == port.as_str())
            .cloned()
    });
    assert_eq!(
        series["metric"]["__name__"],
        "lostwrite_unanswered_closes_total"
    );
    // The test process's name, not its `rustsrv` thread's.
    assert_eq!(series["metric"]["comm"], own_comm().as_str());
    assert_eq!(series["metric"]["role"], "server");
    assert_eq!(series["metric"]["job"], "lostwrite");
    assert_eq!(series["value"][1], "1");
}
