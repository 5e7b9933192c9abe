//! Debian kernels for the matrix, fetched with `apt-get download` through a private apt
//! configuration under `target/vm/apt/`, so that the host's sources, pins and dpkg state neither
//! matter nor change (adding another release to the host's own sources makes the next
//! `apt-get upgrade` pull that release's libc).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::cmd;

/// A kernel line of the matrix and the Debian suite whose `linux-image-amd64` provides it.
pub struct KernelLine {
    pub name: &'static str,
    pub suite: &'static str,
    /// The probe mode `--probe-mode auto` must choose on this kernel (the `default-mode`
    /// scenario checks it): fentry wherever BPF trampolines work, as they do on all three.
    pub default_mode: &'static str,
}

pub const KERNELS: &[KernelLine] = &[
    KernelLine {
        name: "5.10",
        suite: "bullseye",
        default_mode: "fentry",
    },
    KernelLine {
        name: "6.1",
        suite: "bookworm",
        default_mode: "fentry",
    },
    KernelLine {
        name: "6.12",
        suite: "bookworm-backports",
        default_mode: "fentry",
    },
];

/// A kernel ready to boot.
pub struct Kernel {
    pub line: &'static KernelLine,
    pub vmlinuz: PathBuf,
    /// What `uname -r` says in the guest, from the image's file name (`6.1.0-56-amd64`).
    pub release: String,
    /// The Debian package version (`6.1.192-1`), which names the upstream release exactly.
    pub version: String,
}

/// The archive keyring that signs every Debian release the matrix uses (debian-archive-keyring,
/// present on every Debian host).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The kernel of `line`, from the cache under `dir` or downloaded into it. `refresh` resolves
/// and downloads again even when a kernel is cached (the suites move on to newer ABIs).
pub fn get(line: &'static KernelLine, dir: &Path, mirror: &str, refresh: bool) -> Result<Kernel> {
    let cache = dir.join("kernels").join(line.name);
    if !refresh && let Some(kernel) = cached(line, &cache)? {
        println!(
            "vm-test: kernel {} cached: {} ({})",
            line.name,
            kernel.release,
            kernel.vmlinuz.display()
        );
        return Ok(kernel);
    }

    let apt = PrivateApt::new(&dir.join("apt").join(line.suite), line.suite, mirror)?;
    cmd::run(&mut apt.command("apt-get", &["-q", "update"]))?;
    let package = apt.resolve_image()?;

    // Download into a scratch directory first, so that an interrupted run leaves no half kernel
    // in the cache.
    let download = dir.join("kernels").join(format!(".{}.download", line.name));
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    let mut get = apt.command("apt-get", &["-q", "download", &package]);
    get.current_dir(&download);
    cmd::run(&mut get)?;
    let deb = only_file(&download, |n| n.ends_with(".deb"))?;

    // The image package also holds every module (≈400 MB unpacked); only the image is needed,
    // and everything the guest uses is built in.
    let boot = download.join("root");
    fs::create_dir_all(&boot)?;
    let tar = format!(
        "dpkg-deb --fsys-tarfile {} | tar -x -C {} --wildcards './boot/vmlinuz-*'",
        shell_quote(&deb),
        shell_quote(&boot)
    );
    cmd::run(Command::new("sh").args(["-ec", &tar]))?;
    let version = cmd::output(
        Command::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .arg("Version"),
    )?
    .trim()
    .to_owned();
    let image = only_file(&boot.join("boot"), is_image)?;

    let _ = fs::remove_dir_all(&cache);
    fs::create_dir_all(&cache)?;
    let file_name = image.file_name().expect("a file");
    fs::rename(&image, cache.join(file_name))?;
    fs::write(cache.join("version"), format!("{version}\n"))?;
    let _ = fs::remove_dir_all(&download);
    cached(line, &cache)?.ok_or_else(|| anyhow!("{} is incomplete", cache.display()))
}

fn cached(line: &'static KernelLine, cache: &Path) -> Result<Option<Kernel>> {
    let Ok(version) = fs::read_to_string(cache.join("version")) else {
        return Ok(None);
    };
    let Ok(vmlinuz) = only_file(cache, is_image) else {
        return Ok(None);
    };
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .ok_or_else(|| anyhow!("unexpected kernel image {}", vmlinuz.display()))?
        .to_owned();
    Ok(Some(Kernel {
        line,
        vmlinuz,
        release,
        version: version.trim().to_owned(),
    }))
}

fn is_image(name: &str) -> bool {
    name.starts_with("vmlinuz-")
}

/// The one regular file in `dir` whose name is `wanted`.
pub(crate) fn only_file(dir: &Path, wanted: impl Fn(&str) -> bool) -> Result<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() && wanted(&entry.file_name().to_string_lossy()) {
            found.push(entry.path());
        }
    }
    match <[PathBuf; 1]>::try_from(found) {
        Ok([path]) => Ok(path),
        Err(found) => bail!(
            "expected one such file in {}, found {found:?}",
            dir.display()
        ),
    }
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// apt pointed at one suite, with its own sources, lists, cache and (empty) dpkg status.
pub(crate) struct PrivateApt {
    options: Vec<String>,
}

impl PrivateApt {
    pub(crate) fn new(dir: &Path, suite: &str, mirror: &str) -> Result<Self> {
        let empty = dir.join("empty.d");
        for sub in ["lists/partial", "cache/archives/partial", "empty.d"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        let sources = dir.join("sources.list");
        fs::write(
            &sources,
            format!("deb [signed-by={KEYRING}] {mirror} {suite} main\n"),
        )?;
        let status = dir.join("status");
        fs::write(&status, "")?;
        let opt = |key: &str, path: &Path| format!("{key}={}", path.display());
        let mut options = vec![
            opt("Dir::Etc::SourceList", &sources),
            opt("Dir::Etc::SourceParts", &empty),
            opt("Dir::State::Lists", &dir.join("lists")),
            opt("Dir::Cache", &dir.join("cache")),
            opt("Dir::State::status", &status),
            // The host's pins would otherwise apply to this suite too.
            opt("Dir::Etc::Preferences", &empty.join("none")),
            opt("Dir::Etc::PreferencesParts", &empty),
        ];
        if crate::workspace::is_root() {
            // The download directory is below the workspace, which apt's unprivileged `_apt`
            // user usually cannot write; say up front that root downloads instead of warning.
            options.push("APT::Sandbox::User=root".to_owned());
        }
        Ok(Self { options })
    }

    pub(crate) fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        for option in &self.options {
            cmd.args(["-o", option]);
        }
        cmd.args(args);
        cmd
    }

    /// The versioned image package the suite's `linux-image-amd64` points at
    /// (`linux-image-6.1.0-56-amd64`); it changes with every ABI bump, so it is never hard-coded.
    fn resolve_image(&self) -> Result<String> {
        let out = cmd::output(&mut self.command(
            "apt-cache",
            &["depends", "--no-recommends", "linux-image-amd64"],
        ))?;
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends:"))
            .map(|dep| dep.trim().trim_start_matches('|'))
            .find(|dep| dep.starts_with("linux-image-") && dep.ends_with("-amd64"))
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no linux-image-*-amd64 dependency in:\n{out}"))
    }
}

/// The Debian archive the host's apt uses (the first `Label: Debian` repository, which leaves out
/// debian-security and third-party sources), so the matrix downloads from the same mirror or
/// proxy as everything else on this machine.
pub fn host_mirror() -> Result<String> {
    let out = cmd::output(Command::new("apt-get").args([
        "indextargets",
        "--format",
        "$(REPO_URI) $(LABEL)",
        "Created-By: Packages",
    ]))?;
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(_, label)| label.trim() == "Debian")
        .map(|(uri, _)| uri.trim_end_matches('/').to_owned())
        .ok_or_else(|| {
            anyhow!("the host's apt has no Debian archive configured; pass --mirror <URL>")
        })
}
