//! One reading of the agent, taken from the outside every 10 s: /proc for its memory, fds, CPU
//! and the BPF maps it holds (their `memlock` in fdinfo, no bpftool needed), and one scrape of
//! its /metrics.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::load::Shared;
use crate::{
    net::{http_get, parse_metrics},
    proc,
};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Seconds since the load started.
    pub at: f64,
    pub rss_kib: u64,
    pub fds: u64,
    /// Sample lines on /metrics.
    pub series: u64,
    /// Those without a `port` label or with one of the soak's ports: the agent's own and the
    /// soak's. The rest are other processes' incidents on the host, a new series per new port.
    pub own_series: u64,
    /// The `memlock` of the BPF maps the agent holds, KiB.
    pub map_kib: u64,
    /// The agent's CPU since the previous sample, % of one core; none for the first.
    pub cpu_pct: Option<f64>,
    pub tracked_sockets: u64,
    pub kernel_records: u64,
    pub dropped: u64,
    /// Incidents the soak had caused by then.
    pub caused: u64,
    /// Taken while a burst's connections were open (before or after the reading).
    pub during_burst: bool,
}

/// The agent's CPU time at the previous sample.
pub struct CpuMark {
    seconds: f64,
    at: Instant,
}

impl CpuMark {
    pub fn new(pid: u32) -> Result<Self> {
        Ok(Self {
            seconds: proc::cpu_seconds(pid)?,
            at: Instant::now(),
        })
    }

    /// CPU since the last mark, % of one core, and a new mark; none over less than a second.
    fn advance(&mut self, pid: u32) -> Result<Option<f64>> {
        let (seconds, at) = (proc::cpu_seconds(pid)?, Instant::now());
        let wall = at.duration_since(self.at);
        let pct = (wall >= Duration::from_secs(1))
            .then(|| (seconds - self.seconds) / wall.as_secs_f64() * 100.0);
        *self = Self { seconds, at };
        Ok(pct)
    }
}

impl Sample {
    pub fn take(
        pid: u32,
        listen: SocketAddr,
        own_ports: &[u16],
        at: Duration,
        cpu: &mut CpuMark,
        shared: &Shared,
    ) -> Result<Self> {
        let bursting = shared.bursting();
        let body = match http_get(listen, "/metrics")? {
            (200, body) => body,
            (status, _) => bail!("/metrics answered {status}"),
        };
        let metrics = parse_metrics(&body);
        let value = |name: &str| metrics.get(name).copied().unwrap_or(0.0) as u64;
        Ok(Self {
            at: at.as_secs_f64(),
            rss_kib: proc::status_kib(pid, "VmRSS:")?,
            fds: proc::open_fds(pid)? as u64,
            series: series(&body),
            own_series: own_series(&body, own_ports),
            map_kib: map_memlock(&proc::fdinfos_with(pid, "map_type:")?) / 1024,
            cpu_pct: cpu.advance(pid)?,
            tracked_sockets: value("lostwrite_tracked_sockets"),
            kernel_records: value("lostwrite_kernel_events_total"),
            dropped: value("lostwrite_events_dropped_total"),
            caused: shared.caused_total(),
            during_burst: bursting || shared.bursting(),
        })
    }

    /// The progress line printed as the run goes.
    pub fn progress(&self) -> String {
        format!(
            "{} RSS {} KiB, {} fds, {} series ({} own), maps {} KiB, CPU {}, {} incidents \
             caused, {} records ({} dropped)",
            super::report::clock(self.at),
            self.rss_kib,
            self.fds,
            self.series,
            self.own_series,
            self.map_kib,
            self.cpu_pct.map_or("-".to_owned(), |c| format!("{c:.1} %")),
            self.caused,
            self.kernel_records,
            self.dropped
        )
    }
}

/// TCP sockets on the host (this network namespace) that are neither listening nor in
/// TIME-WAIT, from /proc/net/tcp and tcp6: what `lostwrite_tracked_sockets` can count at most.
pub fn live_tcp_sockets() -> u64 {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|table| live_in_table(&table))
        .sum()
}

/// Rows of a /proc/net/tcp table whose state (the 4th column, hex) is neither LISTEN (0A) nor
/// TIME_WAIT (06).
fn live_in_table(table: &str) -> u64 {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter(|state| !matches!(*state, "0A" | "06"))
        .count() as u64
}

/// Sample lines in a text exposition (comments and blank lines aside).
pub fn series(body: &str) -> u64 {
    body.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count() as u64
}

/// Sample lines without a `port` label or with one of `ports`.
pub fn own_series(body: &str, ports: &[u16]) -> u64 {
    body.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            match crate::net::label(series, "port").parse::<u16>() {
                Ok(port) => ports.contains(&port),
                Err(_) => !series.contains("port=\""),
            }
        })
        .count() as u64
}

/// The `memlock` bytes of BPF maps, from their fdinfo texts: each map once, however many fds
/// refer to it (by `map_id`, which kernels since 4.14 print).
pub fn map_memlock(infos: &[String]) -> u64 {
    let mut by_id = BTreeMap::new();
    for (i, info) in infos.iter().enumerate() {
        let Some(bytes) = proc::fdinfo_field(info, "memlock") else {
            continue;
        };
        // No id: count it as its own map.
        let id = proc::fdinfo_field(info, "map_id").unwrap_or(u64::MAX - i as u64);
        by_id.insert(id, bytes);
    }
    by_id.values().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(id: u64, memlock: u64) -> String {
        format!(
            "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2071\nmap_type:\t27\nkey_size:\t0\n\
             value_size:\t0\nmax_entries:\t262144\nmap_flags:\t0x0\nmap_extra:\t0x0\n\
             memlock:\t{memlock}\nmap_id:\t{id}\nfrozen:\t0\n"
        )
    }

    #[test]
    fn map_memory_counts_each_map_once() {
        let infos = vec![map(7, 266_240), map(8, 4096), map(7, 266_240)];
        assert_eq!(map_memlock(&infos), 270_336);
        // Without map_id (an old kernel), every fd is a map of its own.
        let old = vec!["map_type:\t1\nmemlock:\t100\n".to_owned(); 2];
        assert_eq!(map_memlock(&old), 200);
        assert_eq!(map_memlock(&[]), 0);
    }

    #[test]
    fn live_sockets_are_neither_listening_nor_in_time_wait() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:24A5 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:A1B2 0100007F:24A5 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1\n\
   2: 0100007F:24A5 0100007F:A1B3 06 00000000:00000000 03:00000F3C 00000000     0        0 0 3 0000000000000000\n\
   3: 0100007F:24A5 0100007F:A1B4 08 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(live_in_table(table), 2);
        assert_eq!(live_in_table(""), 0);
    }

    #[test]
    fn series_are_the_sample_lines() {
        let body = "# HELP a x\n# TYPE a counter\na 1\nb{x=\"1\"} 2\n\nc_bucket{le=\"+Inf\"} 3\n";
        assert_eq!(series(body), 3);
        let body = "# HELP a x\nlostwrite_kernel_events_total 4\n\
                    lostwrite_unanswered_closes_total{comm=\"x\",port=\"100\"} 2\n\
                    lostwrite_unanswered_closes_total{comm=\"y\",port=\"41000\"} 1\n\
                    lostwrite_unanswered_close_delay_seconds_bucket{comm=\"x\",port=\"100\",le=\"1\"} 2\n";
        assert_eq!(series(body), 4);
        assert_eq!(own_series(body, &[100]), 3);
        assert_eq!(own_series(body, &[]), 1);
    }
}
