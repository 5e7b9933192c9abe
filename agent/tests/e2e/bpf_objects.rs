//! The agent's kernel objects as the kernel lists them: its own fds (/proc/<pid>/fdinfo) say
//! which programs, links and maps it holds, and bpftool says what exists host-wide.

use std::{collections::BTreeSet, process::Command};

use serde_json::Value;

/// BPF objects one process holds fds of.
#[derive(Debug, Default)]
pub struct Held {
    pub progs: BTreeSet<u64>,
    pub links: BTreeSet<u64>,
    pub maps: BTreeSet<u64>,
}

/// Reads every fdinfo of `pid`: program fds have `prog_id`, link fds `link_id`, map fds
/// `map_id` (kernel/bpf/syscall.c, bpf_*_show_fdinfo). A link's fdinfo also names its program,
/// so only `link_id` marks a link.
pub fn held(pid: u32) -> Held {
    let mut held = Held::default();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {dir}: {e}")) {
        let Ok(info) = std::fs::read_to_string(entry.unwrap().path()) else {
            continue;
        };
        let field = |name: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
        };
        if let Some(id) = field("link_id:") {
            held.links.insert(id);
        } else if let Some(id) = field("prog_id:") {
            held.progs.insert(id);
        } else if let Some(id) = field("map_id:") {
            held.maps.insert(id);
        }
    }
    held
}

fn bpftool(args: &[&str]) -> Value {
    let out = Command::new("bpftool")
        .args(args)
        .arg("--json")
        .output()
        .expect("run bpftool (installed by `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bpftool printed JSON")
}

/// Every loaded program: (id, name).
pub fn programs() -> Vec<(u64, String)> {
    bpftool(&["prog", "show"])
        .as_array()
        .expect("a list of programs")
        .iter()
        .map(|p| {
            (
                p["id"].as_u64().unwrap(),
                p["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Every link: (id, program id).
pub fn links() -> Vec<(u64, u64)> {
    bpftool(&["link", "show"])
        .as_array()
        .expect("a list of links")
        .iter()
        .map(|l| {
            (
                l["id"].as_u64().unwrap(),
                l["prog_id"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// `bpftool map show id <id>`.
pub fn map(id: u64) -> Value {
    bpftool(&["map", "show", "id", &id.to_string()])
}

/// Every map id host-wide.
pub fn map_ids() -> BTreeSet<u64> {
    bpftool(&["map", "show"])
        .as_array()
        .expect("a list of maps")
        .iter()
        .filter_map(|m| m["id"].as_u64())
        .collect()
}

/// The value of a line of /proc/<pid>/status (`VmRSS`, `CapEff`, …), trimmed.
pub fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status:\n{status}"))
}

/// A `kB` line of /proc/<pid>/status (VmRSS, VmHWM), in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let value = status_field(pid, field);
    value
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{field} of {pid} is not in kB: {value}"))
}
