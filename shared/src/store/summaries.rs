//! The companion rule of machine-generated summaries (`conformance/ig/`): a resource declaring the
//! summary profile is written only as an entry of a transaction that also writes a Provenance
//! declaring the summary-provenance profile whose `target` references it. A create, an update, a
//! patch or a batch entry of a summary alone is refused; so is a transaction whose Provenance is
//! missing or targets something else. The declared profiles themselves are checked where every
//! write's are ([`super::Store::check_declared_profiles`]), which also feeds this rule.

use super::StoreError;
use crate::fhir::profile::builtin::{declares, SUMMARY, SUMMARY_PROVENANCE};
use crate::fhir::validate::{Issue, IssueType};
use serde_json::Value;
use std::collections::HashSet;

/// Where a write is made, for the rules that span resources.
pub(super) enum Within<'a> {
    /// A create, update or patch of its own (a batch entry is one).
    Alone,
    /// Entry `entry` of a transaction, writing `reference` (`Type/id`).
    Transaction {
        entry: usize,
        reference: String,
        companions: &'a mut Companions,
    },
}

/// What a transaction's entries wrote, for [`Companions::check`] after the last one.
#[derive(Default)]
pub(super) struct Companions {
    /// `(entry, Type/id)` of every summary written.
    summaries: Vec<(usize, String)>,
    /// The `Type/id` every summary-provenance Provenance written targets.
    attested: HashSet<String>,
}

fn rule() -> String {
    format!(
        "a machine-generated summary (profile {SUMMARY}) is written only in a transaction \
         together with a Provenance declaring profile {SUMMARY_PROVENANCE} whose target \
         references it"
    )
}

fn refused() -> StoreError {
    StoreError::Invalid(vec![Issue::error(
        IssueType::BusinessRule,
        "DocumentReference.meta.profile",
        rule(),
    )])
}

/// Note (or, alone, refuse) one write that passed its profiles.
pub(super) fn note(resource: &Value, within: Within<'_>) -> Result<(), StoreError> {
    let summary = declares(resource, SUMMARY);
    match within {
        Within::Alone if summary => Err(refused()),
        Within::Alone => Ok(()),
        Within::Transaction {
            entry,
            reference,
            companions,
        } => {
            if summary {
                companions.summaries.push((entry, reference));
            }
            if resource.get("resourceType").and_then(Value::as_str) == Some("Provenance")
                && declares(resource, SUMMARY_PROVENANCE)
            {
                companions.attested.extend(
                    resource
                        .get("target")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|t| t.get("reference").and_then(Value::as_str))
                        .map(unversioned),
                );
            }
            Ok(())
        }
    }
}

/// `Type/id` of a relative reference (`Type/id/_history/n` included).
fn unversioned(reference: &str) -> String {
    match reference.split_once("/_history/") {
        Some((head, _)) => head.to_string(),
        None => reference.to_string(),
    }
}

impl Companions {
    /// After a transaction's last entry: the first summary without its Provenance, by entry.
    pub(super) fn check(&self) -> Result<(), (usize, StoreError)> {
        match self
            .summaries
            .iter()
            .find(|(_, reference)| !self.attested.contains(reference))
        {
            Some((entry, _)) => Err((*entry, refused())),
            None => Ok(()),
        }
    }
}
