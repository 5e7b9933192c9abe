//! Which ports a process listens on, from procfs, to tell pre-existing server sockets from
//! client ones.

use procfs::{
    net::{TcpNetEntry, TcpState},
    process::Process,
};

use crate::correlate::Listeners;

/// Reads `/proc/<pid>/net/tcp{,6}`: the listening sockets of the process's own network
/// namespace (a container's, on Kubernetes). When the process is gone there is no namespace
/// to read: the answer is no, never the agent's own namespace, whose listeners say nothing
/// about a container's sockets (a socket older than the agent then counts as no server's).
pub struct ProcListeners;

impl Listeners for ProcListeners {
    fn listening(&self, pid: u32, port: u16) -> bool {
        let table = |p: &Process| -> Vec<TcpNetEntry> {
            let mut all = p.tcp().unwrap_or_default();
            all.extend(p.tcp6().unwrap_or_default());
            all
        };
        let entries = match Process::new(pid as i32) {
            Ok(p) => table(&p),
            Err(_) => return false,
        };
        entries
            .iter()
            .any(|e| e.state == TcpState::Listen && e.local_address.port() == port)
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn sees_our_own_listener() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let me = std::process::id();
        assert!(ProcListeners.listening(me, port));
        drop(l);
        assert!(!ProcListeners.listening(me, port));
    }

    #[test]
    fn a_process_that_is_gone_listens_nowhere() {
        // A port the agent's own namespace listens on says nothing of another process's.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        assert!(!ProcListeners.listening(gone, port));
    }
}
