//! The companion rule of machine-generated summaries (`conformance/ig/`): a resource declaring the
//! summary profile is written only as an entry of a transaction that also writes a Provenance
//! declaring the summary-provenance profile whose `target` references it; and such a Provenance's
//! `assembler` agent is a Device declaring the summary-model profile (written in the same
//! transaction, or already stored and readable by the writer). A create, an update, a patch or a
//! batch entry of a summary alone is refused; so is a transaction whose Provenance is missing,
//! targets something else or names a model that is not a summary-model Device. The declared profiles themselves are checked where every
//! write's are ([`super::Store::check_declared_profiles`]), which also feeds this rule.

use super::{Store, StoreError};
use crate::access::AccessContext;
use crate::fhir::profile::builtin::{declares, SUMMARY, SUMMARY_MODEL, SUMMARY_PROVENANCE};
use crate::fhir::validate::{Issue, IssueType};
use crate::fhir::{ResourceId, ResourceType};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// provenance-participant-type: the device that generated a new artifact from existing information.
const PARTICIPANT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/provenance-participant-type";

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

/// What a transaction's entries wrote, for [`Store::check_companions`] after the last one.
#[derive(Default)]
pub(super) struct Companions {
    /// `(entry, Type/id)` of every summary written.
    summaries: Vec<(usize, String)>,
    /// The `Type/id` every summary-provenance Provenance written targets.
    attested: HashSet<String>,
    /// `(entry, Device/id)` of every assembler agent of those Provenances.
    models: Vec<(usize, String)>,
    /// `Device/id` of every Device written, and whether it declares the summary-model profile.
    devices: HashMap<String, bool>,
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

fn not_a_model() -> StoreError {
    StoreError::Invalid(vec![Issue::error(
        IssueType::BusinessRule,
        "Provenance.agent.who",
        format!(
            "the assembler agent of a summary's Provenance (profile {SUMMARY_PROVENANCE}) is a \
             Device declaring profile {SUMMARY_MODEL}, written in the same transaction or stored \
             and readable by the writer"
        ),
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
            let resource_type = resource.get("resourceType").and_then(Value::as_str);
            if resource_type == Some("Device") {
                companions
                    .devices
                    .insert(reference.clone(), declares(resource, SUMMARY_MODEL));
            }
            if summary {
                companions.summaries.push((entry, reference));
            }
            if resource_type == Some("Provenance") && declares(resource, SUMMARY_PROVENANCE) {
                companions.models.extend(
                    assemblers(resource)
                        .filter(|who| who.starts_with("Device/"))
                        .map(|who| (entry, unversioned(who))),
                );
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

/// The `who.reference` of every agent of type assembler.
fn assemblers(provenance: &Value) -> impl Iterator<Item = &str> {
    provenance
        .get("agent")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|agent| {
            agent
                .get("type")
                .and_then(|t| t.get("coding"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|c| {
                    c.get("system").and_then(Value::as_str) == Some(PARTICIPANT_TYPE)
                        && c.get("code").and_then(Value::as_str) == Some("assembler")
                })
        })
        .filter_map(|agent| agent.get("who")?.get("reference")?.as_str())
}

/// `Type/id` of a relative reference (`Type/id/_history/n` included).
fn unversioned(reference: &str) -> String {
    match reference.split_once("/_history/") {
        Some((head, _)) => head.to_string(),
        None => reference.to_string(),
    }
}

impl Store {
    /// After a transaction's last entry is checked and before anything is written: every summary
    /// has its Provenance, and every model those Provenances name is a summary-model Device
    /// (a stored one read through the writer's own gate). The first failure, by entry.
    pub(super) async fn check_companions(
        &self,
        ctx: &AccessContext,
        companions: &Companions,
    ) -> Result<(), (usize, StoreError)> {
        if let Some((entry, _)) = companions
            .summaries
            .iter()
            .find(|(_, reference)| !companions.attested.contains(reference))
        {
            return Err((*entry, refused()));
        }
        let Some(device) = ResourceType::parse("Device") else {
            return Ok(());
        };
        for (entry, model) in &companions.models {
            let is_model = match companions.devices.get(model) {
                Some(declared) => *declared,
                None => {
                    let id = model
                        .strip_prefix("Device/")
                        .and_then(|id| ResourceId::parse(id).ok());
                    let Some(id) = id else {
                        return Err((*entry, not_a_model()));
                    };
                    match self.read(ctx, device, &id).await {
                        Ok(stored) => serde_json::from_slice::<Value>(&stored.body)
                            .map(|d| declares(&d, SUMMARY_MODEL))
                            .map_err(|_| (*entry, StoreError::Integrity))?,
                        Err(
                            StoreError::NotFound(_)
                            | StoreError::Gone { .. }
                            | StoreError::Denied(_),
                        ) => false,
                        Err(e) => return Err((*entry, e)),
                    }
                }
            };
            if !is_model {
                return Err((*entry, not_a_model()));
            }
        }
        Ok(())
    }
}
