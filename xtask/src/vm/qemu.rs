//! Booting one guest under qemu's TCG emulation, watching its serial console, and reading the
//! results the guest's init prints.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{guest::MARK, kernels::Kernel};
use crate::cmd;

/// Console lines that mean the guest kernel is broken, whatever the scenarios print.
const KERNEL_FAULTS: &[&str] = &[
    "Kernel panic",
    "BUG: ",
    "Oops: ",
    "soft lockup",
    "hard LOCKUP",
    "general protection fault",
    "detected stalls on CPU",
    "WARNING: CPU: ",
];

/// How long to keep reading after a fault line, so the log holds the whole backtrace.
const FAULT_GRACE: Duration = Duration::from_secs(5);

/// Console lines of a fault echoed to the terminal (the whole console is in the log file).
const FAULT_ECHO_LINES: usize = 80;

pub struct Boot<'a> {
    pub kernel: &'a Kernel,
    pub initramfs: &'a Path,
    pub log: PathBuf,
    /// Wall-clock limit for the whole guest; qemu is killed after it.
    pub timeout: Duration,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Extra kernel command-line arguments.
    pub append: Option<&'a str>,
}

/// What one scenario in one mode did in the guest.
pub struct Outcome {
    pub passed: bool,
    /// The console lines between the scenario's start and its result (for failures).
    pub output: Vec<String>,
}

pub struct GuestRun {
    /// By (mode, scenario name).
    pub results: BTreeMap<(String, String), Outcome>,
    /// A kernel fault, a timeout, or a guest that ended without finishing.
    pub problem: Option<String>,
    pub wall: Duration,
    /// When the guest's init started, since qemu started.
    pub booted_after: Option<Duration>,
    pub check_exit: Option<String>,
    /// What `agent check --json` printed, when it printed JSON.
    pub check: Option<serde_json::Value>,
    /// The fault of a first boot of this guest, when it was booted again after one.
    pub earlier_fault: Option<String>,
}

impl GuestRun {
    /// The guest kernel faulted (rather than a scenario failing or the guest timing out).
    pub fn faulted(&self) -> bool {
        self.problem
            .as_deref()
            .is_some_and(|p| p.starts_with("kernel fault"))
    }
}

/// Boots the guest, streams its console into `boot.log`, and collects its result lines.
pub fn run(boot: &Boot<'_>) -> Result<GuestRun> {
    let append = [
        "console=ttyS0",
        // Any panic powers the guest off at once (-no-reboot turns the reboot into an exit).
        "panic=-1",
        "softlockup_panic=1",
        // Warnings and worse reach the console (for the fault watch), routine messages do not.
        "loglevel=5",
        // Speculation mitigations only slow emulation down (page-table isolation flushes TCG's
        // software TLB on every system call); nothing here measures or depends on them.
        "mitigations=off",
    ]
    .join(" ");
    // What the `default-mode` scenario expects `--probe-mode auto` to choose on this kernel; the
    // init script reads it from /proc/cmdline (one initramfs serves every kernel).
    let append = format!(
        "{append} {}={}",
        super::guest::DEFAULT_MODE_PARAM,
        boot.kernel.line.default_mode
    );
    let append = match boot.append {
        Some(extra) => format!("{append} {extra}"),
        None => append,
    };
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-nographic", "-no-reboot", "-nic", "none"])
        .args(["-smp", &boot.cpus.to_string()])
        .args(["-m", &format!("{}M", boot.memory_mib)])
        .arg("-kernel")
        .arg(&boot.kernel.vmlinuz)
        .arg("-initrd")
        .arg(boot.initramfs)
        .args(["-append", &append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd::echo(&qemu);

    let started = Instant::now();
    let mut child = qemu
        .spawn()
        .with_context(|| format!("failed to start `{}`", cmd::display(&qemu)))?;
    let (tx, rx) = mpsc::channel();
    for pipe in [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);

    let mut log =
        fs::File::create(&boot.log).with_context(|| format!("creating {}", boot.log.display()))?;
    let deadline = started + boot.timeout;
    let mut parser = Parser::new(&boot.kernel.release);
    let mut fault_deadline: Option<Instant> = None;
    let mut fault_echoed = 0;
    let mut problem = None;
    loop {
        let until = fault_deadline.map_or(deadline, |f| f.min(deadline));
        let line = match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            // Both pipes closed: qemu has exited.
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                if fault_deadline.is_none() {
                    problem = Some(format!(
                        "timed out after {} s (wall clock)",
                        boot.timeout.as_secs()
                    ));
                }
                let _ = child.kill();
                break;
            }
        };
        writeln!(log, "{line}")?;
        if let Some(fault) = kernel_fault(&line)
            && fault_deadline.is_none()
        {
            eprintln!("vm-test: {} kernel fault: {line}", boot.kernel.line.name);
            problem = Some(format!("kernel fault ({fault}): {line}"));
            fault_deadline = Some(Instant::now() + FAULT_GRACE);
        } else if fault_deadline.is_some() && fault_echoed < FAULT_ECHO_LINES {
            // The backtrace, where a CI log shows it (the log file stays on the CI machine).
            eprintln!("vm-test: {} | {line}", boot.kernel.line.name);
            fault_echoed += 1;
        }
        if let Some(report) = parser.line(&line, started.elapsed()) {
            println!("vm-test: {} {report}", boot.kernel.line.name);
        }
    }
    let status = child.wait().context("waiting for qemu")?;
    let wall = started.elapsed();
    if problem.is_none() && !parser.done {
        problem = Some(format!("the guest stopped before finishing ({status})"));
    }
    Ok(GuestRun {
        results: parser.results,
        problem,
        wall,
        booted_after: parser.booted_after,
        check_exit: parser.check_exit,
        check: parser.check,
        earlier_fault: None,
    })
}

fn kernel_fault(line: &str) -> Option<&'static str> {
    KERNEL_FAULTS.iter().copied().find(|f| line.contains(f))
}

/// Reads the init script's lines (see `guest::init_script`).
struct Parser<'a> {
    /// The release the host booted (`uname -r` in the guest).
    release: &'a str,
    results: BTreeMap<(String, String), Outcome>,
    /// Lines since the current scenario began.
    current: Vec<String>,
    seconds: Option<f64>,
    booted_after: Option<Duration>,
    check_exit: Option<String>,
    check: Option<serde_json::Value>,
    /// Why the check's JSON line did not parse.
    check_error: Option<String>,
    done: bool,
}

impl<'a> Parser<'a> {
    fn new(release: &'a str) -> Self {
        Self {
            release,
            results: BTreeMap::new(),
            current: Vec::new(),
            seconds: None,
            booted_after: None,
            check_exit: None,
            check: None,
            check_error: None,
            done: false,
        }
    }

    /// Takes one console line; returns a progress message for a result line.
    fn line(&mut self, line: &str, elapsed: Duration) -> Option<String> {
        // A kernel message may land on the same console line before the marker.
        let Some(at) = line.find(MARK) else {
            self.current.push(line.to_owned());
            return None;
        };
        if let Some(json) = line[at..].strip_prefix(&format!("{MARK}-CHECK-JSON")) {
            match serde_json::from_str(json) {
                Ok(check) => self.check = Some(check),
                Err(e) => self.check_error = Some(format!("no JSON from agent check: {e}")),
            }
            return None;
        }
        let words: Vec<&str> = line[at..].split_whitespace().collect();
        match words.as_slice() {
            [tag, rest @ ..] if *tag == format!("{MARK}-BOOTED") => {
                self.booted_after = Some(elapsed);
                self.current.clear();
                Some(format!("booted: {}", rest.join(" ")))
            }
            [tag, exit] if *tag == format!("{MARK}-CHECK") => {
                self.check_exit = Some(exit.trim_start_matches("exit=").to_owned());
                self.current.clear();
                Some(match &self.check_error {
                    Some(e) => format!("agent check {exit} ({e})"),
                    None => format!("agent check {exit}"),
                })
            }
            [tag, _, _] if *tag == format!("{MARK}-BEGIN") => {
                self.current.clear();
                self.seconds = None;
                None
            }
            [tag, _, _, t0, t1] if *tag == format!("{MARK}-TIME") => {
                self.seconds = t0
                    .parse::<f64>()
                    .ok()
                    .zip(t1.parse::<f64>().ok())
                    .map(|(a, b)| b - a);
                None
            }
            [tag] if *tag == format!("{MARK}-DONE") => {
                self.done = true;
                None
            }
            [tag, release, mode, scenario, result] if *tag == MARK => {
                // The guest must run the kernel the host booted, or the row would be a lie.
                let passed = *result == "PASS" && *release == self.release;
                let mut output = std::mem::take(&mut self.current);
                if *release != self.release {
                    output.push(format!("guest kernel {release}, expected {}", self.release));
                }
                let seconds = self.seconds.take();
                self.results.insert(
                    (mode.to_string(), scenario.to_string()),
                    Outcome { passed, output },
                );
                let took = seconds.map(|s| format!(" ({s:.1} s)")).unwrap_or_default();
                Some(format!(
                    "{mode} {scenario} {}{took}",
                    if passed { "PASS" } else { "FAIL" }
                ))
            }
            _ => {
                self.current.push(line.to_owned());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(parser: &mut Parser<'_>, lines: &str) {
        for line in lines.lines() {
            parser.line(line, Duration::from_secs(1));
        }
    }

    #[test]
    fn results_with_their_output() {
        let mut p = Parser::new("6.1.0-50-amd64");
        feed(
            &mut p,
            "LOSTWRITE-VM-BOOTED 6.1.0-50-amd64 #1 SMP\n\
             LOSTWRITE-VM-CHECK-JSON {\"detectors\": [{\"name\": \"unanswered_close\"}]}\n\
             LOSTWRITE-VM-CHECK exit=2\n\
             LOSTWRITE-VM-BEGIN fentry a\n\
             LOSTWRITE-VM-TIME fentry a 1.00 3.50\n\
             LOSTWRITE-VM 6.1.0-50-amd64 fentry a PASS\n\
             LOSTWRITE-VM-BEGIN fentry b\n\
             thread 'b' panicked\n\
             LOSTWRITE-VM-TIME fentry b 3.50 4.00\n\
             [   12.3] some kernel line LOSTWRITE-VM 6.1.0-50-amd64 fentry b FAIL\n\
             LOSTWRITE-VM-BEGIN kprobe a\n\
             LOSTWRITE-VM 5.10.0-32-amd64 kprobe a PASS\n\
             LOSTWRITE-VM-DONE\n",
        );
        assert_eq!(p.check_exit.as_deref(), Some("2"));
        assert_eq!(
            p.check,
            Some(serde_json::json!({"detectors": [{"name": "unanswered_close"}]}))
        );
        assert!(p.done);
        let get = |m: &str, s: &str| &p.results[&(m.to_owned(), s.to_owned())];
        assert!(get("fentry", "a").passed);
        assert!(!get("fentry", "b").passed);
        assert_eq!(get("fentry", "b").output, ["thread 'b' panicked"]);
        // A PASS from a kernel other than the one booted does not count.
        assert!(!get("kprobe", "a").passed);
        assert_eq!(p.results.len(), 3);
    }

    #[test]
    fn check_json_after_a_kernel_message_or_cut_short() {
        let mut p = Parser::new("6.12.0-1-amd64");
        let progress = p.line(
            "[    4.2] random: crng init done LOSTWRITE-VM-CHECK-JSON {\"verdict\": {}}",
            Duration::from_secs(1),
        );
        assert!(progress.is_none());
        assert_eq!(p.check, Some(serde_json::json!({"verdict": {}})));

        let mut p = Parser::new("6.12.0-1-amd64");
        feed(&mut p, "LOSTWRITE-VM-CHECK-JSON {\"detectors\": [\n");
        let progress = p.line("LOSTWRITE-VM-CHECK exit=124", Duration::from_secs(1));
        assert_eq!(p.check, None);
        assert_eq!(p.check_exit.as_deref(), Some("124"));
        assert!(
            progress
                .is_some_and(|m| m.starts_with("agent check exit=124 (no JSON from agent check")),
        );
    }

    #[test]
    fn faults_are_recognised() {
        assert!(
            kernel_fault("[ 5.1] Kernel panic - not syncing: Attempted to kill init!").is_some()
        );
        assert!(kernel_fault("[ 9.0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s!").is_some());
        assert!(kernel_fault("[ 3.2] Oops: 0000 [#1] PREEMPT SMP NOPTI").is_some());
        assert!(kernel_fault("thread 'x' panicked at harness.rs").is_none());
        assert!(kernel_fault("LOSTWRITE-VM 6.1 fentry a PASS").is_none());
    }
}
