//! The incident log: one line per incident on stdout, text or JSON (README: The incident log).

use std::{io::Write as _, time::SystemTime};

use serde::Serialize;

use crate::{
    correlate::{Detail, Explained, Role},
    k8s::Attributed,
};

/// `--log-format`: how incidents (and the agent's own log) are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Serialize)]
struct Record<'a> {
    ts: String,
    kind: &'static str,
    reason: &'static str,
    pid: u32,
    comm: &'a str,
    tid: u32,
    thread: &'a str,
    role: Role,
    port: u16,
    local: String,
    remote: String,
    bytes_read: u64,
    bytes_written: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    unanswered_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delay_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    undelivered_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unsent_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unread_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempted_bytes: Option<u64>,
    cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a str>,
    peer_closed: bool,
    ended_by: crate::correlate::EndedBy,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'static str>,
    /// The cause, where the Go runtime hooks saw one.
    #[serde(skip_serializing_if = "Option::is_none")]
    go_deadline: Option<crate::correlate::GoDeadlineKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    go_deadline_after_input_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    go_handler_after_deadline_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_id: Option<u32>,
    message: String,
}

impl<'a> Record<'a> {
    fn new(at: SystemTime, a: &'a Attributed) -> Self {
        let i = &a.incident;
        let mut r = Record {
            ts: humantime::format_rfc3339_millis(at).to_string(),
            kind: i.kind(),
            reason: i.reason(),
            pid: i.pid,
            comm: &i.comm,
            tid: i.tid,
            thread: &i.thread,
            role: i.role,
            port: i.port,
            local: i.local.to_string(),
            remote: i.remote.to_string(),
            bytes_read: i.bytes_in,
            bytes_written: i.bytes_out,
            unanswered_bytes: None,
            delay_seconds: None,
            undelivered_bytes: None,
            unsent_bytes: None,
            unread_bytes: None,
            attempted_bytes: None,
            cgroup_id: i.cgroup_id,
            namespace: a.pod.as_ref().map(|p| p.namespace.as_str()),
            pod: a.pod.as_ref().map(|p| p.name.as_str()),
            container: a.pod.as_ref().map(|p| p.container.as_str()),
            peer_closed: i.peer_closed,
            ended_by: i.ended_by,
            protocol: None,
            go_deadline: i.go.map(|g| g.deadline),
            go_deadline_after_input_seconds: i.go.map(|g| g.after_input.as_secs_f64()),
            go_handler_after_deadline_seconds: i
                .go
                .and_then(|g| g.until_close)
                .map(|d| d.as_secs_f64()),
            stream_id: None,
            message: a.sentence(),
        };
        match &i.detail {
            Detail::UnansweredClose {
                unanswered_bytes,
                delay,
                protocol,
                ..
            } => {
                r.unanswered_bytes = Some(*unanswered_bytes);
                r.delay_seconds = Some(delay.as_secs_f64());
                r.protocol = Some(protocol);
            }
            Detail::WriteAfterClose { attempted, .. } => r.attempted_bytes = *attempted,
            Detail::Undelivered {
                undelivered_bytes,
                unsent_bytes,
                unread_bytes,
                ..
            } => {
                r.undelivered_bytes = Some(*undelivered_bytes);
                r.unsent_bytes = Some(*unsent_bytes);
                r.unread_bytes = Some(*unread_bytes);
            }
            Detail::GoWriteTimeout {
                unacked_bytes,
                stream_id,
            } => {
                r.undelivered_bytes = stream_id.is_none().then_some(*unacked_bytes);
                r.stream_id = *stream_id;
                r.protocol = i.go.map(|g| g.protocol());
            }
        }
        r
    }
}

/// A name as the value of a text line's `key=value` field: quoted (with `"` and `\` escaped)
/// where it holds a space, `=`, `]` or a quote, which would otherwise end the field or the
/// bracket early for a reader of the line ("Web Content" is a real process name). Names come
/// with their control characters already escaped (`correlate::comm`).
fn field(name: &str) -> std::borrow::Cow<'_, str> {
    if name.is_empty() || name.contains([' ', '=', ']', '"', '\\']) {
        format!("{name:?}").into()
    } else {
        name.into()
    }
}

/// Formats one incident as a single line (no trailing newline).
pub fn line(format: LogFormat, at: SystemTime, a: &Attributed) -> String {
    let r = Record::new(at, a);
    let i = &a.incident;
    match format {
        LogFormat::Json => serde_json::to_string(&r).expect("a flat record always serializes"),
        LogFormat::Text => {
            let mut extra = String::new();
            let mut add = |k: &str, v: Option<String>| {
                if let Some(v) = v {
                    extra.push_str(&format!(" {k}={v}"));
                }
            };
            add("protocol", r.protocol.map(str::to_owned));
            add("unanswered", r.unanswered_bytes.map(|v| v.to_string()));
            add("delay", r.delay_seconds.map(|v| format!("{v:.3}s")));
            add("undelivered", r.undelivered_bytes.map(|v| v.to_string()));
            add("unsent", r.unsent_bytes.map(|v| v.to_string()));
            add("unread", r.unread_bytes.map(|v| v.to_string()));
            add("attempted", r.attempted_bytes.map(|v| v.to_string()));
            add("stream", r.stream_id.map(|v| v.to_string()));
            add(
                "go_deadline",
                i.go.map(|g| {
                    let kind = match g.deadline {
                        crate::correlate::GoDeadlineKind::Write => "write",
                        crate::correlate::GoDeadlineKind::ReadWrite => "read_write",
                        crate::correlate::GoDeadlineKind::H2Stream => "h2_stream",
                    };
                    format!("{kind}@{:.3}s", g.after_input.as_secs_f64())
                }),
            );
            let mut pod = String::new();
            if let Some(p) = &a.pod {
                pod = format!(
                    " namespace={} pod={} container={}",
                    p.namespace, p.name, p.container
                );
            }
            format!(
                "{} INCIDENT {}: {} [reason={} role={} port={} pid={} comm={} tid={} thread={} \
                 local={} remote={} bytes_read={} bytes_written={}{extra} cgroup_id={}{pod} \
                 peer_closed={} ended_by={}]",
                r.ts,
                r.kind,
                r.message,
                r.reason,
                i.role.as_str(),
                r.port,
                r.pid,
                field(r.comm),
                r.tid,
                field(r.thread),
                r.local,
                r.remote,
                r.bytes_read,
                r.bytes_written,
                r.cgroup_id,
                r.peer_closed,
                i.ended_by.as_str(),
            )
        }
    }
}

/// Formats one explained close as a single line: the verdict, then the close as the incident
/// it would be.
pub fn explained_line(format: LogFormat, at: SystemTime, e: &Explained) -> String {
    // Explained closes are not attributed: they are a debugging aid on chosen ports.
    let a = Attributed::bare(e.incident.clone());
    match format {
        LogFormat::Json => {
            let mut v =
                serde_json::to_value(Record::new(at, &a)).expect("a flat record always serializes");
            v["kind"] = "explain".into();
            v["verdict"] = e.verdict.as_str().into();
            v["explain_port"] = e.port.into();
            v.to_string()
        }
        LogFormat::Text => {
            let line = line(format, at, &a);
            let (ts, rest) = line.split_once(" INCIDENT ").unwrap_or(("", &line));
            format!(
                "{ts} EXPLAIN port {} verdict={}: {rest}",
                e.port,
                e.verdict.as_str()
            )
        }
    }
}

/// Writes an explained close to stdout.
pub fn emit_explained(format: LogFormat, e: &Explained) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", explained_line(format, SystemTime::now(), e))
        .and_then(|()| out.flush());
}

/// Writes the line to stdout. A closed stdout must not stop the agent: metrics still work.
pub fn emit(format: LogFormat, a: &Attributed) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line(format, SystemTime::now(), a)).and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::correlate::{Incident, samples};

    #[test]
    fn text_line() {
        let l = line(LogFormat::Text, UNIX_EPOCH, &samples::seed().into());
        assert!(l.starts_with(
            "1970-01-01T00:00:00.000Z INCIDENT unanswered_close: pid 4242 (seedsrv) read 78 \
             bytes on 127.0.0.1:8800 from 127.0.0.1:60154 and closed the connection 2.0 s later \
             without writing a response ["
        ));
        assert!(l.contains(" delay=2.003s "), "{l}");
        assert!(!l.contains('\n'));
    }

    #[test]
    fn names_cannot_forge_a_line_or_break_a_field() {
        // A process that renamed itself (prctl PR_SET_NAME) to start a fake incident line.
        let forged = crate::correlate::comm(b"x\n1970 INCIDENT y\0");
        assert_eq!(forged, "x\\n1970 INCIDENT y");
        let i = Incident {
            comm: forged,
            thread: "Web Content".into(),
            ..samples::seed()
        };
        for format in [LogFormat::Text, LogFormat::Json] {
            let l = line(format, UNIX_EPOCH, &i.clone().into());
            assert!(!l.contains('\n'), "{l}");
        }
        let l = line(LogFormat::Text, UNIX_EPOCH, &i.into());
        assert!(
            l.contains(r#" comm="x\\n1970 INCIDENT y" tid=4247 thread="Web Content" "#),
            "{l}"
        );
        assert_eq!(field("pool-1-thread-3"), "pool-1-thread-3");
    }

    #[test]
    fn process_and_thread_in_both_formats() {
        let i = Incident {
            comm: "java".into(),
            tid: 4250,
            thread: "pool-1-thread-3".into(),
            ..samples::seed()
        };
        let l = line(LogFormat::Text, UNIX_EPOCH, &i.clone().into());
        assert!(
            l.contains(" pid=4242 comm=java tid=4250 thread=pool-1-thread-3 "),
            "{l}"
        );
        assert!(
            l.contains("INCIDENT unanswered_close: pid 4242 (java) read"),
            "{l}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&line(LogFormat::Json, UNIX_EPOCH, &i.clone().into())).unwrap();
        assert_eq!(
            (&v["pid"], &v["comm"], &v["tid"], &v["thread"]),
            (
                &4242.into(),
                &"java".into(),
                &4250.into(),
                &"pool-1-thread-3".into()
            ),
            "{v}"
        );
    }

    #[test]
    fn json_line() {
        let l = line(LogFormat::Json, UNIX_EPOCH, &samples::seed().into());
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
        assert_eq!(v["unanswered_bytes"], 78);
        assert!(v.get("undelivered_bytes").is_none(), "{l}");
    }

    #[test]
    fn pod_in_both_formats() {
        let i = crate::k8s::samples::seed_in_pod();
        let v: serde_json::Value =
            serde_json::from_str(&line(LogFormat::Json, UNIX_EPOCH, &i)).unwrap();
        assert_eq!(v["namespace"], "shop");
        assert_eq!(v["pod"], "checkout-7d9f8b6c5-x2x9q");
        assert_eq!(v["container"], "api");
        assert!(
            v["message"].as_str().unwrap().starts_with(
                "pid 4242 (seedsrv, container api of pod shop/checkout-7d9f8b6c5-x2x9q) read 78 \
                 bytes on 127.0.0.1:8800"
            ),
            "{v}"
        );
        let l = line(LogFormat::Text, UNIX_EPOCH, &i);
        assert!(
            l.contains(" cgroup_id=1 namespace=shop pod=checkout-7d9f8b6c5-x2x9q container=api "),
            "{l}"
        );

        // Without a pod the fields are absent, not empty.
        let l = line(LogFormat::Json, UNIX_EPOCH, &samples::seed().into());
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        for k in ["namespace", "pod", "container"] {
            assert!(v.get(k).is_none(), "{k} in {l}");
        }
        assert!(!line(LogFormat::Text, UNIX_EPOCH, &samples::seed().into()).contains("pod="));
    }

    #[test]
    fn go_cause_in_both_formats() {
        let i = samples::seed_with_cause();
        let l = line(LogFormat::Text, UNIX_EPOCH, &i.clone().into());
        assert!(
            l.contains(
                "without writing a response: Go dropped the response: its write deadline \
                 (WriteTimeout, ~1.0 s after the request was read) expired while the handler \
                 ran; the handler finished 1.0 s later ["
            ),
            "{l}"
        );
        assert!(l.contains(" go_deadline=write@1.001s "), "{l}");
        let v: serde_json::Value =
            serde_json::from_str(&line(LogFormat::Json, UNIX_EPOCH, &i.clone().into())).unwrap();
        assert_eq!(v["go_deadline"], "write");
        assert_eq!(v["go_deadline_after_input_seconds"], 1.001);
        assert_eq!(v["go_handler_after_deadline_seconds"], 1.002);
        let plain = line(LogFormat::Json, UNIX_EPOCH, &samples::seed().into());
        assert!(!plain.contains("go_deadline"), "{plain}");
    }

    #[test]
    fn undelivered_line() {
        let i = samples::nginx_linger();
        let v: serde_json::Value =
            serde_json::from_str(&line(LogFormat::Json, UNIX_EPOCH, &i.clone().into())).unwrap();
        assert_eq!(v["kind"], "undelivered_bytes");
        assert_eq!(v["reason"], "linger_zero");
        assert_eq!(v["undelivered_bytes"], 2_803_712);
        assert_eq!(
            v["message"],
            "pid 4242 (nginx) lost 2803712 bytes it had written on 127.0.0.1:8800 to \
             127.0.0.1:60154 (2803712 of them never even sent): it closed the connection with \
             SO_LINGER{1,0}, which resets it before the peer acknowledged them"
        );
    }
}
