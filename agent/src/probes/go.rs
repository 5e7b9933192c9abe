//! Loading the Go runtime hooks (`--go-runtime`) and attaching them to each Go binary found.

use std::path::Path;

use aya::programs::{
    UProbe,
    uprobe::{UProbeAttachLocation, UProbeScope},
};
use tracing::debug;

use super::{
    HookError, Kernel, Probes,
    attach::{attach_btf, attach_classic, program_mut},
    chain,
};
use crate::go_runtime::{GoBinary, binary::TARGETS};

/// The exec tracepoint, BTF first.
const EXEC_BTF: &str = "btf_sched_process_exec";
const EXEC_CLASSIC: &str = "tp_sched_process_exec";

impl Probes {
    /// Loads the uprobe programs and attaches the exec tracepoint that finds Go binaries
    /// started later. Nothing of it runs per request.
    pub(super) fn load_go(&mut self, kernel: &Kernel) -> Result<(), HookError> {
        let mut programs: Vec<&str> = TARGETS.iter().map(|t| t.program).collect();
        programs.sort_unstable();
        programs.dedup();
        for name in programs {
            let prog: &mut UProbe = program_mut(&mut self.ebpf, name)?;
            prog.load().map_err(|e| HookError::load(chain(&e)))?;
        }
        if let Err(e) = attach_btf(
            &mut self.ebpf,
            EXEC_BTF,
            "sched_process_exec",
            &kernel.aya_btf,
        ) {
            debug!(
                "BTF sched_process_exec: {}; trying the classic one",
                e.reason
            );
            attach_classic(&mut self.ebpf, EXEC_CLASSIC, "sched", "sched_process_exec")?;
        }
        Ok(())
    }

    /// Attaches every hook of `binary`, found at `path`. Returns how many attached; fails only
    /// if none did.
    pub fn attach_go(&mut self, path: &Path, binary: &GoBinary) -> Result<usize, HookError> {
        let mut attached = 0;
        let mut last = None;
        for (target, offset) in &binary.hooks {
            let prog: &mut UProbe = program_mut(&mut self.ebpf, target.program)?;
            match prog.attach(
                UProbeAttachLocation::AbsoluteOffset(*offset),
                path,
                UProbeScope::AllProcesses,
            ) {
                Ok(_) => attached += 1,
                Err(e) => {
                    debug!("{} in {}: {}", target.function, path.display(), chain(&e));
                    last = Some(HookError::attach(format!(
                        "{}: {}",
                        target.function,
                        chain(&e)
                    )));
                }
            }
        }
        match (attached, last) {
            (0, Some(e)) => Err(e),
            _ => Ok(attached),
        }
    }
}

impl Probes {
    /// Whether uprobes attach on this kernel, tried on the agent's own executable (at its
    /// entry point, which runs once, long ago) and detached at once. For `agent check`, and
    /// at `agent run`'s start: where it fails, every Go binary would, and the detector is off.
    pub fn uprobes_attach(&mut self) -> Result<(), String> {
        self.go.clone()?;
        let exe = Path::new("/proc/self/exe");
        let offset = entry_offset(exe)?;
        let prog: &mut UProbe =
            program_mut(&mut self.ebpf, TARGETS[0].program).map_err(|e| e.reason)?;
        let link = prog
            .attach(
                UProbeAttachLocation::AbsoluteOffset(offset),
                exe,
                UProbeScope::AllProcesses,
            )
            .map_err(|e| chain(&e))?;
        prog.detach(link).map_err(|e| chain(&e))
    }
}

/// The file offset of an executable's entry point.
fn entry_offset(path: &Path) -> Result<u64, String> {
    use object::{Object as _, ObjectSegment as _};
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let cache = object::read::ReadCache::new(file);
    let elf = object::File::parse(&cache).map_err(|e| format!("{}: {e}", path.display()))?;
    let entry = elf.entry();
    elf.segments()
        .find(|s| (s.address()..s.address() + s.size()).contains(&entry))
        .map(|s| s.file_range().0 + (entry - s.address()))
        .ok_or_else(|| format!("{}: entry point in no segment", path.display()))
}
