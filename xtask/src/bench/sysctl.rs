//! A kernel setting changed for one measurement and put back after it, so that a bench run
//! leaves the machine's sysctls as it found them. The agent's statistics runs and the peer's
//! turn on `kernel.bpf_stats_enabled`, and `--profile` turns on `net.core.bpf_jit_kallsyms`.

use std::fs;

use anyhow::{Context as _, Result};

/// A sysctl set for as long as this lives, then restored.
pub struct Sysctl {
    path: &'static str,
    previous: String,
}

impl Sysctl {
    /// Writes `value` to `path`, keeping what was there for the drop to write back.
    pub fn set(path: &'static str, value: &str) -> Result<Self> {
        let previous = fs::read_to_string(path)
            .with_context(|| format!("reading {path}"))?
            .trim()
            .to_owned();
        fs::write(path, value).with_context(|| format!("writing {path}"))?;
        Ok(Self { path, previous })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = fs::write(self.path, &self.previous);
    }
}
