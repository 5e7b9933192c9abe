//! A small map whose entries expire, for attribution results.

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

/// Entries live for the time given at insertion. Bounded: past `max` entries it starts over
/// rather than grow (a storm of short-lived processes must not grow the agent).
#[derive(Debug)]
pub struct TtlCache<K, V> {
    entries: HashMap<K, (Instant, V)>,
    max: usize,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    pub fn new(max: usize) -> Self {
        Self {
            entries: HashMap::new(),
            max,
        }
    }

    /// The value, unless it is missing or expired at `now`.
    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        self.entries
            .get(key)
            .filter(|(until, _)| now < *until)
            .map(|(_, v)| v.clone())
    }

    pub fn insert(&mut self, key: K, value: V, ttl: Duration, now: Instant) {
        if self.entries.len() >= self.max {
            self.entries.retain(|_, (until, _)| now < *until);
            if self.entries.len() >= self.max {
                self.entries.clear();
            }
        }
        self.entries.insert(key, (now + ttl, value));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(8);
        c.insert(1, "a", Duration::from_secs(10), t0);
        assert_eq!(c.get(&1, t0 + Duration::from_secs(9)), Some("a"));
        assert_eq!(c.get(&1, t0 + Duration::from_secs(10)), None);
        assert_eq!(c.get(&2, t0), None);
    }

    #[test]
    fn stays_bounded() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(4);
        for k in 0..4 {
            c.insert(k, k, Duration::from_secs(1), t0);
        }
        // Full of live entries: starts over.
        c.insert(9, 9, Duration::from_secs(1), t0);
        assert_eq!(c.len(), 1);
        // Full, but the old entries expired: only those go.
        for k in 0..3 {
            c.insert(k, k, Duration::from_secs(1), t0);
        }
        let later = t0 + Duration::from_secs(2);
        c.insert(5, 5, Duration::from_secs(10), later);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(&5, later), Some(5));
    }
}
