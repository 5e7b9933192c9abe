//! From a process's cgroup to its container id: the path formats container runtimes and the
//! kubelet create, and finding a cgroup v2 directory by its id.
//!
//! The formats, innermost component last:
//! - systemd cgroup driver: `/kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid, '-' written as '_'>.slice/<runtime>-<id>.scope`, where runtime is
//!   `cri-containerd`, `crio` or `docker` (cri-dockerd); `/system.slice/docker-<id>.scope` for
//!   plain docker;
//! - cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>` (containerd, docker) or
//!   `/kubepods/burstable/pod<uid>/crio-<id>`; `/docker/<id>` for plain docker;
//! - either, seen from inside a cgroup namespace (`/../../kubepods-…`), or nested under a node
//!   that is itself a container (kind: `/system.slice/docker-<node>.scope/kubelet.slice/…`).

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// A container, as its cgroup path names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    /// The runtime's container id: 64 lowercase hex digits for containerd, CRI-O and docker.
    pub id: String,
    /// The UID of the pod whose cgroup encloses the container's, dashes restored.
    pub pod_uid: Option<String>,
}

/// `<runtime>-<id>.scope` prefixes (systemd driver). Not `crio-conmon`: CRI-O's monitor process
/// runs beside the container, not in it.
const SCOPE_PREFIXES: &[&str] = &["cri-containerd", "crio", "docker", "libpod"];

/// The innermost container named by a cgroup path, with the pod that encloses it.
pub fn container_in(path: &str) -> Option<ContainerRef> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != "..")
        .collect();
    let (at, id) = parts
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, c)| container_id(c).map(|id| (i, id)))?;
    let pod_uid = parts[..at].iter().rev().find_map(|c| pod_uid(c));
    Some(ContainerRef {
        id: id.to_owned(),
        pod_uid,
    })
}

fn container_id(component: &str) -> Option<&str> {
    if let Some(stem) = component.strip_suffix(".scope") {
        let (prefix, id) = stem.rsplit_once('-')?;
        return (SCOPE_PREFIXES.contains(&prefix) && is_container_id(id)).then_some(id);
    }
    let id = component.strip_prefix("crio-").unwrap_or(component);
    is_container_id(id).then_some(id)
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `kubepods-<qos>-pod<uid>.slice` (systemd writes the UID's dashes as underscores, because a
/// dash separates slice levels) or `pod<uid>` (cgroupfs).
fn pod_uid(component: &str) -> Option<String> {
    let uid = match component.strip_suffix(".slice") {
        Some(stem) => stem.rsplit_once('-')?.1.strip_prefix("pod")?,
        None => component.strip_prefix("pod")?,
    };
    // A UUID (36), or the 32 hex digits of a static pod's manifest hash.
    let plausible = (32..=36).contains(&uid.len())
        && uid
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_');
    plausible.then(|| uid.replace('_', "-"))
}

/// The paths of `/proc/<pid>/cgroup`: the v2 line (`0::/path`) first, then the v1 lines
/// (`N:controllers:/path`), which are all there is on a cgroup v1 host.
pub fn proc_paths(text: &str) -> Vec<&str> {
    let (mut v2, mut v1) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(hierarchy), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if hierarchy == "0" && controllers.is_empty() {
            v2.push(path);
        } else {
            v1.push(path);
        }
    }
    v2.extend(v1);
    v2
}

/// The containers a process's `/proc/<pid>/cgroup` names, most telling first. Usually one; more
/// when the node itself runs in a container (its id shows in the v2 line, the pod's in v1).
pub fn containers_of_process(text: &str) -> Vec<ContainerRef> {
    let mut found: Vec<ContainerRef> = Vec::new();
    for c in proc_paths(text).into_iter().filter_map(container_in) {
        if !found.contains(&c) {
            found.push(c);
        }
    }
    found
}

/// The cgroup v2 root under `mount`: `mount` itself on a unified host, `mount/unified` on a
/// hybrid one. Only a v2 root has `cgroup.controllers`.
pub fn find_v2_root(mount: &Path) -> Option<PathBuf> {
    [mount.to_owned(), mount.join("unified")]
        .into_iter()
        .find(|p| p.join("cgroup.controllers").is_file())
}

/// Paths of cgroup v2 directories by id. `bpf_get_current_cgroup_id()` returns the default
/// hierarchy's `cgroup_id()`, which is the cgroup's kernfs node id
/// (https://elixir.bootlin.com/linux/v6.12/C/ident/cgroup_id), and kernfs uses that id as the
/// directory's inode number on 64-bit (https://elixir.bootlin.com/linux/v6.12/C/ident/kernfs_ino).
/// So one walk of the hierarchy that reads `d_ino` (no stat per directory) maps every id to its
/// path.
#[derive(Debug)]
pub struct CgroupTree {
    root: PathBuf,
    paths: HashMap<u64, String>,
    scanned: Option<Instant>,
}

impl CgroupTree {
    /// A walk at most this often: a miss for an id that has no directory (a cgroup removed
    /// already) must not turn every incident into a walk.
    const RESCAN: Duration = Duration::from_secs(1);
    /// Bounds a walk (and the map) on a pathological host.
    const MAX_DIRS: usize = 200_000;

    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            paths: HashMap::new(),
            scanned: None,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path (from the hierarchy's root, `/kubepods.slice/…`) of the cgroup with this id.
    pub fn path(&mut self, id: u64, now: Instant) -> Option<&str> {
        let due = self
            .scanned
            .is_none_or(|t| now.saturating_duration_since(t) >= Self::RESCAN);
        if !self.paths.contains_key(&id) && due {
            self.scan(now);
        }
        self.paths.get(&id).map(String::as_str)
    }

    fn scan(&mut self, now: Instant) {
        self.scanned = Some(now);
        self.paths.clear();
        if let Ok(meta) = fs::metadata(&self.root) {
            self.paths.insert(meta.ino(), "/".to_owned());
        }
        let mut stack = vec![(self.root.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            // A cgroup removed during the walk is simply not there.
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if self.paths.len() >= Self::MAX_DIRS {
                    return;
                }
                let path = format!("{rel}/{}", entry.file_name().to_string_lossy());
                self.paths.insert(entry.ino(), path.clone());
                stack.push((entry.path(), path));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "8a3d34a2bd2d5ab1c3b7e4a21b2f58a0cf0b8e1b2a2ea4e37c4f2ab5d9a6f0e1";
    const UID: &str = "3f8e2a8c-6f1d-4b0e-9a59-2b1c8c7d9e10";

    fn c(id: &str, uid: Option<&str>) -> Option<ContainerRef> {
        Some(ContainerRef {
            id: id.into(),
            pod_uid: uid.map(Into::into),
        })
    }

    #[test]
    fn containerd_systemd_driver() {
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/\
             cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(container_in(&p), c(ID, Some(UID)));
        // Guaranteed QoS has no QoS slice.
        let p = format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(container_in(&p), c(ID, Some(UID)));
    }

    #[test]
    fn containerd_and_docker_cgroupfs_driver() {
        for p in [
            format!("/kubepods/burstable/pod{UID}/{ID}"),
            format!("/kubepods/pod{UID}/{ID}"),
        ] {
            assert_eq!(container_in(&p), c(ID, Some(UID)), "{p}");
        }
    }

    #[test]
    fn crio_both_drivers_and_not_conmon() {
        let uid = UID.replace('-', "_");
        assert_eq!(
            container_in(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/\
                 crio-{ID}.scope"
            )),
            c(ID, Some(UID))
        );
        assert_eq!(
            container_in(&format!("/kubepods/burstable/pod{UID}/crio-{ID}")),
            c(ID, Some(UID))
        );
        assert_eq!(
            container_in(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/\
                 crio-conmon-{ID}.scope"
            )),
            None
        );
    }

    #[test]
    fn docker_outside_kubernetes() {
        assert_eq!(
            container_in(&format!("/system.slice/docker-{ID}.scope")),
            c(ID, None)
        );
        assert_eq!(container_in(&format!("/docker/{ID}")), c(ID, None));
    }

    #[test]
    fn innermost_container_wins() {
        // A kind node is a docker container; its pods' cgroups nest inside it.
        let node = "f".repeat(64);
        let p = format!(
            "/system.slice/docker-{node}.scope/kubelet.slice/kubelet-kubepods.slice/\
             kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{}.slice/\
             cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(container_in(&p), c(ID, Some(UID)));
        // systemd running inside the container.
        let p = format!("/kubepods/besteffort/pod{UID}/{ID}/init.scope");
        assert_eq!(container_in(&p), c(ID, Some(UID)));
    }

    #[test]
    fn cgroup_namespace_relative_paths() {
        let p = format!(
            "/../../kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(container_in(&p), c(ID, Some(UID)));
    }

    #[test]
    fn static_pod_uid_is_a_hash() {
        let uid = "6f7c8d2a1b0e4f3a9c8d7e6f5a4b3c2d";
        assert_eq!(
            container_in(&format!("/kubepods/burstable/pod{uid}/{ID}")),
            c(ID, Some(uid))
        );
    }

    #[test]
    fn host_processes_have_no_container() {
        for p in [
            "/",
            "/user.slice/user-0.slice/session-1.scope",
            "/system.slice/containerd.service",
            "/system.slice/kubelet.service",
            "/kubepods.slice/kubepods-besteffort.slice",
            // Not 64 hex digits.
            "/system.slice/docker-abc.scope",
            "/kubepods/besteffort/pod1234/ABCDEF",
        ] {
            assert_eq!(container_in(p), None, "{p}");
        }
    }

    #[test]
    fn proc_cgroup_v2_v1_and_hybrid() {
        let v2 = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/\
             cri-containerd-{ID}.scope\n",
            UID.replace('-', "_")
        );
        assert_eq!(containers_of_process(&v2), vec![c(ID, Some(UID)).unwrap()]);

        // cgroup v1 host, cgroupfs driver: every controller line names the container.
        let v1 = format!(
            "12:pids:/kubepods/burstable/pod{UID}/{ID}\n\
             11:memory:/kubepods/burstable/pod{UID}/{ID}\n\
             1:name=systemd:/kubepods/burstable/pod{UID}/{ID}\n"
        );
        assert_eq!(containers_of_process(&v1), vec![c(ID, Some(UID)).unwrap()]);

        // Hybrid: the v2 line is the root (nothing lives in v2), a v1 line has the container.
        let hybrid = format!(
            "10:name=lostwrite:/kubepods/besteffort/pod{UID}/{ID}\n9:name=systemd:/\n\
             4:memory:/some/where\n0::/\n"
        );
        assert_eq!(proc_paths(&hybrid)[0], "/");
        assert_eq!(
            containers_of_process(&hybrid),
            vec![c(ID, Some(UID)).unwrap()]
        );

        // A node that is a container itself: its own id (v2) and the pod's (v1) are candidates.
        let node = "e".repeat(64);
        let nested = format!(
            "0::/system.slice/docker-{node}.scope\n3:pids:/kubepods/besteffort/pod{UID}/{ID}\n"
        );
        assert_eq!(
            containers_of_process(&nested),
            vec![c(&node, None).unwrap(), c(ID, Some(UID)).unwrap()]
        );

        assert!(containers_of_process("0::/user.slice\n1:cpu:/\n").is_empty());
        assert!(containers_of_process("garbage\n").is_empty());
    }

    #[test]
    fn tree_maps_inode_numbers_to_paths() {
        let dir = tempfile::tempdir().unwrap();
        let scope = dir
            .path()
            .join("kubepods.slice/kubepods-besteffort.slice/x.scope");
        fs::create_dir_all(&scope).unwrap();
        let id = fs::metadata(&scope).unwrap().ino();
        let root_id = fs::metadata(dir.path()).unwrap().ino();

        let t0 = Instant::now();
        let mut tree = CgroupTree::new(dir.path().to_owned());
        assert_eq!(
            tree.path(id, t0),
            Some("/kubepods.slice/kubepods-besteffort.slice/x.scope")
        );
        assert_eq!(tree.path(root_id, t0), Some("/"));

        // A directory made after the walk is found by the next one, not before RESCAN.
        let late = dir.path().join("kubepods.slice/late.scope");
        fs::create_dir(&late).unwrap();
        let late_id = fs::metadata(&late).unwrap().ino();
        assert_eq!(tree.path(late_id, t0 + Duration::from_millis(10)), None);
        assert_eq!(
            tree.path(late_id, t0 + CgroupTree::RESCAN),
            Some("/kubepods.slice/late.scope")
        );
    }

    #[test]
    fn v2_root_is_found_on_unified_and_hybrid_layouts() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find_v2_root(dir.path()), None);
        fs::create_dir(dir.path().join("unified")).unwrap();
        fs::write(dir.path().join("unified/cgroup.controllers"), "").unwrap();
        assert_eq!(find_v2_root(dir.path()), Some(dir.path().join("unified")));
        fs::write(dir.path().join("cgroup.controllers"), "cpu io memory").unwrap();
        assert_eq!(find_v2_root(dir.path()), Some(dir.path().to_owned()));
    }
}
