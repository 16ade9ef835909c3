//! `$validate` and profiles in the store: the operation's checks (the validator, the mode's rules,
//! the profiles asked for and declared), the profiles built in ([`builtin`], which always win over
//! a stored StructureDefinition with the same URL), and profiles found among the StructureDefinitions stored on
//! this server — by canonical URL, through the caller's own gated search (so the access gate decides
//! what they may use), compiled once per stored version.

use super::summaries::{self, Within};
use super::{Store, StoreError};
use crate::access::{AccessContext, Permission};
use crate::fhir::profile::{builtin, Profile};
use crate::fhir::validate::{self, Issue, IssueType};
use crate::fhir::{printable, ResourceId, ResourceType};
use serde_json::Value;
use std::sync::Arc;

/// Compiled profiles kept at most; a full cache is emptied (profiles are few on any real server).
const MAX_CACHED_PROFILES: usize = 256;

/// Compiled profiles by (StructureDefinition id, version): a stored version never changes.
pub(super) type ProfileCache =
    std::sync::Mutex<std::collections::HashMap<(String, i64), Arc<Profile>>>;

/// `$validate`'s `mode` (R4 `resource-validation-mode`), or none: validate the content only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidateMode {
    /// No mode: the resource's content, and an instance's id against the URL.
    Content,
    /// As for a create: the id is ignored.
    Create,
    /// As for an update: the id is required and must be the URL's.
    Update,
    /// Could the instance be deleted by the caller? Reported, never done.
    Delete,
}

impl ValidateMode {
    pub fn parse(code: &str) -> Option<ValidateMode> {
        match code {
            "create" => Some(ValidateMode::Create),
            "update" => Some(ValidateMode::Update),
            "delete" => Some(ValidateMode::Delete),
            _ => None,
        }
    }
}

/// What a profile URL found on this server.
enum Resolved {
    Found(Arc<Profile>),
    Missing,
    /// Stored, but not usable as a profile (no snapshot, not a resource profile).
    Unusable(String),
}

impl Store {
    /// `$validate`: every issue (errors, warnings) of `resource` — or, with `resource` `None`, of
    /// the stored current version of `id` as the caller may read it — for `mode`, against R4, the
    /// `profiles` asked for (an unknown one is an error) and those its `meta.profile` declares (an
    /// unknown one is a warning). Nothing is written.
    pub async fn validate(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: Option<&ResourceId>,
        resource: Option<Value>,
        mode: ValidateMode,
        profiles: &[String],
    ) -> Result<Vec<Issue>, StoreError> {
        let mut issues = Vec::new();
        if mode == ValidateMode::Delete {
            let Some(id) = id else {
                return Err(StoreError::BadRequest(
                    "mode=delete validates an instance: POST or GET [type]/[id]/$validate".into(),
                ));
            };
            // The same gate as a delete: the permission, then the instance as the caller sees it.
            if let Err(denied) = ctx.check(resource_type.as_str(), Permission::Delete) {
                issues.push(Issue::error(
                    IssueType::Forbidden,
                    resource_type.as_str(),
                    denied.to_string(),
                ));
                return Ok(issues);
            }
            match self.read(ctx, resource_type, id).await {
                Ok(_) => {}
                Err(StoreError::NotFound(_) | StoreError::Gone { .. }) => {
                    issues.push(Issue::error(
                        IssueType::NotFound,
                        resource_type.as_str(),
                        format!("{resource_type}/{id} is not known, so it cannot be deleted"),
                    ))
                }
                Err(e) => return Err(e),
            }
            return Ok(issues);
        }
        let resource = match (resource, id) {
            (Some(resource), _) => resource,
            (None, Some(id)) => {
                let stored = self.read(ctx, resource_type, id).await?;
                serde_json::from_slice(&stored.body).map_err(|_| StoreError::Integrity)?
            }
            (None, None) => {
                return Err(StoreError::BadRequest(
                    "$validate needs a resource to validate".into(),
                ))
            }
        };
        if resource.get("resourceType").and_then(Value::as_str) != Some(resource_type.as_str()) {
            issues.push(Issue::invalid(
                "resourceType",
                format!("the resource is not a {resource_type}"),
            ));
        }
        let body_id = resource.get("id").and_then(Value::as_str);
        match mode {
            ValidateMode::Create => {
                self.permitted(ctx, resource_type, Permission::Create, &mut issues)
            }
            ValidateMode::Update => {
                self.permitted(ctx, resource_type, Permission::Update, &mut issues);
                match (body_id, id) {
                    (None, _) => issues.push(Issue::error(
                        IssueType::Required,
                        format!("{resource_type}.id"),
                        "an update must carry the resource's id",
                    )),
                    (Some(body), Some(url)) if body != url.as_str() => issues.push(Issue::invalid(
                        format!("{resource_type}.id"),
                        "the id in the resource does not match the id in the URL",
                    )),
                    _ => {}
                }
            }
            ValidateMode::Content | ValidateMode::Delete => {
                if let Some(url) = id {
                    if body_id != Some(url.as_str()) {
                        issues.push(Issue::invalid(
                            format!("{resource_type}.id"),
                            "the id in the resource does not match the id in the URL",
                        ));
                    }
                }
            }
        }
        issues.extend(validate::validate_report(&resource));
        for url in profiles {
            match self.resolve_profile(ctx, url).await? {
                Resolved::Found(p) => issues.extend(p.check(&resource)),
                Resolved::Missing => issues.push(Issue::error(
                    IssueType::NotFound,
                    "",
                    format!(
                        "Profile reference '{}' could not be resolved: no StructureDefinition \
                         with this url is stored on this server",
                        printable(url)
                    ),
                )),
                Resolved::Unusable(why) => issues.push(Issue::error(
                    IssueType::NotSupported,
                    "",
                    format!("profile '{}' cannot be used: {why}", printable(url)),
                )),
            }
        }
        for (i, url) in declared_profiles(&resource).enumerate() {
            if profiles.iter().any(|p| p == url) {
                continue;
            }
            let path = format!("{resource_type}.meta.profile[{i}]");
            match self.resolve_profile(ctx, url).await? {
                Resolved::Found(p) => issues.extend(p.check(&resource)),
                Resolved::Missing => issues.push(Issue::warning(
                    IssueType::NotSupported,
                    path,
                    "the declared profile has not been checked: no StructureDefinition with \
                     this url is stored on this server",
                )),
                Resolved::Unusable(why) => issues.push(Issue::warning(
                    IssueType::NotSupported,
                    path,
                    format!("the declared profile cannot be used: {why}"),
                )),
            }
        }
        Ok(issues)
    }

    fn permitted(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        permission: Permission,
        issues: &mut Vec<Issue>,
    ) {
        if let Err(denied) = ctx.check(resource_type.as_str(), permission) {
            issues.push(Issue::error(
                IssueType::Forbidden,
                resource_type.as_str(),
                denied.to_string(),
            ));
        }
    }

    /// On every write: the resource must conform to every built-in profile its `meta.profile`
    /// names ([`builtin`], whatever `CARAPACE_ENFORCE_PROFILES` says), and with
    /// `CARAPACE_ENFORCE_PROFILES=on` to every other one stored here (profiles not stored are not
    /// checked), whoever writes it; then the companion rules of what it is written `within`
    /// ([`summaries`]). Free when nothing is declared.
    pub(super) async fn check_declared_profiles(
        &self,
        ctx: &AccessContext,
        resource: &Value,
        within: Within<'_>,
    ) -> Result<(), StoreError> {
        let mut issues = Vec::new();
        // A stored profile binds every writer, whatever the writer may read: profiles are looked
        // up as the server's own reader of definitions (StructureDefinitions only, no PHI),
        // audited under the writer's name.
        let definitions = definitions_reader(ctx);
        for url in declared_profiles(resource) {
            let found = match builtin::builtin(url) {
                Some(Ok(p)) => p.clone(),
                // Never let a write through unchecked: a build defect the unit tests catch.
                Some(Err(_)) => return Err(StoreError::Integrity),
                None if !self.enforce_profiles => continue,
                None => match self.resolve_profile(&definitions, url).await? {
                    Resolved::Found(p) => p,
                    Resolved::Missing | Resolved::Unusable(_) => continue,
                },
            };
            issues.extend(
                found
                    .check_at(resource, validate::Depth::Write)
                    .into_iter()
                    .filter(Issue::is_error),
            );
        }
        if !issues.is_empty() {
            return Err(StoreError::Invalid(issues));
        }
        summaries::note(resource, within)
    }

    /// The StructureDefinition stored with this canonical (`url` or `url|version`) that the
    /// caller may search, the most recently written if several, compiled once per stored version.
    /// Found through the caller's own gated search; only a version not compiled yet is read (and
    /// that read audited like any).
    async fn resolve_profile(
        &self,
        ctx: &AccessContext,
        canonical: &str,
    ) -> Result<Resolved, StoreError> {
        // A built-in profile is never replaced by a stored one with its URL (which could weaken it).
        match builtin::builtin(canonical) {
            Some(Ok(p)) => return Ok(Resolved::Found(p.clone())),
            Some(Err(why)) => return Ok(Resolved::Unusable(why.clone())),
            None => {}
        }
        let (url, version) = match canonical.split_once('|') {
            Some((url, version)) => (url, Some(version)),
            None => (canonical, None),
        };
        let Some(sd_type) = ResourceType::parse("StructureDefinition") else {
            return Ok(Resolved::Missing);
        };
        let mut pairs = vec![("url".to_string(), url.to_string())];
        if let Some(version) = version {
            pairs.push(("version".to_string(), version.to_string()));
        }
        let Ok(query) = crate::search::query::parse(sd_type, &pairs, true) else {
            return Ok(Resolved::Missing);
        };
        let key = match self.latest_match(ctx, &query).await {
            Ok(Some(key)) => key,
            Ok(None) => return Ok(Resolved::Missing),
            // A caller who may not search StructureDefinitions has none to use.
            Err(StoreError::Denied(_)) => return Ok(Resolved::Missing),
            Err(e) => return Err(e),
        };
        if let Some(p) = self.cached_profile(&key) {
            return Ok(if p.url() == url {
                Resolved::Found(p)
            } else {
                Resolved::Missing
            });
        }
        let id = ResourceId::parse(&key.0).map_err(|_| StoreError::Integrity)?;
        let stored = match self.read(ctx, sd_type, &id).await {
            Ok(stored) => stored,
            Err(StoreError::NotFound(_) | StoreError::Gone { .. }) => return Ok(Resolved::Missing),
            Err(e) => return Err(e),
        };
        let sd: Value = serde_json::from_slice(&stored.body).map_err(|_| StoreError::Integrity)?;
        // The index matched the url; the body must say so too.
        if sd.get("url").and_then(Value::as_str) != Some(url) {
            return Ok(Resolved::Missing);
        }
        match Profile::compile(&sd) {
            Ok(p) => {
                let p = Arc::new(p);
                let mut cache = self
                    .profiles
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if cache.len() >= MAX_CACHED_PROFILES {
                    cache.clear();
                }
                cache.insert((key.0, stored.version_id), p.clone());
                Ok(Resolved::Found(p))
            }
            Err(e) => Ok(Resolved::Unusable(e.to_string())),
        }
    }

    fn cached_profile(&self, key: &(String, i64)) -> Option<Arc<Profile>> {
        self.profiles
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(key)
            .cloned()
    }
}

/// The canonicals a resource's `meta.profile` declares.
fn declared_profiles(resource: &Value) -> impl Iterator<Item = &str> {
    resource
        .get("meta")
        .and_then(|m| m.get("profile"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// The context profile enforcement reads StructureDefinitions under: a system reader of that one
/// type, named after the writer (so the read is audited as done on the writer's behalf).
fn definitions_reader(writer: &AccessContext) -> AccessContext {
    AccessContext {
        principal: writer.principal.clone(),
        role: crate::access::Role::System,
        scopes: crate::access::Scope::parse("system/StructureDefinition.read")
            .into_iter()
            .collect(),
        patient: None,
        purpose_of_use: None,
        btg_reason: None,
        address: writer.address,
        client: None,
        plan: Default::default(),
    }
}
