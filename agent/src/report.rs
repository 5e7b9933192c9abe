//! The incident log: one line per incident on stdout, text or JSON (SPEC §5).

use std::{io::Write as _, time::SystemTime};

use serde::Serialize;

use crate::{
    cli::LogFormat,
    correlate::{CloseHow, Incident, Kind, Role},
};

#[derive(Serialize)]
struct Record<'a> {
    ts: String,
    kind: Kind,
    reason: CloseHow,
    pid: u32,
    comm: &'a str,
    role: Role,
    port: u16,
    local: String,
    remote: String,
    bytes_read: u64,
    bytes_written: u64,
    unanswered_bytes: u64,
    undelivered_bytes: u64,
    delay_seconds: f64,
    cgroup_id: u64,
    peer_closed: bool,
    message: String,
}

/// Formats one incident as a single line (no trailing newline).
pub fn line(format: LogFormat, at: SystemTime, i: &Incident) -> String {
    let r = Record {
        ts: humantime::format_rfc3339_millis(at).to_string(),
        kind: i.kind,
        reason: i.how,
        pid: i.pid,
        comm: &i.comm,
        role: i.role,
        port: i.port,
        local: i.local.to_string(),
        remote: i.remote.to_string(),
        bytes_read: i.bytes_in,
        bytes_written: i.bytes_out,
        unanswered_bytes: i.unanswered_bytes,
        undelivered_bytes: i.undelivered_bytes,
        delay_seconds: i.delay.as_secs_f64(),
        cgroup_id: i.cgroup_id,
        peer_closed: i.peer_closed,
        message: i.sentence(),
    };
    match format {
        LogFormat::Json => serde_json::to_string(&r).expect("a flat record always serializes"),
        LogFormat::Text => format!(
            "{ts} INCIDENT {kind}: {msg} [reason={reason} role={role} port={port} pid={pid} \
             comm={comm} local={local} remote={remote} bytes_read={bin} bytes_written={bout} \
             undelivered={und} delay={delay:.3}s cgroup_id={cg} peer_closed={pc}]",
            ts = r.ts,
            kind = i.kind.as_str(),
            msg = r.message,
            reason = match i.how {
                CloseHow::Fin => "fin",
                CloseHow::Reset => "rst",
            },
            role = i.role.as_str(),
            port = r.port,
            pid = r.pid,
            comm = r.comm,
            local = r.local,
            remote = r.remote,
            bin = r.bytes_read,
            bout = r.bytes_written,
            und = r.undelivered_bytes,
            delay = r.delay_seconds,
            cg = r.cgroup_id,
            pc = r.peer_closed,
        ),
    }
}

/// Writes the line to stdout. A closed stdout must not stop the agent: metrics still work.
pub fn emit(format: LogFormat, i: &Incident) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line(format, SystemTime::now(), i)).and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn incident() -> Incident {
        Incident {
            kind: Kind::UnansweredClose,
            how: CloseHow::Fin,
            pid: 4242,
            comm: "seedsrv".into(),
            role: Role::Server,
            port: 8800,
            local: "127.0.0.1:8800".parse().unwrap(),
            remote: "127.0.0.1:60154".parse().unwrap(),
            bytes_in: 78,
            bytes_out: 0,
            unanswered_bytes: 78,
            undelivered_bytes: 0,
            delay: Duration::from_millis(2003),
            cgroup_id: 1,
            peer_closed: false,
        }
    }

    #[test]
    fn text_line() {
        let l = line(LogFormat::Text, UNIX_EPOCH, &incident());
        assert!(l.starts_with(
            "1970-01-01T00:00:00.000Z INCIDENT unanswered_close: pid 4242 (seedsrv) read 78 \
             bytes on 127.0.0.1:8800 from 127.0.0.1:60154 and closed the connection 2.0 s later \
             without writing a response ["
        ));
        assert!(l.contains(" delay=2.003s "), "{l}");
        assert!(!l.contains('\n'));
    }

    #[test]
    fn json_line() {
        let l = line(LogFormat::Json, UNIX_EPOCH, &incident());
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["kind"], "unanswered_close");
        assert_eq!(v["reason"], "fin");
        assert_eq!(v["role"], "server");
        assert_eq!(v["remote"], "127.0.0.1:60154");
        assert_eq!(v["bytes_read"], 78);
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("pid 4242 (seedsrv) read 78 bytes")
        );
    }
}
