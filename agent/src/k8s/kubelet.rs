//! From a container id to its pod, through the log layout the kubelet keeps on every node, so
//! no API credentials are needed:
//! - `<root>/containers/<pod>_<namespace>_<container>-<container id>.log`, a symlink to
//! - `<root>/pods/<namespace>_<pod>_<pod uid>/<container>/<restart count>.log`.
//!
//! The names cannot be ambiguous: namespaces and pod names are DNS subdomains and container names
//! DNS labels (no `_`), and container ids are hex (no `-`). The kubelet cuts a symlink name to
//! 255 bytes (ext4's limit; pkg/kubelet/kuberuntime/legacy.go, `logSymlink`), which can shorten
//! the id; the symlink's target still has the full names, and a cut id is matched as a prefix.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{ContainerRef, Pod};

/// The pod of a `containers/` entry: `<pod>_<namespace>_<container>-<id>.log`.
pub fn parse_container_log(name: &str) -> Option<(Pod, &str)> {
    let stem = name.strip_suffix(".log")?;
    let mut parts = stem.splitn(3, '_');
    let (pod, namespace, rest) = (parts.next()?, parts.next()?, parts.next()?);
    let (container, id) = rest.rsplit_once('-')?;
    let valid = !pod.is_empty()
        && !namespace.is_empty()
        && !container.is_empty()
        && !id.is_empty()
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    valid.then(|| {
        (
            Pod {
                namespace: namespace.to_owned(),
                name: pod.to_owned(),
                container: container.to_owned(),
            },
            id,
        )
    })
}

/// A `pods/` directory name: `<namespace>_<pod>_<uid>` -> (namespace, pod, uid).
pub fn parse_pod_dir(name: &str) -> Option<(&str, &str, &str)> {
    let mut parts = name.splitn(3, '_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    (!namespace.is_empty() && !pod.is_empty() && !uid.is_empty() && !uid.contains('_'))
        .then_some((namespace, pod, uid))
}

/// A symlink target `…/<namespace>_<pod>_<uid>/<container>/<n>.log` -> the pod.
fn parse_log_target(target: &Path) -> Option<Pod> {
    let mut up = target.iter().rev().skip(1);
    let container = up.next()?.to_str()?;
    let (namespace, pod, _) = parse_pod_dir(up.next()?.to_str()?)?;
    Some(Pod {
        namespace: namespace.to_owned(),
        name: pod.to_owned(),
        container: container.to_owned(),
    })
}

/// A pod's log directory: who it is and which containers it has logged for.
#[derive(Debug)]
struct PodDir {
    namespace: String,
    name: String,
    containers: Vec<String>,
}

/// An index of the kubelet's log directories, refreshed when a lookup misses.
#[derive(Debug)]
pub struct LogIndex {
    root: PathBuf,
    by_container: HashMap<String, Arc<Pod>>,
    by_pod_uid: HashMap<String, PodDir>,
    scanned: Option<Instant>,
}

impl LogIndex {
    /// A new container's symlink appears moments after it starts; rescanning at most this often
    /// finds it soon without listing the directories for every incident.
    const RESCAN: Duration = Duration::from_secs(1);
    /// Past this age the index is rebuilt before it answers: pods come and go, and a pod's set
    /// of containers (which the UID fallback relies on) can grow.
    const MAX_AGE: Duration = Duration::from_secs(30);
    /// The shortest cut id matched as a prefix (docker's short ids have 12 digits).
    const MIN_PREFIX: usize = 12;

    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            by_container: HashMap::new(),
            by_pod_uid: HashMap::new(),
            scanned: None,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the kubelet's log directories exist under the root.
    pub fn present(&self) -> bool {
        self.root.join("pods").is_dir() || self.root.join("containers").is_dir()
    }

    /// The pod running `c`: by container id, else by the pod UID of its cgroup (then the
    /// container name is known only if the pod has a single container).
    pub fn lookup(&mut self, c: &ContainerRef, now: Instant) -> Option<Arc<Pod>> {
        let age = self.scanned.map(|t| now.saturating_duration_since(t));
        if age.is_some_and(|a| a < Self::MAX_AGE)
            && let Some(pod) = self.find(c)
        {
            return Some(pod);
        }
        if age.is_some_and(|a| a < Self::RESCAN) {
            return None;
        }
        self.scan(now);
        self.find(c)
    }

    /// Every pod the log directories name now (rescanned if the index is older than
    /// [`Self::RESCAN`]), as (namespace, name).
    pub fn pods(&mut self, now: Instant) -> HashSet<(String, String)> {
        if self
            .scanned
            .is_none_or(|t| now.saturating_duration_since(t) >= Self::RESCAN)
        {
            self.scan(now);
        }
        let by_uid = self
            .by_pod_uid
            .values()
            .map(|d| (d.namespace.clone(), d.name.clone()));
        let by_container = self
            .by_container
            .values()
            .map(|p| (p.namespace.clone(), p.name.clone()));
        by_uid.chain(by_container).collect()
    }

    fn find(&self, c: &ContainerRef) -> Option<Arc<Pod>> {
        if let Some(pod) = self.by_container.get(&c.id) {
            return Some(pod.clone());
        }
        let cut = self.by_container.iter().find(|(id, _)| {
            id.len() >= Self::MIN_PREFIX && id.len() < c.id.len() && c.id.starts_with(id.as_str())
        });
        if let Some((_, pod)) = cut {
            return Some(pod.clone());
        }
        let dir = self.by_pod_uid.get(c.pod_uid.as_deref()?)?;
        let container = match dir.containers.as_slice() {
            [only] => only.clone(),
            _ => String::new(),
        };
        Some(Arc::new(Pod {
            namespace: dir.namespace.clone(),
            name: dir.name.clone(),
            container,
        }))
    }

    fn scan(&mut self, now: Instant) {
        self.scanned = Some(now);
        self.by_container.clear();
        self.by_pod_uid.clear();
        for entry in read_dir(&self.root.join("containers")) {
            let name = entry.file_name();
            let Some((from_name, id)) = name.to_str().and_then(parse_container_log) else {
                continue;
            };
            // The target has the full names even when the symlink's own name was cut.
            let pod = fs::read_link(entry.path())
                .ok()
                .and_then(|t| parse_log_target(&t))
                .unwrap_or(from_name);
            self.by_container.insert(id.to_owned(), Arc::new(pod));
        }
        for entry in read_dir(&self.root.join("pods")) {
            let name = entry.file_name();
            let Some((namespace, pod, uid)) = name.to_str().and_then(parse_pod_dir) else {
                continue;
            };
            let mut containers: Vec<String> = read_dir(&entry.path())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            containers.sort();
            self.by_pod_uid.insert(
                uid.to_owned(),
                PodDir {
                    namespace: namespace.to_owned(),
                    name: pod.to_owned(),
                    containers,
                },
            );
        }
    }
}

/// The entries of a directory; none if it is missing or unreadable (the kubelet removes pods'
/// directories while we list them).
fn read_dir(dir: &Path) -> impl Iterator<Item = fs::DirEntry> {
    fs::read_dir(dir).into_iter().flatten().flatten()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    const ID: &str = "8a3d34a2bd2d5ab1c3b7e4a21b2f58a0cf0b8e1b2a2ea4e37c4f2ab5d9a6f0e1";
    const UID: &str = "3f8e2a8c-6f1d-4b0e-9a59-2b1c8c7d9e10";

    fn pod(ns: &str, name: &str, container: &str) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            container: container.into(),
        }
    }

    #[test]
    fn container_log_names() {
        assert_eq!(
            parse_container_log(&format!(
                "checkout-7d9f8b6c5-x2x9q_shop_api-server-{ID}.log"
            )),
            Some((pod("shop", "checkout-7d9f8b6c5-x2x9q", "api-server"), ID))
        );
        // kube-system's static pods carry the node name, dots included.
        assert_eq!(
            parse_container_log(&format!(
                "kube-apiserver-node-1.example.com_kube-system_kube-apiserver-{ID}.log"
            )),
            Some((
                pod(
                    "kube-system",
                    "kube-apiserver-node-1.example.com",
                    "kube-apiserver"
                ),
                ID
            ))
        );
        for bad in [
            format!("checkout_shop_api-{ID}"),
            format!("checkout_shop-{ID}.log"),
            "checkout_shop_api-XYZ.log".to_owned(),
            format!("_shop_api-{ID}.log"),
            "checkout_shop_api.log".to_owned(),
        ] {
            assert_eq!(parse_container_log(&bad), None, "{bad}");
        }
    }

    #[test]
    fn pod_dir_names() {
        assert_eq!(
            parse_pod_dir(&format!("shop_checkout-7d9f8b6c5-x2x9q_{UID}")),
            Some(("shop", "checkout-7d9f8b6c5-x2x9q", UID))
        );
        assert_eq!(parse_pod_dir("shop_checkout"), None);
        assert_eq!(parse_pod_dir("shop__uid"), None);
    }

    /// `root/pods/<ns>_<pod>_<uid>/<container>/0.log` and, if `id`, its `containers/` symlink.
    fn lay_out(root: &Path, ns: &str, name: &str, uid: &str, container: &str, id: Option<&str>) {
        let dir = root.join(format!("pods/{ns}_{name}_{uid}/{container}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("0.log"), "").unwrap();
        if let Some(id) = id {
            fs::create_dir_all(root.join("containers")).unwrap();
            symlink(
                dir.join("0.log"),
                root.join(format!("containers/{name}_{ns}_{container}-{id}.log")),
            )
            .unwrap();
        }
    }

    fn cref(id: &str, uid: Option<&str>) -> ContainerRef {
        ContainerRef {
            id: id.into(),
            pod_uid: uid.map(Into::into),
        }
    }

    #[test]
    fn index_finds_by_id_then_by_pod_uid() {
        let root = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut idx = LogIndex::new(root.path().to_owned());
        assert!(!idx.present());
        lay_out(root.path(), "shop", "checkout-1", UID, "api", Some(ID));
        assert!(idx.present());
        assert_eq!(
            idx.lookup(&cref(ID, None), t0).as_deref(),
            Some(&pod("shop", "checkout-1", "api"))
        );

        // No symlink (only pods/ is mounted): the pod UID from the cgroup, and the container
        // name because the pod has one container.
        let other = "1".repeat(64);
        let uid2 = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
        lay_out(root.path(), "web", "front-0", uid2, "nginx", None);
        let later = t0 + LogIndex::RESCAN;
        assert_eq!(
            idx.lookup(&cref(&other, Some(uid2)), later).as_deref(),
            Some(&pod("web", "front-0", "nginx"))
        );
        // With two containers, which one is unknown (seen once the index is rebuilt).
        lay_out(root.path(), "web", "front-0", uid2, "sidecar", None);
        let later = later + LogIndex::MAX_AGE;
        assert_eq!(
            idx.lookup(&cref(&other, Some(uid2)), later).as_deref(),
            Some(&pod("web", "front-0", ""))
        );
        assert_eq!(idx.lookup(&cref(&other, None), later), None);
    }

    #[test]
    fn new_containers_are_found_after_the_rescan_interval() {
        let root = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut idx = LogIndex::new(root.path().to_owned());
        assert_eq!(idx.lookup(&cref(ID, None), t0), None);
        lay_out(root.path(), "shop", "checkout-1", UID, "api", Some(ID));
        assert_eq!(
            idx.lookup(&cref(ID, None), t0 + Duration::from_millis(5)),
            None
        );
        assert!(idx.lookup(&cref(ID, None), t0 + LogIndex::RESCAN).is_some());
    }

    #[test]
    fn cut_symlink_names_use_the_target_and_an_id_prefix() {
        let root = tempfile::tempdir().unwrap();
        let long_pod = format!("batch-{}", "x".repeat(200));
        let dir = root
            .path()
            .join(format!("pods/jobs_{long_pod}_{UID}/worker"));
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(root.path().join("containers")).unwrap();
        let full = format!("{long_pod}_jobs_worker-{ID}");
        let cut = &full[..251];
        symlink(
            dir.join("0.log"),
            root.path().join(format!("containers/{cut}.log")),
        )
        .unwrap();
        let mut idx = LogIndex::new(root.path().to_owned());
        assert_eq!(
            idx.lookup(&cref(ID, None), Instant::now()).as_deref(),
            Some(&pod("jobs", &long_pod, "worker"))
        );
    }
}
