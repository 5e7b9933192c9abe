//! Which incidents are reported: `--port`, `--comm`, and nothing from a detector the probe
//! mode cannot run correctly.

use agent_common::Detector;

use crate::correlate::Incident;

/// `--port` / `--comm`: which incidents the user wants reported. Empty lists allow everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub ports: Vec<u16>,
    pub comms: Vec<String>,
    /// Detectors this probe mode cannot run correctly here: their incidents would rest on
    /// missing evidence (a close with no send hook looks unanswered).
    pub detectors_off: Vec<Detector>,
}

impl Filter {
    pub fn allows(&self, i: &Incident) -> bool {
        if self.detectors_off.contains(&i.detector()) {
            return false;
        }
        let port_ok = self.ports.is_empty()
            || self.ports.contains(&i.local.port())
            || self.ports.contains(&i.remote.port());
        let comm_ok = self.comms.is_empty() || self.comms.contains(&i.comm);
        port_ok && comm_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::samples;

    #[test]
    fn filter_by_port_and_comm() {
        let i = &samples::seed();
        assert!(Filter::default().allows(i));
        let f = |ports: &[u16], comms: &[&str]| Filter {
            ports: ports.to_vec(),
            comms: comms.iter().map(|c| c.to_string()).collect(),
            detectors_off: Vec::new(),
        };
        assert!(f(&[8800], &[]).allows(i));
        assert!(f(&[60154], &[]).allows(i), "either end's port matches");
        assert!(!f(&[9000], &[]).allows(i));
        assert!(f(&[], &["nginx", "seedsrv"]).allows(i));
        assert!(!f(&[8800], &["nginx"]).allows(i));
        let off = Filter {
            detectors_off: vec![Detector::UnansweredClose],
            ..Filter::default()
        };
        assert!(!off.allows(i), "a disabled detector reports nothing");
    }
}
