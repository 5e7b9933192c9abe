//! Use-after-close: a write to an fd number that was a TCP socket of the same process and was
//! closed moments ago fails with EBADF. Needs the raw syscall tracepoints, which put every
//! syscall of every task on the tracing slow path, so the agent attaches these only when
//! `--detect-ebadf` asks for it.

use agent_common::{ClosedFd, EBADF_WINDOW_NS, SIZE_UNKNOWN, errno, nr};
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_get_current_task};

use crate::{
    emit::now,
    kernel::read,
    maps::{CLOSED_FDS, SOCKS, updated},
    send,
};

/// The `struct file *` behind `fd` in the current task's fd table, if it is open.
#[inline(always)]
pub(crate) fn fd_file(fd: u64) -> Option<u64> {
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, config!(fd.task_files))?;
    let fdt: u64 = read(files, config!(fd.files_fdt))?;
    let max: u32 = read(fdt, config!(fd.fdtable_max_fds))?;
    if fd >= max as u64 {
        return None;
    }
    let table: u64 = read(fdt, config!(fd.fdtable_fd))?;
    let file: u64 = read(table + fd * 8, 0)?;
    (file != 0).then_some(file)
}

fn key(fd: u64) -> u64 {
    (bpf_get_current_pid_tgid() & 0xffff_ffff_0000_0000) | (fd & 0xffff_ffff)
}

/// close(fd) entry: remember the fd if it is a tracked TCP socket. The `private_data` of a file
/// that is not a socket is something else; its "sk" then matches no SOCKS key.
pub fn on_close(fd: u64) {
    skip_if_empty!();
    let Some(file) = fd_file(fd) else {
        return;
    };
    let Some(socket) = read::<u64>(file, config!(fd.file_private_data)) else {
        return;
    };
    let Some(sk) = read::<u64>(socket, config!(fd.socket_sk)) else {
        return;
    };
    let Some(st) = SOCKS.get_ptr(sk) else {
        return;
    };
    let closed = ClosedFd {
        // SAFETY: a live map value, copied out.
        sock: unsafe { *st },
        sk,
        closed_ns: now(),
    };
    updated(CLOSED_FDS.insert(key(fd), closed, 0));
}

/// Exit of a write-family syscall that failed with EBADF.
pub fn on_ebadf(nr: u64, fd: u64, count: u64) {
    skip_if_empty!();
    let write_family = nr == nr::WRITE
        || nr == nr::WRITEV
        || nr == nr::SENDTO
        || nr == nr::SENDMSG
        || nr == nr::SENDMMSG;
    if !write_family {
        return;
    }
    let k = key(fd);
    let Some(closed) = CLOSED_FDS.get_ptr(k) else {
        return;
    };
    // A number that is open again belongs to a new file; the EBADF is about that one.
    if fd_file(fd).is_some() {
        return;
    }
    // SAFETY: a live map value.
    let closed = unsafe { &*closed };
    if now().saturating_sub(closed.closed_ns) > EBADF_WINDOW_NS {
        return;
    }
    // write() and sendto() name the size in their third argument; the vector calls do not.
    let size_known = nr == nr::WRITE || nr == nr::SENDTO;
    send::emit_write_error(
        closed.sk,
        errno::EBADF,
        if size_known { count } else { SIZE_UNKNOWN },
        |sock| {
            *sock = closed.sock;
            true
        },
    );
    let _ = CLOSED_FDS.remove(k);
}
