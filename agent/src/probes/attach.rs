//! Attaching one hook: the BTF or classic tracepoint, the fentry/fexit trampoline or the kprobe,
//! with the program variant written for this kernel's parameter list and the state store.

use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, FEntry, FExit, KProbe, TracePoint},
};
use tracing::warn;

use super::{
    HookError, Kernel, ProbeMode, Via, chain,
    table::{Attach, EBADF_HOOKS, Hook, StateStore, program_for},
};

/// Every hook of every mode, for `--skip-hook`.
pub fn hook_names() -> Vec<&'static str> {
    let mut names: Vec<&str> = ProbeMode::ALL
        .iter()
        .flat_map(|m| m.hooks().map(|h| h.target))
        .chain(EBADF_HOOKS.iter().map(|(name, _)| *name))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Attaches one hook with the programs for `store`; `arity` is the number of parameters of its
/// function or tracepoint in this kernel's BTF.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    kernel: &Kernel,
    hook: &Hook,
    arity: Option<usize>,
    force_classic: bool,
    store: StateStore,
) -> Result<Via, HookError> {
    match &hook.attach {
        Attach::Tracepoint {
            category,
            btf_program,
            btf_extended,
            classic_program,
        } => {
            let program = match btf_extended {
                Some((program, args)) if arity.is_some_and(|a| a >= *args) => program,
                _ => btf_program,
            };
            let btf_err = if force_classic {
                "not tried (--classic-tracepoints)".to_owned()
            } else {
                let program = program_for(program, store);
                match attach_btf(ebpf, &program, hook.target, &kernel.aya_btf) {
                    Ok(()) => return Ok(Via::Btf),
                    Err(e) => e.reason,
                }
            };
            if store != StateStore::Lru {
                return Err(HookError::load(format!(
                    "BTF tracepoint: {btf_err}; a classic tracepoint cannot use {}",
                    store.as_str()
                )));
            }
            let classic = match &kernel.classic_unavailable {
                Some(e) => Err(HookError::load(e.clone())),
                None => {
                    if !force_classic {
                        warn!(
                            "BTF tracepoint {} unavailable ({btf_err}); using the classic \
                             tracepoint",
                            hook.target
                        );
                    }
                    attach_classic(ebpf, classic_program, category, hook.target)
                }
            };
            classic.map(|()| Via::Classic).map_err(|e| HookError {
                step: e.step,
                reason: format!(
                    "BTF tracepoint: {btf_err}; classic tracepoint: {}",
                    e.reason
                ),
            })
        }
        Attach::Trampoline(variants) => {
            let program = program_for(variant(hook.target, variants, arity)?, store);
            attach_trampoline(ebpf, &program, hook.target, &kernel.aya_btf)?;
            Ok(Via::Fentry)
        }
        Attach::Kprobe { entry, ret } => {
            let program = variant(hook.target, entry, arity)?;
            attach_kprobe(ebpf, program, hook.target)?;
            if let Some(ret) = ret {
                attach_kprobe(ebpf, ret, hook.target)?;
            }
            Ok(Via::Kprobe)
        }
    }
}

/// The program written for this kernel's parameter list of `function`.
fn variant(
    function: &str,
    variants: &[(usize, &'static str)],
    arity: Option<usize>,
) -> Result<&'static str, HookError> {
    let arity =
        arity.ok_or_else(|| HookError::load(format!("{function} is not in the kernel's BTF")))?;
    variants
        .iter()
        .find(|(n, _)| *n == arity)
        .map(|(_, p)| *p)
        .ok_or_else(|| {
            HookError::load(format!(
                "{function} takes {arity} parameters here, a form not supported"
            ))
        })
}

/// Attaches both EBADF hooks, or neither: a lone sys_enter would slow every syscall for nothing.
pub(super) fn attach_ebadf(ebpf: &mut Ebpf, btf: &Btf) -> bool {
    for (i, (tracepoint, program)) in EBADF_HOOKS.iter().enumerate() {
        if let Err(e) = attach_btf(ebpf, program, tracepoint, btf) {
            warn!(
                "EBADF detector unavailable: cannot attach {tracepoint}: {}",
                e.reason
            );
            for (_, done) in &EBADF_HOOKS[..i] {
                let unloaded = ebpf
                    .program_mut(done)
                    .and_then(|p| <&mut BtfTracePoint>::try_from(p).ok())
                    .map(BtfTracePoint::unload);
                if let Some(Err(e)) = unloaded {
                    warn!("cannot detach {done}: {e}");
                }
            }
            return false;
        }
    }
    true
}

pub(super) fn attach_btf(
    ebpf: &mut Ebpf,
    program: &str,
    tracepoint: &str,
    btf: &Btf,
) -> Result<(), HookError> {
    let prog: &mut BtfTracePoint = program_mut(ebpf, program)?;
    prog.load(tracepoint, btf)
        .map_err(|e| HookError::load(chain(&e)))?;
    prog.attach().map_err(|e| HookError::attach(chain(&e)))?;
    Ok(())
}

pub(super) fn attach_classic(
    ebpf: &mut Ebpf,
    program: &str,
    category: &str,
    name: &str,
) -> Result<(), HookError> {
    let prog: &mut TracePoint = program_mut(ebpf, program)?;
    prog.load().map_err(|e| HookError::load(chain(&e)))?;
    prog.attach(category, name)
        .map_err(|e| HookError::attach(chain(&e)))?;
    Ok(())
}

/// fentry or fexit, whichever the program was written as.
fn attach_trampoline(
    ebpf: &mut Ebpf,
    program: &str,
    function: &str,
    btf: &Btf,
) -> Result<(), HookError> {
    let prog = ebpf
        .program_mut(program)
        .ok_or_else(|| HookError::load(format!("program {program} missing from the object")))?;
    if let Ok(p) = <&mut FEntry>::try_from(&mut *prog) {
        p.load(function, btf)
            .map_err(|e| HookError::load(chain(&e)))?;
        p.attach().map_err(|e| HookError::attach(chain(&e)))?;
        return Ok(());
    }
    let p: &mut FExit = prog.try_into().map_err(|e| HookError::load(chain(&e)))?;
    p.load(function, btf)
        .map_err(|e| HookError::load(chain(&e)))?;
    p.attach().map_err(|e| HookError::attach(chain(&e)))?;
    Ok(())
}

/// A kprobe or kretprobe on `function`. A program serving several functions (the kretprobe of
/// tcp_sendmsg and tcp_sendpage) is loaded once and attached to each.
fn attach_kprobe(ebpf: &mut Ebpf, program: &str, function: &str) -> Result<(), HookError> {
    let prog: &mut KProbe = program_mut(ebpf, program)?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| HookError::load(chain(&e)))?;
    }
    prog.attach(function, 0)
        .map_err(|e| HookError::attach(chain(&e)))?;
    Ok(())
}

pub(super) fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, HookError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| HookError::load(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(|e| HookError::load(chain(&e)))
}
