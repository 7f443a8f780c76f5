//! A limit on failed attempts by callers the federation has not verified: joins and
//! failed member authentication, per source address and per presented identity.
//!
//! Each key has a bucket of [`AttemptLimiter::BURST`] failures refilled at one per
//! [`AttemptLimiter::REFILL`]; a failure takes one. A key whose bucket is empty is
//! refused at once, before anything costly (bundle parsing, signature checks, a
//! linearizable read) — and counted as a refusal, never proposed. Successful calls take
//! nothing, so an agent behind the same address as an attacker is held back only while
//! the attacker keeps failing from it, and only for joins and catch-up reads.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One key's allowance.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Failures it may still have, in whole failures.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

/// Failed-attempt buckets by key (`ip:ADDRESS`, `id:SPIFFE-ID`).
#[derive(Debug, Default)]
pub struct AttemptLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl AttemptLimiter {
    /// Failures a key may have at once.
    pub const BURST: f64 = 20.0;
    /// Time that gives a key one more failure.
    pub const REFILL: Duration = Duration::from_millis(500);
    /// Keys kept; beyond, keys whose bucket is full again are forgotten, then the rest.
    const MAX_KEYS: usize = 16_384;

    fn refilled(bucket: Bucket, now: Instant) -> f64 {
        let earned =
            now.saturating_duration_since(bucket.at).as_secs_f64() / Self::REFILL.as_secs_f64();
        (bucket.tokens + earned).min(Self::BURST)
    }

    /// How long until the first of `keys` that has no failure left may try again;
    /// `None` when every key may try now.
    pub fn blocked(&self, keys: &[&str], now: Instant) -> Option<Duration> {
        let buckets = self.buckets.lock().ok()?;
        keys.iter()
            .filter_map(|key| buckets.get(*key))
            .map(|bucket| Self::refilled(*bucket, now))
            .filter(|tokens| *tokens < 1.0)
            .map(|tokens| Self::REFILL.mul_f64(1.0 - tokens))
            .max()
    }

    /// Takes one failure from each of `keys`.
    pub fn failed(&self, keys: &[&str], now: Instant) {
        let Ok(mut buckets) = self.buckets.lock() else { return };
        if buckets.len() + keys.len() > Self::MAX_KEYS {
            buckets.retain(|_, bucket| Self::refilled(*bucket, now) < Self::BURST);
            if buckets.len() + keys.len() > Self::MAX_KEYS {
                buckets.clear();
            }
        }
        for key in keys {
            let bucket = buckets
                .entry((*key).to_string())
                .or_insert(Bucket { tokens: Self::BURST, at: now });
            let tokens = Self::refilled(*bucket, now);
            *bucket = Bucket { tokens: (tokens - 1.0).max(0.0), at: now };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_blocked_after_its_burst_and_recovers_with_time() {
        let limiter = AttemptLimiter::default();
        let t0 = Instant::now();
        let burst = AttemptLimiter::BURST as usize;
        for _ in 0..burst {
            assert_eq!(limiter.blocked(&["ip:127.0.0.2"], t0), None);
            limiter.failed(&["ip:127.0.0.2"], t0);
        }
        let wait = limiter.blocked(&["ip:127.0.0.2"], t0).expect("blocked");
        assert!(wait <= AttemptLimiter::REFILL, "{wait:?}");
        assert_eq!(limiter.blocked(&["ip:127.0.0.1"], t0), None, "other sources are not");
        assert_eq!(
            limiter.blocked(&["ip:127.0.0.1", "ip:127.0.0.2"], t0),
            Some(wait),
            "any blocked key blocks"
        );
        assert_eq!(limiter.blocked(&["ip:127.0.0.2"], t0 + AttemptLimiter::REFILL), None);
    }

    #[test]
    fn the_key_table_stays_bounded() {
        let limiter = AttemptLimiter::default();
        let t0 = Instant::now();
        for i in 0..(AttemptLimiter::MAX_KEYS * 2) {
            limiter.failed(&[&format!("id:spiffe://made-up/{i}")], t0);
        }
        assert!(limiter.buckets.lock().expect("lock").len() <= AttemptLimiter::MAX_KEYS);
    }
}
