//! The transaction interaction: every entry of a `transaction` Bundle in one database transaction
//! (all or nothing), references between entries (`urn:uuid:`, conditional references) resolved
//! first, integrity checked after the last entry.

use super::binary::PendingBinaries;
use super::index::PrefixRows;
use super::summaries::{Companions, Within};
use super::{
    check_resource, lock_conditions, seal_new, set_id, Deleted, NewResource, Prepared, Store,
    StoreError, StoredResource, Updated,
};
use crate::access::{AccessContext, Permission};
use crate::fhir::validate::Issue;
use crate::fhir::{ResourceId, ResourceType};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// One entry of a transaction.
pub enum TxEntry {
    Create {
        resource_type: ResourceType,
        resource: EntryResource,
        full_url: Option<String>,
        /// Conditional create: the entry does nothing when this query matches one resource.
        if_none_exist: Option<String>,
    },
    Update {
        resource_type: ResourceType,
        target: Target,
        resource: EntryResource,
        if_match: Option<i64>,
        full_url: Option<String>,
    },
    Delete {
        resource_type: ResourceType,
        target: Target,
    },
    Read {
        resource_type: ResourceType,
        id: ResourceId,
        version: Option<i64>,
    },
}

/// A transaction entry's resource: parsed, or the entry's raw JSON object (its body was checked
/// whole for well-formedness and duplicate keys), parsed only when the entry's turn comes, so that
/// a Bundle of thousands of entries is never held as one parsed tree.
pub enum EntryResource {
    Parsed(Value),
    Raw(bytes::Bytes),
}

/// Where a transaction entry's write landed: what its response names.
#[derive(Debug, Clone)]
pub struct Written {
    pub resource_type: ResourceType,
    pub id: String,
    pub version_id: i64,
    pub last_updated: DateTime<Utc>,
}

impl EntryResource {
    /// The parsed resource, leaving `Null` behind.
    fn take(&mut self) -> Result<Value, StoreError> {
        match std::mem::replace(self, EntryResource::Parsed(Value::Null)) {
            EntryResource::Parsed(v) => Ok(v),
            EntryResource::Raw(raw) => serde_json::from_slice(&raw).map_err(|_| {
                StoreError::BadRequest("the entry's resource is not valid JSON".into())
            }),
        }
    }
}

impl From<&StoredResource> for Written {
    fn from(r: &StoredResource) -> Written {
        Written {
            resource_type: r.resource_type,
            id: r.id.clone(),
            version_id: r.version_id,
            last_updated: r.last_updated,
        }
    }
}

/// What an update or delete applies to: an id, or a conditional search query (`identifier=a|b`).
#[derive(Debug, Clone)]
pub enum Target {
    Id(ResourceId),
    Query(String),
}

pub enum TxResult {
    Created(Written),
    /// A conditional create that matched an existing resource.
    Existing(Written),
    Updated(Updated),
    Deleted(Deleted),
    /// Reads run after the commit; each has its own outcome (a failed read does not undo writes).
    Read(Result<StoredResource, StoreError>),
    Skipped,
}

/// Which entry made a transaction fail, and why. Nothing was written.
#[derive(Debug)]
pub struct TxFailure {
    pub index: usize,
    pub error: StoreError,
}

/// Replace every `reference` that names a transaction entry's fullUrl (`urn:uuid:...`) with the
/// entry's resolved `Type/id`.
/// Every conditional reference (`Type?query`) in a resource.
/// Keep what a transaction's Binary entry staged: its upload (removed should the transaction
/// fail) and its content, for the entries after it that attach it.
fn note_binary(prepared: &Prepared, staged: &mut Vec<uuid::Uuid>, pending: &mut PendingBinaries) {
    if let Some(content) = &prepared.content {
        staged.push(content.upload);
        pending.insert(format!("Binary/{}", prepared.id), content.facts.clone());
    }
}

fn conditional_references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("reference", Value::String(r))
                        if r.split_once('?').is_some_and(|(t, _)| {
                            !t.is_empty() && !t.contains(['/', ':', '#'])
                        }) =>
                    {
                        out.push(r.clone())
                    }
                    _ => conditional_references(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| conditional_references(v, out)),
        _ => {}
    }
}

/// The first `reference` that is still a `urn:` (after resolution: one that named no entry).
fn first_urn_reference(value: &Value) -> Option<&str> {
    match value {
        Value::Object(map) => map.iter().find_map(|(k, v)| match (k.as_str(), v) {
            ("reference", Value::String(r)) if r.starts_with("urn:") => Some(r.as_str()),
            _ => first_urn_reference(v),
        }),
        Value::Array(items) => items.iter().find_map(first_urn_reference),
        _ => None,
    }
}

fn resolve_references(value: &mut Value, resolved: &std::collections::HashMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "reference" {
                    if let Some(target) = v.as_str().and_then(|r| resolved.get(r)) {
                        *v = Value::String(target.clone());
                        continue;
                    }
                }
                resolve_references(v, resolved);
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| resolve_references(v, resolved)),
        _ => {}
    }
}

impl Store {
    /// A FHIR `transaction`: every write commits together in one database transaction or none
    /// does. Entries run in the order the spec requires (DELETE, POST, PUT, then reads), new ids are
    /// assigned up front and `urn:uuid:` references between entries are resolved to them. On failure
    /// the index of the entry that failed comes back with its error; nothing is written.
    pub async fn transaction(
        &self,
        ctx: &AccessContext,
        entries: Vec<TxEntry>,
    ) -> Result<Vec<TxResult>, TxFailure> {
        let mut staged = Vec::new();
        let result = self.transaction_staging(ctx, entries, &mut staged).await;
        // A transaction that fails leaves no content of its Binaries behind.
        if result.is_err() {
            for upload in staged {
                self.discard_upload(upload).await;
            }
        }
        result
    }

    async fn transaction_staging(
        &self,
        ctx: &AccessContext,
        mut entries: Vec<TxEntry>,
        staged: &mut Vec<uuid::Uuid>,
    ) -> Result<Vec<TxResult>, TxFailure> {
        let mut pending = PendingBinaries::new();
        let fail = |index: usize| move |error: StoreError| TxFailure { index, error };
        self.plan(ctx).await.map_err(fail(0))?;
        // Conditional creates, updates and deletes hold their conditions' locks from the match to
        // the commit: the database transaction begins first when there are any.
        let conditions: Vec<String> = entries
            .iter()
            .filter_map(|e| match e {
                TxEntry::Create {
                    resource_type,
                    if_none_exist: Some(q),
                    ..
                }
                | TxEntry::Update {
                    resource_type,
                    target: Target::Query(q),
                    ..
                }
                | TxEntry::Delete {
                    resource_type,
                    target: Target::Query(q),
                } => Some(format!("{resource_type}?{q}")),
                _ => None,
            })
            .collect();
        let mut held = None;
        let mut _slot = None;
        if !conditions.is_empty() {
            _slot = Some(self.conditional_slot().await.map_err(fail(0))?);
            let mut tx = self.begin_for(ctx).await.map_err(fail(0))?;
            lock_conditions(&mut tx, &conditions)
                .await
                .map_err(|e| fail(0)(e.into()))?;
            held = Some(tx);
        }
        // 0. Conditional entries become plain ones (or no-ops), like the conditional references
        // below.
        let mut existing: Vec<Option<StoredResource>> = (0..entries.len()).map(|_| None).collect();
        // Conditional updates that matched nothing get an id of the server's choosing.
        let mut server_ids = vec![false; entries.len()];
        for (i, entry) in entries.iter_mut().enumerate() {
            match entry {
                TxEntry::Create {
                    resource_type,
                    if_none_exist: Some(query),
                    ..
                } => {
                    existing[i] = self
                        .conditional_match(ctx, *resource_type, query)
                        .await
                        .map_err(fail(i))?;
                }
                TxEntry::Update {
                    resource_type,
                    target: target @ Target::Query(_),
                    resource,
                    ..
                } => {
                    let Target::Query(query) = &*target else {
                        continue;
                    };
                    let mut value = resource.take().map_err(fail(i))?;
                    let id = match self
                        .conditional_match(ctx, *resource_type, query)
                        .await
                        .map_err(fail(i))?
                    {
                        Some(found) => found.id,
                        None => match value.get("id").and_then(Value::as_str) {
                            Some(id) => id.to_string(),
                            None => {
                                server_ids[i] = true;
                                uuid::Uuid::new_v4().to_string()
                            }
                        },
                    };
                    if value
                        .get("id")
                        .and_then(Value::as_str)
                        .is_some_and(|b| b != id)
                    {
                        return Err(fail(i)(StoreError::Invalid(vec![Issue::invalid(
                            format!("{resource_type}.id"),
                            "the id in the resource is not the one the condition matched",
                        )])));
                    }
                    set_id(&mut value, &id);
                    *resource = EntryResource::Parsed(value);
                    *target = Target::Id(ResourceId::parse(&id).map_err(|_| {
                        fail(i)(StoreError::BadRequest(
                            "the resource id is not valid".into(),
                        ))
                    })?);
                }
                TxEntry::Delete {
                    resource_type,
                    target,
                } => {
                    if let Target::Query(query) = target {
                        match self
                            .conditional_match(ctx, *resource_type, query)
                            .await
                            .map_err(fail(i))?
                        {
                            Some(found) => {
                                *target = Target::Id(
                                    ResourceId::parse(&found.id)
                                        .map_err(|_| fail(i)(StoreError::Integrity))?,
                                )
                            }
                            None => existing[i] = None,
                        }
                    }
                }
                _ => {}
            }
        }
        // R4 (http.html#trules): if the resources that deletes, creates and updates act on
        // overlap — conditional ones as resolved — the transaction fails.
        let mut touched: std::collections::HashMap<String, usize> = Default::default();
        for (i, entry) in entries.iter().enumerate() {
            let target = match (entry, &existing[i]) {
                (TxEntry::Create { resource_type, .. }, Some(found)) => {
                    Some(format!("{resource_type}/{}", found.id))
                }
                (
                    TxEntry::Update {
                        resource_type,
                        target: Target::Id(id),
                        ..
                    }
                    | TxEntry::Delete {
                        resource_type,
                        target: Target::Id(id),
                    },
                    _,
                ) => Some(format!("{resource_type}/{id}")),
                _ => None,
            };
            if let Some(target) = target {
                if let Some(first) = touched.insert(target.clone(), i) {
                    return Err(fail(i)(StoreError::BadRequest(format!(
                        "entries {first} and {i} both act on {target}: a transaction acts on \
                         each resource once"
                    ))));
                }
            }
        }
        // 1. Ids for new resources, and what each fullUrl now means.
        let mut resolved: std::collections::HashMap<String, String> =
            std::collections::HashMap::new();
        let mut new_ids: Vec<Option<String>> = vec![None; entries.len()];
        for (i, entry) in entries.iter().enumerate() {
            let full_url = match entry {
                TxEntry::Create { full_url, .. } | TxEntry::Update { full_url, .. } => {
                    full_url.clone()
                }
                _ => None,
            };
            let target = match entry {
                TxEntry::Create { resource_type, .. } => match &existing[i] {
                    Some(found) => Some(format!("{resource_type}/{}", found.id)),
                    None => {
                        let id = uuid::Uuid::new_v4().to_string();
                        new_ids[i] = Some(id.clone());
                        Some(format!("{resource_type}/{id}"))
                    }
                },
                TxEntry::Update {
                    resource_type,
                    target: Target::Id(id),
                    ..
                } => Some(format!("{resource_type}/{id}")),
                _ => None,
            };
            if let (Some(url), Some(target)) = (full_url, target) {
                if resolved.insert(url, target).is_some() {
                    return Err(fail(i)(StoreError::Invalid(vec![Issue::invalid(
                        format!("Bundle.entry[{i}].fullUrl"),
                        "two entries have the same fullUrl",
                    )])));
                }
            }
        }
        // 2. One entry at a time (outside the database transaction: this may call the key provider
        // and runs conditional searches): parse, point references at the resolved ids, check, key,
        // index, and seal new resources, keeping only what the inserts need.
        let now = self.clock.now();
        let mut prefixes = PrefixRows::default();
        let mut creates: Vec<(usize, NewResource)> = Vec::new();
        let mut updates: Vec<Option<Prepared>> = (0..entries.len()).map(|_| None).collect();
        // Checked after every write, so that entries may refer to each other.
        let mut references = Vec::new();
        let mut companions = Companions::default();
        for (i, entry) in entries.iter_mut().enumerate() {
            match entry {
                TxEntry::Create { .. } if existing[i].is_some() => {}
                TxEntry::Create {
                    resource_type,
                    resource,
                    ..
                } => {
                    let mut resource = resource.take().map_err(fail(i))?;
                    self.resolve_entry_references(ctx, &mut resource, &mut resolved)
                        .await
                        .map_err(fail(i))?;
                    ctx.check(resource_type.as_str(), Permission::Create)
                        .map_err(|e| fail(i)(e.into()))?;
                    check_resource(*resource_type, &resource).map_err(fail(i))?;
                    let id = new_ids[i].clone().unwrap_or_default();
                    let within = Within::Transaction {
                        entry: i,
                        reference: format!("{resource_type}/{id}"),
                        companions: &mut companions,
                    };
                    self.check_declared_profiles(ctx, &resource, within)
                        .await
                        .map_err(fail(i))?;
                    references.extend(self.references_to_check(i, &resource));
                    let prepared = self
                        .prepare_create(
                            ctx,
                            *resource_type,
                            resource,
                            &id,
                            &mut prefixes,
                            None,
                            &pending,
                        )
                        .await
                        .map_err(fail(i))?;
                    note_binary(&prepared, staged, &mut pending);
                    let (new, _body) = seal_new(prepared, now).map_err(fail(i))?;
                    creates.push((i, new));
                }
                TxEntry::Update {
                    resource_type,
                    target,
                    resource,
                    ..
                } => {
                    let Target::Id(id) = target else {
                        return Err(fail(i)(StoreError::Integrity));
                    };
                    let mut resource = resource.take().map_err(fail(i))?;
                    self.resolve_entry_references(ctx, &mut resource, &mut resolved)
                        .await
                        .map_err(fail(i))?;
                    ctx.check(resource_type.as_str(), Permission::Update)
                        .map_err(|e| fail(i)(e.into()))?;
                    check_resource(*resource_type, &resource).map_err(fail(i))?;
                    let within = Within::Transaction {
                        entry: i,
                        reference: format!("{resource_type}/{id}"),
                        companions: &mut companions,
                    };
                    self.check_declared_profiles(ctx, &resource, within)
                        .await
                        .map_err(fail(i))?;
                    references.extend(self.references_to_check(i, &resource));
                    let prepared = self
                        .prepare_update(
                            ctx,
                            *resource_type,
                            id,
                            resource,
                            server_ids[i],
                            &mut prefixes,
                            None,
                            &pending,
                        )
                        .await
                        .map_err(fail(i))?;
                    note_binary(&prepared, staged, &mut pending);
                    updates[i] = Some(prepared);
                }
                TxEntry::Delete { resource_type, .. } => {
                    ctx.check(resource_type.as_str(), Permission::Delete)
                        .map_err(|e| fail(i)(e.into()))?;
                }
                TxEntry::Read { .. } => {}
            }
        }
        // A summary is written with its Provenance (`summaries`), in whatever entry order.
        self.check_companions(ctx, &companions)
            .await
            .map_err(|(i, error)| TxFailure { index: i, error })?;
        self.write_prefixes(prefixes).await.map_err(fail(0))?;
        // 3. All writes in one database transaction, in the spec's order: deletes, creates (all
        // inserted together), updates.
        let mut results: Vec<Option<TxResult>> = (0..entries.len()).map(|_| None).collect();
        let mut tx = match held {
            Some(tx) => tx,
            None => self.begin_for(ctx).await.map_err(fail(0))?,
        };
        for (i, entry) in entries.iter().enumerate() {
            if let TxEntry::Delete {
                resource_type,
                target,
            } = entry
            {
                let deleted = match target {
                    Target::Id(id) => {
                        match self.write_delete(&mut tx, ctx, *resource_type, id).await {
                            // Deleting what is not there is not an error (R4 http.html#delete).
                            Err(StoreError::NotFound(_)) => Deleted::Already,
                            other => other.map_err(fail(i))?,
                        }
                    }
                    Target::Query(_) => Deleted::Already,
                };
                results[i] = Some(TxResult::Deleted(deleted));
            }
        }
        let new: Vec<NewResource> = creates
            .into_iter()
            .map(|(i, n)| {
                results[i] = Some(TxResult::Created(Written {
                    resource_type: n.resource_type,
                    id: n.id.clone(),
                    version_id: 1,
                    last_updated: now,
                }));
                n
            })
            .collect();
        let first_create = results
            .iter()
            .position(|r| matches!(r, Some(TxResult::Created(_))))
            .unwrap_or(0);
        self.insert_new(&mut tx, ctx, &new, now)
            .await
            .map_err(fail(first_create))?;
        drop(new);
        for (i, entry) in entries.iter().enumerate() {
            if let (TxEntry::Update { if_match, .. }, Some(mut p)) = (entry, updates[i].take()) {
                let updated = self
                    .write_update(&mut tx, ctx, &mut p, *if_match)
                    .await
                    .map_err(fail(i))?;
                results[i] = Some(TxResult::Updated(updated));
            }
        }
        let broken = self
            .unresolved(&mut tx, ctx, &references)
            .await
            .map_err(fail(0))?;
        if let Some(&(first, _)) = broken.first() {
            let issues = broken
                .into_iter()
                .filter(|(i, _)| *i == first)
                .map(|(_, issue)| issue)
                .collect();
            return Err(fail(first)(StoreError::Unresolved(issues)));
        }
        tx.commit().await.map_err(|e| fail(0)(e.into()))?;
        // Whatever it wrote: this process's next request reads the policy's inputs afresh.
        crate::db::Forgets::forget_all(&*self.policy_inputs);
        // 4. Reads see the committed state.
        for (i, entry) in entries.iter().enumerate() {
            if let TxEntry::Read {
                resource_type,
                id,
                version,
            } = entry
            {
                let r = match version {
                    Some(v) => self.vread(ctx, *resource_type, id, *v).await,
                    None => self.read(ctx, *resource_type, id).await,
                };
                results[i] = Some(TxResult::Read(r));
            }
        }
        for (i, found) in existing.into_iter().enumerate() {
            if let Some(found) = found {
                results[i] = Some(TxResult::Existing(Written::from(&found)));
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(TxResult::Skipped))
            .collect())
    }

    /// Point a transaction entry's references at what they resolve to: fullUrls of other entries
    /// (already in `resolved`) and conditional references (`Patient?identifier=a|b`), each of which
    /// must match exactly one resource and is looked up once per transaction.
    async fn resolve_entry_references(
        &self,
        ctx: &AccessContext,
        resource: &mut Value,
        resolved: &mut std::collections::HashMap<String, String>,
    ) -> Result<(), StoreError> {
        let mut wanted = Vec::new();
        conditional_references(resource, &mut wanted);
        for reference in wanted {
            if resolved.contains_key(&reference) {
                continue;
            }
            let (type_name, query) = reference.split_once('?').unwrap_or_default();
            let rt = ResourceType::parse(type_name).ok_or_else(|| {
                StoreError::BadRequest(format!(
                    "conditional reference to an unknown type '{}'",
                    crate::fhir::printable(type_name)
                ))
            })?;
            let found = self
                .conditional_match(ctx, rt, query)
                .await?
                .ok_or_else(|| {
                    StoreError::BadRequest(format!(
                        "the conditional reference {type_name}?... matches no resource"
                    ))
                })?;
            resolved.insert(reference, format!("{rt}/{}", found.id));
        }
        resolve_references(resource, resolved);
        // A `urn:` reference that names no entry of the transaction would be stored pointing
        // nowhere (R4: the transaction fails). A Bundle's own entries refer to each other.
        if resource.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            if let Some(dangling) = first_urn_reference(resource) {
                return Err(StoreError::BadRequest(format!(
                    "the reference {} names no entry of this transaction",
                    crate::fhir::printable(dangling)
                )));
            }
        }
        Ok(())
    }
}
