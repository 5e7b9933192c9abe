//! Kernel struct field offsets, read from BTF at start.
//!
//! Rust eBPF has no CO-RE relocations, so the programs read `struct sock`/`struct tcp_sock`
//! fields at offsets resolved here and handed over in `agent_common::Config` before attach.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use agent_common::{MAX_FIELD_OFFSET, SockOffsets};
use btf_rs::{Btf, Type};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "kernel BTF not found at {path}: this kernel was built without CONFIG_DEBUG_INFO_BTF \
         (or pass --btf with a BTF file for it)"
    )]
    Missing { path: PathBuf },
    #[error("cannot read kernel BTF at {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: anyhow::Error,
    },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {ty} has no field {field}")]
    NoField { ty: String, field: String },
    #[error("kernel BTF: {ty}.{field} is a bitfield, which the programs cannot read")]
    Bitfield { ty: String, field: String },
    #[error("kernel BTF has no enumerator {name} in enum {ty}")]
    NoEnumerator { ty: String, name: String },
    #[error("kernel BTF: {ty}.{field} is at byte {offset}, beyond what the programs accept")]
    TooFar {
        ty: String,
        field: String,
        offset: u32,
    },
}

/// Opens the kernel's BTF.
pub fn open(path: &Path) -> Result<Btf, BtfError> {
    if !path.exists() {
        return Err(BtfError::Missing {
            path: path.to_owned(),
        });
    }
    Btf::from_file(path).map_err(|e| BtfError::Unreadable {
        path: path.to_owned(),
        source: e.into(),
    })
}

/// Resolves every offset the programs use.
pub fn sock_offsets(btf: &Btf) -> Result<SockOffsets, BtfError> {
    let sk = |field: &str| field_offset(btf, "sock", field);
    let tcp = |field: &str| field_offset(btf, "tcp_sock", field);
    Ok(SockOffsets {
        skc_family: sk("skc_family")?,
        skc_num: sk("skc_num")?,
        skc_dport: sk("skc_dport")?,
        skc_daddr: sk("skc_daddr")?,
        skc_rcv_saddr: sk("skc_rcv_saddr")?,
        skc_v6_daddr: sk("skc_v6_daddr")?,
        skc_v6_rcv_saddr: sk("skc_v6_rcv_saddr")?,
        skc_state: sk("skc_state")?,
        sk_protocol: sk("sk_protocol")?,
        tcp_write_seq: tcp("write_seq")?,
        tcp_snd_una: tcp("snd_una")?,
        tcp_snd_nxt: tcp("snd_nxt")?,
        tcp_rcv_nxt: tcp("rcv_nxt")?,
        tcp_copied_seq: tcp("copied_seq")?,
        sk_err: sk("sk_err")?,
        // `sk_flags` moved into sock_common as `skc_flags` in Linux 6.x.
        sk_flags: sk("sk_flags").or_else(|_| sk("skc_flags"))?,
        sk_lingertime: sk("sk_lingertime")?,
        sock_linger_bit: enum_value(btf, "sock_flags", "SOCK_LINGER")?,
        tcp_bytes_received: tcp("bytes_received")?,
        icsk_lrcvtime: tcp("lrcvtime")?,
        sk_lock_owned: sk("sk_lock")? + field_offset(btf, "socket_lock_t", "owned")?,
        tcp_data_segs_out: tcp("data_segs_out")?,
        _pad: 0,
    })
}

/// Offsets for the EBADF detector's fd -> socket walk and syscall arguments (x86_64 pt_regs).
pub fn fd_offsets(btf: &Btf) -> Result<agent_common::FdOffsets, BtfError> {
    let f = |ty: &str, field: &str| field_offset(btf, ty, field);
    Ok(agent_common::FdOffsets {
        task_files: f("task_struct", "files")?,
        files_fdt: f("files_struct", "fdt")?,
        fdtable_fd: f("fdtable", "fd")?,
        fdtable_max_fds: f("fdtable", "max_fds")?,
        file_private_data: f("file", "private_data")?,
        socket_sk: f("socket", "sk")?,
        regs_arg0: f("pt_regs", "di")?,
        regs_arg2: f("pt_regs", "dx")?,
        regs_nr: f("pt_regs", "orig_ax")?,
        socket_flags: f("socket", "flags")?,
    })
}

/// Where the programs find a sending syscall's buffer: the task's user registers (x86_64
/// `pt_regs`), by `bpf_task_pt_regs` where the kernel has it (`BPF_FUNC_task_pt_regs` in its
/// `enum bpf_func_id`), else at the top of the task's kernel stack, as `task_pt_regs()` finds
/// them.
pub fn peek_offsets(btf: &Btf) -> Result<agent_common::PeekOffsets, BtfError> {
    let f = |ty: &str, field: &str| field_offset(btf, ty, field);
    let by_helper = enum_value(btf, "bpf_func_id", "BPF_FUNC_task_pt_regs").is_ok();
    // THREAD_SIZE, where BTF has `union thread_union` (it often does not: nothing typed uses
    // it); else x86_64's 16 KiB (PAGE_SIZE << 2, arch/x86/include/asm/page_64_types.h, without
    // KASAN). Only kernels without the helper (before 5.15) need it.
    let thread_size = type_size(btf, "thread_union").unwrap_or(X86_64_THREAD_SIZE);
    let regs_size = type_size(btf, "pt_regs")?;
    Ok(agent_common::PeekOffsets {
        by_helper: by_helper as u32,
        task_stack: f("task_struct", "stack")?,
        stack_top: thread_size.saturating_sub(regs_size),
        regs_arg1: f("pt_regs", "si")?,
        regs_nr: f("pt_regs", "orig_ax")?,
        msg_iov: f("user_msghdr", "msg_iov")?,
    })
}

/// Where the programs find the current task's process name: `current->group_leader->comm`
/// (include/linux/sched.h: the thread-group leader's `comm` is what `/proc/<pid>/comm` shows).
pub fn task_offsets(btf: &Btf) -> Result<agent_common::TaskOffsets, BtfError> {
    let f = |field: &str| field_offset(btf, "task_struct", field);
    Ok(agent_common::TaskOffsets {
        group_leader: f("group_leader")?,
        comm: f("comm")?,
    })
}

/// x86_64's kernel stack size without KASAN.
const X86_64_THREAD_SIZE: u32 = 16 * 1024;

/// The size in bytes of struct or union `name`.
pub fn type_size(btf: &Btf, name: &str) -> Result<u32, BtfError> {
    btf.resolve_types_by_name(name)
        .unwrap_or_default()
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) | Type::Union(s) => Some(s.size() as u32),
            _ => None,
        })
        .ok_or_else(|| BtfError::NoStruct(name.to_owned()))
}

/// Every enumerator of a (32-bit) enum, value to name; empty if the kernel has no such enum.
pub fn enum_names(btf: &Btf, ty: &str) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    for t in btf.resolve_types_by_name(ty).unwrap_or_default() {
        if let Type::Enum(e) = t {
            for m in &e.members {
                if let Ok(name) = btf.resolve_name(m) {
                    out.insert(m.val(), name);
                }
            }
        }
    }
    out
}

/// The value of enumerator `name` in `enum ty`.
pub fn enum_value(btf: &Btf, ty: &str, name: &str) -> Result<u32, BtfError> {
    enum_names(btf, ty)
        .into_iter()
        .find_map(|(v, n)| (n == name).then_some(v))
        .ok_or_else(|| BtfError::NoEnumerator {
            ty: ty.to_owned(),
            name: name.to_owned(),
        })
}

/// The number of parameters of kernel function `name`, or `None` when the kernel's BTF has no
/// such function (it was renamed, removed or inlined).
pub fn function_arity(btf: &Btf, name: &str) -> Option<usize> {
    btf.resolve_types_by_name(name)
        .ok()?
        .into_iter()
        .find_map(|t| match t {
            Type::Func(func) => match btf.resolve_chained_type(&func).ok()? {
                Type::FuncProto(proto) => Some(proto.parameters.len()),
                _ => None,
            },
            _ => None,
        })
}

/// How many arguments the BTF tracepoint `name` passes (its `btf_trace_<name>` typedef is a
/// pointer to a function whose first parameter is the context), or None if it does not exist.
pub fn tracepoint_arity(btf: &Btf, name: &str) -> Option<usize> {
    let t = btf
        .resolve_types_by_name(&format!("btf_trace_{name}"))
        .ok()?
        .into_iter()
        .next()?;
    let Type::Typedef(td) = t else { return None };
    let Type::Ptr(p) = btf.resolve_chained_type(&td).ok()? else {
        return None;
    };
    let Type::FuncProto(f) = btf.resolve_chained_type(&p).ok()? else {
        return None;
    };
    Some(f.parameters.len().saturating_sub(1))
}

/// Byte offset of `field` in `struct ty`, searching embedded structs and anonymous
/// structs/unions depth-first (so `sock.skc_family` finds `sock.__sk_common.skc_family`, and
/// `tcp_sock.write_seq` sits directly in `tcp_sock`).
pub fn field_offset(btf: &Btf, ty: &str, field: &str) -> Result<u32, BtfError> {
    let root = btf
        .resolve_types_by_name(ty)
        .map_err(|_| BtfError::NoStruct(ty.to_owned()))?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => Some(s),
            // `socket_lock_t` and friends: a typedef of an anonymous struct.
            Type::Typedef(td) => match btf.resolve_chained_type(&td).ok()? {
                Type::Struct(s) => Some(s),
                _ => None,
            },
            _ => None,
        })
        .ok_or_else(|| BtfError::NoStruct(ty.to_owned()))?;
    let bits = find_member(btf, &root, field, 0, 0).ok_or_else(|| BtfError::NoField {
        ty: ty.to_owned(),
        field: field.to_owned(),
    })??;
    let offset = bits / 8;
    if offset > MAX_FIELD_OFFSET {
        return Err(BtfError::TooFar {
            ty: ty.to_owned(),
            field: field.to_owned(),
            offset,
        });
    }
    Ok(offset)
}

/// Depth limit for nested structs (`tcp_sock` → `inet_connection_sock` → `inet_sock` → `sock` →
/// `sock_common` → anonymous union → anonymous struct is 7).
const MAX_DEPTH: u32 = 10;

/// Bit offset of `field` under `st` (itself at `base` bits), or `None` if absent.
fn find_member(
    btf: &Btf,
    st: &btf_rs::Struct,
    field: &str,
    base: u32,
    depth: u32,
) -> Option<Result<u32, BtfError>> {
    if depth > MAX_DEPTH {
        return None;
    }
    // Direct members first: a field named at this level wins over one nested deeper.
    for m in &st.members {
        if btf.resolve_name(m).ok().as_deref() == Some(field) {
            if m.bitfield_size().is_some_and(|s| s != 0) {
                return Some(Err(BtfError::Bitfield {
                    ty: btf.resolve_name(st).unwrap_or_default(),
                    field: field.to_owned(),
                }));
            }
            return Some(Ok(base + m.bit_offset()));
        }
    }
    for m in &st.members {
        let Some(inner) = struct_of(btf, m) else {
            continue;
        };
        if let Some(found) = find_member(btf, &inner, field, base + m.bit_offset(), depth + 1) {
            return Some(found);
        }
    }
    None
}

/// The struct/union a member holds by value (through typedefs and qualifiers), if any.
fn struct_of(btf: &Btf, member: &btf_rs::Member) -> Option<btf_rs::Struct> {
    let mut t = btf.resolve_chained_type(member).ok()?;
    for _ in 0..8 {
        t = match t {
            Type::Struct(s) | Type::Union(s) => return Some(s),
            Type::Typedef(ref x) => btf.resolve_chained_type(x).ok()?,
            Type::Const(ref x) => btf.resolve_chained_type(x).ok()?,
            Type::Volatile(ref x) => btf.resolve_chained_type(x).ok()?,
            _ => return None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

    fn kernel_btf() -> Btf {
        open(Path::new(VMLINUX)).expect("these tests read the running kernel's BTF")
    }

    #[test]
    fn resolves_sock_common_fields_through_embedding() {
        let btf = kernel_btf();
        // struct sock embeds struct sock_common as its first member, so both agree.
        for f in ["skc_family", "skc_num", "skc_dport", "skc_state"] {
            assert_eq!(
                field_offset(&btf, "sock", f).unwrap(),
                field_offset(&btf, "sock_common", f).unwrap(),
                "{f}"
            );
        }
        // skc_daddr lives in an anonymous struct inside an anonymous union at the very start.
        assert_eq!(field_offset(&btf, "sock_common", "skc_daddr").unwrap(), 0);
        assert_eq!(
            field_offset(&btf, "sock_common", "skc_rcv_saddr").unwrap(),
            4
        );
        // struct sock_common's family field sits at byte 16 in every kernel of the matrix.
        assert_eq!(field_offset(&btf, "sock", "skc_family").unwrap(), 16);
    }

    #[test]
    fn resolves_every_program_offset() {
        let off = sock_offsets(&kernel_btf()).unwrap();
        // tcp_sock embeds sock (via inet_connection_sock and inet_sock), so its own fields come
        // after struct sock's.
        assert!(off.tcp_write_seq > off.sk_protocol);
        assert!(off.tcp_snd_una > off.sk_protocol);
        assert_ne!(off.tcp_write_seq, off.tcp_snd_una);
        assert!(
            off.skc_dport + 2 == off.skc_num,
            "skc_dport and skc_num share skc_portpair"
        );
        // icsk_ack sits in inet_connection_sock, between struct sock and tcp_sock's own fields;
        // sk_lock is struct sock's, `owned` right after the spinlock (4 bytes without lockdep).
        let btf = kernel_btf();
        let sk_lock = field_offset(&btf, "sock", "sk_lock").unwrap();
        assert!(off.icsk_lrcvtime > off.sk_protocol && off.icsk_lrcvtime < off.tcp_write_seq);
        assert!(off.tcp_bytes_received > off.icsk_lrcvtime);
        assert_eq!(off.sk_lock_owned, sk_lock + 4);
    }

    #[test]
    fn resolves_the_fd_walk() {
        let off = fd_offsets(&kernel_btf()).unwrap();
        // struct pt_regs on x86_64: r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di orig_ax.
        assert_eq!(
            (off.regs_arg2, off.regs_arg0, off.regs_nr),
            (12 * 8, 14 * 8, 15 * 8)
        );
        assert_ne!(off.task_files, 0);
        assert_eq!(
            off.files_fdt,
            field_offset(&kernel_btf(), "files_struct", "fdt").unwrap()
        );
    }

    #[test]
    fn resolves_the_process_name() {
        let btf = kernel_btf();
        let off = task_offsets(&btf).unwrap();
        // Both are task_struct's own members, after `stack` and `pid`/`tgid`.
        let pid = field_offset(&btf, "task_struct", "tgid").unwrap();
        assert!(off.group_leader > pid, "{off:?}");
        assert!(off.comm > off.group_leader, "{off:?}");
        assert_ne!(off.comm, 0);
    }

    #[test]
    fn reads_enums_and_tracepoint_arity() {
        let btf = kernel_btf();
        // include/net/sock.h: SOCK_DEAD, SOCK_DONE, SOCK_URGINLINE, SOCK_KEEPOPEN, SOCK_LINGER.
        assert_eq!(enum_value(&btf, "sock_flags", "SOCK_LINGER").unwrap(), 4);
        let reasons = enum_names(&btf, "sk_rst_reason");
        assert!(
            reasons
                .values()
                .any(|n| n == "SK_RST_REASON_TCP_ABORT_ON_CLOSE"),
            "{reasons:?}"
        );
        // TP_PROTO(const struct sock *sk, const struct sk_buff *skb, enum sk_rst_reason reason)
        assert_eq!(tracepoint_arity(&btf, "tcp_send_reset"), Some(3));
        assert_eq!(tracepoint_arity(&btf, "inet_sock_set_state"), Some(3));
        assert_eq!(tracepoint_arity(&btf, "tcp_destroy_sock"), Some(1));
        assert_eq!(tracepoint_arity(&btf, "no_such_tracepoint"), None);
        // net/ipv4/tcp.c on this 6.18 kernel: tcp_sendpage is gone since 6.5, tcp_recvmsg lost
        // `nonblock` in 5.19 and `addr_len` in 6.16 (function_arity reads any function).
        assert_eq!(function_arity(&btf, "tcp_sendmsg"), Some(3));
        assert_eq!(function_arity(&btf, "tcp_recvmsg"), Some(4));
        assert_eq!(function_arity(&btf, "tcp_close"), Some(2));
        assert_eq!(function_arity(&btf, "tcp_sendpage"), None);
        // A struct of that name is not a function.
        assert_eq!(function_arity(&btf, "sock"), None);
    }

    #[test]
    fn reports_missing_things() {
        let btf = kernel_btf();
        assert!(matches!(
            field_offset(&btf, "no_such_struct_xyz", "a"),
            Err(BtfError::NoStruct(_))
        ));
        assert!(matches!(
            field_offset(&btf, "sock", "no_such_field"),
            Err(BtfError::NoField { .. })
        ));
        assert!(matches!(
            open(Path::new("/nonexistent/vmlinux")),
            Err(BtfError::Missing { .. })
        ));
    }
}
