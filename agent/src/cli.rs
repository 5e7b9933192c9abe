//! Command line (README: CLI).

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::report::LogFormat;

/// lostwrite finds the bytes applications think they sent but that never reached the peer.
#[derive(Debug, Parser)]
#[command(name = "agent", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the probes, export /metrics and log incidents until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Report what this kernel supports (BTF, tracefs, capabilities, probe modes) and exit.
    Check(CheckArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub kernel: KernelArgs,

    /// Print the report as one JSON object (the same facts and exit status) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Where the agent finds kernel type information and tracefs.
#[derive(Debug, Clone, Args)]
pub struct KernelArgs {
    /// Kernel BTF used to resolve struct offsets and BTF tracepoints.
    #[arg(long, value_name = "PATH", default_value = "/sys/kernel/btf/vmlinux")]
    pub btf: PathBuf,

    /// tracefs mount point; mounted there if nothing is mounted yet.
    #[arg(long, value_name = "PATH", default_value = "/sys/kernel/tracing")]
    pub tracefs: PathBuf,

    /// Leave out a hook (kernel function or tracepoint, e.g. tcp_send_reset), as if this kernel
    /// lacked it: the detectors that need it are reported off. Repeatable.
    #[arg(long, value_name = "HOOK", value_parser = parse_hook)]
    pub skip_hook: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Address of the /metrics and /healthz HTTP endpoint.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9437")]
    pub listen: SocketAddr,

    /// Which kernel hooks to use. `auto` takes the best one that loads and attaches.
    #[arg(long, value_enum, default_value_t = ProbeModeArg::Auto)]
    pub probe_mode: ProbeModeArg,

    /// Format of the incident log (stdout) and of diagnostics (stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Only report connections whose local or remote port is one of these (repeatable).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Vec<u16>,

    /// Only report connections of processes with this command name (repeatable).
    #[arg(long, value_name = "COMM", value_parser = parse_comm)]
    pub comm: Vec<String>,

    /// Count writes to a just-closed TCP socket's fd number (EBADF). It needs the raw syscall
    /// tracepoints in every probe mode, which put every syscall on the host on the tracing slow
    /// path (see BENCHMARKS.md), so `auto` leaves it off. With `on`, where they cannot attach,
    /// the detector is reported off.
    #[arg(long, value_enum, default_value_t = Switch::Auto)]
    pub detect_ebadf: Switch,

    /// Name the cause when a Go server's write deadline (net/http's WriteTimeout) drops or cuts
    /// short a response, and count it (lostwrite_go_write_timeouts_total): uprobes on the Go
    /// runtime's deadline timers in every Go binary running or started, which run only when a
    /// deadline expires. `auto` loads them where uprobes work; `on` fails where they do not.
    #[arg(long, value_enum, default_value_t = Switch::Auto)]
    pub go_runtime: Switch,

    /// Where the programs keep each connection's state. `sk-storage`: on the socket itself
    /// (socket-local storage, Linux 5.11+, BTF tracepoint and fentry modes): cheapest, freed with
    /// the socket, no bound but the sockets. `lru`: an LRU hash map of --max-sockets entries
    /// (every mode). `auto` takes sk-storage where it loads, else lru; `sk-storage` fails where it
    /// cannot load.
    #[arg(long, value_enum, default_value_t = SocketStateArg::Auto)]
    pub socket_state: SocketStateArg,

    /// Size of the LRU map of connection states (--socket-state lru): the oldest are evicted
    /// past it. Socket-local storage needs no bound: each state is freed with its socket.
    #[arg(long, value_name = "N", default_value_t = 65536,
          value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub max_sockets: u32,

    /// Attach classic tracefs tracepoints even where BTF tracepoints work (exercises the
    /// fallback path; slower).
    #[arg(long, hide = true)]
    pub classic_tracepoints: bool,

    /// Add namespace, pod and container labels to the per-process series. `auto` turns it on
    /// inside a pod (KUBERNETES_SERVICE_HOST is set) or on a node (the kubelet's log
    /// directories exist under --pod-logs-root).
    #[arg(long, value_enum, default_value_t = Switch::Auto)]
    pub kubernetes: Switch,

    /// Parent of the kubelet's `pods/` and `containers/` log directories, whose names map
    /// container ids to pods (no API access needed).
    #[arg(long, value_name = "PATH", default_value = "/var/log")]
    pub pod_logs_root: PathBuf,

    /// Seconds the series of a pod that is gone (its log directory removed by the kubelet)
    /// are kept before they are dropped: longer than a few scrape intervals, so the last
    /// increments are scraped. Keeps /metrics as large as the live pods' losses on a node
    /// with pod churn.
    #[arg(long, value_name = "SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub pod_series_grace: u64,

    /// Size of the kernel-to-agent ring buffer in bytes, a power of two of at least a page
    /// (tests shrink it to make it overflow; the default is the eBPF object's own).
    #[arg(long, hide = true, value_name = "BYTES", value_parser = parse_ring_bytes)]
    pub events_ring_bytes: Option<u32>,

    /// Attach every program but have each return as soon as it has its arguments: detects
    /// nothing (every detector reports off). The overhead bench runs it to measure what the
    /// hooks themselves cost.
    #[arg(long, hide = true)]
    pub empty_programs: bool,

    /// Explain every close of a connection on this port (local or remote), loss or not: one
    /// EXPLAIN line each with the verdict and why, and
    /// lostwrite_explained_closes_total{port,verdict}. For finding out why something is, or is
    /// not, counted. Up to 4 times; each explained close is one record to the agent.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..),
          action = clap::ArgAction::Append)]
    pub explain_port: Vec<u16>,

    #[command(flatten)]
    pub kernel: KernelArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SocketStateArg {
    Auto,
    SkStorage,
    Lru,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProbeModeArg {
    Auto,
    Fentry,
    Kprobe,
    Tracepoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
    Auto,
}

fn parse_hook(s: &str) -> Result<String, String> {
    let known = crate::probes::hook_names();
    if known.contains(&s) {
        Ok(s.to_owned())
    } else {
        Err(format!("unknown hook; one of: {}", known.join(", ")))
    }
}

/// The kernel wants a BPF ring buffer's size to be a power of two and a multiple of the page
/// size (kernel/bpf/ringbuf.c, ringbuf_map_alloc).
fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    // SAFETY: sysconf has no preconditions.
    let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    if n.is_power_of_two() && n >= page && n <= 1 << 30 {
        Ok(n)
    } else {
        Err(format!(
            "a power of two from the page size ({page}) to 1 GiB"
        ))
    }
}

/// A task's comm is at most 15 bytes (TASK_COMM_LEN - 1); a longer filter could never match.
fn parse_comm(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 {
        return Err(format!(
            "a command name has 1 to 15 bytes (the kernel truncates longer ones), got {}",
            s.len()
        ));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["agent", "run"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(run.listen, "127.0.0.1:9437".parse().unwrap());
        assert_eq!(run.probe_mode, ProbeModeArg::Auto);
        assert_eq!(run.max_sockets, 65536);
        assert!(run.port.is_empty() && run.comm.is_empty());
        assert_eq!(run.kubernetes, Switch::Auto);
        assert_eq!(run.pod_logs_root, PathBuf::from("/var/log"));
    }

    #[test]
    fn check_takes_json() {
        for (args, json) in [
            (&["agent", "check"][..], false),
            (&["agent", "check", "--json"], true),
            (
                &["agent", "check", "--json", "--skip-hook", "tcp_send_reset"],
                true,
            ),
        ] {
            let Command::Check(check) = Cli::try_parse_from(args).unwrap().command else {
                panic!("expected check")
            };
            assert_eq!(check.json, json, "{args:?}");
            assert_eq!(check.kernel.btf, PathBuf::from("/sys/kernel/btf/vmlinux"));
        }
        assert!(Cli::try_parse_from(["agent", "run", "--json"]).is_err());
    }

    #[test]
    fn rejects_bad_input() {
        for args in [
            &["agent", "run", "--listen", "localhost"][..],
            &["agent", "run", "--listen", "1.2.3.4:99999"],
            &["agent", "run", "--port", "0"],
            &["agent", "run", "--comm", "a-very-long-command-name"],
            &["agent", "run", "--max-sockets", "10"],
            &["agent", "run", "--log-format", "xml"],
            &["agent", "run", "--detect-ebadf", "yes"],
            &["agent", "run", "--events-ring-bytes", "5000"],
            &["agent", "run", "--events-ring-bytes", "1024"],
            &["agent", "check", "--skip-hook", "tcp_nonsense"],
            &["agent", "run", "--kubernetes", "maybe"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} was accepted");
        }
    }
}
