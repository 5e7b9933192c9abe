//! Alert rules, the Prometheus Operator objects and the Grafana dashboard.

use std::process::Command;

use crate::{
    Object, deploy_dir, documents, objects, read, strict,
    types::{PrometheusRule, RuleFile, RuleTestFile},
};

/// The loss counters (README: Metrics): one detector each, plus the aborted-connections companion of
/// the undelivered bytes.
const LOSS_COUNTERS: [&str; 3] = [
    "lostwrite_unanswered_closes_total",
    "lostwrite_writes_after_close_total",
    "lostwrite_undelivered_bytes_total",
];

/// promtool, or a skip that says why. Under LOSTWRITE_E2E=1 (`cargo xtask test`, CI, where
/// `cargo xtask setup` installs it) a missing promtool fails.
pub fn promtool() -> Option<Command> {
    if Command::new("promtool").arg("--version").output().is_ok() {
        return Some(Command::new("promtool"));
    }
    assert!(
        std::env::var_os("LOSTWRITE_E2E").is_none(),
        "promtool is missing (Debian's prometheus package; `cargo xtask setup` installs it)"
    );
    eprintln!("SKIPPED: promtool is not installed (cargo xtask setup installs it)");
    None
}

fn run(mut cmd: Command) -> String {
    let out = cmd.output().expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(mut check) = promtool() else {
        return;
    };
    check
        .args(["check", "rules"])
        .arg(deploy_dir().join("prometheus/alerts.yaml"));
    let out = run(check);
    assert!(out.contains("SUCCESS: 4 rules found"), "{out}");

    // The unit tests make each loss alert fire on a first incident and resolve after it.
    let mut test = Command::new("promtool");
    test.args(["test", "rules", "alerts_test.yaml"])
        .current_dir(deploy_dir().join("prometheus"));
    let out = run(test);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_loss_counter_has_an_alert() {
    let rules: RuleFile = strict("alerts", documents("prometheus/alerts.yaml").remove(0)).unwrap();
    let exprs: Vec<&str> = rules
        .groups
        .iter()
        .flat_map(|g| &g.rules)
        .map(|r| r.expr.as_str())
        .collect();
    for counter in LOSS_COUNTERS {
        assert!(
            exprs.iter().any(|e| e.contains(counter)),
            "no alert on {counter}"
        );
    }
    // Every alert expression groups by the pod labels (absent off Kubernetes, which is fine),
    // and pages on losses this side or the network caused, never on those the peer chose.
    for e in exprs.iter().filter(|e| e.contains("sum by")) {
        assert!(e.contains("namespace, pod, container"), "{e}");
        assert!(e.contains(r#"ended_by!="peer""#), "{e}");
    }
}

#[test]
fn every_alert_has_a_unit_test_that_fires_it() {
    let rules: RuleFile = strict("alerts", documents("prometheus/alerts.yaml").remove(0)).unwrap();
    let tests: RuleTestFile = strict(
        "alerts_test",
        documents("prometheus/alerts_test.yaml").remove(0),
    )
    .unwrap();
    assert_eq!(tests.rule_files, ["alerts.yaml"]);
    let cases: Vec<_> = tests
        .tests
        .iter()
        .flat_map(|t| &t.alert_rule_test)
        .collect();
    for rule in rules.groups.iter().flat_map(|g| &g.rules) {
        let name = rule.alert.as_deref().expect("only alerting rules");
        let fires = cases
            .iter()
            .filter(|c| c.alertname == name)
            .flat_map(|c| &c.exp_alerts)
            .collect::<Vec<_>>();
        assert!(!fires.is_empty(), "no test in which {name} fires");
        for alert in fires {
            assert_eq!(
                alert.exp_labels.get("severity"),
                rule.labels.get("severity"),
                "{name}"
            );
        }
        assert!(
            cases
                .iter()
                .any(|c| c.alertname == name && c.exp_alerts.is_empty()),
            "no test in which {name} stays quiet (at {:?})",
            cases.iter().map(|c| &c.eval_time).collect::<Vec<_>>()
        );
    }
    for t in &tests.tests {
        for s in &t.input_series {
            assert!(s.series.starts_with("lostwrite_"), "{}", s.series);
        }
    }
}

#[test]
fn prometheus_rule_carries_the_alert_file() {
    let file: RuleFile = strict("alerts", documents("prometheus/alerts.yaml").remove(0)).unwrap();
    let rule: PrometheusRule = objects()
        .into_iter()
        .find_map(|(_, o)| match o {
            Object::PrometheusRule(r) => Some(*r),
            _ => None,
        })
        .expect("a PrometheusRule");
    assert_eq!(
        rule.spec, file,
        "prometheusrule.yaml's spec.groups must be alerts.yaml's groups"
    );
}

#[test]
fn pod_monitor_and_service_use_the_metrics_port() {
    let objects = objects();
    for (file, o) in &objects {
        match o {
            Object::PodMonitor(m) => {
                let ep = &m.spec.pod_metrics_endpoints;
                assert_eq!(ep.len(), 1, "{file}");
                assert_eq!(ep[0].port, "metrics", "{file}");
                assert_eq!(ep[0].path.as_deref(), Some("/metrics"), "{file}");
                let sel = m.spec.selector.match_labels.clone().unwrap_or_default();
                assert_eq!(
                    sel.get("app.kubernetes.io/name").map(String::as_str),
                    Some("lostwrite")
                );
            }
            Object::Service(s) => {
                let spec = s.spec.clone().unwrap();
                let ports = spec.ports.unwrap_or_default();
                assert!(
                    ports
                        .iter()
                        .any(|p| p.name.as_deref() == Some("metrics") && p.port == 9437),
                    "{file}: {ports:?}"
                );
            }
            _ => {}
        }
    }
    assert!(
        objects
            .iter()
            .any(|(_, o)| matches!(o, Object::PodMonitor(_)))
    );
}

#[test]
fn dashboard_has_a_panel_per_detector_by_pod() {
    let text = read("grafana/lostwrite.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let exprs = |p: &serde_json::Value| -> Vec<String> {
        p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["expr"].as_str().map(str::to_owned))
            .collect()
    };
    for counter in LOSS_COUNTERS {
        let panel = panels
            .iter()
            .find(|p| exprs(p).iter().any(|e| e.contains(counter)))
            .unwrap_or_else(|| panic!("no panel on {counter}"));
        assert!(
            panel["title"].as_str().unwrap_or("").ends_with(" by pod"),
            "{}",
            panel["title"]
        );
        for e in exprs(panel) {
            assert!(e.contains("by (namespace, pod"), "{counter}: {e}");
        }
    }
    // The peers that left with data in flight have a panel of their own.
    let peer = panels
        .iter()
        .find(|p| exprs(p).iter().any(|e| e.contains(r#"ended_by="peer""#)))
        .expect("a panel of the losses peers chose");
    assert!(
        exprs(peer).iter().all(|e| e.contains(r#"ended_by="peer""#)),
        "{peer}"
    );
    let mut ids: Vec<i64> = panels.iter().filter_map(|p| p["id"].as_i64()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids must be unique");
    assert_eq!(dash["uid"], "lostwrite");
}
