//! Binary content: a document's bytes, stored apart from its Binary resource and streamed in and
//! out a chunk at a time, so memory holds a few chunks whatever the document's size.
//!
//! - **Where**: `binary_contents` (one row per content: its resource, the version it was sealed
//!   for, its key, chunk size, size) and `binary_chunks` (one sealed row per [`CHUNK`] bytes);
//!   the version's row names its content (`resource_versions.content`). A content is staged over
//!   many short transactions before its version's transaction names it, so an upload holds no
//!   transaction open; an unnamed content is an unfinished upload, removed when it fails or by
//!   the retention run.
//! - **Sealing**: each chunk under its key scope's data key (the patient's, through the Binary's
//!   `securityContext`), with additional data binding `Binary/<id>/_history/<version>`, the
//!   upload, the chunk's index and whether it is the last: a chunk flipped, moved, reordered,
//!   dropped, or a content cut short fails to open.
//! - **Integrity**: SHA-256 and SHA-1 (R4's `Attachment.hash`) are computed while streaming in
//!   and kept, with the size, sealed in the content's row under the same binding as its chunks
//!   (the Binary resource stays as the client sent it). A whole read recomputes SHA-256 and sends the last chunk only once it
//!   matches: a content that fails is never served whole (a one-chunk document is refused before
//!   its first byte; a longer one is cut off), and the failure is audited and logged.
//! - **Access**: the Binary's own gate (its key scope's compartment, its labels), then, when its
//!   `securityContext` names a resource, that resource's: a Binary is read under the access of
//!   what it belongs to. One without a `securityContext` is kept under `type/Binary`.

use super::{Store, StoreError, StoredResource};
use crate::access::AccessContext;
use crate::audit::{AuditRecord, Interaction};
use crate::crypto::chunks::{open_chunk, seal_chunk};
use crate::crypto::Dek;
use crate::fhir::reference::Reference;
use crate::fhir::validate::Issue;
use crate::fhir::{ResourceId, ResourceType};
use base64::Engine;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde_json::{json, Value};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::sync::Arc;

/// Plaintext bytes per sealed chunk (the last may be shorter).
pub const CHUNK: usize = 1 << 20;

/// Sealed chunks written per statement (and per transaction) while staging.
const CHUNKS_PER_INSERT: usize = 4;

/// Sealed chunks read per statement while streaming out.
const CHUNKS_PER_SELECT: i32 = 4;

/// Purpose bound into every chunk's additional data.
const PURPOSE: &str = "binary-content";

/// Purpose bound into a content's sealed size and digests.
const FACTS: &str = "binary-facts";

/// The largest content R4 can describe (`Attachment.size` is an `unsignedInt`).
pub const MAX_BINARY_LIMIT: u64 = i32::MAX as u64;

/// Where a Binary's bytes come from.
pub enum Content {
    /// Decoded from a FHIR-JSON Binary's `data`.
    Inline(Vec<u8>),
    /// A raw upload, as it arrives.
    Stream(BoxStream<'static, std::io::Result<Bytes>>),
}

/// Binaries a transaction has prepared so far, by `Binary/<id>`: what a later entry's attachment
/// may name before they are stored.
pub(super) type PendingBinaries = std::collections::HashMap<String, ContentFacts>;

/// A content staged under its resource's key, for its version to name.
#[derive(Debug, Clone)]
pub(super) struct Staged {
    pub(super) upload: uuid::Uuid,
    pub(super) version_id: i64,
    pub(super) facts: ContentFacts,
}

/// What the sealed Binary says of its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentFacts {
    pub size: u64,
    pub sha256: Vec<u8>,
    pub sha1: Vec<u8>,
}

impl ContentFacts {
    /// `Attachment.hash`: base64 SHA-1.
    pub fn attachment_hash(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.sha1)
    }

    /// Sealed for its content's row, bound to the same object as its chunks.
    fn seal(&self, dek: &Dek, object: &str) -> Vec<u8> {
        let plain = json!({"size": self.size, "sha256": self.sha256, "sha1": self.sha1});
        seal_chunk(dek, FACTS, object, 0, true, plain.to_string().as_bytes())
    }

    fn open(dek: &Dek, object: &str, sealed: &[u8]) -> Result<ContentFacts, StoreError> {
        let plain =
            open_chunk(dek, FACTS, object, 0, true, sealed).map_err(|_| StoreError::Integrity)?;
        let v: Value = serde_json::from_slice(&plain).map_err(|_| StoreError::Integrity)?;
        let bytes = |name: &str| -> Option<Vec<u8>> {
            v.get(name)?
                .as_array()?
                .iter()
                .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect()
        };
        let facts = || {
            Some(ContentFacts {
                size: v.get("size").and_then(Value::as_u64)?,
                sha256: bytes("sha256")?,
                sha1: bytes("sha1")?,
            })
        };
        facts().ok_or(StoreError::Integrity)
    }
}

/// The additional-data object of a content's chunks.
fn object(id: &str, version_id: i64, upload: &uuid::Uuid) -> String {
    format!("Binary/{id}/_history/{version_id}/{upload}")
}

/// A Binary's content opened for reading: where its chunks are and the key that opens them.
pub struct OpenBinary {
    /// The Binary resource as the caller may receive it, without `data`.
    pub resource: StoredResource,
    pub content_type: String,
    pub facts: ContentFacts,
    upload: uuid::Uuid,
    chunk_size: u64,
    chunks: i32,
    dek: Arc<Dek>,
    ctx: AccessContext,
    /// A Binary stored before contents were kept apart (migration 0017): its `data`, inside its
    /// sealed JSON (authenticated with it).
    inline: Option<Bytes>,
}

impl OpenBinary {
    pub fn size(&self) -> u64 {
        self.facts.size
    }

    /// Stream the content, or the bytes `range` (`start..=end`, within the size) of it, as the
    /// chunks are read and opened. A whole read withholds its last chunk until the SHA-256 of all
    /// of it matches; any failure ends the stream with an error (and is audited), so a client
    /// never receives a failed content whole. Memory: [`CHUNKS_PER_SELECT`] chunks.
    pub fn stream(
        self,
        store: Arc<Store>,
        range: Option<(u64, u64)>,
    ) -> tokio::sync::mpsc::Receiver<std::io::Result<Bytes>> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            if let Err(e) = self.send(&store, range, &mut Sink::Channel(&tx)).await {
                self.failed(&store, &e).await;
                let _ = tx
                    .send(Err(std::io::Error::other(
                        "the content could not be served",
                    )))
                    .await;
            }
        });
        rx
    }

    async fn send(
        &self,
        store: &Store,
        range: Option<(u64, u64)>,
        sink: &mut Sink<'_>,
    ) -> Result<(), StoreError> {
        if let Some(inline) = &self.inline {
            let piece = match range {
                Some((start, end)) => inline.slice(start as usize..=end as usize),
                None => inline.clone(),
            };
            sink.put(piece).await;
            return Ok(());
        }
        let object = object(&self.resource.id, self.resource.version_id, &self.upload);
        let (first, last) = match range {
            Some((start, end)) => (
                i32::try_from(start / self.chunk_size).map_err(|_| StoreError::Integrity)?,
                i32::try_from(end / self.chunk_size).map_err(|_| StoreError::Integrity)?,
            ),
            None => (0, self.chunks - 1),
        };
        let mut hasher = range.is_none().then(Sha256::new);
        let mut held: Option<Bytes> = None;
        let mut next = first;
        while next <= last {
            let upto = (next + CHUNKS_PER_SELECT - 1).min(last);
            let mut conn = store.begin_for(&self.ctx).await?;
            let rows = sqlx::query(
                "SELECT chunk, sealed FROM binary_chunks
                  WHERE upload = $1 AND chunk BETWEEN $2 AND $3 ORDER BY chunk",
            )
            .bind(self.upload)
            .bind(next)
            .bind(upto)
            .fetch_all(&mut *conn)
            .await?;
            conn.commit().await?;
            if rows.len() != (upto - next + 1) as usize {
                return Err(StoreError::Integrity);
            }
            for row in rows {
                let index: i32 = row.try_get("chunk")?;
                let sealed: Vec<u8> = row.try_get("sealed")?;
                let is_last = index == self.chunks - 1;
                let plain = open_chunk(&self.dek, PURPOSE, &object, index as u64, is_last, &sealed)
                    .map_err(|_| StoreError::Integrity)?;
                let expected = if is_last {
                    self.facts.size - index as u64 * self.chunk_size
                } else {
                    self.chunk_size
                };
                if plain.len() as u64 != expected {
                    return Err(StoreError::Integrity);
                }
                let mut piece = Bytes::from(plain);
                if let Some(h) = hasher.as_mut() {
                    h.update(&piece);
                }
                if let Some((start, end)) = range {
                    let base = index as u64 * self.chunk_size;
                    let from = start.saturating_sub(base) as usize;
                    let to = ((end + 1 - base) as usize).min(piece.len());
                    piece = piece.slice(from..to);
                }
                // The piece before this one goes out; this one waits (the last, until verified).
                if let Some(ready) = held.replace(piece) {
                    if !sink.put(ready).await {
                        return Ok(());
                    }
                }
            }
            next = upto + 1;
        }
        if let Some(h) = hasher {
            if h.finalize().as_slice() != self.facts.sha256.as_slice() {
                return Err(StoreError::Integrity);
            }
        }
        if let Some(ready) = held {
            sink.put(ready).await;
        }
        Ok(())
    }

    /// The whole content in memory, verified: for the FHIR-JSON form, within its limit. A
    /// failure is audited like a streamed one's.
    async fn whole(self, store: &Store) -> Result<(StoredResource, Vec<u8>), StoreError> {
        let mut out = Vec::with_capacity(self.facts.size as usize);
        match self.send(store, None, &mut Sink::Buffer(&mut out)).await {
            Ok(()) => Ok((self.resource, out)),
            Err(e) => {
                self.failed(store, &e).await;
                Err(e)
            }
        }
    }

    /// A content that failed to be served, after its read was audited as begun: logged (no
    /// content, identifiers only) and audited as the failure it is.
    async fn failed(&self, store: &Store, e: &StoreError) {
        let (id, version_id) = (&self.resource.id, self.resource.version_id);
        if matches!(e, StoreError::Integrity) {
            tracing::error!(%id, version_id, "Binary content failed its integrity check");
        }
        let record = AuditRecord {
            query: None,
            interaction: Interaction::Read,
            outcome: super::outcome_of(e),
            recorded: store.now(),
            what: Some(format!("Binary/{id}/_history/{version_id}")),
            patient: self.resource.patient.clone(),
        };
        if let Err(audit) = store.audit_records(&self.ctx, &[record]).await {
            tracing::error!(error = %audit, "the failed Binary read was not audited");
        }
    }
}

/// Where opened chunks go: a response being streamed, or memory.
enum Sink<'a> {
    Channel(&'a tokio::sync::mpsc::Sender<std::io::Result<Bytes>>),
    Buffer(&'a mut Vec<u8>),
}

impl Sink<'_> {
    /// Deliver a piece; `false` once nobody is receiving (the client went away).
    async fn put(&mut self, piece: Bytes) -> bool {
        match self {
            Sink::Channel(tx) => tx.send(Ok(piece)).await.is_ok(),
            Sink::Buffer(out) => {
                out.extend_from_slice(&piece);
                true
            }
        }
    }
}

impl Store {
    /// The key scope a write of `resource` is sealed under: its patient compartment's
    /// (`key_scope`), or for a Binary its `securityContext`'s.
    pub(super) async fn scope_for(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &str,
        resource: &Value,
    ) -> Result<String, StoreError> {
        if resource_type == ResourceType::BINARY {
            self.binary_scope(ctx, resource).await
        } else {
            Ok(crate::fhir::reference::key_scope(
                resource_type,
                id,
                resource,
            ))
        }
    }

    /// What a write carries besides its JSON, made ready before its transaction, on every write
    /// path: a Binary's content (raw, or its `data`) staged under the write's key for
    /// `version_id`; a DocumentReference's attachments checked against the Binaries they name.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn prepare_payload(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &str,
        version_id: i64,
        resource: &mut Value,
        (dek_id, dek): (i64, &Arc<Dek>),
        content: Option<Content>,
        pending: &PendingBinaries,
    ) -> Result<Option<Staged>, StoreError> {
        match resource_type.as_str() {
            "Binary" => {
                let content = match content {
                    Some(c) => c,
                    None => Content::Inline(inline_data(resource)?),
                };
                self.stage_binary(ctx, id, version_id, (dek_id, dek), resource, content)
                    .await
                    .map(Some)
            }
            "DocumentReference" => {
                self.check_attachments(ctx, resource, pending).await?;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// `DocumentReference.content.attachment`s whose `url` names a Binary of this server: it must
    /// exist and be the caller's to read; `size` and `hash` are filled in from it, or must agree.
    async fn check_attachments(
        &self,
        ctx: &AccessContext,
        resource: &mut Value,
        pending: &PendingBinaries,
    ) -> Result<(), StoreError> {
        let Some(contents) = resource.get_mut("content").and_then(Value::as_array_mut) else {
            return Ok(());
        };
        let mut issues = Vec::new();
        for (i, content) in contents.iter_mut().enumerate() {
            let path = format!("DocumentReference.content[{i}].attachment");
            let Some(attachment) = content.get_mut("attachment").and_then(Value::as_object_mut)
            else {
                continue;
            };
            let Some(url) = attachment.get("url").and_then(Value::as_str) else {
                continue;
            };
            let Some((rt, bin_id)) = self.local_reference(url) else {
                continue;
            };
            if rt != ResourceType::BINARY {
                continue;
            }
            let version = match Reference::parse(url) {
                Ok(Reference::Resource { version, .. }) => version.and_then(|v| v.parse().ok()),
                _ => None,
            };
            let facts = match pending.get(&format!("Binary/{bin_id}")) {
                Some(facts) => Some(facts.clone()),
                None => match self.binary_facts(ctx, &bin_id, version).await? {
                    Some(facts) => Some(facts),
                    None => {
                        issues.push(Issue::error(
                            crate::fhir::validate::IssueType::NotFound,
                            format!("{path}.url"),
                            "names a Binary this server does not have (or the caller may not read);                              in a transaction, list the Binary's entry first",
                        ));
                        None
                    }
                },
            };
            let Some(facts) = facts else { continue };
            let size = facts.size;
            match attachment.get("size").and_then(Value::as_u64) {
                Some(claimed) if claimed != size => issues.push(Issue::invalid(
                    format!("{path}.size"),
                    format!("the Binary holds {size} bytes, not {claimed}"),
                )),
                Some(_) => {}
                None => {
                    attachment.insert("size".into(), json!(size));
                }
            }
            let hash = facts.attachment_hash();
            match attachment.get("hash").and_then(Value::as_str) {
                Some(claimed) if claimed != hash => issues.push(Issue::invalid(
                    format!("{path}.hash"),
                    "the hash is not the SHA-1 of the Binary's content",
                )),
                Some(_) => {}
                None => {
                    attachment.insert("hash".into(), json!(hash));
                }
            }
        }
        if issues.is_empty() {
            Ok(())
        } else if issues
            .iter()
            .all(|i| i.code == crate::fhir::validate::IssueType::NotFound)
        {
            Err(StoreError::Unresolved(issues))
        } else {
            Err(StoreError::Invalid(issues))
        }
    }

    /// What a stored Binary (or one version of it) holds, as the caller may read it; `None` when
    /// it is not there for them.
    async fn binary_facts(
        &self,
        ctx: &AccessContext,
        id: &ResourceId,
        version: Option<i64>,
    ) -> Result<Option<ContentFacts>, StoreError> {
        match self.open_binary(ctx, id, version).await {
            Ok(open) => Ok(Some(open.facts)),
            Err(StoreError::NotFound(_) | StoreError::Gone { .. } | StoreError::Denied(_)) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The key scope of a Binary: its `securityContext`'s patient — the patient itself, or the
    /// patient of the resource it names, which the caller must be able to read — or its own
    /// (`type/Binary`) without one.
    pub(super) async fn binary_scope(
        &self,
        ctx: &AccessContext,
        binary: &Value,
    ) -> Result<String, StoreError> {
        let Some(reference) = security_context(binary) else {
            return Ok("type/Binary".into());
        };
        let unresolved = |why: &str| {
            StoreError::Unresolved(vec![Issue::invalid(
                "Binary.securityContext",
                format!("securityContext {why}"),
            )])
        };
        let Some((rt, id)) = self.local_reference(&reference) else {
            return Err(unresolved(
                "must be a reference to a resource on this server",
            ));
        };
        if rt.as_str() == "Patient" {
            // The patient record must exist and be the caller's to reach (the write's gate
            // decides the rest under this scope).
            let stored = self.read_stored(ctx, rt, &id).await.map_err(|e| match e {
                StoreError::NotFound(_) | StoreError::Gone { .. } => {
                    unresolved("names a patient this server does not have")
                }
                other => other,
            })?;
            return Ok(format!("Patient/{}", stored.id));
        }
        let stored = self.read_stored(ctx, rt, &id).await.map_err(|e| match e {
            StoreError::NotFound(_) | StoreError::Gone { .. } => {
                unresolved("names a resource this server does not have")
            }
            other => other,
        })?;
        Ok(stored
            .patient
            .unwrap_or_else(|| format!("type/{}", rt.as_str())))
    }

    /// `Type/id` of a reference to this server (relative, or absolute under its base), by the one
    /// reference grammar.
    fn local_reference(&self, reference: &str) -> Option<(ResourceType, ResourceId)> {
        let Ok(Reference::Resource {
            resource_type,
            id,
            base,
            ..
        }) = Reference::parse(reference)
        else {
            return None;
        };
        let ours = self.integrity.base.get();
        let local = match base {
            None => true,
            Some(b) => ours.is_some_and(|o| b.trim_end_matches('/') == o),
        };
        local
            .then(|| ResourceId::parse(id).ok())
            .flatten()
            .map(|id| (resource_type, id))
    }

    /// Stage `content` for `Binary/<id>` version `version_id` under the scope's key (`dek_id`,
    /// `dek`), and record its size and digests in `binary`. Over [`Store::binary_limit`] is 413;
    /// a failure removes what was staged.
    pub(super) async fn stage_binary(
        &self,
        ctx: &AccessContext,
        id: &str,
        version_id: i64,
        (dek_id, dek): (i64, &Arc<Dek>),
        binary: &mut Value,
        content: Content,
    ) -> Result<Staged, StoreError> {
        let upload = uuid::Uuid::new_v4();
        let mut tx = self.begin_for(ctx).await?;
        sqlx::query(
            "INSERT INTO binary_contents (upload, resource_id, version_id, dek_id, chunk_size, started)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(upload)
        .bind(id)
        .bind(version_id)
        .bind(dek_id)
        .bind(CHUNK as i32)
        .bind(self.now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let object = object(id, version_id, &upload);
        let mut writer = ChunkRows {
            store: self,
            ctx,
            upload,
            dek: dek.clone(),
            object,
            sha256: Sha256::new(),
            sha1: Sha1::new(),
            buffer: Vec::with_capacity(CHUNK),
            sealed: Vec::new(),
            index: 0,
            size: 0,
            limit: self.binary_limit,
        };
        let staged = match content {
            Content::Inline(bytes) => writer.take(&bytes).await,
            Content::Stream(mut stream) => loop {
                match stream.next().await {
                    None => break Ok(()),
                    Some(Ok(piece)) => {
                        if let Err(e) = writer.take(&piece).await {
                            break Err(e);
                        }
                    }
                    Some(Err(_)) => {
                        break Err(StoreError::BadRequest(
                            "the request body could not be read to its end".into(),
                        ))
                    }
                }
            },
        };
        let finished = match staged {
            Ok(()) => writer.finish().await,
            Err(e) => Err(e),
        };
        match finished {
            Ok(facts) => {
                if let Value::Object(map) = binary {
                    map.remove("data");
                }
                Ok(Staged {
                    upload,
                    version_id,
                    facts,
                })
            }
            Err(e) => {
                self.discard_upload(upload).await;
                Err(e)
            }
        }
    }

    /// Remove a staged content no version names (a failed upload, a write refused after it).
    pub(super) async fn discard_upload(&self, upload: uuid::Uuid) {
        let removed = async {
            let mut tx = self.begin_internal().await?;
            sqlx::query(
                "DELETE FROM binary_contents c WHERE upload = $1
                   AND NOT EXISTS (SELECT 1 FROM resource_versions v WHERE v.content = c.upload)",
            )
            .bind(upload)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, StoreError>(())
        }
        .await;
        if let Err(e) = removed {
            // The retention run removes it later.
            tracing::warn!(error = %e, "a failed upload was not removed yet");
        }
    }

    /// Remove contents staged before `before` that no version names (uploads that never
    /// finished); the retention run calls this. Returns how many.
    pub async fn remove_unfinished_uploads(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_internal().await?;
        let n = sqlx::query(
            "DELETE FROM binary_contents c WHERE started < $1
               AND NOT EXISTS (SELECT 1 FROM resource_versions v WHERE v.content = c.upload)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Open a Binary's content for reading: the current version, or `version`, through the
    /// gate (audited as its read), then its `securityContext`'s gate.
    pub async fn open_binary(
        &self,
        ctx: &AccessContext,
        id: &ResourceId,
        version: Option<i64>,
    ) -> Result<OpenBinary, StoreError> {
        let rt = ResourceType::BINARY;
        let stored = match version {
            Some(v) => self.vread_stored(ctx, rt, id, v).await?,
            None => self.read_stored(ctx, rt, id).await?,
        };
        self.binary_gate(ctx, &stored, version.is_some()).await?;
        self.open_stored_binary(ctx, stored).await
    }

    /// The part of a Binary's gate beyond its own: its `securityContext`'s access (an older
    /// version's and, while `older`, the current version's too: what it belongs to now decides),
    /// and none for analytics callers.
    pub(super) async fn binary_gate(
        &self,
        ctx: &AccessContext,
        stored: &StoredResource,
        older: bool,
    ) -> Result<(), StoreError> {
        // A document's bytes cannot be de-identified: analytics callers never get them.
        if ctx.role == crate::access::Role::Analytics {
            return Err(crate::access::Denied::Reidentifying("a document's content".into()).into());
        }
        let doc: Value = serde_json::from_slice(&stored.body).map_err(|_| StoreError::Integrity)?;
        self.check_security_context(ctx, stored, &doc).await?;
        if older {
            let id = ResourceId::parse(&stored.id).map_err(|_| StoreError::Integrity)?;
            match self.read_stored(ctx, ResourceType::BINARY, &id).await {
                Ok(current) => {
                    let now: Value =
                        serde_json::from_slice(&current.body).map_err(|_| StoreError::Integrity)?;
                    self.check_security_context(ctx, stored, &now).await?;
                }
                // Deleted since: the versions before belong to what they said.
                Err(StoreError::Gone { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// `GET Binary/<id>` as a resource (`Accept: application/fhir+json`): the Binary with its
    /// content as base64 `data`, within [`Store::binary_json_limit`], a few at a time (each holds
    /// its content in memory). REST only: Bundle entries read Binaries without `data`, as searches
    /// do, so a batch of reads cannot make the server hold many contents.
    pub async fn read_binary_resource(
        &self,
        ctx: &AccessContext,
        id: &ResourceId,
        version: Option<i64>,
    ) -> Result<StoredResource, StoreError> {
        let open = self.open_binary(ctx, id, version).await?;
        let _slot = self
            .binary_json_slots
            .acquire()
            .await
            .map_err(|_| StoreError::Unsupported("the store is closing".into()))?;
        self.binary_with_data(open).await
    }

    /// The content of a Binary the caller has just read.
    async fn open_stored_binary(
        &self,
        ctx: &AccessContext,
        stored: StoredResource,
    ) -> Result<OpenBinary, StoreError> {
        let doc: Value = serde_json::from_slice(&stored.body).map_err(|_| StoreError::Integrity)?;
        let content_type = doc
            .get("contentType")
            .and_then(Value::as_str)
            .unwrap_or("application/octet-stream")
            .to_string();
        let mut conn = self.begin_for(ctx).await?;
        let row = sqlx::query(
            "SELECT c.upload, c.chunk_size, c.size, c.chunks, c.facts, c.version_id AS sealed_for,
                    c.resource_id, k.id AS dek_id, k.scope, k.wrapped
               FROM resource_versions v
               JOIN binary_contents c ON c.upload = v.content
               JOIN data_keys k ON k.id = c.dek_id AND k.id = v.dek_id
              WHERE v.resource_type = 'Binary' AND v.id = $1 AND v.version_id = $2",
        )
        .bind(&stored.id)
        .bind(stored.version_id)
        .fetch_optional(&mut *conn)
        .await?;
        conn.commit().await?;
        let Some(row) = row else {
            return legacy(ctx, stored, content_type, &doc);
        };
        let size: Option<i64> = row.try_get("size")?;
        let chunks: Option<i32> = row.try_get("chunks")?;
        let sealed_for: i64 = row.try_get("sealed_for")?;
        let resource_id: String = row.try_get("resource_id")?;
        let upload: uuid::Uuid = row.try_get("upload")?;
        let sealed_facts: Option<Vec<u8>> = row.try_get("facts")?;
        let key = super::DekRow::from_row(&row)?;
        let dek = self.dek_by_id(&key).await?;
        let facts = ContentFacts::open(
            &dek,
            &object(&stored.id, stored.version_id, &upload),
            &sealed_facts.ok_or(StoreError::Integrity)?,
        )?;
        if size != Some(facts.size as i64)
            || sealed_for != stored.version_id
            || resource_id != stored.id
        {
            return Err(StoreError::Integrity);
        }
        let chunk_size: i32 = row.try_get("chunk_size")?;
        Ok(OpenBinary {
            content_type,
            facts,
            upload,
            chunk_size: chunk_size.max(1) as u64,
            chunks: chunks.ok_or(StoreError::Integrity)?,
            dek,
            ctx: ctx.clone(),
            resource: stored,
            inline: None,
        })
    }

    /// A Binary with a `securityContext` is read under that resource's access too: hidden from
    /// whoever may not see it (now, not when the Binary was written). One without is for
    /// administrators and system clients only.
    async fn check_security_context(
        &self,
        ctx: &AccessContext,
        stored: &StoredResource,
        doc: &Value,
    ) -> Result<(), StoreError> {
        let hidden = || StoreError::NotFound(format!("Binary/{}", stored.id));
        // Belonging to nothing, it is the system's: administrators and system clients only.
        let Some(reference) = security_context(doc) else {
            return match ctx.role {
                crate::access::Role::Admin | crate::access::Role::System => Ok(()),
                _ => Err(hidden()),
            };
        };
        let Some((rt, id)) = self.local_reference(&reference) else {
            return Err(hidden());
        };
        // Its type's scope too: a Binary scope alone does not open a DocumentReference's document.
        if ctx
            .check(rt.as_str(), crate::access::Permission::Read)
            .is_err()
        {
            return Err(hidden());
        }
        let mut conn = self.begin_for(ctx).await?;
        let visible = self
            .current_visible(&mut conn, ctx, rt, id.as_str())
            .await?;
        conn.commit().await?;
        if visible {
            Ok(())
        } else {
            Err(hidden())
        }
    }

    /// A Binary's FHIR-JSON form with its content as base64 `data`, for reads of the resource:
    /// contents over [`Store::binary_json_limit`] are refused (read them raw).
    async fn binary_with_data(&self, open: OpenBinary) -> Result<StoredResource, StoreError> {
        if open.size() > self.binary_json_limit {
            return Err(StoreError::TooLarge(format!(
                "this Binary holds {} bytes, more than its FHIR-JSON form carries ({} bytes); \
                 read it raw, with Accept: {}",
                open.size(),
                self.binary_json_limit,
                open.content_type
            )));
        }
        let (mut resource, bytes) = open.whole(self).await?;
        let mut doc: Value =
            serde_json::from_slice(&resource.body).map_err(|_| StoreError::Integrity)?;
        if let Value::Object(map) = &mut doc {
            map.insert(
                "data".into(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(&bytes)),
            );
        }
        resource.body = serde_json::to_vec(&doc).map_err(|_| StoreError::Integrity)?;
        Ok(resource)
    }
}

/// A FHIR-JSON Binary's `data`, decoded (the validator has checked it is base64); none is empty.
fn inline_data(binary: &Value) -> Result<Vec<u8>, StoreError> {
    match binary.get("data").and_then(Value::as_str) {
        None => Ok(Vec::new()),
        Some(data) => base64::engine::general_purpose::STANDARD
            .decode(
                data.as_bytes()
                    .iter()
                    .filter(|b| !b.is_ascii_whitespace())
                    .copied()
                    .collect::<Vec<u8>>(),
            )
            .map_err(|_| {
                StoreError::Invalid(vec![Issue::invalid("Binary.data", "data is not base64")])
            }),
    }
}

/// A Binary written before its content was kept apart: its `data` is in its (sealed, so
/// authenticated) JSON. A version with neither a content nor `data` is refused as an integrity
/// failure: every version written since names a content, even an empty one, so a missing one was
/// removed, not never there (a Binary of before without `data` answers so too).
fn legacy(
    ctx: &AccessContext,
    stored: StoredResource,
    content_type: String,
    doc: &Value,
) -> Result<OpenBinary, StoreError> {
    if doc.get("data").is_some() {
        let bytes = Bytes::from(inline_data(doc).map_err(|_| StoreError::Integrity)?);
        let facts = ContentFacts {
            size: bytes.len() as u64,
            sha256: Sha256::digest(&bytes).to_vec(),
            sha1: Sha1::digest(&bytes).to_vec(),
        };
        let mut stored = stored;
        // Served as the content; the resource form adds `data` back from it.
        if let Ok(mut without) = serde_json::from_slice::<Value>(&stored.body) {
            if let Some(map) = without.as_object_mut() {
                map.remove("data");
            }
            stored.body = serde_json::to_vec(&without).map_err(|_| StoreError::Integrity)?;
        }
        return Ok(OpenBinary {
            resource: stored,
            content_type,
            facts,
            upload: uuid::Uuid::nil(),
            chunk_size: CHUNK as u64,
            chunks: 1,
            dek: Arc::new(Dek::random()),
            ctx: ctx.clone(),
            inline: Some(bytes),
        });
    }
    Err(StoreError::Integrity)
}

/// `Binary.securityContext.reference`, if any.
fn security_context(binary: &Value) -> Option<String> {
    binary
        .get("securityContext")?
        .get("reference")?
        .as_str()
        .map(str::to_string)
}

/// Chunks being sealed and written as an upload arrives.
struct ChunkRows<'a> {
    store: &'a Store,
    ctx: &'a AccessContext,
    upload: uuid::Uuid,
    dek: Arc<Dek>,
    object: String,
    sha256: Sha256,
    sha1: Sha1,
    buffer: Vec<u8>,
    /// Sealed chunks not yet written: (index, sealed).
    sealed: Vec<(i32, Vec<u8>)>,
    index: i32,
    size: u64,
    limit: u64,
}

impl ChunkRows<'_> {
    /// Take more bytes; every chunk filled and followed by more is sealed (the last is sealed by
    /// [`ChunkRows::finish`], flagged as the last).
    async fn take(&mut self, mut bytes: &[u8]) -> Result<(), StoreError> {
        self.size += bytes.len() as u64;
        if self.size > self.limit {
            return Err(StoreError::TooLarge(format!(
                "a Binary's content is limited to {} bytes (CARAPACE_BINARY_LIMIT)",
                self.limit
            )));
        }
        while !bytes.is_empty() {
            if self.buffer.len() == CHUNK {
                self.seal(false).await?;
            }
            let room = CHUNK - self.buffer.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.buffer.extend_from_slice(now);
            bytes = rest;
        }
        Ok(())
    }

    /// Hash and seal the buffered chunk off the async threads; write when enough are sealed.
    async fn seal(&mut self, last: bool) -> Result<(), StoreError> {
        let plain = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        let (dek, object, index) = (self.dek.clone(), self.object.clone(), self.index);
        let mut sha256 = std::mem::take(&mut self.sha256);
        let mut sha1 = std::mem::take(&mut self.sha1);
        let (sealed, sha256, sha1) = tokio::task::spawn_blocking(move || {
            sha256.update(&plain);
            sha1.update(&plain);
            let sealed = seal_chunk(&dek, PURPOSE, &object, index as u64, last, &plain);
            (sealed, sha256, sha1)
        })
        .await
        .map_err(|_| StoreError::Integrity)?;
        self.sha256 = sha256;
        self.sha1 = sha1;
        self.sealed.push((index, sealed));
        self.index += 1;
        if last || self.sealed.len() >= CHUNKS_PER_INSERT {
            self.write().await?;
        }
        Ok(())
    }

    async fn write(&mut self) -> Result<(), StoreError> {
        let batch = std::mem::take(&mut self.sealed);
        let indexes: Vec<i32> = batch.iter().map(|(i, _)| *i).collect();
        let sealed: Vec<&[u8]> = batch.iter().map(|(_, s)| s.as_slice()).collect();
        let mut tx = self.store.begin_for(self.ctx).await?;
        sqlx::query(
            "INSERT INTO binary_chunks (upload, chunk, sealed)
             SELECT $1, i, s FROM unnest($2::int4[], $3::bytea[]) AS u(i, s)",
        )
        .bind(self.upload)
        .bind(&indexes)
        .bind(&sealed)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Seal the last chunk (possibly empty), record the size and count, and give the digests.
    async fn finish(mut self) -> Result<ContentFacts, StoreError> {
        self.seal(true).await?;
        let mut tx = self.store.begin_for(self.ctx).await?;
        let facts = ContentFacts {
            size: self.size,
            sha256: self.sha256.finalize().to_vec(),
            sha1: self.sha1.finalize().to_vec(),
        };
        sqlx::query(
            "UPDATE binary_contents SET size = $2, chunks = $3, facts = $4 WHERE upload = $1",
        )
        .bind(self.upload)
        .bind(self.size as i64)
        .bind(self.index)
        .bind(facts.seal(&self.dek, &self.object))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(facts)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn content_facts_open_only_for_their_own_content() {
        let facts = ContentFacts {
            size: 5,
            sha256: vec![1; 32],
            sha1: vec![2; 20],
        };
        let dek = Dek::random();
        let upload = uuid::Uuid::new_v4();
        let sealed = facts.seal(&dek, &object("b1", 2, &upload));
        assert_eq!(
            ContentFacts::open(&dek, &object("b1", 2, &upload), &sealed).unwrap(),
            facts
        );
        for other in [object("b1", 3, &upload), object("b2", 2, &upload)] {
            assert!(ContentFacts::open(&dek, &other, &sealed).is_err());
        }
    }
}
