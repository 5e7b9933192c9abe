//! Pod churn, laid out as the agent's pod attribution reads it (agent/src/k8s, and the e2e tests
//! in agent/tests/e2e/kubernetes.rs that simulate pods): for each pod, a kubelet log directory
//! (`pods/<namespace>_<pod>_<uid>/<container>/0.log` and the `containers/` symlink naming the
//! container id) under the soak's own `--pod-logs-root`, and a container cgroup: a containerd
//! scope in the systemd driver's layout on the cgroup v2 hierarchy, and, where the host has the
//! v1 `name=systemd` hierarchy, a CRI-O container in the cgroupfs driver's layout there (found
//! from `/proc/<pid>/cgroup`, as on a cgroup v1 node). The Go seed server runs in it, serves a
//! few keep-alive requests and drops one (an incident with the pod's labels), and the pod goes
//! away: process, cgroup and logs.
//!
//! Pod names come from a pool (`soak-0` to `soak-3`, each on a port of its own), as a
//! StatefulSet's do, with a fresh UID and container id every time: the agent's series stay
//! bounded, as they would not with a Deployment's fresh names (counters never expire).

use std::{
    fs, io,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};

use super::{
    incidents::{Detector, Seedsrv, seed_request},
    load::{Shared, paced, read_response},
};

pub const NAMESPACE: &str = "soak";
/// How old a pod is when its server drops a request.
const POD_AGE: Duration = Duration::from_millis(2500);
const CONTAINER: &str = "app";

/// A pod name and the port its server listens on, the same for each of its incarnations.
#[derive(Clone, Debug)]
pub struct Slot {
    pub name: String,
    pub port: u16,
}

/// Where pods are made: the kubelet log root, and the cgroup hierarchies. The parent cgroups
/// the soak had to create are removed when the last clone is dropped.
#[derive(Clone)]
pub struct Roots(Arc<RootsInner>);

struct RootsInner {
    logs: PathBuf,
    /// `kubepods.slice/kubepods-burstable.slice` on the v2 hierarchy.
    v2: Option<PathBuf>,
    /// `kubepods/burstable` on the v1 `name=systemd` hierarchy.
    v1: Option<PathBuf>,
    created: Vec<PathBuf>,
}

impl Roots {
    /// A fresh log root under `dir` (with `pods/` and `containers/`, so that `--kubernetes auto`
    /// turns attribution on) and the QoS parents on each hierarchy found.
    pub fn prepare(dir: &Path) -> Result<Self> {
        let logs = dir.join("pod-logs");
        let _ = fs::remove_dir_all(&logs);
        fs::create_dir_all(logs.join("pods"))?;
        fs::create_dir_all(logs.join("containers"))?;
        let mut created = Vec::new();
        let v2 = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.controllers").is_file());
        let v2 = match v2 {
            Some(root) => Some(mkdirs(
                &root,
                "kubepods.slice/kubepods-burstable.slice",
                &mut created,
            )?),
            None => None,
        };
        let systemd = Path::new("/sys/fs/cgroup/systemd");
        let v1 = if systemd.join("cgroup.procs").is_file()
            && !systemd.join("cgroup.controllers").exists()
        {
            Some(mkdirs(systemd, "kubepods/burstable", &mut created)?)
        } else {
            None
        };
        if v2.is_none() && v1.is_none() {
            bail!("no cgroup v2 hierarchy and no v1 name=systemd one under /sys/fs/cgroup");
        }
        Ok(Self(Arc::new(RootsInner {
            logs,
            v2,
            v1,
            created,
        })))
    }

    pub fn logs(&self) -> &Path {
        &self.0.logs
    }
}

impl Drop for RootsInner {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            remove_cgroup(dir);
        }
    }
}

/// Creates the directories of `rel` under `base` that are missing, noting them in `created`.
fn mkdirs(base: &Path, rel: &str, created: &mut Vec<PathBuf>) -> Result<PathBuf> {
    let mut dir = base.to_owned();
    for part in rel.split('/') {
        dir.push(part);
        match fs::create_dir(&dir) {
            Ok(()) => created.push(dir.clone()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("mkdir {}", dir.display())),
        }
    }
    Ok(dir)
}

/// Removes a cgroup directory; its last process may still be leaving (EBUSY) for a moment after
/// it was reaped.
fn remove_cgroup(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = fs::remove_dir(dir) {
        if e.kind() == io::ErrorKind::NotFound {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("soak: could not remove {}: {e}", dir.display());
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The pod threads: one per hierarchy, each making a pod every 6 s (3 s apart), taking turns
/// over its share of the slots.
pub fn churn(
    shared: &Arc<Shared>,
    roots: Roots,
    slots: Vec<Slot>,
    seedsrv: PathBuf,
    go_on: bool,
) -> Result<Vec<JoinHandle<()>>> {
    let layouts: Vec<Layout> = [
        roots.0.v2.as_ref().map(|_| Layout::ContainerdV2),
        roots.0.v1.as_ref().map(|_| Layout::CrioV1),
    ]
    .into_iter()
    .flatten()
    .collect();
    let sequence = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for (i, layout) in layouts.iter().copied().enumerate() {
        let mine: Vec<Slot> = slots
            .iter()
            .skip(i)
            .step_by(layouts.len())
            .cloned()
            .collect();
        let (shared2, roots, seedsrv, sequence) = (
            shared.clone(),
            roots.clone(),
            seedsrv.clone(),
            sequence.clone(),
        );
        let mut turn = 0;
        threads.push(paced(
            shared,
            layout.activity(),
            Duration::from_secs(3 * i as u64),
            Duration::from_secs(6),
            move || {
                let slot = &mine[turn % mine.len()];
                turn += 1;
                let n = sequence.fetch_add(1, Ordering::Relaxed);
                let pod = Pod::create(&roots, layout, slot, n)?;
                pod.run(&seedsrv, &shared2, go_on)?;
                Ok(1)
            },
        )?);
    }
    Ok(threads)
}

#[derive(Clone, Copy)]
enum Layout {
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/
    /// cri-containerd-<id>.scope` on cgroup v2.
    ContainerdV2,
    /// `kubepods/burstable/pod<uid>/crio-<id>` on the v1 `name=systemd` hierarchy.
    CrioV1,
}

impl Layout {
    fn activity(self) -> &'static str {
        match self {
            Self::ContainerdV2 => "pods (containerd scope, cgroup v2)",
            Self::CrioV1 => "pods (CRI-O, cgroup v1 name=systemd)",
        }
    }
}

/// One pod incarnation: its log directory and cgroups, removed on drop.
struct Pod {
    slot: Slot,
    created: Instant,
    /// The pod's and the container's cgroup directories, outermost first.
    cgroups: Vec<PathBuf>,
    log_dir: PathBuf,
    log_link: PathBuf,
}

impl Pod {
    fn create(roots: &Roots, layout: Layout, slot: &Slot, n: u64) -> Result<Self> {
        let (uid, id) = fresh_ids(n);
        let logs = roots.logs();
        let pod_dir = logs.join(format!("pods/{NAMESPACE}_{}_{uid}", slot.name));
        let log = pod_dir.join(CONTAINER).join("0.log");
        let link = logs.join(format!(
            "containers/{}_{NAMESPACE}_{CONTAINER}-{id}.log",
            slot.name
        ));
        // The pod exists from here: a failure below removes what was made.
        let mut pod = Self {
            slot: slot.clone(),
            created: Instant::now(),
            cgroups: Vec::new(),
            log_dir: pod_dir,
            log_link: link,
        };
        fs::create_dir_all(log.parent().expect("has a parent"))?;
        fs::write(&log, "")?;
        symlink(&log, &pod.log_link)?;
        let (parent, pod_cgroup, container) = match layout {
            Layout::ContainerdV2 => (
                roots.0.v2.as_ref(),
                format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_")),
                format!("cri-containerd-{id}.scope"),
            ),
            Layout::CrioV1 => (
                roots.0.v1.as_ref(),
                format!("pod{uid}"),
                format!("crio-{id}"),
            ),
        };
        let parent = parent.context("no hierarchy for this layout")?;
        for dir in [
            parent.join(&pod_cgroup),
            parent.join(&pod_cgroup).join(&container),
        ] {
            fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            pod.cgroups.push(dir);
        }
        Ok(pod)
    }

    /// The Go seed server in the container's cgroup: three keep-alive requests for /fast, one
    /// dropped request once the pod is 2.5 s old, then it is killed.
    ///
    /// Not sooner: the agent rescans the kubelet's logs and the cgroup tree at most once a
    /// second when it misses, and caches the miss for 5 s, so an incident within a second of a
    /// pod's creation can go unattributed when another lookup rescanned just before the pod
    /// appeared. That start-up edge is not what a soak measures.
    fn run(&self, seedsrv: &Path, shared: &Shared, go_on: bool) -> Result<()> {
        let leaf = self.cgroups.last().expect("made in create");
        let server = Seedsrv::start(seedsrv, self.slot.port, Some(&leaf.join("cgroup.procs")))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.slot.port));
        let mut conn = TcpStream::connect(addr)?;
        let mut buf = vec![0u8; 4096];
        for _ in 0..3 {
            std::io::Write::write_all(&mut conn, b"GET /fast HTTP/1.1\r\nHost: soak\r\n\r\n")?;
            read_response(&mut conn, &mut buf).context("a keep-alive request for /fast")?;
        }
        // The client closes first, after its answers: nothing is owed.
        drop(conn);
        thread::sleep(POD_AGE.saturating_sub(self.created.elapsed()));
        seed_request(addr).context("the pod's dropped request")?;
        shared.cause(Detector::UnansweredClose, self.slot.port, 1);
        if go_on {
            shared.cause(Detector::GoWriteTimeout, self.slot.port, 1);
        }
        // The agent names the pod from the process's cgroup: give it a moment while both still
        // exist (the incident is held 200 ms for a crossing FIN before it is reported).
        thread::sleep(Duration::from_secs(1));
        drop(server);
        Ok(())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for dir in self.cgroups.iter().rev() {
            remove_cgroup(dir);
        }
        let _ = fs::remove_file(&self.log_link);
        let _ = fs::remove_dir_all(&self.log_dir);
    }
}

/// A pod UID and a container id (64 hex digits), different for every pod of every run.
fn fresh_ids(n: u64) -> (String, String) {
    let mut x = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32)
        ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut hex = String::new();
    while hex.len() < 96 {
        // splitmix64
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        hex.push_str(&format!("{:016x}", z ^ (z >> 31)));
    }
    let uid = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    (uid, hex[32..96].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_a_kubelets_and_differ() {
        let (uid, id) = fresh_ids(1);
        assert_eq!(uid.len(), 36);
        assert_eq!(uid.matches('-').count(), 4);
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(fresh_ids(2).1, id);
    }
}
