//! Bounded in-memory cache of unwrapped data keys, so a warm server makes no key-provider call per
//! request. Entries expire by age and by number of uses; evicted keys are zeroized (`Dek` zeroizes on
//! drop, and the cache holds the only long-lived copies).

use crate::crypto::Dek;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Limits of the cache (`CARAPACE_DEK_CACHE_MAX_AGE`, `CARAPACE_DEK_CACHE_MAX_USES`).
#[derive(Debug, Clone, Copy)]
pub struct DekCacheConfig {
    pub max_age: Duration,
    pub max_uses: u64,
    pub max_entries: usize,
}

impl Default for DekCacheConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(3600),
            max_uses: 10_000_000,
            max_entries: 100_000,
        }
    }
}

struct Entry {
    dek: Arc<Dek>,
    scope: String,
    loaded: Instant,
    uses: u64,
}

/// Unwrapped DEKs by their `data_keys.id`, plus the DEK id for each key scope (compartment).
pub struct DekCache {
    config: DekCacheConfig,
    inner: Mutex<Inner>,
    /// Lookups answered from the cache, and those that were not (absent or stale): the metrics'.
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<i64, Entry>,
    by_scope: HashMap<String, i64>,
}

impl DekCache {
    pub fn new(config: DekCacheConfig) -> DekCache {
        DekCache {
            config,
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Lookups answered from the cache and lookups that were not, since start.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    fn count(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent (each update is one
        // insert or remove), so a poisoned lock is safe to keep using.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The DEK with this id, if cached and still fresh; counts one use.
    pub fn get(&self, id: i64, now: Instant) -> Option<Arc<Dek>> {
        let found = self.fresh(id, now);
        self.count(found.is_some());
        found
    }

    fn fresh(&self, id: i64, now: Instant) -> Option<Arc<Dek>> {
        let mut inner = self.lock();
        let entry = inner.by_id.get_mut(&id)?;
        let fresh = now.saturating_duration_since(entry.loaded) < self.config.max_age
            && entry.uses < self.config.max_uses;
        if fresh {
            entry.uses += 1;
            return Some(entry.dek.clone());
        }
        if let Some(old) = inner.by_id.remove(&id) {
            inner.by_scope.remove(&old.scope);
        }
        None
    }

    /// The cached DEK for a key scope, with its id.
    pub fn get_scope(&self, scope: &str, now: Instant) -> Option<(i64, Arc<Dek>)> {
        let id = self.lock().by_scope.get(scope).copied();
        let found = id.and_then(|id| self.fresh(id, now).map(|dek| (id, dek)));
        self.count(found.is_some());
        found
    }

    pub fn insert(&self, id: i64, scope: &str, dek: Dek, now: Instant) -> Arc<Dek> {
        let dek = Arc::new(dek);
        let mut inner = self.lock();
        if inner.by_id.len() >= self.config.max_entries && !inner.by_id.contains_key(&id) {
            // Full: drop the oldest entry. Rare (max_entries is large), so a scan is fine.
            let oldest = inner
                .by_id
                .iter()
                .min_by_key(|(_, e)| e.loaded)
                .map(|(k, _)| *k);
            if let Some(old) = oldest.and_then(|k| inner.by_id.remove(&k)) {
                inner.by_scope.remove(&old.scope);
            }
        }
        inner.by_scope.insert(scope.to_string(), id);
        inner.by_id.insert(
            id,
            Entry {
                dek: dek.clone(),
                scope: scope.to_string(),
                loaded: now,
                uses: 0,
            },
        );
        dek
    }

    /// Forget the key of a scope (a key that was destroyed: an expired export's).
    pub fn forget_scope(&self, scope: &str) {
        let mut inner = self.lock();
        if let Some(id) = inner.by_scope.remove(scope) {
            inner.by_id.remove(&id);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.by_id.clear();
        inner.by_scope.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cache(max_age: u64, max_uses: u64, max_entries: usize) -> DekCache {
        DekCache::new(DekCacheConfig {
            max_age: Duration::from_secs(max_age),
            max_uses,
            max_entries,
        })
    }

    #[test]
    fn entries_expire_by_age() {
        let c = cache(60, 100, 10);
        let t0 = Instant::now();
        c.insert(1, "Patient/a", Dek::random(), t0);
        assert!(c.get(1, t0 + Duration::from_secs(59)).is_some());
        assert!(c
            .get_scope("Patient/a", t0 + Duration::from_secs(30))
            .is_some());
        assert!(c.get(1, t0 + Duration::from_secs(61)).is_none());
        assert!(
            c.get_scope("Patient/a", t0).is_none(),
            "expired entry is gone"
        );
    }

    #[test]
    fn entries_expire_by_uses() {
        let c = cache(60, 2, 10);
        let t0 = Instant::now();
        c.insert(1, "s", Dek::random(), t0);
        assert!(c.get(1, t0).is_some());
        assert!(c.get(1, t0).is_some());
        assert!(c.get(1, t0).is_none());
        assert_eq!(
            c.hits_and_misses(),
            (2, 1),
            "two hits, then a stale entry's miss"
        );
    }

    #[test]
    fn size_is_bounded() {
        let c = cache(60, 100, 3);
        let t0 = Instant::now();
        for i in 0..10 {
            c.insert(
                i,
                &format!("s{i}"),
                Dek::random(),
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(9, t0).is_some() && c.get(0, t0).is_none());
    }
}
