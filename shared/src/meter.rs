//! What the core counts for the operator's metrics, in plain atomics: a latency histogram with
//! fixed buckets. The core does not depend on an exporter; the server reads these at scrape time
//! and renders them (Prometheus), so the counting costs a few relaxed atomic adds and no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds: 0.25 ms to 10 s, about ×2.5 apart — a cached key or
/// a pool with idle connections sits in the first buckets, a struggling Vault or database in the
/// last. Anything slower falls in the implicit `+Inf` bucket.
pub const BUCKETS: [f64; 12] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0,
];

/// Durations observed: how many fell in each bucket (not cumulative; the last is `+Inf`), their
/// sum and the failures among them.
#[derive(Debug, Default)]
pub struct Timings {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    failures: AtomicU64,
}

/// A copy of [`Timings`] at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct TimingsSnapshot {
    /// `(upper bound in seconds, observations in this bucket)`, the last bound `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
    pub failures: u64,
}

impl Timings {
    /// Count one call that took `took`; `ok` is false when it failed.
    pub fn observe(&self, took: Duration, ok: bool) {
        let seconds = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> TimingsSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let bounds = BUCKETS.iter().copied().chain([f64::INFINITY]);
        TimingsSnapshot {
            count: counts.iter().sum(),
            buckets: bounds.zip(counts).collect(),
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            failures: self.failures.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_fall_in_their_bucket_and_sum() {
        let t = Timings::default();
        t.observe(Duration::from_micros(100), true);
        t.observe(Duration::from_millis(3), false);
        t.observe(Duration::from_secs(30), true);
        let s = t.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.failures, 1);
        assert_eq!(s.buckets[0], (0.000_25, 1));
        assert_eq!(s.buckets[4], (0.005, 1), "3 ms is in the 5 ms bucket");
        assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert!((s.sum_seconds - 30.0031).abs() < 1e-9, "{}", s.sum_seconds);
    }
}
