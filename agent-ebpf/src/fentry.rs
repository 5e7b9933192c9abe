//! Entry points for the `fentry` probe mode: BPF trampolines on the TCP functions themselves.
//!
//! Cheaper than kprobes and, unlike `sock:sock_send_length`, available before Linux 6.3.
//! fexit programs read the return value as the argument after the last parameter (the helper
//! `bpf_get_func_ret` needs 5.17), so a function whose parameter list changed between kernels
//! gets one program per arity and the agent loads the one matching this kernel's BTF.

use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};

use crate::{close, kernel::Direct, send};

// int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)
per_store! {
    #[fexit(function = "tcp_sendmsg")]
    fn fexit_tcp_sendmsg / fexit_tcp_sendmsg_local(ctx: FExitContext) -> i32, S => {
        let size: u64 = ctx.arg(2);
        send::on_send::<Direct, S, _>(&ctx, ctx.arg(0), ctx.arg(3), size);
        0
    }
}

// int tcp_sendpage(struct sock *sk, struct page *page, int offset, size_t size, int flags),
// sendfile()'s path until Linux 6.5 turned it into tcp_sendmsg with MSG_SPLICE_PAGES.
per_store! {
    #[fexit(function = "tcp_sendpage")]
    fn fexit_tcp_sendpage / fexit_tcp_sendpage_local(ctx: FExitContext) -> i32, S => {
        let size: u64 = ctx.arg(3);
        send::on_send::<Direct, S, _>(&ctx, ctx.arg(0), ctx.arg(5), size);
        0
    }
}

// void tcp_close(struct sock *sk, long timeout)
per_store! {
    #[fentry(function = "tcp_close")]
    fn fentry_tcp_close / fentry_tcp_close_local(ctx: FEntryContext) -> i32, S => {
        close::on_close::<S>(ctx.arg(0));
        0
    }
}
