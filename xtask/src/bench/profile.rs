//! `--profile`: where the programs' time goes, sampled by `perf record` (cpu-clock, every CPU,
//! with call chains) over one agent-on run's steady window. Each busy sample is placed by its
//! stack: inside a program (its own instructions, or the helper or map function it called),
//! in the tracepoint's dispatch around the programs, or in freeing a socket's local storage when
//! the socket is destroyed, which no program runs for and so no BPF statistic counts. The bench's
//! other measures time the programs; this one also shows what they cost the kernel after them.
//!
//! Needs `perf` (Debian's linux-perf, which `cargo xtask setup` installs) and a kernel that
//! names JIT-compiled programs in its symbols (`net.core.bpf_jit_kallsyms`, set here while the
//! profile runs).

use std::{
    collections::BTreeMap,
    fs,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::sysctl::Sysctl;

/// Samples per second per CPU: enough for the places of 0.1 % to show over a 3 s window. Sampling
/// in this VM is not free (10 kHz slowed connection churn by a third), so the shares are the
/// measure, and the ns per unit those of a run slowed by the sampling.
pub const FREQUENCY: u64 = 4_000;

/// Places below this share of the busy CPU are summed into the total but not listed.
const SMALLEST_LISTED: f64 = 0.0002;

/// What a profile found: samples per place, over the busy samples of the window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// Samples where a CPU was not idle.
    pub busy: u64,
    /// (where, what) -> samples. `where` is a program's name, `dispatch` or `socket destruction`;
    /// `what` the program's own instructions (`body`) or the function it was in.
    pub places: BTreeMap<(String, String), u64>,
    /// Workload units in the window.
    pub units: f64,
    /// The window's length.
    pub seconds: f64,
}

impl Profile {
    /// CPU time per workload unit of `samples`, in ns.
    pub fn ns_per_unit(&self, samples: u64) -> f64 {
        samples as f64 * 1e9 / FREQUENCY as f64 / self.units
    }

    /// `samples` over the busy samples.
    pub fn share(&self, samples: u64) -> f64 {
        samples as f64 / self.busy.max(1) as f64
    }

    /// Every BPF-related sample.
    pub fn total(&self) -> u64 {
        self.places.values().sum()
    }

    /// The places worth a row, largest first.
    pub fn listed(&self) -> Vec<(&(String, String), u64)> {
        let mut rows: Vec<_> = self
            .places
            .iter()
            .map(|(k, v)| (k, *v))
            .filter(|(_, v)| self.share(*v) >= SMALLEST_LISTED)
            .collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        rows
    }
}

/// The leaf functions of an idle CPU.
fn is_idle(leaf: &str) -> bool {
    leaf.ends_with("safe_halt")
        || leaf.ends_with("_idle")
        || leaf.starts_with("mwait_idle")
        || leaf.starts_with("intel_idle")
        || leaf.starts_with("acpi_idle")
        || leaf == "cpu_idle_poll"
}

/// A program's name from its kernel symbol, `bpf_prog_<tag>_<name>`.
fn program_name(sym: &str) -> Option<&str> {
    let rest = sym.strip_prefix("bpf_prog_")?;
    let (_tag, name) = rest.split_once('_')?;
    Some(name)
}

/// Reads `perf script` output (a header line per sample, then its call chain, leaf first, one
/// tab-indented `<address> <symbol>[+<offset> (<object>)]` per line, and a blank line) into a
/// profile.
pub fn parse(text: &str, units: f64, seconds: f64) -> Profile {
    let mut profile = Profile {
        units,
        seconds,
        ..Profile::default()
    };
    for sample in text.split("\n\n") {
        let stack: Vec<&str> = sample
            .lines()
            .filter(|l| l.starts_with('\t'))
            .filter_map(|l| {
                let sym = l.split_whitespace().nth(1)?;
                Some(sym.split_once("+0x").map_or(sym, |(s, _)| s))
            })
            .collect();
        let Some(leaf) = stack.first() else {
            continue;
        };
        if is_idle(leaf) {
            continue;
        }
        profile.busy += 1;
        let programs: Vec<(usize, &str)> = stack
            .iter()
            .enumerate()
            .filter_map(|(i, f)| Some((i, program_name(f)?)))
            .collect();
        // A program's subprograms (the target's memset, say) have symbols of their own: the
        // sample is the outermost program's, in the innermost one's code or callee.
        let place = if let (Some(&(inner, sub)), Some(&(outer, prog))) =
            (programs.first(), programs.last())
        {
            let what = match inner {
                0 if inner == outer => "body".to_owned(),
                0 => format!("{sub} (subprogram)"),
                _ => stack[inner - 1].to_owned(),
            };
            Some((prog.to_owned(), what))
        } else if stack.iter().any(|f| f.starts_with("bpf_trace_run")) {
            Some(("dispatch".to_owned(), (*leaf).to_owned()))
        } else if stack.contains(&"bpf_sk_storage_free") {
            Some((
                "socket destruction".to_owned(),
                "bpf_sk_storage_free".to_owned(),
            ))
        } else {
            None
        };
        if let Some(place) = place {
            *profile.places.entry(place).or_default() += 1;
        }
    }
    profile
}

/// `perf record` over every CPU, from [`Recorder::start`] to [`Recorder::stop`].
pub struct Recorder {
    child: Child,
    data: PathBuf,
    /// `net.core.bpf_jit_kallsyms = 1`: JIT-compiled programs get symbols.
    _kallsyms: Sysctl,
}

impl Recorder {
    pub fn start(dir: &Path) -> Result<Self> {
        let kallsyms = Sysctl::set("/proc/sys/net/core/bpf_jit_kallsyms", "1")?;
        let data = dir.join("perf.data");
        let child = Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-a", "-g", "-q"])
            .arg(format!("-F{FREQUENCY}"))
            .arg("-o")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf record (cargo xtask setup installs linux-perf)")?;
        // perf opens its events before it writes anything; give it that long.
        thread::sleep(Duration::from_millis(300));
        Ok(Self {
            child,
            data,
            _kallsyms: kallsyms,
        })
    }

    /// Stops the recording and returns `perf script`'s text of it.
    pub fn stop(mut self) -> Result<String> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        // perf writes its data on SIGINT, then raises the signal again to exit by it.
        if !status.success() && status.signal() != Some(libc::SIGINT) {
            bail!("perf record exited with {status}");
        }
        // No `comm`: a task's name need not be UTF-8, and the stacks are all that is read.
        let script = crate::cmd::output(
            Command::new("perf")
                .args(["script", "-F", "pid,ip,sym", "-i"])
                .arg(&self.data),
        )?;
        let _ = fs::remove_file(&self.data);
        Ok(script)
    }
}

impl Drop for Recorder {
    /// A profile given up on (the workload failed) leaves no perf running.
    fn drop(&mut self) {
        crate::cmd::kill_if_running(&mut self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "\
swapper     0 
\tffffffff8224379b pv_native_safe_halt+0xb ([kernel.kallsyms])
\tffffffff822452b5 default_idle+0x5 ([kernel.kallsyms])

nginx   100 
\tffffffffa0001234 bpf_prog_2c88b976c6d7b634_btf_inet_sock_set_state_local+0x120 ([kernel.kallsyms])
\tffffffff81a00000 bpf_trace_run3+0x80 ([kernel.kallsyms])
\tffffffff81b00000 tcp_set_state+0x10 ([kernel.kallsyms])

nginx   100 
\tffffffff81c00000 kmalloc_trace+0x10 ([kernel.kallsyms])
\tffffffff81c00100 bpf_local_storage_update+0x40 ([kernel.kallsyms])
\tffffffff81c00200 bpf_sk_storage_get_tracing+0x40 ([kernel.kallsyms])
\tffffffffa0001234 bpf_prog_2c88b976c6d7b634_btf_inet_sock_set_state_local+0x200 ([kernel.kallsyms])
\tffffffff81a00000 bpf_trace_run3+0x80 ([kernel.kallsyms])

nginx   100 
\tffffffffa0002000 bpf_prog_0123456789abcdef_memset+0x10 ([kernel.kallsyms])
\tffffffffa0001234 bpf_prog_2c88b976c6d7b634_btf_inet_sock_set_state_local+0x300 ([kernel.kallsyms])
\tffffffff81a00000 bpf_trace_run3+0x80 ([kernel.kallsyms])

client  200 
\tffffffff81a00010 __bpf_prog_enter_recur+0x8 ([kernel.kallsyms])
\tffffffff81a00000 bpf_trace_run3+0x80 ([kernel.kallsyms])

client  200 
\tffffffff81d00000 kfree+0x8 ([kernel.kallsyms])
\tffffffff81d00100 bpf_sk_storage_free+0x8 ([kernel.kallsyms])
\tffffffff81d00200 __sk_destruct+0x8 ([kernel.kallsyms])

client  200 
\tffffffff81e00000 tcp_sendmsg_locked+0x8 ([kernel.kallsyms])
\t            7f00 [unknown] (/usr/lib/libc.so.6)
";

    #[test]
    fn places_each_busy_sample_by_its_stack() {
        let p = parse(SCRIPT, 10.0, 1.0);
        assert_eq!(p.busy, 6, "the idle sample is left out");
        let at = |w: &str, what: &str| p.places.get(&(w.to_owned(), what.to_owned())).copied();
        assert_eq!(at("btf_inet_sock_set_state_local", "body"), Some(1));
        assert_eq!(
            at(
                "btf_inet_sock_set_state_local",
                "bpf_sk_storage_get_tracing"
            ),
            Some(1),
            "a helper's callees are the helper's"
        );
        assert_eq!(
            at("btf_inet_sock_set_state_local", "memset (subprogram)"),
            Some(1)
        );
        assert_eq!(at("dispatch", "__bpf_prog_enter_recur"), Some(1));
        assert_eq!(at("socket destruction", "bpf_sk_storage_free"), Some(1));
        assert_eq!(p.total(), 5, "the plain kernel sample is no place");
        assert_eq!(p.listed()[0].1, 1);
        // 4 kHz: a sample is 250 µs of CPU, over 10 units.
        assert_eq!(p.ns_per_unit(1), 25_000.0);
        assert_eq!(p.share(3), 0.5);
    }

    #[test]
    fn names_programs_by_their_symbol() {
        assert_eq!(
            program_name("bpf_prog_ee0724d5cc9d1d41_btf_sock_send_length_local"),
            Some("btf_sock_send_length_local")
        );
        assert_eq!(program_name("bpf_trace_run3"), None);
        assert!(is_idle("pv_native_safe_halt") && is_idle("default_idle"));
        assert!(!is_idle("tcp_sendmsg"));
    }
}
