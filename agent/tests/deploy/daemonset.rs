//! The DaemonSet's security and operability properties (README: Deployment).

use std::collections::BTreeSet;

use k8s_openapi::{
    api::core::v1::{Container, PodSpec, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::{Object, objects, read};

const PORT: i32 = 9437;

/// The hostPaths the agent reads, all read-only.
const HOST_PATHS: [&str; 5] = [
    "/sys/kernel/btf",
    "/sys/kernel/tracing",
    "/sys/fs/cgroup",
    "/var/log/pods",
    "/var/log/containers",
];

pub fn pod_spec(objects: &[(String, Object)]) -> PodSpec {
    let mut sets = objects.iter().filter_map(|(_, o)| match o {
        Object::DaemonSet(d) => Some(d),
        _ => None,
    });
    let ds = sets.next().expect("a DaemonSet");
    assert!(sets.next().is_none(), "one DaemonSet");
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("a pod template")
}

pub fn agent(pod: &PodSpec) -> Container {
    assert_eq!(pod.containers.len(), 1, "one container");
    pod.containers[0].clone()
}

#[test]
fn not_privileged_and_only_the_needed_capabilities() {
    let pod = pod_spec(&objects());
    let sc = agent(&pod).security_context.expect("a securityContext");
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    let added: BTreeSet<String> = caps.add.unwrap_or_default().into_iter().collect();
    let want: BTreeSet<String> = CAPABILITIES.map(String::from).into();
    assert_eq!(
        added, want,
        "no SYS_ADMIN, nothing beyond what the agent uses"
    );
    assert_eq!(
        sc.seccomp_profile.map(|p| p.type_),
        Some("RuntimeDefault".to_owned())
    );

    // Namespaces: the host's pids for /proc lookups, nothing else.
    assert_eq!(pod.host_pid, Some(true));
    assert_ne!(pod.host_network, Some(true));
    assert_ne!(pod.host_ipc, Some(true));
}

/// The capabilities the DaemonSet adds by default.
pub const CAPABILITIES: [&str; 4] = ["BPF", "PERFMON", "SYS_RESOURCE", "SYS_PTRACE"];

/// Each of `caps` is added on a `- CAP # why` line of the manifest `text`, with a comment that
/// says something.
pub fn capabilities_say_why(text: &str, caps: &[&str]) {
    for cap in caps {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("- {cap} ")))
            .unwrap_or_else(|| panic!("no `- {cap}` line"));
        let (_, why) = line
            .split_once('#')
            .unwrap_or_else(|| panic!("{cap} has no comment: {line:?}"));
        assert!(why.trim().len() > 20, "{cap}: {why:?} explains nothing");
    }
}

#[test]
fn every_capability_says_why() {
    let text = read("kubernetes/daemonset.yaml");
    capabilities_say_why(&text, &CAPABILITIES);
    assert!(
        text.contains("hostPID: true") && text.contains("/proc/<pid>/cgroup"),
        "hostPID needs its reason beside it"
    );
}

#[test]
fn host_paths_are_the_expected_ones_and_read_only() {
    let pod = pod_spec(&objects());
    let volumes = pod.volumes.clone().unwrap_or_default();
    let host: BTreeSet<String> = volumes
        .iter()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone()))
        .collect();
    assert_eq!(host, HOST_PATHS.map(String::from).into());
    let mounts = agent(&pod).volume_mounts.unwrap_or_default();
    for v in &volumes {
        let m = mounts
            .iter()
            .find(|m| m.name == v.name)
            .unwrap_or_else(|| panic!("volume {} is not mounted", v.name));
        assert_eq!(m.read_only, Some(true), "{} must be read-only", m.name);
        let h = v.host_path.as_ref().expect("only hostPath volumes");
        // Mounted where the agent looks by default: no path flags needed.
        assert_eq!(m.mount_path, h.path, "{}", m.name);
    }
}

fn healthz(probe: Option<Probe>, what: &str) {
    let probe = probe.unwrap_or_else(|| panic!("no {what} probe"));
    let get = probe
        .http_get
        .unwrap_or_else(|| panic!("{what}: not an HTTP probe"));
    assert_eq!(get.path.as_deref(), Some("/healthz"), "{what}");
    assert_eq!(get.port, IntOrString::String("metrics".into()), "{what}");
}

#[test]
fn probes_resources_ports_and_args() {
    let pod = pod_spec(&objects());
    let c = agent(&pod);
    healthz(c.liveness_probe.clone(), "liveness");
    healthz(c.readiness_probe.clone(), "readiness");
    healthz(c.startup_probe.clone(), "startup");

    let ports = c.ports.clone().unwrap_or_default();
    assert!(
        ports
            .iter()
            .any(|p| p.name.as_deref() == Some("metrics") && p.container_port == PORT),
        "{ports:?}"
    );

    let res = c.resources.clone().expect("resources");
    for (what, set) in [("requests", &res.requests), ("limits", &res.limits)] {
        let set = set.clone().unwrap_or_else(|| panic!("no {what}"));
        for key in ["cpu", "memory"] {
            assert!(set.contains_key(key), "no {key} in {what}");
        }
    }

    let args = c.args.clone().unwrap_or_default();
    let pairs: Vec<(&str, &str)> = args
        .windows(2)
        .map(|w| (w[0].as_str(), w[1].as_str()))
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("run"));
    assert!(pairs.contains(&("--listen", "0.0.0.0:9437")), "{args:?}");
    assert!(pairs.contains(&("--kubernetes", "on")), "{args:?}");
    // Every flag exists in this agent.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["run", "--help"])
        .output()
        .expect("agent run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(&format!("{flag} ")),
            "`agent run` has no {flag}"
        );
    }
}

#[test]
fn runs_on_every_node_and_is_scraped() {
    let objects = objects();
    let pod = pod_spec(&objects);
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "a toleration of every taint: {tolerations:?}"
    );

    let ds = objects
        .iter()
        .find_map(|(_, o)| match o {
            Object::DaemonSet(d) => Some(d),
            _ => None,
        })
        .unwrap();
    let annotations = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    for (k, v) in [
        ("prometheus.io/scrape", "true"),
        ("prometheus.io/port", "9437"),
        ("prometheus.io/path", "/metrics"),
    ] {
        assert_eq!(annotations.get(k).map(String::as_str), Some(v), "{k}");
    }

    // The image is this version of the agent, here and in the kustomization.
    let image = agent(&pod).image.expect("an image");
    let version = env!("CARGO_PKG_VERSION");
    assert!(image.ends_with(&format!(":{version}")), "{image}");
    let tags: Vec<String> = objects
        .iter()
        .filter_map(|(_, o)| match o {
            Object::Kustomization(k) => Some(k),
            _ => None,
        })
        .flat_map(|k| k.images.iter().filter_map(|i| i.new_tag.clone()))
        .collect();
    assert_eq!(tags, [version], "kustomization image tags");

    // The namespace admits it (hostPID, hostPath and capabilities are beyond "baseline").
    let ns = objects
        .iter()
        .find_map(|(_, o)| match o {
            Object::Namespace(n) => Some(n),
            _ => None,
        })
        .expect("a Namespace");
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged")
    );
}
