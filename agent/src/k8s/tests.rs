//! The whole chain over scratch trees shaped like a node's /proc, /sys/fs/cgroup and /var/log.

use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

use super::*;

const ID: &str = "8a3d34a2bd2d5ab1c3b7e4a21b2f58a0cf0b8e1b2a2ea4e37c4f2ab5d9a6f0e1";
const UID: &str = "3f8e2a8c-6f1d-4b0e-9a59-2b1c8c7d9e10";

struct Node {
    _dir: tempfile::TempDir,
    paths: Paths,
}

impl Node {
    /// A hybrid host: v1 hierarchies beside a v2 one in `unified/`.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths {
            proc: dir.path().join("proc"),
            cgroup_mount: dir.path().join("cgroup"),
            logs: dir.path().join("log"),
        };
        fs::create_dir_all(paths.cgroup_mount.join("unified")).unwrap();
        fs::write(paths.cgroup_mount.join("unified/cgroup.controllers"), "").unwrap();
        fs::create_dir_all(paths.logs.join("containers")).unwrap();
        Self { _dir: dir, paths }
    }

    /// A v2 cgroup; returns its id.
    fn cgroup(&self, path: &str) -> u64 {
        let dir = self.paths.cgroup_mount.join("unified").join(path);
        fs::create_dir_all(&dir).unwrap();
        fs::metadata(dir).unwrap().ino()
    }

    fn process(&self, pid: u32, cgroup: &str) {
        let dir = self.paths.proc.join(pid.to_string());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup"), cgroup).unwrap();
    }

    fn pod_logs(&self, ns: &str, pod: &str, container: &str, id: &str) {
        let dir = self
            .paths
            .logs
            .join(format!("pods/{ns}_{pod}_{UID}/{container}"));
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(
            dir.join("0.log"),
            self.paths
                .logs
                .join(format!("containers/{pod}_{ns}_{container}-{id}.log")),
        )
        .unwrap();
    }

    fn resolver(&self) -> Resolver {
        Resolver::new(self.paths.clone(), true).unwrap()
    }
}

fn pod(ns: &str, name: &str, container: &str) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        container: container.into(),
    }
}

fn scope() -> String {
    format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/\
         cri-containerd-{ID}.scope",
        UID.replace('-', "_")
    )
}

#[test]
fn cgroup_id_to_pod() {
    let node = Node::new();
    let id = node.cgroup(&scope());
    node.pod_logs("shop", "checkout-1", "api", ID);
    let mut r = node.resolver();
    let want = pod("shop", "checkout-1", "api");
    assert_eq!(r.resolve(id, 0).as_deref(), Some(&want));
    // The pid is not needed (and a wrong one does not matter) when the cgroup id resolves.
    assert_eq!(r.resolve(id, 99).as_deref(), Some(&want));
}

#[test]
fn pid_fallback_on_a_cgroup_v1_host() {
    let node = Node::new();
    // Every process is in the v2 root; the container shows in the v1 lines only.
    let root_id = fs::metadata(node.paths.cgroup_mount.join("unified"))
        .unwrap()
        .ino();
    node.process(
        4242,
        &format!("12:pids:/kubepods/besteffort/pod{UID}/{ID}\n0::/\n"),
    );
    node.pod_logs("shop", "checkout-1", "api", ID);
    let mut r = node.resolver();
    assert_eq!(
        r.resolve(root_id, 4242).as_deref(),
        Some(&pod("shop", "checkout-1", "api"))
    );
    // A cgroup id the agent has never seen (0: the owner was not captured) also falls back.
    assert_eq!(
        r.resolve(0, 4242).as_deref(),
        Some(&pod("shop", "checkout-1", "api"))
    );
}

#[test]
fn host_processes_and_gone_processes_have_no_pod() {
    let node = Node::new();
    let id = node.cgroup("system.slice/sshd.service");
    node.process(7, "0::/system.slice/sshd.service\n");
    let mut r = node.resolver();
    assert_eq!(r.resolve(id, 7), None);
    assert_eq!(r.resolve(0, 8), None, "no /proc entry");
    assert_eq!(r.resolve(0, 0), None);
}

#[test]
fn misses_expire_so_late_symlinks_are_found() {
    let node = Node::new();
    let id = node.cgroup(&scope());
    let mut r = node.resolver();
    let t0 = Instant::now();
    assert_eq!(r.resolve_at(id, 0, t0), None);
    node.pod_logs("shop", "checkout-1", "api", ID);
    assert_eq!(
        r.resolve_at(id, 0, t0 + Duration::from_secs(1)),
        None,
        "cached miss"
    );
    assert!(r.resolve_at(id, 0, t0 + Resolver::MISS_TTL).is_some());
}

#[test]
fn hits_are_cached() {
    let node = Node::new();
    let id = node.cgroup(&scope());
    node.pod_logs("shop", "checkout-1", "api", ID);
    let mut r = node.resolver();
    let t0 = Instant::now();
    assert!(r.resolve_at(id, 0, t0).is_some());
    // The container is gone from the disk, but its cgroup id still names it.
    fs::remove_dir_all(&node.paths.logs).unwrap();
    fs::remove_dir_all(node.paths.cgroup_mount.join("unified/kubepods.slice")).unwrap();
    assert!(r.resolve_at(id, 0, t0 + Duration::from_secs(60)).is_some());
    assert_eq!(r.resolve_at(id, 0, t0 + Resolver::CGROUP_TTL), None);
}

#[test]
fn required_log_dirs() {
    let node = Node::new();
    fs::remove_dir_all(&node.paths.logs).unwrap();
    let err = Resolver::new(node.paths.clone(), true).unwrap_err();
    assert!(
        err.to_string().contains("neither pods/ nor containers/"),
        "{err}"
    );
    // Auto-detected from the environment: runs, with a warning, and finds nothing.
    let mut r = Resolver::new(node.paths.clone(), false).unwrap();
    assert!(
        r.describe().contains("pod labels stay empty"),
        "{}",
        r.describe()
    );
    assert_eq!(r.resolve(node.cgroup(&scope()), 0), None);
}

#[test]
fn detection() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!detect(false, dir.path()));
    assert!(detect(true, dir.path()), "inside a pod");
    fs::create_dir(dir.path().join("pods")).unwrap();
    assert!(detect(false, dir.path()), "on a node");
    assert!(!detect(false, Path::new("/nonexistent")));
}

#[test]
fn the_series_of_a_pod_that_is_gone_are_dropped_after_the_grace() {
    let node = Node::new();
    node.pod_logs("shop", "checkout-7d9f8b6c5-x2x9q", "api", ID);
    let mut resolver = node.resolver();
    let metrics = crate::metrics::Metrics::new(true);
    metrics.record(&samples::seed_in_pod());
    let key = ("shop".to_owned(), "checkout-7d9f8b6c5-x2x9q".to_owned());
    let series = |m: &crate::metrics::Metrics| {
        m.render()
            .lines()
            .filter(|l| l.contains("pod=\"checkout-7d9f8b6c5-x2x9q\""))
            .count()
    };
    assert!(series(&metrics) > 0);
    let grace = Duration::from_secs(10);
    let mut expiry = PodExpiry::new(grace);
    let t0 = Instant::now();
    // Alive: nothing dropped, however long.
    assert!(expiry.run(t0, &mut resolver, &metrics).is_empty());
    assert!(
        expiry
            .run(t0 + 4 * grace, &mut resolver, &metrics)
            .is_empty()
    );
    // Gone: kept for the grace, then dropped, every family of it.
    fs::remove_dir_all(node.paths.logs.join("pods")).unwrap();
    fs::remove_dir_all(node.paths.logs.join("containers")).unwrap();
    let gone = t0 + 5 * grace;
    assert!(expiry.run(gone, &mut resolver, &metrics).is_empty());
    assert!(
        expiry
            .run(gone + grace / 2, &mut resolver, &metrics)
            .is_empty()
    );
    assert!(series(&metrics) > 0);
    let dropped = expiry.run(gone + grace, &mut resolver, &metrics);
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].0, key);
    assert_eq!(dropped[0].1, 2, "the counter and the delay histogram");
    assert_eq!(series(&metrics), 0, "{}", metrics.render());
    assert!(metrics.pods_with_series().is_empty());
    // A pod that comes back before the grace ends keeps its series.
    metrics.record(&samples::seed_in_pod());
    let later = gone + 3 * grace;
    assert!(expiry.run(later, &mut resolver, &metrics).is_empty());
    fs::create_dir_all(node.paths.logs.join("containers")).unwrap();
    node.pod_logs("shop", "checkout-7d9f8b6c5-x2x9q", "api", ID);
    assert!(
        expiry
            .run(later + grace, &mut resolver, &metrics)
            .is_empty()
    );
    assert!(series(&metrics) > 0);
}
