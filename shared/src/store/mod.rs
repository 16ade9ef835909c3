//! The encrypted, versioned resource store: create, read, vread, update, delete and history of any
//! R4 resource over PostgreSQL, every body sealed under its compartment's data key before it is sent
//! to the database, every interaction audited.

use crate::access::Denied;
use crate::audit::{self, AuditWriter};
use crate::clock::Clock;
use crate::crypto::dek_cache::DekCache;
use crate::crypto::dek_cache::DekCacheConfig;
use crate::crypto::keys::{KeyError, KeyProvider};
use crate::db::Db;
use crate::fhir::validate::Issue;
use crate::fhir::ResourceType;
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// The query of [`head_row`] (a macro, so that its locking form is a constant too).
macro_rules! head_sql {
    () => {
        "SELECT h.version_id, h.deleted, v.sealed, k.id AS dek_id, k.scope, k.wrapped
           FROM resources h
           JOIN resource_versions v
             ON v.resource_type = h.resource_type AND v.id = h.id AND v.version_id = h.version_id
           LEFT JOIN data_keys k ON k.id = v.dek_id
          WHERE h.resource_type = $1 AND h.id = $2"
    };
}

// One file per interaction, and the pieces they share.
pub mod audit_archive; // archiving the oldest audit events, checking an archive
mod audited; // the audit event of every interaction; administrative transactions
mod binary; // Binary content, sealed in chunks
mod bundle; // transaction Bundles
mod compartment; // Patient/$everything
mod erasure; // legal holds, history purges, erasing a patient
pub mod export; // what a Bulk Data export reads
pub mod health; // readiness checks and the figures behind the metrics
mod history; // _history
mod index; // index rows written with each version; re-indexing
mod integrity; // referential integrity of a write
mod keys; // data keys, opening bodies, sealed secrets, re-wrapping
mod notify; // Subscriptions delivered: the outbox, matching as the owner, retries
pub mod policy_inputs; // the policy's reads kept between requests, forgotten when told
mod profiles; // declared profiles, $validate
mod reach; // the gate: the request's plan, consents, break-the-glass, write decisions
mod read; // read, vread, conditional matching
mod release; // de-identification of what analytics callers receive
mod retention; // what is purged when
mod search; // the search interaction
mod stats; // counts for the console and monitoring
mod subscription; // Subscriptions written: criteria, channel, status, owner
mod summaries; // machine-generated summaries: written with their Provenance
mod summary; // Patient/$summary: the International Patient Summary
mod trail; // reading the audit trail
mod write; // create, update, patch, delete

use audited::outcome_of;
use keys::DekRow;
use read::{head_row, read_head};
use write::{check_resource, lock_conditions, seal_new, set_id, NewResource, Prepared};

pub use binary::{Content, ContentFacts, OpenBinary, CHUNK as BINARY_CHUNK, MAX_BINARY_LIMIT};
pub use erasure::{patient_scope, Erasure, HistoryPurge, LegalHold};
pub use notify::{Delivery, ERROR_AFTER, MAX_ATTEMPTS, NOTIFIER};
pub use profiles::ValidateMode;
pub use reach::BtgGrant;
pub use retention::{RetentionConfig, RetentionReport};
pub use search::SearchResult;
pub use stats::OperatorCounts;
pub use subscription::{parse_origin, SubscriptionRules};
pub use trail::{AuditPage, AuditQuery};

/// Why a store call failed. The server maps each to one HTTP status and OperationOutcome.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} is not known")]
    NotFound(String),
    #[error("{resource} was deleted")]
    Gone {
        resource: String,
        version_id: i64,
        last_updated: DateTime<Utc>,
    },
    #[error("the resource is invalid")]
    Invalid(Vec<Issue>),
    /// References to resources of this server that do not exist or were deleted (each an issue
    /// at its element): 400.
    #[error("the resource refers to resources this server does not have")]
    Unresolved(Vec<Issue>),
    #[error("version conflict: expected version {expected}, current is {current}")]
    VersionConflict { expected: i64, current: String },
    /// The resource (or, for a write, the patient record it belongs to) was erased: 410, and
    /// the id is never used again.
    #[error("{0} was erased")]
    Erased(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unsupported(String),
    /// A patch that does not apply (a failed `test`, a missing path): 422.
    #[error("{0}")]
    PatchFailed(String),
    /// A resource valid R4 that this server will not act on as written (a Subscription's
    /// criteria or channel it cannot serve): 422, each issue at its element.
    #[error("the resource is not one this server can act on")]
    Unprocessable(Vec<Issue>),
    /// A body (a Binary's content) over its limit, or a content too large for the form asked
    /// for: 413.
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A stored body failed to open: tampered, moved between rows, or sealed under another key.
    #[error("stored resource failed its integrity check")]
    Integrity,
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error("database error")]
    Database(sqlx::Error),
    /// A malformed or unsupported request (a search the server cannot serve): 400.
    #[error("{0}")]
    BadRequest(String),
    /// Refused by the access policy (scopes, role, compartment).
    #[error(transparent)]
    Denied(#[from] Denied),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        // A version sealed under a data key an erasure removed meanwhile (this process still had
        // the key cached), or a write the database refused as erased (a tombstoned id, a key for
        // an erased patient): the record it was written to is gone.
        if let sqlx::Error::Database(db) = &e {
            if db.constraint() == Some("resource_versions_dek_id_fkey")
                || db.code().as_deref() == Some("CH003")
            {
                return StoreError::Erased("the patient record this belongs to".into());
            }
        }
        StoreError::Database(e)
    }
}

/// A resource version as read back from the store; `body` is its JSON, exactly as stored.
#[derive(Debug, Clone)]
pub struct StoredResource {
    pub resource_type: ResourceType,
    pub id: String,
    pub version_id: i64,
    pub last_updated: DateTime<Utc>,
    pub body: Vec<u8>,
    /// `Patient/<id>` whose compartment the resource is sealed in, if any.
    pub patient: Option<String>,
}

impl StoredResource {
    pub fn reference(&self) -> String {
        format!("{}/{}", self.resource_type, self.id)
    }
}

pub use crate::fhir::InstantRange;
pub use crate::search::interaction_params::{EverythingQuery, HistoryQuery};
pub use bundle::{EntryResource, Target, TxEntry, TxFailure, TxResult, Written};
pub use compartment::EverythingPage;
pub use history::{HistoryEntry, HistoryPage};
pub use write::{Created, Deleted, Patch, Updated};

pub struct Store {
    pool: Db,
    keys: Arc<KeyProvider>,
    cache: DekCache,
    clock: Arc<dyn Clock>,
    audit: AuditWriter,
    search_keys: tokio::sync::OnceCell<Arc<search::SearchKeys>>,
    /// Whole values this process has written to the prefix dictionary (see `search_prefix`).
    known_prefixes: std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
    /// Conditional writes hold a connection (their transaction, with the conditions' locks) while
    /// they match on others; at most half the pool does so at once, so matches always find one.
    conditional_slots: tokio::sync::Semaphore,
    policy: crate::access::policy::PolicyConfig,
    /// Back-off decay and the per-address limit on sign-in failures (see `users`).
    sign_in: crate::access::SignInLimits,
    /// Each consent version's rule (or `None`: it decides nothing), by (id, version): versions
    /// never change, so a rule is parsed once; which versions are current is read per request.
    consent_rules: ConsentRules,
    /// Each practitioner's or analytics user's actors and consents, between requests.
    policy_inputs: Arc<policy_inputs::PolicyInputs>,
    /// `CARAPACE_ENFORCE_PROFILES`: writes must conform to the stored profiles they declare.
    enforce_profiles: bool,
    profiles: profiles::ProfileCache,
    /// Referential integrity: on, and the base URL of this server's absolute references.
    integrity: integrity::Integrity,
    /// What analytics callers receive is de-identified by these rules (`CARAPACE_DEID_RULES`),
    /// under a key loaded once.
    deid_rules: Option<Arc<crate::deid::Rules>>,
    deid: tokio::sync::OnceCell<Arc<crate::deid::Deidentifier>>,
    /// `CARAPACE_BINARY_LIMIT`: the largest Binary content taken.
    binary_limit: u64,
    /// The largest content a Binary's FHIR-JSON form carries as `data`.
    binary_json_limit: u64,
    /// FHIR-JSON Binary reads at once (each holds its content, and its base64, in memory).
    binary_json_slots: tokio::sync::Semaphore,
    /// A streaming replica that serves searches, and how long a search waits for it to catch up.
    replica: Option<(Db, std::time::Duration)>,
    /// Searches the replica served, and those it could not (behind, or failed): for monitoring.
    replica_searches: [std::sync::atomic::AtomicU64; 2],
    /// What Subscriptions may do (endpoints, payloads, retries).
    subscription_rules: SubscriptionRules,
}

type ConsentRules = std::sync::Mutex<
    std::collections::HashMap<(String, i64), Option<(String, crate::access::policy::ConsentRule)>>,
>;

const MAX_HISTORY_COUNT: usize = 1000;

/// A history or `$everything` page is filled past rows the caller may not see for at most this
/// many further reads of the database, then ends early (its sealed position goes on past them).
const MAX_FILL_ROUNDS: usize = 8;

impl Store {
    pub fn new(
        pool: Db,
        keys: Arc<KeyProvider>,
        cache: DekCacheConfig,
        clock: Arc<dyn Clock>,
        policy: crate::access::policy::PolicyConfig,
    ) -> Store {
        let audit = AuditWriter::start(pool.clone());
        let conditional_slots = (pool.max_connections() as usize / 2).max(1);
        Store {
            pool,
            keys,
            cache: DekCache::new(cache),
            clock,
            audit,
            search_keys: tokio::sync::OnceCell::new(),
            known_prefixes: Default::default(),
            conditional_slots: tokio::sync::Semaphore::new(conditional_slots),
            policy,
            sign_in: crate::access::SignInLimits::default(),
            consent_rules: Default::default(),
            policy_inputs: Default::default(),
            enforce_profiles: false,
            profiles: Default::default(),
            integrity: integrity::Integrity {
                on: true,
                base: Default::default(),
            },
            // The shipped rules parse (a unit test says so); were they not to, analytics callers
            // would get nothing (`releaser` fails closed).
            deid_rules: crate::deid::Rules::safe_harbor().ok().map(Arc::new),
            deid: tokio::sync::OnceCell::new(),
            binary_limit: 1 << 30,
            binary_json_limit: 12 << 20,
            binary_json_slots: tokio::sync::Semaphore::new(4),
            replica: None,
            replica_searches: Default::default(),
            subscription_rules: SubscriptionRules::default(),
        }
    }

    /// The store running searches on `replica` once it has caught up with the primary, waiting
    /// at most `wait` for it.
    pub fn with_replica(mut self, replica: Db, wait: std::time::Duration) -> Store {
        self.replica = Some((replica, wait));
        self
    }

    /// Searches served by the replica, and searches that fell back to the primary.
    pub fn replica_searches(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.replica_searches[0].load(Relaxed),
            self.replica_searches[1].load(Relaxed),
        )
    }

    /// The store taking Binary contents up to `limit` bytes (at most [`MAX_BINARY_LIMIT`]), and
    /// putting up to `json_limit` bytes of one into its FHIR-JSON form.
    pub fn with_binary_limits(mut self, limit: u64, json_limit: u64) -> Store {
        self.binary_limit = limit.min(MAX_BINARY_LIMIT);
        self.binary_json_limit = json_limit;
        self
    }

    /// The store admitting and delivering Subscriptions under these rules.
    pub fn with_subscription_rules(mut self, rules: SubscriptionRules) -> Store {
        self.subscription_rules = rules;
        self
    }

    /// The store de-identifying what analytics callers receive by these rules.
    pub fn with_deid_rules(mut self, rules: crate::deid::Rules) -> Store {
        self.deid_rules = Some(Arc::new(rules));
        self
    }

    /// The store refusing writes that fail a stored profile their `meta.profile` declares.
    pub fn with_profile_enforcement(mut self, on: bool) -> Store {
        self.enforce_profiles = on;
        self
    }

    /// The store with these sign-in limits (the defaults otherwise).
    pub fn with_sign_in_limits(mut self, limits: crate::access::SignInLimits) -> Store {
        self.sign_in = limits;
        self
    }

    pub fn sign_in_limits(&self) -> crate::access::SignInLimits {
        self.sign_in
    }

    pub fn pool(&self) -> &Db {
        &self.pool
    }

    /// The policy's reads kept between requests (for the change listener and the metrics).
    pub fn policy_inputs(&self) -> &Arc<policy_inputs::PolicyInputs> {
        &self.policy_inputs
    }

    pub fn keys(&self) -> &KeyProvider {
        &self.keys
    }

    /// Unwrapped data keys currently cached.
    pub fn cached_keys(&self) -> usize {
        self.cache.len()
    }

    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}

fn patient_of(scope: &str) -> Option<String> {
    scope.starts_with("Patient/").then(|| scope.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::read::form_pairs;
    use super::write::stamp_meta;
    use super::*;
    use crate::fhir::reference::key_scope;
    use serde_json::json;

    #[test]
    fn observations_are_keyed_to_their_patient() {
        let t = ResourceType::parse("Observation").unwrap();
        let obs = json!({"resourceType": "Observation", "subject": {"reference": "Patient/p1"}});
        assert_eq!(key_scope(t, "o1", &obs), "Patient/p1");
        let absolute = json!({"resourceType": "Observation",
            "subject": {"reference": "https://ehr.example/fhir/Patient/p2/_history/3"}});
        assert_eq!(key_scope(t, "o1", &absolute), "Patient/p2");
        let group = json!({"resourceType": "Observation", "subject": {"reference": "Group/g"}});
        assert_eq!(key_scope(t, "o1", &group), "type/Observation");
        let patient = ResourceType::parse("Patient").unwrap();
        assert_eq!(key_scope(patient, "p9", &json!({})), "Patient/p9");
        let org = ResourceType::parse("Organization").unwrap();
        assert_eq!(key_scope(org, "o", &json!({})), "type/Organization");
    }

    #[test]
    fn meta_keeps_client_fields() {
        let mut r = json!({"resourceType": "Patient", "meta": {"profile": ["http://x"]}});
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
            .unwrap()
            .to_utc();
        stamp_meta(&mut r, 3, at);
        assert_eq!(r["meta"]["profile"][0], "http://x");
        assert_eq!(r["meta"]["versionId"], "3");
        assert_eq!(r["meta"]["lastUpdated"], "2026-01-02T03:04:05.123456Z");
    }

    #[test]
    fn form_pairs_decode() {
        assert_eq!(
            form_pairs("_id=a%2Fb&x=1+2"),
            vec![("_id".into(), "a/b".into()), ("x".into(), "1 2".into())]
        );
    }
}
