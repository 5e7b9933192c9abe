//! A process read from the outside through /proc, so that the reading costs it nothing: its CPU
//! time, its memory, its open files and what the kernel says of its BPF objects.

use std::fs;

use anyhow::{Context as _, Result};

/// utime + stime of process `pid` in seconds, from /proc/<pid>/stat (fields 14 and 15, in clock
/// ticks): all its threads, alive or exited.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The comm field may hold spaces; everything after its closing parenthesis is fixed.
    let rest = stat.rsplit_once(')').context("malformed /proc/pid/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .context("malformed /proc/pid/stat")
    };
    // Field 14 is utime; `rest` starts at field 3.
    let total = ticks(14 - 3)? + ticks(15 - 3)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Ok(total as f64 / hz as f64)
}

/// A `kB` field of /proc/<pid>/status (`"VmRSS:"`, `"VmHWM:"`).
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/pid/status"))
}

/// How many file descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count())
}

/// The fdinfo text of every fd of process `pid` that has a line starting with `key` (`prog_tag:`
/// for BPF programs, `map_type:` for BPF maps). An fd closed while they are read is left out.
pub fn fdinfos_with(pid: u32, key: &str) -> Result<Vec<String>> {
    Ok(fs::read_dir(format!("/proc/{pid}/fdinfo"))?
        .filter_map(|e| fs::read_to_string(e.ok()?.path()).ok())
        .filter(|info| info.lines().any(|l| l.starts_with(key)))
        .collect())
}

/// The value of a `key:\tvalue` line of an fdinfo text, as a number.
pub fn fdinfo_field(info: &str, key: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fdinfo_fields() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2071\nmap_type:\t27\n\
                    max_entries:\t262144\nmemlock:\t266240\nmap_id:\t58\nfrozen:\t0\n";
        assert_eq!(fdinfo_field(info, "memlock"), Some(266_240));
        assert_eq!(fdinfo_field(info, "map_id"), Some(58));
        assert_eq!(fdinfo_field(info, "map"), None);
        assert_eq!(fdinfo_field(info, "run_cnt"), None);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(status_kib(pid, "VmRSS:").unwrap() > 0);
        assert!(open_fds(pid).unwrap() >= 3);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
    }
}
