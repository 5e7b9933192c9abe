//! The guest's initramfs: busybox, the agent, the e2e test binary, the servers the chosen
//! scenarios need, their shared libraries, and an `/init` that runs the scenarios and reports
//! one line per mode × scenario on the serial console.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::scenarios::{DEFAULT_MODE, Scenario};
use crate::cmd;

/// Prefix of every line the init script prints for the host to parse.
pub const MARK: &str = "LOSTWRITE-VM";

/// Host binaries that go into the guest.
pub struct Binaries {
    pub agent: PathBuf,
    pub e2e: PathBuf,
    /// The Go seed server, when a chosen scenario uses it.
    pub seedsrv: Option<PathBuf>,
    /// curl, when a chosen scenario uses it.
    pub curl: Option<PathBuf>,
    pub busybox: PathBuf,
}

/// The kernel command-line parameter that tells the init script which probe mode the agent's
/// default must choose on the booted kernel (`LOSTWRITE_EXPECT_DEFAULT_MODE` for the test).
pub const DEFAULT_MODE_PARAM: &str = "lostwrite_default_mode";

/// Where things live in the guest. The e2e harness finds them through these environment
/// variables, which the init script sets.
const GUEST_AGENT: &str = "/lostwrite/agent";
const GUEST_E2E: &str = "/lostwrite/e2e";
/// The file name is the comm the seed scenarios look for.
const GUEST_SEEDSRV: &str = "/lostwrite/seedsrv";
const GUEST_CURL: &str = "/usr/bin/curl";

/// What one guest runs.
pub struct Plan<'a> {
    pub modes: &'a [String],
    pub scenarios: &'a [&'static Scenario],
    /// Seconds one scenario may take before the guest's `timeout` kills it.
    pub scenario_timeout: u32,
}

/// Writes the initramfs to `out`: an uncompressed newc cpio (≈40 MiB), which the kernel unpacks
/// as is; compressing it would only move the work into the emulated guest's decompressor.
pub fn write_initramfs(out: &Path, bins: &Binaries, plan: &Plan<'_>) -> Result<u64> {
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cpio = Cpio::new(BufWriter::new(file));

    for dir in [
        "dev", "proc", "sys", "tmp", "root", "etc", "bin", "sbin", "usr/bin", "usr/sbin",
    ] {
        cpio.dir(dir)?;
    }
    // The kernel opens /dev/console for init's stdio before anything can mount devtmpfs.
    cpio.char_device("dev/console", 0o600, 5, 1)?;
    cpio.file("etc/hosts", 0o644, b"127.0.0.1 localhost\n::1 localhost\n")?;
    cpio.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
    cpio.file("etc/group", 0o644, b"root:x:0:\n")?;

    cpio.host_file("bin/busybox", &bins.busybox)?;
    let mut libraries: BTreeSet<String> = shared_libraries(&bins.busybox)?.into_iter().collect();
    let applets = cmd::output(Command::new(&bins.busybox).arg("--list-full"))?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if applet != "bin/busybox" {
            cpio.symlink(applet, "/bin/busybox")?;
        }
    }

    let mut programs = vec![(GUEST_AGENT, &bins.agent), (GUEST_E2E, &bins.e2e)];
    if let Some(seedsrv) = &bins.seedsrv {
        programs.push((GUEST_SEEDSRV, seedsrv));
    }
    if let Some(curl) = &bins.curl {
        programs.push((GUEST_CURL, curl));
    }
    for (guest, host) in &programs {
        cpio.host_file(guest.trim_start_matches('/'), host)?;
        libraries.extend(shared_libraries(host)?);
    }
    for lib in &libraries {
        cpio.host_file(lib.trim_start_matches('/'), Path::new(lib))?;
    }

    cpio.file("init", 0o755, init_script(plan).as_bytes())?;
    let (_, size) = cpio.finish()?;
    Ok(size)
}

/// The shared libraries `ldd` lists for `binary`, the dynamic loader included; none for a static
/// binary.
fn shared_libraries(binary: &Path) -> Result<Vec<String>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("running ldd {}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // ldd exits 1 with "not a dynamic executable" for static binaries.
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic executable") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {err}", binary.display());
    }
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.contains("statically linked") {
            return Ok(Vec::new());
        }
        if line.contains("not found") {
            bail!("{}: {line}", binary.display());
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)`, `/lib64/ld-linux-x86-64.so.2 (0x…)`
        // or `linux-vdso.so.1 (0x…)` (in the kernel, no file).
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') {
            libs.push(path.to_owned());
        }
    }
    Ok(libs)
}

/// The guest's `/init`, run by the kernel as PID 1 with the console as stdio.
fn init_script(plan: &Plan<'_>) -> String {
    let mut s = format!(
        r#"#!/bin/sh
# Written by `cargo xtask vm-test`. Every line starting with {MARK} is read by the host.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
export LOSTWRITE_E2E=1 LOSTWRITE_AGENT={GUEST_AGENT} LOSTWRITE_SEEDSRV={GUEST_SEEDSRV} LOSTWRITE_TMPDIR=/tmp/lostwrite
mnt() {{ mount -t "$1" "$1" "$2" || echo "{MARK}-WARN cannot mount $1 on $2"; }}
mnt proc /proc
mnt sysfs /sys
mnt devtmpfs /dev
mnt tracefs /sys/kernel/tracing
mnt debugfs /sys/kernel/debug
mnt bpf /sys/fs/bpf
mnt cgroup2 /sys/fs/cgroup
ip link set lo up
kernel=$(uname -r)
for word in $(cat /proc/cmdline); do
    case "$word" in {DEFAULT_MODE_PARAM}=*) export LOSTWRITE_EXPECT_DEFAULT_MODE="${{word#*=}}" ;; esac
done
echo "{MARK}-BOOTED $kernel $(uname -v)"
uptime_s() {{ cut -d' ' -f1 /proc/uptime; }}
# The report as one JSON line for the host (printf: a shell's echo may expand its backslashes).
timeout {timeout} {GUEST_AGENT} check --json >/tmp/check.json
check_rc=$?
printf '%s %s\n' "{MARK}-CHECK-JSON" "$(cat /tmp/check.json)"
echo "{MARK}-CHECK exit=$check_rc"
run() {{
    echo "{MARK}-BEGIN $1 $2"
    t0=$(uptime_s)
    LOSTWRITE_PROBE_MODE=$1 timeout {timeout} {GUEST_E2E} --exact "$3" --test-threads=1 >/tmp/out 2>&1
    rc=$?
    t1=$(uptime_s)
    # A test filter that matches nothing also exits 0: only a run of exactly one test passes.
    if [ $rc = 0 ] && grep -q '^test result: ok. 1 passed' /tmp/out; then
        result=PASS
    else
        result=FAIL
        tail -n 100 /tmp/out
        echo "exit status $rc"
    fi
    echo "{MARK}-TIME $1 $2 $t0 $t1"
    echo "{MARK} $kernel $1 $2 $result"
}}
"#,
        timeout = plan.scenario_timeout,
    );
    // `agent check` reports every mode at once, so it runs once per boot, not once per mode.
    // A default-mode scenario runs once (the test passes no `--probe-mode` whatever
    // LOSTWRITE_PROBE_MODE says), before the rest.
    for sc in plan.scenarios.iter().filter(|sc| sc.default_mode) {
        s.push_str(&format!("run {DEFAULT_MODE} {} {}\n", sc.name, sc.test));
    }
    for mode in plan.modes {
        for sc in plan.scenarios.iter().filter(|sc| !sc.default_mode) {
            s.push_str(&format!("run {mode} {} {}\n", sc.name, sc.test));
        }
    }
    s.push_str(&format!("echo \"{MARK}-DONE\"\npoweroff -f\n"));
    s
}

/// A newc ("070701") cpio writer: the format the kernel's initramfs unpacker reads. Written here
/// rather than with cpio(1) so that a device node can be included without root, and so that the
/// archive's paths and modes do not depend on a staging directory.
struct Cpio<W: Write> {
    out: W,
    next_ino: u32,
    dirs: BTreeSet<String>,
    written: u64,
}

impl<W: Write> Cpio<W> {
    fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            dirs: BTreeSet::new(),
            written: 0,
        }
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        self.parents(path)?;
        if self.dirs.insert(path.to_owned()) {
            self.entry(path, 0o040_755, 0, &[])?;
        }
        Ok(())
    }

    /// Every missing parent directory of `path`.
    fn parents(&mut self, path: &str) -> Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/')
            && !self.dirs.contains(parent)
        {
            self.dir(parent)?;
        }
        Ok(())
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.parents(path)?;
        self.entry(path, 0o100_000 | mode, 0, data)
    }

    /// A copy of a host file (symlinks followed), keeping its permission bits.
    fn host_file(&mut self, path: &str, host: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let mode = fs::metadata(host)?.permissions().mode() & 0o7777;
        self.file(path, mode, &data)
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.parents(path)?;
        self.entry(path, 0o120_777, 0, target.as_bytes())
    }

    fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        self.parents(path)?;
        self.entry(path, 0o020_000 | mode, (major << 8) | minor, &[])
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: u32, data: &[u8]) -> Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let size = u32::try_from(data.len()).map_err(|_| anyhow!("{path} is over 4 GiB"))?;
        let header = format!(
            "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
             {maj:08x}{min:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            maj = 0,
            min = 0,
            rmaj = rdev >> 8,
            rmin = rdev & 0xff,
            namesize = path.len() + 1,
            check = 0,
        );
        self.write(header.as_bytes())?;
        self.write(path.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Header plus name, and file data, each end on a 4-byte boundary.
    fn pad(&mut self) -> Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.write(&[0; 3][..pad])
    }

    /// Writes the trailer and returns the writer and the archive's size.
    fn finish(mut self) -> Result<(W, u64)> {
        self.entry("TRAILER!!!", 0, 0, &[])?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, mode, rdev major, rdev minor, data) of every entry, checking alignment.
    fn parse(mut archive: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let total = archive.len();
        let at = |rest: &[u8]| total - rest.len();
        let field = |h: &[u8], i: usize| {
            u32::from_str_radix(std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                .unwrap()
        };
        let mut entries = Vec::new();
        loop {
            assert_eq!(at(archive) % 4, 0);
            assert_eq!(&archive[..6], b"070701");
            let header = &archive[..110];
            let (mode, size, rmaj, rmin, namesize) = (
                field(header, 1),
                field(header, 6) as usize,
                field(header, 9),
                field(header, 10),
                field(header, 11) as usize,
            );
            let name = String::from_utf8(archive[110..110 + namesize - 1].to_vec()).unwrap();
            assert_eq!(archive[110 + namesize - 1], 0);
            archive = &archive[(110 + namesize).next_multiple_of(4)..];
            if name == "TRAILER!!!" {
                assert!(archive.is_empty());
                return entries;
            }
            entries.push((name, mode, rmaj, rmin, archive[..size].to_vec()));
            archive = &archive[size.next_multiple_of(4)..];
        }
    }

    #[test]
    fn cpio_round_trip() {
        let mut cpio = Cpio::new(Vec::new());
        cpio.file("a/bc", 0o644, b"hello").unwrap();
        cpio.char_device("dev/console", 0o600, 5, 1).unwrap();
        cpio.symlink("bin/sh", "/bin/busybox").unwrap();
        let (archive, size) = cpio.finish().unwrap();
        assert_eq!(size as usize, archive.len());
        let entries = parse(&archive);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["a", "a/bc", "dev", "dev/console", "bin", "bin/sh"]);
        assert_eq!(entries[1].1, 0o100_644);
        assert_eq!(entries[1].4, b"hello");
        assert_eq!(entries[3].1, 0o020_600);
        assert_eq!((entries[3].2, entries[3].3), (5, 1));
        assert_eq!(entries[5].4, b"/bin/busybox");
    }

    #[test]
    fn the_init_script_runs_every_mode_and_scenario() {
        let modes = ["fentry".to_owned(), "kprobe".to_owned()];
        let all = super::super::scenarios::SCENARIOS;
        let default = all.iter().find(|s| s.default_mode).unwrap();
        let sc = all.iter().find(|s| !s.default_mode).unwrap();
        let scenarios = [default, sc];
        let script = init_script(&Plan {
            modes: &modes,
            scenarios: &scenarios,
            scenario_timeout: 60,
        });
        for mode in &modes {
            assert!(script.contains(&format!("run {mode} {} {}\n", sc.name, sc.test)));
            assert!(!script.contains(&format!("run {mode} {} ", default.name)));
        }
        let once = format!("run {DEFAULT_MODE} {} {}\n", default.name, default.test);
        assert_eq!(script.matches(&once).count(), 1);
        assert!(script.contains(DEFAULT_MODE_PARAM));
        assert!(script.ends_with("poweroff -f\n"));
    }
}
