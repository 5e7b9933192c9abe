//! The deployment files in deploy/: every YAML document parses into its real type, with unknown
//! fields an error (a misspelt `readOnlyRootFilesystem` would otherwise be silently ignored by
//! the API server's lenient decoding and by this test alike), and the security properties the
//! project promises hold. No cluster and no root needed.
//!
//! Kubernetes objects use k8s-openapi's types; the Prometheus Operator's CRDs, kustomize's
//! Kustomization and Prometheus' rule files use the typed structs in [`types`], which deny
//! unknown fields themselves. The Helm chart is rendered by Helm and checked the same way
//! ([`helm`]).

mod daemonset;
mod helm;
mod monitoring;
mod types;

use std::{
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Namespace, Service, ServiceAccount},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use crate::types::{
    Kustomization, PodMonitor, PrometheusRule, RuleFile, RuleTestFile, ServiceMonitor,
};

/// The repository's deploy/ directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

pub fn read(rel: &str) -> String {
    let path = deploy_dir().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The Helm chart, relative to deploy/.
pub const CHART: &str = "helm/lostwrite";

/// Every `*.yaml`/`*.yml` under deploy/, relative to it, sorted; not deploy/helm/'s: the
/// chart's templates are Go templates, not YAML, and its values file is no Kubernetes object.
/// [`helm`] checks what Helm renders from them instead.
fn yaml_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path == deploy_dir().join("helm") {
                continue;
            }
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let root = deploy_dir();
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut rel: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    rel.sort();
    rel
}

/// The documents of a YAML file (`---`-separated).
pub fn documents(rel: &str) -> Vec<Value> {
    parse_documents(rel, &read(rel))
}

/// The documents of YAML `text` (`---`-separated), empty ones left out; `what` names it in a
/// panic.
pub fn parse_documents(what: &str, text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| {
            <Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{what}: not YAML: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Deserializes `value` as a `T`, failing on any field `T` does not have.
pub fn strict<T: DeserializeOwned>(what: &str, value: Value) -> Result<T, String> {
    let mut unknown = Vec::new();
    // serde_ignored writes an Option's `Some` as a `?` segment; drop those for a readable path.
    let mut record = |path: serde_ignored::Path<'_>| {
        let path = path.to_string();
        let segments: Vec<&str> = path.split('.').filter(|s| *s != "?").collect();
        unknown.push(segments.join("."));
    };
    let parsed: T =
        serde_ignored::deserialize(value, &mut record).map_err(|e| format!("{what}: {e}"))?;
    if unknown.is_empty() {
        Ok(parsed)
    } else {
        Err(format!("{what}: unknown fields {unknown:?}"))
    }
}

/// A Kubernetes object from deploy/kubernetes/ or the Helm chart.
#[derive(Debug)]
pub enum Object {
    Namespace(Box<Namespace>),
    ServiceAccount(Box<ServiceAccount>),
    DaemonSet(Box<DaemonSet>),
    Service(Box<Service>),
    NetworkPolicy(Box<NetworkPolicy>),
    ConfigMap(Box<ConfigMap>),
    PodMonitor(Box<PodMonitor>),
    ServiceMonitor(Box<ServiceMonitor>),
    PrometheusRule(Box<PrometheusRule>),
    Kustomization(Box<Kustomization>),
}

impl Object {
    /// The object's metadata (a Kustomization has none).
    pub fn metadata_mut(&mut self) -> Option<&mut ObjectMeta> {
        Some(match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::ServiceAccount(o) => &mut o.metadata,
            Object::DaemonSet(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::NetworkPolicy(o) => &mut o.metadata,
            Object::ConfigMap(o) => &mut o.metadata,
            Object::PodMonitor(o) => &mut o.metadata,
            Object::ServiceMonitor(o) => &mut o.metadata,
            Object::PrometheusRule(o) => &mut o.metadata,
            Object::Kustomization(_) => return None,
        })
    }
}

/// Types a document by its apiVersion and kind. Only the kinds the project ships are known:
/// anything else (an RBAC object, say) is an error to be looked at, not skipped.
pub fn object(what: &str, doc: Value) -> Result<Object, String> {
    let field = |k: &str| doc.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    Ok(match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => Object::Namespace(strict(what, doc)?),
        ("v1", "ServiceAccount") => Object::ServiceAccount(strict(what, doc)?),
        ("v1", "Service") => Object::Service(strict(what, doc)?),
        ("v1", "ConfigMap") => Object::ConfigMap(strict(what, doc)?),
        ("apps/v1", "DaemonSet") => Object::DaemonSet(strict(what, doc)?),
        ("networking.k8s.io/v1", "NetworkPolicy") => Object::NetworkPolicy(strict(what, doc)?),
        ("monitoring.coreos.com/v1", "PodMonitor") => Object::PodMonitor(strict(what, doc)?),
        ("monitoring.coreos.com/v1", "ServiceMonitor") => {
            Object::ServiceMonitor(strict(what, doc)?)
        }
        ("monitoring.coreos.com/v1", "PrometheusRule") => {
            Object::PrometheusRule(strict(what, doc)?)
        }
        ("kustomize.config.k8s.io/v1beta1", "Kustomization") => {
            Object::Kustomization(strict(what, doc)?)
        }
        other => return Err(format!("{what}: no schema for {other:?}")),
    })
}

/// Every object in deploy/kubernetes/, with the file it came from.
pub fn objects() -> Vec<(String, Object)> {
    yaml_files()
        .into_iter()
        .filter(|f| f.starts_with("kubernetes/"))
        .flat_map(|f| {
            documents(&f)
                .into_iter()
                .enumerate()
                .map(move |(i, doc)| {
                    let what = format!("{f} document {}", i + 1);
                    (
                        f.clone(),
                        object(&what, doc).unwrap_or_else(|e| panic!("{e}")),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_yaml_document_parses_into_its_type() {
    let files = yaml_files();
    let mut checked = Vec::new();
    for file in &files {
        let docs = documents(file);
        assert!(!docs.is_empty(), "{file} has no document");
        for (i, doc) in docs.into_iter().enumerate() {
            let what = format!("{file} document {}", i + 1);
            let kind = if file.starts_with("kubernetes/") {
                object(&what, doc).map(|o| discriminant(&o))
            } else if file == "prometheus/alerts.yaml" {
                strict::<RuleFile>(&what, doc).map(|_| "RuleFile")
            } else if file == "prometheus/alerts_test.yaml" {
                strict::<RuleTestFile>(&what, doc).map(|_| "RuleTestFile")
            } else {
                Err(format!(
                    "{what}: no schema for this file; add one to tests/deploy"
                ))
            }
            .unwrap_or_else(|e| panic!("{e}"));
            checked.push(format!("{file}: {kind}"));
        }
    }
    eprintln!("{}", checked.join("\n"));
    for want in [
        "kubernetes/namespace.yaml",
        "kubernetes/serviceaccount.yaml",
        "kubernetes/daemonset.yaml",
        "kubernetes/service.yaml",
        "kubernetes/networkpolicy.yaml",
        "kubernetes/kustomization.yaml",
        "kubernetes/prometheus-operator/podmonitor.yaml",
        "kubernetes/prometheus-operator/prometheusrule.yaml",
        "kubernetes/prometheus-operator/kustomization.yaml",
        "prometheus/alerts.yaml",
    ] {
        assert!(
            checked.iter().any(|c| c.starts_with(&format!("{want}: "))),
            "{want} was not checked: {checked:?}"
        );
    }
}

pub fn discriminant(o: &Object) -> &'static str {
    match o {
        Object::Namespace(_) => "Namespace",
        Object::ServiceAccount(_) => "ServiceAccount",
        Object::DaemonSet(_) => "DaemonSet",
        Object::Service(_) => "Service",
        Object::NetworkPolicy(_) => "NetworkPolicy",
        Object::ConfigMap(_) => "ConfigMap",
        Object::PodMonitor(_) => "PodMonitor",
        Object::ServiceMonitor(_) => "ServiceMonitor",
        Object::PrometheusRule(_) => "PrometheusRule",
        Object::Kustomization(_) => "Kustomization",
    }
}

#[test]
fn unknown_fields_and_kinds_are_errors() {
    // The check is only worth something if it catches a misspelling deep inside a real type.
    let mut doc = documents("kubernetes/daemonset.yaml").remove(0);
    let container = &mut doc["spec"]["template"]["spec"]["containers"][0];
    container["securityContext"]["readOnlyRootFilesytem"] = Value::Bool(true);
    let err = object("daemonset", doc).unwrap_err();
    assert!(
        err.contains("spec.template.spec.containers.0.securityContext.readOnlyRootFilesytem"),
        "{err}"
    );

    let mut doc = documents("kubernetes/prometheus-operator/podmonitor.yaml").remove(0);
    doc["spec"]["podMetricsEndpoint"] = Value::Null;
    let err = object("podmonitor", doc).unwrap_err();
    assert!(err.contains("podMetricsEndpoint"), "{err}");

    let mut doc = documents("kubernetes/kustomization.yaml").remove(0);
    doc["commonLabel"] = Value::Null;
    assert!(object("kustomization", doc).is_err());

    let role: Value = serde_yaml_ng::from_str(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: x}\n",
    )
    .unwrap();
    let err = object("role", role).unwrap_err();
    assert!(err.contains("no schema"), "{err}");

    let mut rules = documents("prometheus/alerts.yaml").remove(0);
    rules["groups"][0]["rules"][0]["annotation"] = Value::Null;
    assert!(strict::<RuleFile>("alerts", rules).is_err());
}

#[test]
fn kustomizations_list_every_manifest_and_nothing_else() {
    for (file, object) in objects() {
        let Object::Kustomization(k) = object else {
            continue;
        };
        let dir = deploy_dir().join(Path::new(&file).parent().unwrap());
        for r in &k.resources {
            assert!(dir.join(r).exists(), "{file}: {r} does not exist");
        }
        let mut listed: Vec<&str> = k
            .resources
            .iter()
            .map(String::as_str)
            .filter(|r| r.ends_with(".yaml"))
            .collect();
        listed.sort_unstable();
        let mut present: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
            .collect();
        present.sort();
        assert_eq!(listed, present, "{file} must list every manifest beside it");
        assert_eq!(k.namespace.as_deref(), Some("lostwrite"), "{file}");
    }
}

#[test]
fn no_rbac_and_no_api_token() {
    // The agent needs no API access (README: Deployment): no roles, no bindings, no token in the pods.
    let objects = objects();
    let account = objects
        .iter()
        .find_map(|(_, o)| match o {
            Object::ServiceAccount(a) => Some(a),
            _ => None,
        })
        .expect("a ServiceAccount");
    assert_eq!(account.automount_service_account_token, Some(false));
    let pod = daemonset::pod_spec(&objects);
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(
        pod.service_account_name.as_deref(),
        account.metadata.name.as_deref()
    );
}

#[test]
fn dockerfile_builds_with_xtask_in_two_stages() {
    let text = read("Dockerfile");
    let from: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(from.len(), 2, "a builder and a runtime stage: {from:?}");
    assert!(from[0].ends_with(" AS build"), "{from:?}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("RUN cargo xtask build ")),
        "the image must build with the same xtask build CI uses"
    );
    assert!(
        text.contains("COPY --from=build /out/agent /usr/local/bin/agent"),
        "{text}"
    );
    assert!(text.contains(r#"ENTRYPOINT ["/usr/local/bin/agent"]"#));
}
