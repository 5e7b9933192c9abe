//! What the Go runtime hooks record about an expired write deadline.

use crate::Verdict;

/// What the Go runtime hooks report about a deadline, `GoDeadline::which`.
pub mod go_deadline {
    /// `runtime.netpollWriteDeadline`: the connection's write deadline expired.
    pub const WRITE: u8 = 1;
    /// `runtime.netpollDeadline`: a read and a write deadline set to the same instant expired
    /// together (they share one timer).
    pub const READ_WRITE: u8 = 2;
    /// net/http's HTTP/2 `onWriteTimeout`: one stream's WriteTimeout expired, and net/http
    /// resets that stream.
    pub const H2_STREAM: u8 = 3;
}

/// `SOCK_NOSPACE` in `struct socket`'s `flags` (include/linux/net.h): a writer found the send
/// buffer full and waits for room.
pub const SOCK_NOSPACE_BIT: u32 = 2;

/// A Go write deadline that expired on a connection, as the socket stood at that moment.
/// Recorded by the Go runtime hooks in the `GO_DEADLINES` map (by `struct sock *`); an expiry is
/// a cause, never an incident by itself: net/http leaves the write deadline armed after a
/// response, so it also expires on healthy idle keep-alive connections.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct GoDeadline {
    /// `bpf_ktime_get_ns()` when it expired.
    pub ns: u64,
    /// When the socket's last input before the expiry arrived (the request the deadline was
    /// armed for), on the same clock; input that comes after it (a peer's goodbye) does not
    /// move it.
    pub input_ns: u64,
    /// `tcp_sock.copied_seq` then: input read after it re-armed the deadline (net/http sets
    /// it anew after reading each request).
    pub copied: u32,
    /// `write_seq - snd_una` then: bytes written that the peer had not acknowledged.
    pub unacked: u32,
    /// `tcp_sock.write_seq` then.
    pub write_seq: u32,
    /// The HTTP/2 stream, for [`go_deadline::H2_STREAM`].
    pub stream_id: u32,
    /// One of [`go_deadline`]; 0 for none.
    pub which: u8,
    /// A write was waiting for room in the send buffer (`SOCK_NOSPACE`): the expiry cut it.
    pub writer_waiting: u8,
    pub _pad: [u8; 6],
}

/// What an expired Go write deadline did to the response a connection was closed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoLoss {
    /// Nothing: it expired after the response (an idle keep-alive connection), or a request
    /// read since re-armed it.
    None,
    /// The close left the request unanswered: the deadline dropped the whole response.
    Dropped,
    /// The response had begun, and a write of it was waiting for the peer when the deadline
    /// expired: the rest was dropped.
    CutShort,
}

impl GoDeadline {
    /// What this expiry explains about a close judged `verdict`, `copied` being the socket's
    /// `copied_seq` at the close. The kernel sends a teardown record for it, and the agent
    /// names the cause from it; both call this.
    #[inline(always)]
    pub const fn explains(&self, verdict: Verdict, copied: u32) -> GoLoss {
        let connection = self.which == go_deadline::WRITE || self.which == go_deadline::READ_WRITE;
        if !connection || self.copied != copied {
            return GoLoss::None;
        }
        match verdict {
            Verdict::Owes => GoLoss::Dropped,
            Verdict::Answered | Verdict::GoodbyeSent if self.writer_waiting != 0 => {
                GoLoss::CutShort
            }
            _ => GoLoss::None,
        }
    }
}
