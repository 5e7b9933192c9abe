//! Running commands: echo them, and fail with the command line in the error; a background
//! process stopped when it is dropped; waiting for something to be ready.

use std::{
    ffi::OsStr,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The command as a shell-like line, with its environment overrides (PATH aside) in front.
pub fn display(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        if key == "PATH" {
            continue;
        }
        if let Some(value) = value {
            words.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    words.push(quote(cmd.get_program()));
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=+,^@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("{:?}", word)
    }
}

pub fn echo(cmd: &Command) {
    eprintln!("+ {}", display(cmd));
}

/// Run `cmd` with inherited stdio; an error unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    echo(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{}`", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Run `cmd` quietly and return its stdout; an error (with its stderr) unless it exits
/// successfully.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to start `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", display(cmd)))
}

/// Whether `cmd` runs and exits successfully, with its output discarded.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|out| out.status.success())
}

/// Kills `child` and reaps it if it is still running: what a guard for a background process
/// does when it is dropped before it was stopped properly.
pub fn kill_if_running(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A child process, stopped (SIGTERM, then SIGKILL after 5 s) on drop or by [`Started::stop`].
pub struct Started {
    name: &'static str,
    pub child: Child,
    stopped: bool,
}

impl Started {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        echo(cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("failed to start `{}`", display(cmd)))?;
        Ok(Self {
            name,
            child,
            stopped: false,
        })
    }

    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("{} exited early ({status})", self.name),
        }
    }

    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("xtask: {} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `ready` every 50 ms until it says so; an error after `timeout` or when `ready` fails.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}
