//! One ring-buffer record in: decoded, counted if malformed, turned into an incident or nothing.
//!
//! The bytes come from the kernel, so the agent treats them as untrusted input: a record of the
//! wrong size, an unknown kind or any field value the programs would never write must end in a
//! counted decode error or a harmless incident, never a panic. The property tests below feed it
//! arbitrary bytes to hold it to that.

use std::time::{Duration, Instant};

use tracing::warn;

use crate::{
    correlate::{Correlator, Incident, Listeners},
    events::{self, Event},
    metrics::Metrics,
};

/// Warnings of malformed records, at most one per [`Throttle::EVERY`]: every such record is
/// counted in `lostwrite_decode_errors_total` anyway, and a stream of them (a broken program,
/// a kernel that lays a record out differently) must not flood the log.
#[derive(Debug, Default)]
pub struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub const EVERY: Duration = Duration::from_secs(10);

    /// Whether a warning may be logged at `now`; when it may, how many were held back since
    /// the last one.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < Self::EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

pub fn record(
    bytes: &[u8],
    correlator: &mut Correlator,
    listeners: &impl Listeners,
    metrics: &Metrics,
    warnings: &mut Throttle,
) -> Option<Incident> {
    match events::decode(bytes) {
        Ok(Event::Teardown(ev)) => correlator.teardown(&ev, listeners),
        Ok(Event::SimultaneousClose(ev)) => {
            correlator.simultaneous_close(&ev);
            None
        }
        Ok(Event::Abort(ev)) => correlator.abort(&ev),
        Ok(Event::WriteError(ev)) => correlator.write_error(&ev),
        Ok(Event::GoStreamReset(ev)) => correlator.stream_reset(&ev),
        Ok(Event::Exec(ev)) => {
            correlator.exec(ev.tgid);
            None
        }
        Err(e) => {
            metrics.decode_error();
            match warnings.admit(Instant::now()) {
                Some(0) => warn!("dropping a malformed kernel record: {e}"),
                Some(n) => warn!(
                    "dropping a malformed kernel record: {e} ({n} more since the last warning, \
                     see lostwrite_decode_errors_total)"
                ),
                None => {}
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use agent_common::{AbortEvent, EventHeader, TeardownEvent, WriteErrorEvent, kind};
    use proptest::prelude::*;

    use super::*;
    use crate::report::{self, LogFormat};

    /// Runs one record through everything an incident touches: correlation, metrics and both
    /// log formats. Returns whether it decoded.
    fn ingest(bytes: &[u8], correlator: &mut Correlator, metrics: &Metrics) -> bool {
        let decoded = events::decode(bytes).is_ok();
        let listening = |_: u32, port: u16| port.is_multiple_of(2);
        if let Some(i) = record(
            bytes,
            correlator,
            &listening,
            metrics,
            &mut Throttle::default(),
        ) {
            let a = i.into();
            metrics.record(&a);
            for format in [LogFormat::Text, LogFormat::Json] {
                assert!(!report::line(format, UNIX_EPOCH, &a).is_empty());
            }
        }
        decoded
    }

    fn decode_errors(m: &Metrics) -> u64 {
        let text = m.render();
        text.lines()
            .find_map(|l| l.strip_prefix("lostwrite_decode_errors_total "))
            .and_then(|v| v.parse().ok())
            .expect("lostwrite_decode_errors_total is exported")
    }

    /// Records shaped like the real ones (a header naming a known or unknown kind, a length
    /// near the real size) with arbitrary contents, and plain noise.
    fn records() -> impl Strategy<Value = Vec<u8>> {
        let kinds = [
            (kind::TEARDOWN, size_of::<TeardownEvent>()),
            (kind::SIMULTANEOUS_CLOSE, size_of::<TeardownEvent>()),
            (kind::ABORT, size_of::<AbortEvent>()),
            (kind::WRITE_ERROR, size_of::<WriteErrorEvent>()),
        ];
        let shaped = (
            prop::sample::select(kinds.to_vec()),
            // Mostly the kind the size belongs to; sometimes another, or an unknown one.
            prop_oneof![6 => Just(None), 1 => any::<u32>().prop_map(Some)],
            prop_oneof![6 => Just(0i64), 1 => -16i64..=16],
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 256),
        )
            .prop_map(|((real, size), other, skew, honest_len, noise)| {
                let kind = other.map_or(real, |k| if k.is_multiple_of(2) { k % 5 } else { k });
                let len = (size as i64 + skew).max(0) as usize;
                let mut bytes: Vec<u8> = noise.iter().cycle().take(len).copied().collect();
                let header = EventHeader {
                    kind,
                    len: if honest_len { len as u32 } else { size as u32 },
                    ts_ns: u64::from_le_bytes(noise[..8].try_into().unwrap()),
                };
                let head = bytemuck::bytes_of(&header);
                let n = head.len().min(bytes.len());
                bytes[..n].copy_from_slice(&head[..n]);
                bytes
            });
        prop_oneof![shaped, prop::collection::vec(any::<u8>(), 0..400)]
    }

    proptest! {
        // Kept short: this runs in every `cargo xtask test`.
        #![proptest_config(ProptestConfig {
            cases: 3000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn malformed_records_are_counted_never_fatal(batch in prop::collection::vec(records(), 1..8)) {
            let metrics = Metrics::new(true);
            let mut correlator = Correlator::default();
            let mut failed = 0;
            for bytes in &batch {
                if !ingest(bytes, &mut correlator, &metrics) {
                    failed += 1;
                }
            }
            // Held-back peer resets are released without trouble too, whatever their times.
            for i in correlator.expired(u64::MAX) {
                metrics.record(&i.into());
            }
            prop_assert_eq!(decode_errors(&metrics), failed);
        }
    }

    /// The generator is not vacuous: it reaches the decoder's every outcome and the correlator's
    /// incident paths, not only the early rejections.
    #[test]
    fn the_fuzz_input_reaches_every_path() {
        use proptest::strategy::ValueTree as _;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut ok, mut err, mut incidents) = (0, 0, 0);
        let metrics = Metrics::new(true);
        let mut correlator = Correlator::default();
        let listening = |_: u32, _: u16| true;
        for _ in 0..2000 {
            let bytes = records().new_tree(&mut runner).unwrap().current();
            match events::decode(&bytes) {
                Ok(_) => ok += 1,
                Err(_) => err += 1,
            }
            let mut warnings = Throttle::default();
            let incident = record(&bytes, &mut correlator, &listening, &metrics, &mut warnings);
            incidents += usize::from(incident.is_some());
        }
        assert!(
            ok > 200 && err > 200 && incidents > 20,
            "decoded {ok}, rejected {err}, incidents {incidents}"
        );
    }

    #[test]
    fn malformed_records_warn_once_per_interval() {
        let mut t = Throttle::default();
        let start = Instant::now();
        assert_eq!(t.admit(start), Some(0));
        // A flood within the interval: held back, and counted.
        for i in 1..1000 {
            assert_eq!(t.admit(start + Duration::from_millis(i)), None);
        }
        assert_eq!(t.admit(start + Throttle::EVERY), Some(999));
        assert_eq!(t.admit(start + Throttle::EVERY), None);
    }

    #[test]
    fn a_short_record_is_one_decode_error() {
        let metrics = Metrics::new(true);
        let mut correlator = Correlator::default();
        assert!(!ingest(&[1, 0, 0], &mut correlator, &metrics));
        assert_eq!(decode_errors(&metrics), 1);
        // A well-formed record does not count.
        let ev = TeardownEvent {
            header: EventHeader {
                kind: kind::TEARDOWN,
                len: size_of::<TeardownEvent>() as u32,
                ts_ns: Duration::from_secs(5).as_nanos() as u64,
            },
            ..TeardownEvent::default()
        };
        assert!(ingest(bytemuck::bytes_of(&ev), &mut correlator, &metrics));
        assert_eq!(decode_errors(&metrics), 1);
    }
}
