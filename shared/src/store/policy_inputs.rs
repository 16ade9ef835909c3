//! What the policy read from the database for a practitioner or analytics user — their actor
//! references and the consents that may name them — kept in memory between their requests.
//!
//! Without it every request of such a caller made five database round trips before its own
//! (the user's practitioner, their roles and care teams, the current consents in a transaction
//! of their own). It is correct only while this process hears of every change that could alter
//! those answers: migration 0021's triggers `NOTIFY carapace_policy` when a Consent,
//! PractitionerRole or CareTeam is written or its index rows change, or a user's practitioner or
//! role changes — whoever changes them (this server, another node, the console, a DBA). The
//! listener ([`crate::db::follow_changes`]) forgets everything when told; while it is not
//! subscribed the cache is off. A write this process commits of one of those types forgets at
//! once too (so its own next request never waits for the notification). An entry also ends
//! after [`PolicyInputs::MAX_AGE`] regardless.
//!
//! Hand-written for the same reason as the token cache: a map behind a mutex, emptied when full.

use crate::access::policy::ConsentRule;
use crate::access::Role;
use crate::fhir::ResourceType;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A caller's actor references and the consents by compartment that may apply to them.
#[derive(Debug)]
pub(super) struct Inputs {
    pub(super) actors: Vec<String>,
    pub(super) consents: BTreeMap<String, Vec<ConsentRule>>,
}

/// By (user name, role name): the inputs, and when they were read.
type Entries = HashMap<(String, &'static str), (Arc<Inputs>, Instant)>;

#[derive(Default)]
pub struct PolicyInputs {
    entries: Mutex<Entries>,
    listening: AtomicBool,
    /// Bumped by every forgetting: inputs read before one are not kept.
    generation: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl PolicyInputs {
    /// The channel migration 0021's triggers notify.
    pub const CHANNEL: &'static str = "carapace_policy";
    /// Inputs are read again after this long, told or not.
    pub const MAX_AGE: Duration = Duration::from_secs(60);
    /// Past this many callers the cache is emptied.
    pub const MAX_ENTRIES: usize = 10_000;
    /// The resource types whose writes change what the policy reads.
    pub const TYPES: [&'static str; 3] = ["Consent", "PractitionerRole", "CareTeam"];

    /// The kept inputs of this caller, if the listener is subscribed and none has changed;
    /// else the generation to pass to [`PolicyInputs::keep`] with what the database answers.
    pub(super) fn get(&self, principal: &str, role: Role) -> Result<Arc<Inputs>, u64> {
        let generation = self.generation.load(SeqCst);
        if self.listening.load(SeqCst) {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((inputs, at)) = entries.get(&(principal.to_string(), role.as_str())) {
                if at.elapsed() < Self::MAX_AGE {
                    self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(inputs.clone());
                }
            }
        }
        self.misses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Err(generation)
    }

    /// Keep inputs read from the database, unless something was forgotten since `generation`
    /// (they may predate the change) or the listener is not subscribed.
    pub(super) fn keep(&self, principal: &str, role: Role, generation: u64, inputs: Arc<Inputs>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if self.listening.load(SeqCst) && self.generation.load(SeqCst) == generation {
            if entries.len() >= Self::MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(
                (principal.to_string(), role.as_str()),
                (inputs, Instant::now()),
            );
        }
    }

    /// A write of `resource_type` this process committed: forget all if it is one the policy
    /// reads (its notification follows, for every node).
    pub(super) fn written(&self, resource_type: ResourceType) {
        if Self::TYPES.contains(&resource_type.as_str()) {
            crate::db::Forgets::forget_all(self);
        }
    }

    /// Requests answered from memory, and from the database.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }
}

impl crate::db::Forgets for PolicyInputs {
    fn forget_all(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, SeqCst);
        entries.clear();
    }

    fn set_listening(&self, on: bool) {
        self.listening.store(on, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Forgets;

    fn inputs() -> Arc<Inputs> {
        Arc::new(Inputs {
            actors: vec!["Practitioner/p1".into()],
            consents: BTreeMap::new(),
        })
    }

    #[test]
    fn answers_only_while_listening_and_until_told() {
        let cache = PolicyInputs::default();
        let g = cache.get("dr", Role::Practitioner).unwrap_err();
        cache.keep("dr", Role::Practitioner, g, inputs());
        assert!(
            cache.get("dr", Role::Practitioner).is_err(),
            "not listening: nothing kept"
        );
        cache.set_listening(true);
        let g = cache.get("dr", Role::Practitioner).unwrap_err();
        cache.keep("dr", Role::Practitioner, g, inputs());
        assert!(cache.get("dr", Role::Practitioner).is_ok());
        assert!(
            cache.get("dr", Role::Analytics).is_err(),
            "by principal and role"
        );
        cache.written(ResourceType::parse("Observation").unwrap());
        assert!(cache.get("dr", Role::Practitioner).is_ok());
        cache.written(ResourceType::parse("Consent").unwrap());
        assert!(cache.get("dr", Role::Practitioner).is_err());
        // Read before a forgetting, kept after it: dropped.
        let g = cache.get("dr", Role::Practitioner).unwrap_err();
        cache.forget_all();
        cache.keep("dr", Role::Practitioner, g, inputs());
        assert!(cache.get("dr", Role::Practitioner).is_err());
        let g = cache.get("dr", Role::Practitioner).unwrap_err();
        cache.keep("dr", Role::Practitioner, g, inputs());
        cache.set_listening(false);
        assert!(
            cache.get("dr", Role::Practitioner).is_err(),
            "off when not listening"
        );
    }
}
