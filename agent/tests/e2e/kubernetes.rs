//! Pod attribution on the real kernel: the seed server runs in a cgroup shaped like a kubelet
//! container's, next to a kubelet-style log directory in a scratch root, and its unanswered
//! close carries the pod's namespace, name and container on /metrics and in the incident log.

use std::{
    ffi::CString,
    io,
    os::unix::{fs::symlink, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    bpf_objects::status_field,
    harness::{
        Agent, Process, http_get, own_comm, root_or_skip, scratch, wait_for, wait_listening,
    },
    servers::{SEED_PORT, curl, rust_server_reads_and_closes, seedsrv_binary},
};

const UNANSWERED: &str = "lostwrite_unanswered_closes_total";
const NAMESPACE: &str = "shop";
const POD: &str = "checkout-7d9f8b6c5-x2x9q";
const CONTAINER: &str = "api";

/// A pod UID and a container id, different for every run so that leftovers of an interrupted
/// run never match.
fn fresh_ids() -> (String, String) {
    let mut x = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ (u64::from(std::process::id()) << 32);
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

/// The cgroup v2 hierarchy: /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a
/// hybrid one.
fn cgroup_v2_root() -> PathBuf {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").is_file())
        .expect("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")
}

/// Cgroup directories made for a test, removed innermost first on drop (also when the test
/// fails). Directories that already existed are left alone.
struct Cgroups {
    created: Vec<PathBuf>,
    leaf: PathBuf,
}

impl Cgroups {
    fn create(base: &Path, rel: &str) -> Self {
        let mut created = Vec::new();
        let mut dir = base.to_owned();
        for part in rel.split('/') {
            dir.push(part);
            match std::fs::create_dir(&dir) {
                Ok(()) => created.push(dir.clone()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!("mkdir {}: {e}", dir.display()),
            }
        }
        Self { created, leaf: dir }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            // The last process may still be leaving (EBUSY) for a moment after it was reaped.
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Err(e) = std::fs::remove_dir(dir) {
                if Instant::now() > deadline {
                    eprintln!("could not remove {}: {e}", dir.display());
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A private, controller-less cgroup v1 hierarchy (`name=`), for a cgroup v1 layout on any
/// host. Unmounted on drop, after its cgroups are removed.
struct NamedV1 {
    mount: PathBuf,
    cgroups: Option<Cgroups>,
}

impl NamedV1 {
    fn mount(name: &str) -> Self {
        let mount = scratch(name);
        nix::mount::mount(
            Some("cgroup"),
            &mount,
            Some("cgroup"),
            nix::mount::MsFlags::empty(),
            Some(format!("none,name={name}").as_str()),
        )
        .unwrap_or_else(|e| panic!("mount a named cgroup v1 hierarchy: {e}"));
        Self {
            mount,
            cgroups: None,
        }
    }
}

impl Drop for NamedV1 {
    fn drop(&mut self) {
        drop(self.cgroups.take());
        if let Err(e) = nix::mount::umount(&self.mount) {
            eprintln!("could not unmount {}: {e}", self.mount.display());
        }
    }
}

/// Starts the seed server inside `cgroup` (it joins before exec, so every byte it ever reads
/// is read from there) and waits until it accepts connections.
fn start_seedsrv_in(cgroup: &Path) -> (Process, u32) {
    let procs = CString::new(
        cgroup
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    let mut cmd = Command::new(seedsrv_binary());
    cmd.args(["-addr", &format!("127.0.0.1:{SEED_PORT}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec this only makes async-signal-safe calls (open, write,
    // close) on memory prepared before the fork. Writing "0" moves the writing process.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = libc::write(fd, c"0".as_ptr().cast(), 1);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if n == 1 { Ok(()) } else { Err(err) }
        });
    }
    let child = cmd.spawn().expect("start seedsrv in its cgroup");
    let pid = child.id();
    let server = Process(child);
    wait_listening(([127, 0, 0, 1], SEED_PORT).into());
    (server, pid)
}

/// The kubelet's log layout for one container under `root`:
/// `pods/<ns>_<pod>_<uid>/<container>/0.log` and the `containers/` symlink naming its id.
fn kubelet_logs(root: &Path, uid: &str, container_id: &str) {
    let dir = root.join(format!("pods/{NAMESPACE}_{POD}_{uid}/{CONTAINER}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("0.log"), "").unwrap();
    std::fs::create_dir_all(root.join("containers")).unwrap();
    symlink(
        dir.join("0.log"),
        root.join(format!(
            "containers/{POD}_{NAMESPACE}_{CONTAINER}-{container_id}.log"
        )),
    )
    .unwrap();
}

/// The seed incident, then exact counts: the pod's series has 1, and no other seedsrv series
/// counted it. (Other processes on the host are not this test's business: the agent sees the
/// whole host.)
fn seed_incident(agent: &Agent, labels: &[(&str, &str)]) -> crate::harness::Metrics {
    let (code, _, stderr) = curl(&[format!("http://127.0.0.1:{SEED_PORT}/")]);
    assert_eq!(code, Some(52), "curl should get an empty reply: {stderr}");
    let m = agent.settled(
        "the seed's unanswered close with its pod labels",
        Duration::from_secs(5),
        UNANSWERED,
        labels,
    );
    assert_eq!(
        m.value(UNANSWERED, labels),
        Some(1.0),
        "{:?}",
        m.series(UNANSWERED)
    );
    assert_eq!(
        m.sum(UNANSWERED, &[("comm", "seedsrv")]),
        1.0,
        "{:?}",
        m.series(UNANSWERED)
    );
    m
}

/// The incident lines of the seed server.
fn seed_incidents(agent: &Agent) -> Vec<serde_json::Value> {
    let all = agent.incidents();
    all.into_iter().filter(|i| i["comm"] == "seedsrv").collect()
}

fn pod_labels() -> [(&'static str, &'static str); 6] {
    [
        ("comm", "seedsrv"),
        ("port", "8800"),
        ("role", "server"),
        ("namespace", NAMESPACE),
        ("pod", POD),
        ("container", CONTAINER),
    ]
}

/// A fresh pod's kubelet log layout (under scratch dir `logs`) and its containerd container's
/// cgroup v2 scope, in the systemd driver's layout for a BestEffort pod: (logs, scope, cgroups).
fn containerd_pod(logs: &str) -> (PathBuf, String, Cgroups) {
    let (uid, id) = fresh_ids();
    let logs = scratch(logs);
    kubelet_logs(&logs, &uid, &id);
    let scope = format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/\
         cri-containerd-{id}.scope",
        uid.replace('-', "_")
    );
    let cgroups = Cgroups::create(&cgroup_v2_root(), &scope);
    (logs, scope, cgroups)
}

#[test]
fn containerd_scope_on_cgroup_v2_is_labelled_with_its_pod() {
    if !root_or_skip("containerd_scope_on_cgroup_v2_is_labelled_with_its_pod") {
        return;
    }
    let (logs, scope, cgroups) = containerd_pod("k8s-logs-v2");

    let agent = Agent::start(&[
        "--kubernetes",
        "on",
        "--pod-logs-root",
        logs.to_str().unwrap(),
    ]);
    let (_server, pid) = start_seedsrv_in(&cgroups.leaf);
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        own.lines().any(|l| l == format!("0::/{scope}")),
        "seedsrv is not in the scope: {own}"
    );

    let m = seed_incident(&agent, &pod_labels());
    let delay = [
        ("comm", "seedsrv"),
        ("namespace", NAMESPACE),
        ("pod", POD),
        ("container", CONTAINER),
    ];
    assert_eq!(
        m.value("lostwrite_unanswered_close_delay_seconds_count", &delay),
        Some(1.0)
    );

    let incidents = seed_incidents(&agent);
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let i = &incidents[0];
    assert_eq!(i["pid"], pid);
    assert_eq!(i["namespace"], NAMESPACE, "{i}");
    assert_eq!(i["pod"], POD, "{i}");
    assert_eq!(i["container"], CONTAINER, "{i}");
    let msg = i["message"].as_str().unwrap();
    assert!(
        msg.starts_with(&format!(
            "pid {pid} (seedsrv, container {CONTAINER} of pod {NAMESPACE}/{POD}) read "
        )),
        "{msg}"
    );

    // A process outside any pod on the same node: the labels are there, and empty.
    let (port, _) = rust_server_reads_and_closes();
    let port = port.to_string();
    let comm = own_comm();
    let host = [
        ("comm", comm.as_str()),
        ("port", port.as_str()),
        ("namespace", ""),
        ("pod", ""),
        ("container", ""),
    ];
    let m = agent.settled(
        "the host process's unanswered close",
        Duration::from_secs(2),
        UNANSWERED,
        &host,
    );
    assert_eq!(
        m.value(UNANSWERED, &host),
        Some(1.0),
        "{:?}",
        m.series(UNANSWERED)
    );
}

#[test]
fn cgroup_v1_crio_container_is_found_from_the_pid() {
    if !root_or_skip("cgroup_v1_crio_container_is_found_from_the_pid") {
        return;
    }
    let (uid, id) = fresh_ids();
    let logs = scratch("k8s-logs-v1");
    kubelet_logs(&logs, &uid, &id);
    // The cgroupfs driver's layout for a Burstable pod's CRI-O container, on a v1 hierarchy.
    // The server's v2 cgroup (the cgroup id the programs capture) names no container, so the
    // agent has to read /proc/<pid>/cgroup, as on a cgroup v1 node.
    let mut v1 = NamedV1::mount("lostwrite-e2e-v1");
    let path = format!("kubepods/burstable/pod{uid}/crio-{id}");
    let leaf = v1
        .cgroups
        .insert(Cgroups::create(&v1.mount, &path))
        .leaf
        .clone();

    // auto: the log layout under --pod-logs-root turns attribution on.
    let agent = Agent::start(&["--pod-logs-root", logs.to_str().unwrap()]);
    let (_server, pid) = start_seedsrv_in(&leaf);
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        own.lines()
            .any(|l| l.ends_with(&format!(":name=lostwrite-e2e-v1:/{path}"))),
        "seedsrv is not in the v1 cgroup: {own}"
    );

    seed_incident(&agent, &pod_labels());
    let i = &seed_incidents(&agent)[0];
    assert_eq!(i["pod"], POD, "{i}");
}

#[test]
fn off_kubernetes_the_labels_are_absent() {
    if !root_or_skip("off_kubernetes_the_labels_are_absent") {
        return;
    }
    // Everything a pod would have, but attribution off: the series must not have the labels
    // at all (not even empty), and the incident log has no pod fields.
    let (logs, _, cgroups) = containerd_pod("k8s-logs-off");
    let agent = Agent::start(&[
        "--kubernetes",
        "off",
        "--pod-logs-root",
        logs.to_str().unwrap(),
    ]);
    let (_server, _) = start_seedsrv_in(&cgroups.leaf);

    seed_incident(
        &agent,
        &[("comm", "seedsrv"), ("port", "8800"), ("role", "server")],
    );
    let text = agent.metrics_text();
    for label in ["namespace=", "pod=", "container="] {
        assert!(!text.contains(label), "{label} on /metrics:\n{text}");
    }
    let i = &seed_incidents(&agent)[0];
    for key in ["namespace", "pod", "container"] {
        assert!(i.get(key).is_none(), "{key} in {i}");
    }
}

/// The DaemonSet's capabilities (`agent/tests/deploy` pins the same three in its manifest), as
/// setpriv names them and as their bits in /proc/<pid>/status.
const DAEMONSET_CAPS: [(&str, u32); 3] = [("bpf", 39), ("perfmon", 38), ("sys_resource", 24)];

/// The bounding set of this process (the most any process it starts can hold).
fn own_bounding_set() -> u64 {
    u64::from_str_radix(&status_field(std::process::id(), "CapBnd"), 16).unwrap()
}

/// Runs the agent the way the DaemonSet's container does, without a container runtime: uid 0
/// holding only the DaemonSet's capabilities (`$CAPS`, bounding set included), no_new_privs, and
/// every mount it can see read-only (the root filesystem, sysfs, the cgroup hierarchy, the
/// kubelet's logs) except /proc and /dev, in a mount namespace of its own. `$1` is a path that
/// must not be writable afterwards; the agent's command line follows it.
const DAEMONSET_SANDBOX: &str = r#"
check=$1; shift
awk '$5 !~ "^/(proc|dev)(/|$)" { print $5 }' /proc/self/mountinfo | while read -r m; do
    mount -o remount,bind,ro "$m"
done
if touch "$check/.writable" 2>/dev/null; then
    echo "$check is still writable" >&2
    exit 1
fi
exec setpriv --no-new-privs --bounding-set="-all$CAPS" --inh-caps="-all$CAPS" -- "$@"
"#;

#[test]
fn the_daemonsets_capabilities_and_read_only_mounts_are_enough() {
    if !root_or_skip("the_daemonsets_capabilities_and_read_only_mounts_are_enough") {
        return;
    }
    // CAP_SYS_RESOURCE (only for RLIMIT_MEMLOCK before Linux 5.11) is not in every sandbox's
    // bounding set; the agent then runs with less than the DaemonSet gives it, never more.
    let bounding = own_bounding_set();
    let (mut caps, mut mask) = (String::new(), 0u64);
    for (name, bit) in DAEMONSET_CAPS {
        if bounding & (1 << bit) != 0 {
            caps.push_str(&format!(",+{name}"));
            mask |= 1 << bit;
        } else {
            assert_eq!(name, "sys_resource", "the test runs without CAP_{name}");
            eprintln!("CAP_SYS_RESOURCE is outside this process's bounding set: running without");
        }
    }
    let mask = format!("{mask:016x}");
    let (logs, _, cgroups) = containerd_pod("k8s-logs-daemonset");
    let wrapper = [
        "env",
        &format!("CAPS={caps}"),
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-ec",
        DAEMONSET_SANDBOX,
        "sh",
        logs.to_str().unwrap(),
    ]
    .map(std::ffi::OsString::from);
    // The DaemonSet's own arguments, but for the log root and the listen address.
    let agent = Agent::start_under(
        &wrapper,
        &[
            "--kubernetes",
            "on",
            "--pod-logs-root",
            logs.to_str().unwrap(),
        ],
    );

    // The process serving /metrics is the agent, confined as intended.
    let pid = agent.pid();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, crate::harness::agent_bin().canonicalize().unwrap());
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(status_field(pid, set), mask, "{set}");
    }
    assert_eq!(status_field(pid, "CapAmb"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    for point in ["/", "/sys", cgroup_v2_root().to_str().unwrap()] {
        let line = mounts
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(point))
            .unwrap_or_else(|| panic!("no mount at {point}:\n{mounts}"));
        let options = line.split(' ').nth(5).unwrap();
        assert!(
            options.split(',').any(|o| o == "ro"),
            "{point} is writable for the agent: {line}"
        );
    }

    let (_server, server_pid) = start_seedsrv_in(&cgroups.leaf);
    seed_incident(&agent, &pod_labels());
    let incidents = seed_incidents(&agent);
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0]["pid"], server_pid);
    assert_eq!(incidents[0]["pod"], POD, "{}", incidents[0]);
    let m = agent.scrape();
    for d in ["unanswered_close", "write_after_close", "undelivered_bytes"] {
        assert_eq!(
            m.value("lostwrite_detector_enabled", &[("detector", d)]),
            Some(1.0),
            "{d}: {:?}",
            m.series("lostwrite_detector_enabled")
        );
    }
    // The Go runtime hooks: reported on only where they work (the seed's incident names its
    // cause), else off, with the reason in the log.
    let go = m.value(
        "lostwrite_detector_enabled",
        &[("detector", "go_write_timeout")],
    );
    match go {
        Some(1.0) => assert!(
            incidents[0]["go_deadline"].is_string(),
            "go_write_timeout is reported on but named no cause: {}",
            incidents[0]
        ),
        Some(0.0) => {
            assert!(
                agent.stderr_text().contains("Go runtime hooks off"),
                "{}",
                agent.stderr_text()
            );
            // Off, with why, on /metrics and in /healthz's body.
            assert_eq!(
                m.value(
                    "lostwrite_detector_off",
                    &[
                        ("detector", "go_write_timeout"),
                        ("reason", "not_attachable")
                    ]
                ),
                Some(1.0),
                "{:?}",
                m.series("lostwrite_detector_off")
            );
            let (status, body) = http_get(&agent.url("/healthz")).unwrap();
            assert_eq!(status, 200);
            assert!(
                body.lines().any(|l| l.starts_with(
                    "off: go_write_timeout (not_attachable): a uprobe does not attach here: "
                )),
                "{body}"
            );
        }
        other => panic!("go_write_timeout: {other:?}"),
    }
    eprintln!(
        "go_write_timeout under the DaemonSet's confinement: {go:?}\n{}",
        agent
            .stderr_text()
            .lines()
            .filter(|l| l.contains("Go runtime hooks"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Writes "0" to `cgroup`'s `cgroup.procs`: moves this whole process there.
fn join_cgroup(cgroup: &Path) {
    std::fs::write(cgroup.join("cgroup.procs"), "0")
        .unwrap_or_else(|e| panic!("join {}: {e}", cgroup.display()));
}

/// This process's cgroup in the v2 hierarchy.
fn own_cgroup_v2() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line in /proc/self/cgroup");
    cgroup_v2_root().join(rel.trim_start_matches('/'))
}

/// One pod of the churn: its kubelet log directory and symlink, and its container's cgroup.
struct ChurnPod {
    dir: PathBuf,
    link: PathBuf,
    cgroups: Cgroups,
}

impl ChurnPod {
    const NAMESPACE: &str = "churn";

    fn create(logs: &Path, k: usize) -> Self {
        let (uid, id) = fresh_ids();
        let name = format!("web-{k:04}");
        let dir = logs.join(format!("pods/{}_{name}_{uid}", Self::NAMESPACE));
        std::fs::create_dir_all(dir.join("app")).unwrap();
        std::fs::write(dir.join("app/0.log"), "").unwrap();
        let link = logs.join(format!(
            "containers/{name}_{}_app-{id}.log",
            Self::NAMESPACE
        ));
        symlink(dir.join("app/0.log"), &link).unwrap();
        let scope = format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/\
             cri-containerd-{id}.scope",
            uid.replace('-', "_")
        );
        let cgroups = Cgroups::create(&cgroup_v2_root(), &scope);
        Self { dir, link, cgroups }
    }

    /// A request read and closed unanswered, by this process from inside the pod's cgroup.
    fn unanswered_close(&self, home: &Path) {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        join_cgroup(&self.cgroups.leaf);
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(crate::servers::REQUEST).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let mut buf = [0u8; 256];
        assert!(server.read(&mut buf).unwrap() > 0);
        drop(server);
        join_cgroup(home);
        assert_eq!(client.read(&mut buf).unwrap(), 0, "EOF, no response");
    }

    /// The pod is deleted: the kubelet removes its logs, the runtime its cgroup.
    fn remove(self) {
        std::fs::remove_file(&self.link).unwrap();
        std::fs::remove_dir_all(&self.dir).unwrap();
        drop(self.cgroups);
    }
}

/// 1,000 pods come and go past the agent, each with one unanswered close. Each is counted with
/// its pod, and the series of a pod whose log directory is gone are dropped after the grace
/// (`--pod-series-grace 1`), so `/metrics` holds the live pods' series, not every pod's the node
/// ever ran, and the agent's memory stays flat.
#[test]
fn a_thousand_pods_churned_past_the_agent_keep_series_and_memory_bounded() {
    if !root_or_skip("a_thousand_pods_churned_past_the_agent_keep_series_and_memory_bounded") {
        return;
    }
    const PODS: usize = 1000;
    // Each pod exists 1.2 s before its incident (the agent looks at new cgroups and log
    // directories at most once a second), and is removed 1 s after it (a close may be held
    // back a moment to pair with its loopback peer's record).
    const PER_POD: Duration = Duration::from_millis(10);
    const AHEAD: usize = 120;
    const BEHIND: usize = 100;
    let logs = scratch("pod-churn-logs");
    std::fs::create_dir_all(logs.join("pods")).unwrap();
    std::fs::create_dir_all(logs.join("containers")).unwrap();
    let agent = Agent::start(&[
        "--kubernetes",
        "on",
        "--pod-logs-root",
        logs.to_str().unwrap(),
        "--pod-series-grace",
        "1",
    ]);
    let home = own_cgroup_v2();
    // The slices every pod shares, made once and removed after the last pod.
    let _slices = Cgroups::create(
        &cgroup_v2_root(),
        "kubepods.slice/kubepods-besteffort.slice",
    );
    let churn_series = |agent: &Agent| {
        agent
            .metrics_text()
            .lines()
            .filter(|l| l.starts_with(UNANSWERED) && l.contains("namespace=\"churn\""))
            .count()
    };
    let rss = |agent: &Agent| crate::bpf_objects::status_kib(agent.pid(), "VmRSS");
    let mut pods: std::collections::VecDeque<ChurnPod> =
        (0..AHEAD).map(|k| ChurnPod::create(&logs, k)).collect();
    thread::sleep(Duration::from_millis(1200));
    let mut done: std::collections::VecDeque<ChurnPod> = Default::default();
    let (mut max_series, mut samples) = (0, Vec::new());
    for k in 0..PODS {
        let started = Instant::now();
        let pod = pods.pop_front().unwrap();
        pod.unanswered_close(&home);
        done.push_back(pod);
        if done.len() > BEHIND {
            done.pop_front().unwrap().remove();
        }
        if k + AHEAD < PODS {
            pods.push_back(ChurnPod::create(&logs, k + AHEAD));
        }
        if k % 100 == 99 {
            let series = churn_series(&agent);
            max_series = max_series.max(series);
            samples.push((k + 1, series, rss(&agent)));
        }
        thread::sleep(PER_POD.saturating_sub(started.elapsed()));
    }
    thread::sleep(Duration::from_secs(1));
    for pod in done.drain(..) {
        pod.remove();
    }
    eprintln!("(pods, churn series, agent VmRSS KiB): {samples:?}");
    // Every incident, with its pod.
    let counted = wait_for(
        "an incident line for each pod",
        Duration::from_secs(10),
        || {
            let names: std::collections::BTreeSet<String> = agent
                .incidents()
                .iter()
                .filter(|i| i["namespace"] == ChurnPod::NAMESPACE)
                .filter_map(|i| i["pod"].as_str().map(str::to_owned))
                .collect();
            if names.len() < PODS {
                let missing: Vec<String> = (0..PODS)
                    .map(|k| format!("web-{k:04}"))
                    .filter(|n| !names.contains(n))
                    .collect();
                let unnamed: Vec<String> = agent
                    .incidents()
                    .iter()
                    .filter(|i| i["comm"] == own_comm() && i["namespace"].is_null())
                    .map(|i| format!("{} cgroup {}", i["ts"], i["cgroup_id"]))
                    .collect();
                eprintln!("missing {missing:?}; incidents without a pod: {unnamed:?}");
            }
            (names.len() == PODS).then_some(names)
        },
    );
    assert_eq!(counted.len(), PODS);
    // Without expiry every pod's series would stay: 1,000. With it, only those of the pods
    // alive after their incident or gone for less than the grace (about 2.5 s of churn, 250
    // pods here).
    assert!(max_series <= 400, "{samples:?}");
    wait_for(
        "the gone pods' series dropped",
        Duration::from_secs(10),
        || (churn_series(&agent) == 0).then_some(()),
    );
    let (_, _, warm) = samples[2];
    let (_, _, last) = *samples.last().unwrap();
    assert!(
        last <= warm + 4 * 1024,
        "agent VmRSS grew from {warm} KiB after 300 pods to {last} KiB after {PODS}: {samples:?}"
    );
}
