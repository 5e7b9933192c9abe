//! Which pod an incident belongs to, on Kubernetes, without API credentials (README: Deployment).
//!
//! The chain: the socket owner's cgroup id (captured by the programs) gives a cgroup v2 path,
//! or, where that names no container (cgroup v1 hosts, where every process is in the v2 root),
//! the owner's `/proc/<pid>/cgroup` does; the path gives the container id ([`cgroup`]); the
//! kubelet's log layout gives the pod ([`kubelet`]). Results are cached with expiry.

mod cache;
mod cgroup;
mod kubelet;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use cache::TtlCache;
use cgroup::{CgroupTree, ContainerRef};
use kubelet::LogIndex;

use crate::correlate::Incident;

/// Where an incident's process runs. `container` is empty when the pod has several containers
/// and only its UID was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub container: String,
}

/// An incident with the pod its process runs in: what the metrics and the incident log report.
/// Correlation never touches the filesystem, so its incidents carry no pod; the agent attributes
/// each reported one afterwards ([`Resolver::resolve`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Attributed {
    pub incident: Incident,
    /// The process's pod, on Kubernetes.
    pub pod: Option<Arc<Pod>>,
}

impl Attributed {
    /// An incident outside Kubernetes, or whose pod is unknown.
    pub fn bare(incident: Incident) -> Self {
        Self {
            incident,
            pod: None,
        }
    }

    /// One sentence a person understands: [`Incident::sentence`], the process named with its
    /// pod.
    pub fn sentence(&self) -> String {
        let i = &self.incident;
        let who = match &self.pod {
            Some(p) if p.container.is_empty() => {
                format!("pid {} ({}, pod {}/{})", i.pid, i.comm, p.namespace, p.name)
            }
            Some(p) => format!(
                "pid {} ({}, container {} of pod {}/{})",
                i.pid, i.comm, p.container, p.namespace, p.name
            ),
            None => return i.sentence(),
        };
        i.sentence_about(&who)
    }
}

impl From<Incident> for Attributed {
    fn from(incident: Incident) -> Self {
        Self::bare(incident)
    }
}

/// Attributed incidents for other modules' tests.
#[cfg(test)]
pub mod samples {
    use super::*;
    use crate::correlate::samples::seed;

    /// The seed, in a pod.
    pub fn seed_in_pod() -> Attributed {
        Attributed {
            incident: seed(),
            pod: Some(Arc::new(Pod {
                namespace: "shop".into(),
                name: "checkout-7d9f8b6c5-x2x9q".into(),
                container: "api".into(),
            })),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error(
        "Kubernetes attribution is on, but {} has neither pods/ nor containers/ (the kubelet's \
         log directories): mount the node's /var/log/pods and /var/log/containers into the agent, \
         or point --pod-logs-root at their parent",
        root.display()
    )]
    NoLogDirs { root: PathBuf },
}

/// `--kubernetes auto`: on inside a pod (the kubelet sets KUBERNETES_SERVICE_HOST in every
/// container) or on a node (the kubelet's log directories exist).
pub fn detected(logs_root: &Path) -> bool {
    detect(
        std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        logs_root,
    )
}

fn detect(in_pod: bool, logs_root: &Path) -> bool {
    in_pod || LogIndex::new(logs_root.into()).present()
}

/// Where the resolver looks; real paths in the agent, scratch trees in tests.
#[derive(Clone, Debug)]
pub struct Paths {
    /// procfs of the host's pid namespace (the programs report host pids).
    pub proc: PathBuf,
    /// Where the cgroup hierarchies are mounted; v2 is there or in `unified/`.
    pub cgroup_mount: PathBuf,
    /// The parent of the kubelet's `pods/` and `containers/`.
    pub logs: PathBuf,
}

impl Paths {
    pub fn host(logs: PathBuf) -> Self {
        Self {
            proc: "/proc".into(),
            cgroup_mount: "/sys/fs/cgroup".into(),
            logs,
        }
    }
}

/// Resolves (cgroup id, pid) to a pod, caching what it found and, briefly, what it did not.
#[derive(Debug)]
pub struct Resolver {
    proc: PathBuf,
    cgroups: Option<CgroupTree>,
    logs: LogIndex,
    by_cgroup: TtlCache<u64, Option<Arc<Pod>>>,
    by_pid: TtlCache<u32, Option<Arc<Pod>>>,
}

impl Resolver {
    /// A cgroup id names one cgroup for the life of the host (kernfs ids are not reused on
    /// 64-bit), and a container's cgroup never changes pods: its answer can be kept long.
    const CGROUP_TTL: Duration = Duration::from_secs(600);
    /// Pids are reused, so a pid's answer is kept briefly.
    const PID_TTL: Duration = Duration::from_secs(10);
    /// A miss may be a container whose log symlink the kubelet has not made yet.
    const MISS_TTL: Duration = Duration::from_secs(5);
    const MAX_ENTRIES: usize = 16_384;

    /// `required`: fail when the kubelet's log directories are missing (`--kubernetes on`)
    /// rather than run with pod labels that stay empty.
    pub fn new(paths: Paths, required: bool) -> Result<Self, K8sError> {
        let logs = LogIndex::new(paths.logs);
        if required && !logs.present() {
            return Err(K8sError::NoLogDirs {
                root: logs.root().to_owned(),
            });
        }
        Ok(Self {
            proc: paths.proc,
            cgroups: cgroup::find_v2_root(&paths.cgroup_mount).map(CgroupTree::new),
            logs,
            by_cgroup: TtlCache::new(Self::MAX_ENTRIES),
            by_pid: TtlCache::new(Self::MAX_ENTRIES),
        })
    }

    /// Whether the kubelet's log directories are there to name pods.
    pub fn has_logs(&self) -> bool {
        self.logs.present()
    }

    /// For the start-up log line.
    pub fn describe(&self) -> String {
        let v2 = self.cgroups.as_ref().map_or_else(
            || "no cgroup v2 hierarchy (pods found from /proc/<pid>/cgroup)".to_owned(),
            |t| format!("cgroup v2 at {}", t.root().display()),
        );
        let logs = if self.logs.present() {
            format!("kubelet logs at {}", self.logs.root().display())
        } else {
            format!(
                "no kubelet logs at {} (pod labels stay empty)",
                self.logs.root().display()
            )
        };
        format!("{v2}, {logs}")
    }

    /// The pod of the process that owns a socket: by its cgroup id, else by its pid (0 = unknown).
    pub fn resolve(&mut self, cgroup_id: u64, pid: u32) -> Option<Arc<Pod>> {
        self.resolve_at(cgroup_id, pid, Instant::now())
    }

    fn resolve_at(&mut self, cgroup_id: u64, pid: u32, now: Instant) -> Option<Arc<Pod>> {
        if cgroup_id != 0 {
            let found = match self.by_cgroup.get(&cgroup_id, now) {
                Some(cached) => cached,
                None => {
                    let found = self.by_cgroup_id(cgroup_id, now);
                    let ttl = Self::ttl(&found, Self::CGROUP_TTL);
                    self.by_cgroup.insert(cgroup_id, found.clone(), ttl, now);
                    found
                }
            };
            if found.is_some() {
                return found;
            }
        }
        if pid == 0 {
            return None;
        }
        if let Some(cached) = self.by_pid.get(&pid, now) {
            return cached;
        }
        let found = self.by_pid(pid, now);
        let ttl = Self::ttl(&found, Self::PID_TTL);
        self.by_pid.insert(pid, found.clone(), ttl, now);
        found
    }

    /// Every pod the kubelet's log directories name now, as (namespace, name). The kubelet
    /// removes a pod's directory when the pod is deleted.
    pub fn pods(&mut self, now: Instant) -> HashSet<PodKey> {
        self.logs.pods(now)
    }

    fn by_cgroup_id(&mut self, id: u64, now: Instant) -> Option<Arc<Pod>> {
        let path = self.cgroups.as_mut()?.path(id, now)?;
        let container = cgroup::container_in(path)?;
        self.logs.lookup(&container, now)
    }

    fn by_pid(&mut self, pid: u32, now: Instant) -> Option<Arc<Pod>> {
        let text = std::fs::read_to_string(self.proc.join(format!("{pid}/cgroup"))).ok()?;
        cgroup::containers_of_process(&text)
            .iter()
            .find_map(|c| self.logs.lookup(c, now))
    }

    fn ttl(found: &Option<Arc<Pod>>, hit: Duration) -> Duration {
        if found.is_some() { hit } else { Self::MISS_TTL }
    }
}

/// A pod as the series know it: (namespace, name).
pub type PodKey = (String, String);

/// Drops the series of pods that are gone ([`crate::metrics::Metrics::forget_pod`]): a pod
/// whose log directory has been gone for `grace` loses its series, so a node with pod churn
/// keeps `/metrics` as large as its live pods' losses, not every pod's it ever ran. The grace is
/// longer than a few scrape intervals, so the last increments are scraped before they go.
#[derive(Debug)]
pub struct PodExpiry {
    grace: Duration,
    next_check: Option<Instant>,
    gone_since: HashMap<PodKey, Instant>,
}

impl PodExpiry {
    /// Looked at this often, or twice per grace if that is shorter.
    const PERIOD: Duration = Duration::from_secs(30);

    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            next_check: None,
            gone_since: HashMap::new(),
        }
    }

    /// At most once per period: which pods with series are gone, and the series of those gone
    /// for the whole grace dropped. Returns the pods dropped, with their series counts.
    pub fn run(
        &mut self,
        now: Instant,
        resolver: &mut Resolver,
        metrics: &crate::metrics::Metrics,
    ) -> Vec<(PodKey, usize)> {
        if self.next_check.is_some_and(|t| now < t) {
            return vec![];
        }
        self.next_check = Some(now + Self::PERIOD.min(self.grace / 2));
        let with_series = metrics.pods_with_series();
        if with_series.is_empty() {
            self.gone_since.clear();
            return vec![];
        }
        let live = resolver.pods(now);
        self.gone_since
            .retain(|k, _| with_series.contains(k) && !live.contains(k));
        let mut dropped = Vec::new();
        for key in with_series {
            if live.contains(&key) {
                continue;
            }
            let since = *self.gone_since.entry(key.clone()).or_insert(now);
            if now.saturating_duration_since(since) >= self.grace {
                self.gone_since.remove(&key);
                let n = metrics.forget_pod(&key);
                dropped.push((key, n));
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests;
