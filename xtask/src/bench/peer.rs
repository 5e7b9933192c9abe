//! The reference peer: bpftrace (from Debian) running a short script of the unanswered-close
//! detector on the tracepoints the agent uses in tracepoint mode (`peer.bt`), measured in each
//! pair beside the agent. It is what a person would write by hand to watch for the seed
//! incident; its cost says what the agent's design buys over that.
//!
//! The script keeps `copied_seq` at each successful send in a hash map keyed by the socket, and
//! at a local close of an established connection counts the close if the socket read anything
//! since (no protocol, role or goodbye is told apart: it is a cost reference, not a detector).

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Run,
    agent::{BpfStats, SETTLE, Work, bpf_stats_of, over_steady_window, programs_of, stats_enabled},
};

/// The script, one probe per tracepoint.
pub const SCRIPT: &str = include_str!("peer.bt");

/// How many programs the script attaches.
const PROGRAMS: usize = 3;

/// One run of the workload with the peer attached.
pub fn measure(dir: &Path, work: Work<'_>) -> Result<Run> {
    let peer = Bpftrace::start(dir)?;
    let run = work(&mut |_| Ok(()))?.run;
    peer.stop()?;
    Ok(run)
}

/// One run with BPF statistics on, summed over the peer's programs.
pub fn measure_stats(dir: &Path, work: Work<'_>) -> Result<(Run, BpfStats)> {
    let _stats_on = stats_enabled()?;
    let peer = Bpftrace::start(dir)?;
    let measured = over_steady_window(work, || bpf_stats_of(peer.child.id()))?;
    peer.stop()?;
    Ok(measured)
}

struct Bpftrace {
    child: Child,
}

impl Bpftrace {
    /// Starts bpftrace on the script and waits until its programs are loaded and attached.
    fn start(dir: &Path) -> Result<Self> {
        let script = dir.join("peer.bt");
        fs::write(&script, SCRIPT)?;
        let log = fs::File::create(dir.join("peer.log"))?;
        let child = Command::new("bpftrace")
            .arg(&script)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting bpftrace (cargo xtask setup installs it)")?;
        let mut peer = Self { child };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = peer.child.try_wait()? {
                bail!(
                    "bpftrace exited ({status}): {}",
                    fs::read_to_string(dir.join("peer.log")).unwrap_or_default()
                );
            }
            // The programs are attached once bpftrace says so, and it holds their fds.
            let attached =
                fs::read_to_string(dir.join("peer.log")).is_ok_and(|l| l.contains("Attaching"));
            if attached && programs_of(peer.child.id()).is_ok_and(|p| p.len() >= PROGRAMS) {
                break;
            }
            if Instant::now() > deadline {
                bail!("bpftrace did not attach its {PROGRAMS} programs within 60 s");
            }
            thread::sleep(Duration::from_millis(50));
        }
        thread::sleep(SETTLE);
        Ok(peer)
    }

    /// SIGTERM, which bpftrace handles as it does Ctrl-C (it prints its maps and exits); not
    /// SIGINT, which a shell's background job ignores and passes on ignored. The run is
    /// measured by then, so a bpftrace that does not exit in time is killed, not an error.
    fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench: bpftrace did not exit within 30 s of SIGTERM; killed");
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        crate::cmd::kill_if_running(&mut self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_hooks_the_agents_tracepoints() {
        for tp in [
            "tracepoint:sock:sock_send_length",
            "tracepoint:sock:inet_sock_set_state",
            "tracepoint:tcp:tcp_destroy_sock",
        ] {
            assert!(SCRIPT.contains(tp), "{tp}");
        }
        assert_eq!(SCRIPT.matches("tracepoint:").count(), PROGRAMS);
    }
}
