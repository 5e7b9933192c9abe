//! The fixed texts of BENCHMARKS.md: what each method does and how to read each table, kept
//! apart from the code that computes the figures, so that either can be read (and changed)
//! without the other in the way.
//!
//! Each text is written with one `writeln!`; one ending in `\n` leaves the blank line that
//! Markdown needs after a paragraph. The texts with figures in them are functions that take the
//! figures already computed.

/// How busy the machine was before the pairs (`--wait-quiet`'s count), and what else ran on it.
pub fn quiet(
    median_load: f64,
    max_load: f64,
    waited: usize,
    discarded: usize,
    competitors: &str,
) -> String {
    format!(
        "\nBefore the pairs the 1-minute load average was {:.2} (median) to {:.2} (max); {} of \
         the pairs waited for other work on the machine to stop first (with `--wait-quiet`, each \
         pair starts only when no compiler or VM runs and the CPUs are under 10 % busy, and \
         is measured again when one started during it: {} times here); compilers or VMs seen \
         running anyway: {}.\n",
        median_load, max_load, waited, discarded, competitors
    )
}

/// How the pairs are run and compared; `settle` is the agent's pause before a measurement.
pub fn method(pairs: usize, seconds: f64, settle: f64) -> String {
    format!(
        "Each case runs {} pairs of {:.1} s runs, agent off then agent on, alternating in one \
         invocation, after one unmeasured warm-up run. For each agent-on run the agent is started \
         fresh in its default configuration, measured only after its `/healthz` answers and {:.1} s \
         more, and stopped with SIGTERM afterwards. **on/off** is the median over pairs of (agent-on \
         throughput / agent-off throughput of the same pair); the spread is the interquartile range \
         and the extremes of those per-pair ratios. A loss inside the spread is within this \
         machine's noise.\n",
        pairs, seconds, settle
    )
}

/// What each workload does.
pub const WORKLOADS: &str = "- **writes**: one loopback TCP connection with TCP_NODELAY, \
     64-byte `write()` calls in a loop, a thread reading the other end in 64 KiB reads.\n\
     - **http**: `wrk -t1 -c32` against nginx (1 worker, `access_log off`, keep-alive for the \
     whole run), GET of a 1 KiB file.\n\
     - **churn**: two client threads, each connecting, sending one `Connection: close` request \
     for the 1 KiB file to the same nginx, reading until nginx closes, and closing.\n";

/// Where a missed target is explained.
pub const MISSED: &str = "\nA missed target is explained, with its profile and what would close \
     the gap, in docs/overhead.md (\"Overhead and bounds\").";

/// What the agent's own columns mean, and what the probe columns measure.
pub const AGENT: &str = "\"Events\" are the workload's units: one `write()` call, one HTTP \
     request, one connection. CPU is the agent process's user + system time (`/proc/<pid>/stat` \
     utime + stime, read before and after each agent-on run, summed over them), per million \
     units. Peak RSS is the highest `VmHWM` of any agent-on run (most of it is the start-up parse \
     of the kernel's BTF), with the highest `VmRSS` at a run's end beside it. Ring-buffer records \
     are the agent's own `lostwrite_kernel_events_total` + `lostwrite_events_dropped_total`, \
     scraped at the start and end of each run's steady window (for wrk, the run less 0.4 s \
     at each end, so that wrk's exit, which resets connections with responses in flight and \
     is rightly reported, is left out; the window's requests are estimated from wrk's rate): \
     the traffic is healthy, so the target is 0.\n\n\
     The programs themselves run in the kernel, in the context of the traced tasks, so their \
     cost shows as the throughput loss above, not in the agent's CPU. The probe columns come \
     from one extra agent-on run per case with `kernel.bpf_stats_enabled=1` (which adds its \
     own timing cost, so it is kept apart from the pairs): `run_cnt` and `run_time_ns` summed \
     over the agent's programs. They time the program bodies only (not the tracepoint's \
     dispatch) and include two clock reads per run of their own. **Share of CPU** divides \
     that program time by the busy CPU time of the whole machine (/proc/stat user, nice, \
     system, irq and softirq) over the same window: the two are measured together, so a \
     host that slows this VM down slows both, and the share stays steady where the \
     throughput pairs do not. With every CPU saturated (which these workloads are), it is \
     close to the throughput the programs' bodies take away; the dispatch comes on top.\n";

/// `--floor`'s runs: the emptied programs and the sham, and what their ratios separate.
pub const FLOOR: &str = "Each pair above had two more runs (`--floor`). In one, the agent was \
     started the same way with `--empty-programs`, so that every program is attached and returns \
     as soon as it has its arguments: **empty/off** is what attaching programs to these hooks \
     costs before they do any work, and **on/empty** is what the programs' work adds to that. In \
     the other, the sham, the agent was started and stopped, and the workload ran after the \
     same pause with nothing attached: **sham/off** is the method's own bias and noise, what \
     this bench reports for an agent that costs nothing. All are medians over pairs, with \
     the interquartile range, and the losses with the 90 % interval of their median. Where \
     that interval for empty programs lies wholly over the budget, no program on these hooks \
     meets the budget on this machine.\n";

/// The reference peer: what the bpftrace script does, and how it is compared.
pub const PEER: &str = "Each pair above had one more run, with bpftrace running \
     `xtask/src/bench/peer.bt` instead of the agent: the unanswered-close detector as a person \
     would write it by hand, on the same tracepoints (a hash map of `copied_seq` per socket, \
     written at every successful send, read at every local close; no protocol, role or \
     goodbye told apart). **peer/off** is its throughput over the agent-off run of the same \
     pair; the shares of CPU are each one's program time over the machine's busy time, from \
     one run with BPF statistics on (the method of [The agent](#the-agent)).\n";

/// The agent with its state in the LRU map, and where else its figures appear.
pub const LRU: &str = "Each pair above had one more run with the agent started with \
     `--socket-state lru`: its connection state in the LRU hash map (the store of kprobe mode, \
     classic tracepoints and kernels before 5.11) instead of the default store named under \
     Machine. **lru/off** is its throughput over the agent-off run of the same pair; the shares \
     of CPU come from one run each with BPF statistics on (the method of \
     [The agent](#the-agent)), and the split into hooks and work is in \
     [One program run](#one-program-run-in-cpu-time).\n";

/// The dispatch calibration's method and result (`per_run` ns, with its `interval` or nothing),
/// and how the table beneath it splits the hooks from the work.
pub fn dispatch(rounds: usize, calls: u64, off: f64, per_run: f64, interval: &str) -> String {
    format!(
        "With `--floor`, the bench also alternated {} rounds of {} `send()` calls on an \
         unconnected UDP socket, with nothing attached and with the emptied programs attached. \
         Each call fails at once (no destination) but still fires `sock:sock_send_length`, so \
         the difference is one tracepoint dispatch into a program that returns at once, measured \
         as the caller's CPU time, with no packet, wake-up or other task involved: {:.1} ns per \
         call with nothing attached, **{per_run:.1} ns more per program run**{interval}.\n\n\
         Times the program runs per unit (from the probe columns above) and over the machine's \
         busy CPU time per unit in that run, this is the share of a CPU-bound workload the hooks \
         take before the programs do anything. The programs' work is the same statistics run's \
         program time per unit less that of a run with the programs emptied (which is almost \
         all the statistics' own clock reads), so that neither the dispatch nor the statistics \
         are counted in it.\n",
        rounds, calls, off,
    )
}

/// How `--profile` samples at `frequency` Hz and places each sample.
pub fn profiles(frequency: u64) -> String {
    format!(
        "With `--profile`, one more agent-on run per case and store ran under `perf record -e \
         cpu-clock -a -g -F{}` over its steady window. Each sample on a busy CPU is placed by its \
         call chain: in a program (**body**: its own instructions; else the helper or map \
         function it was in, with what that called), in the tracepoint's dispatch around the \
         programs, or in freeing a socket's local storage when the socket is destroyed, which \
         runs in no program and so is in no BPF statistic above. A sample is {} µs of one CPU; \
         places under {:.2} % of the busy CPU are in the total only. Sampling slows the workload \
         (each total row gives the profiled run's rate beside the agent-on pairs'), so the shares \
         are the measure and the ns per unit are those of the slowed run; these runs are apart \
         from the pairs.\n",
        frequency,
        1e6 / frequency as f64,
        0.02,
    )
}

/// What the last section lists.
pub const EVERY_PAIR: &str = "Throughput per run (units/s), off → on (with `--floor`, the \
     emptied programs' run and the sham in parentheses).\n";
