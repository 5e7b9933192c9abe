//! Typed schemas for what k8s-openapi does not cover: the Prometheus Operator's PodMonitor,
//! ServiceMonitor and PrometheusRule, kustomize's Kustomization, and Prometheus' rule and rule-test files. Each
//! covers the fields the project uses (more can be added from the upstream references) and
//! denies the rest, so a typo is an error rather than a field the tooling ignores.
//!
//! References: the Prometheus Operator API (monitoring.coreos.com/v1 PodMonitorSpec,
//! PodMetricsEndpoint, ServiceMonitorSpec, Endpoint, PrometheusRuleSpec), kustomize's types.Kustomization, and Prometheus'
//! rule file and `promtool test rules` formats.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodMonitor {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: PodMonitorSpec,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodMonitorSpec {
    pub selector: LabelSelector,
    #[serde(default)]
    pub namespace_selector: Option<NamespaceSelector>,
    #[serde(default)]
    pub job_label: Option<String>,
    pub pod_metrics_endpoints: Vec<ScrapeEndpoint>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSelector {
    #[serde(default)]
    pub any: Option<bool>,
    #[serde(default)]
    pub match_names: Vec<String>,
}

/// A port to scrape: the fields the project sets of the Operator's `PodMetricsEndpoint` (a
/// PodMonitor's) and `Endpoint` (a ServiceMonitor's), which are the same.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScrapeEndpoint {
    pub port: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub scrape_timeout: Option<String>,
    #[serde(default)]
    pub scheme: Option<String>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceMonitor {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ServiceMonitorSpec,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceMonitorSpec {
    pub selector: LabelSelector,
    #[serde(default)]
    pub namespace_selector: Option<NamespaceSelector>,
    #[serde(default)]
    pub job_label: Option<String>,
    pub endpoints: Vec<ScrapeEndpoint>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusRule {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: RuleFile,
}

/// A Prometheus rule file, which is also a PrometheusRule's spec.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleGroup {
    pub name: String,
    #[serde(default)]
    pub interval: Option<String>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub alert: Option<String>,
    #[serde(default)]
    pub record: Option<String>,
    pub expr: String,
    #[serde(default, rename = "for")]
    pub for_: Option<String>,
    #[serde(default)]
    pub keep_firing_for: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTestFile {
    pub rule_files: Vec<String>,
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "schema only: parsed so the file is checked, never read"
    )]
    pub evaluation_interval: Option<String>,
    pub tests: Vec<RuleTest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTest {
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "schema only: parsed so the file is checked, never read"
    )]
    pub name: Option<String>,
    #[expect(
        dead_code,
        reason = "schema only: parsed so the file is checked, never read"
    )]
    pub interval: String,
    pub input_series: Vec<InputSeries>,
    #[serde(default)]
    pub alert_rule_test: Vec<AlertRuleTest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSeries {
    pub series: String,
    #[expect(
        dead_code,
        reason = "schema only: parsed so the file is checked, never read"
    )]
    pub values: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleTest {
    pub eval_time: String,
    pub alertname: String,
    pub exp_alerts: Vec<ExpectedAlert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedAlert {
    #[serde(default)]
    pub exp_labels: BTreeMap<String, String>,
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "schema only: parsed so the file is checked, never read"
    )]
    pub exp_annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Kustomization {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub resources: Vec<String>,
    #[serde(default)]
    pub images: Vec<Image>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Image {
    pub name: String,
    #[serde(default)]
    pub new_name: Option<String>,
    #[serde(default)]
    pub new_tag: Option<String>,
    #[serde(default)]
    pub digest: Option<String>,
}
