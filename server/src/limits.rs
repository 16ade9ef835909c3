//! Rate limits (`governor`'s GCRA, keyed): per signed-in caller, per client address, and a
//! stricter one per address on `/auth/*`; each in requests per second with a burst of twice that
//! (`CARAPACE_RATE_LIMIT_CLIENT`, `CARAPACE_RATE_LIMIT_ADDRESS`, `CARAPACE_RATE_LIMIT_AUTH`;
//! 0 = off). A request over a limit gets 429, `Retry-After` (governor's wait, in whole seconds)
//! and an OperationOutcome `throttled`.
//!
//! Where they are checked: the address limits in `main.rs`'s `dispatch`, which every request
//! passes; the caller's in `oauth::authenticate`, which every request with a token passes once
//! the token is verified (REST, Bundles, Binary uploads and downloads, export downloads).
//!
//! Memory is bounded: addresses are keyed by IPv4 address or IPv6 /64 (one subscriber's
//! allocation, so an attacker with a /64 cannot spray 2^64 keys); keys idle long enough to be full
//! again are dropped every [`SWEEP_EVERY`]; and a limiter holds at most [`MAX_KEYS`] keys — past
//! that (a spray from more addresses than that within seconds), requests are counted in one
//! shared overflow bucket until the sweep makes room, so the spray throttles itself.

use crate::outcome::ApiError;
use carapace_core::config::RateLimits;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use hyper::StatusCode;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

/// Keys one limiter holds before new ones share the overflow bucket: about 64 bytes each in
/// governor's map, so a few MiB at most per limiter.
pub const MAX_KEYS: usize = 65_536;

/// How often idle keys are dropped.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A key, or the bucket every key past [`MAX_KEYS`] shares.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key<K> {
    One(K),
    Overflow,
}

/// One keyed limit.
struct Limit<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<Key<K>>,
    clock: DefaultClock,
}

impl<K: Hash + Eq + Clone> Limit<K> {
    /// `None` for a rate of 0 (off).
    fn new(per_second: u32) -> Option<Limit<K>> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(per_second.saturating_mul(2)).unwrap_or(rate);
        Some(Limit {
            limiter: governor::RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
        })
    }

    /// Take one request for `key`, or say how long until one would be allowed.
    fn check(&self, key: K) -> Result<(), Duration> {
        let key = if self.limiter.len() >= MAX_KEYS {
            Key::Overflow
        } else {
            Key::One(key)
        };
        self.limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.limiter.len()
    }
}

/// The server's limits, as configured.
pub struct Limits {
    client: Option<Limit<String>>,
    address: Option<Limit<IpAddr>>,
    auth: Option<Limit<IpAddr>>,
}

impl Limits {
    pub fn new(config: RateLimits) -> Limits {
        Limits {
            client: Limit::new(config.client),
            address: Limit::new(config.address),
            auth: Limit::new(config.auth),
        }
    }

    /// The per-address limits of a request to `path` from `address`.
    pub fn check_address(&self, address: IpAddr, path: &str) -> Result<(), ApiError> {
        let key = address_key(address);
        if let Some(limit) = &self.address {
            limit.check(key).map_err(throttled)?;
        }
        if path.starts_with("/auth/") {
            if let Some(limit) = &self.auth {
                limit.check(key).map_err(throttled)?;
            }
        }
        Ok(())
    }

    /// The per-caller limit of a verified token's client and user (`client` is `None` for an
    /// operator's token).
    pub fn check_caller(&self, client: Option<&str>, subject: &str) -> Result<(), ApiError> {
        let Some(limit) = &self.client else {
            return Ok(());
        };
        // NUL cannot occur in either (both are printable identifiers): the pair is unambiguous.
        let key = format!("{}\0{subject}", client.unwrap_or(""));
        limit.check(key).map_err(throttled)
    }

    /// Drop keys that are idle (full again): run every [`SWEEP_EVERY`].
    pub fn sweep(&self) {
        if let Some(l) = &self.client {
            l.sweep();
        }
        for l in [&self.address, &self.auth].into_iter().flatten() {
            l.sweep();
        }
    }

    /// Keys held by each limiter (client, address, auth), for the metrics.
    pub fn keys_held(&self) -> [usize; 3] {
        [
            self.client.as_ref().map_or(0, Limit::len),
            self.address.as_ref().map_or(0, Limit::len),
            self.auth.as_ref().map_or(0, Limit::len),
        ]
    }
}

/// An IPv4 address as it is; an IPv6 address by its /64 (an IPv4-mapped one as IPv4).
fn address_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 64)).into()),
        v4 => v4,
    }
}

/// 429 with the wait in whole seconds (at least 1: `Retry-After: 0` would invite a retry loop).
fn throttled(wait: Duration) -> ApiError {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError {
        retry_after: Some(u32::try_from(seconds.max(1)).unwrap_or(u32::MAX)),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            "too many requests; retry after the time in Retry-After",
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_is_keyed_by_its_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(address_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(address_key(ip("192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn a_burst_of_twice_the_rate_then_429_with_a_wait() {
        let limits = Limits::new(RateLimits {
            client: 5,
            address: 0,
            auth: 0,
        });
        for _ in 0..10 {
            limits.check_caller(Some("ehr"), "ehr").unwrap();
        }
        let refused = limits.check_caller(Some("ehr"), "ehr").unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.code, "throttled");
        assert_eq!(refused.retry_after, Some(1));
        // Another caller has a bucket of its own; no address limit is configured.
        limits.check_caller(Some("other"), "other").unwrap();
        for _ in 0..100 {
            limits
                .check_address(ip("192.0.2.1"), "/fhir/Patient")
                .unwrap();
        }
    }

    #[test]
    fn a_spray_of_addresses_is_bounded() {
        let limit: Limit<IpAddr> = Limit::new(1).unwrap();
        for i in 0..(MAX_KEYS as u32 + 1000) {
            let _ = limit.check(IpAddr::V4(i.into()));
        }
        assert!(limit.len() <= MAX_KEYS + 1, "{}", limit.len());
        // The overflow bucket (burst 2) is spent by the spray: more new addresses are refused.
        assert!(limit.check(ip("203.0.113.9")).is_err());
    }
}
