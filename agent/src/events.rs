//! Decoding ring-buffer records (header first, then the body its kind names).

use agent_common::{
    AbortEvent, EventHeader, ExecEvent, GoStreamEvent, TeardownEvent, WriteErrorEvent, kind,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Teardown(TeardownEvent),
    /// The peer's FIN crossed ours after a reported teardown (`kind::SIMULTANEOUS_CLOSE`).
    SimultaneousClose(TeardownEvent),
    Abort(AbortEvent),
    WriteError(WriteErrorEvent),
    /// Go net/http reset an HTTP/2 stream on its WriteTimeout.
    GoStreamReset(GoStreamEvent),
    /// A process exec'd (only with the Go runtime hooks).
    Exec(ExecEvent),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("record kind {0} is unknown")]
    UnknownKind(u32),
    #[error("record of kind {kind} has {got} bytes (header says {header}), expected {expected}")]
    BadLength {
        kind: u32,
        got: usize,
        header: u32,
        expected: usize,
    },
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let head = bytes
        .get(..size_of::<EventHeader>())
        .ok_or(DecodeError::Short(bytes.len()))?;
    let header: EventHeader = bytemuck::pod_read_unaligned(head);
    match header.kind {
        kind::TEARDOWN => body::<TeardownEvent>(bytes, &header).map(Event::Teardown),
        kind::SIMULTANEOUS_CLOSE => {
            body::<TeardownEvent>(bytes, &header).map(Event::SimultaneousClose)
        }
        kind::ABORT => body::<AbortEvent>(bytes, &header).map(Event::Abort),
        kind::WRITE_ERROR => body::<WriteErrorEvent>(bytes, &header).map(Event::WriteError),
        kind::GO_STREAM_RESET => body::<GoStreamEvent>(bytes, &header).map(Event::GoStreamReset),
        kind::EXEC => body::<ExecEvent>(bytes, &header).map(Event::Exec),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

fn body<T: bytemuck::Pod>(bytes: &[u8], header: &EventHeader) -> Result<T, DecodeError> {
    let expected = size_of::<T>();
    // The ring buffer rounds records up to 8 bytes, so the slice may be longer than the record.
    if header.len as usize != expected || bytes.len() < expected {
        return Err(DecodeError::BadLength {
            kind: header.kind,
            got: bytes.len(),
            header: header.len,
            expected,
        });
    }
    Ok(bytemuck::pod_read_unaligned(&bytes[..expected]))
}

#[cfg(test)]
mod tests {
    use agent_common::SockState;

    use super::*;

    fn teardown() -> TeardownEvent {
        TeardownEvent {
            header: EventHeader {
                kind: kind::TEARDOWN,
                len: size_of::<TeardownEvent>() as u32,
                ts_ns: 123,
            },
            sock: SockState {
                bytes_in: 78,
                lport: 8800,
                comm: *b"seedsrv\0\0\0\0\0\0\0\0\0",
                ..SockState::default()
            },
            sk: 0xdead_beef,
            closer_tgid: 7,
            oldstate: 1,
            newstate: 4,
            _pad: 0,
            go: Default::default(),
        }
    }

    #[test]
    fn teardown_round_trips() {
        let ev = teardown();
        let mut bytes = bytemuck::bytes_of(&ev).to_vec();
        assert_eq!(decode(&bytes), Ok(Event::Teardown(ev)));
        // Ring-buffer padding after the record is ignored.
        bytes.extend_from_slice(&[0; 8]);
        assert_eq!(decode(&bytes), Ok(Event::Teardown(ev)));
    }

    #[test]
    fn abort_and_write_error_round_trip() {
        let abort = AbortEvent {
            header: EventHeader {
                kind: kind::ABORT,
                len: size_of::<AbortEvent>() as u32,
                ts_ns: 1,
            },
            unacked: 2_803_712,
            trigger: 1,
            ..AbortEvent::default()
        };
        assert_eq!(decode(bytemuck::bytes_of(&abort)), Ok(Event::Abort(abort)));
        let write = WriteErrorEvent {
            header: EventHeader {
                kind: kind::WRITE_ERROR,
                len: size_of::<WriteErrorEvent>() as u32,
                ts_ns: 1,
            },
            errno: 32,
            ..WriteErrorEvent::default()
        };
        assert_eq!(
            decode(bytemuck::bytes_of(&write)),
            Ok(Event::WriteError(write))
        );
        // A record whose header names a kind of another size is rejected.
        let mut wrong = write;
        wrong.header.kind = kind::EXEC;
        assert!(matches!(
            decode(bytemuck::bytes_of(&wrong)),
            Err(DecodeError::BadLength { .. })
        ));
    }

    #[test]
    fn malformed_records_are_errors() {
        let ev = teardown();
        let bytes = bytemuck::bytes_of(&ev);
        assert_eq!(decode(&bytes[..3]), Err(DecodeError::Short(3)));
        assert!(matches!(
            decode(&bytes[..40]),
            Err(DecodeError::BadLength { .. })
        ));
        let mut bad = ev;
        bad.header.kind = 99;
        assert_eq!(
            decode(bytemuck::bytes_of(&bad)),
            Err(DecodeError::UnknownKind(99))
        );
        bad = ev;
        bad.header.len = 8;
        assert!(matches!(
            decode(bytemuck::bytes_of(&bad)),
            Err(DecodeError::BadLength { .. })
        ));
    }
}
