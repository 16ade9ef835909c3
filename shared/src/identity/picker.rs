//! The patient picker of a practitioner's standalone launch (`launch/patient` with no EHR launch):
//! the patients offered, and the check of the one chosen, both through the store's gate as the
//! practitioner — so the picker offers, and a forged form can choose, only a patient the
//! practitioner may read.

use crate::access::{AccessContext, Role, Scope};
use crate::fhir::{ResourceId, ResourceType};
use crate::identity::users::User;
use crate::store::{Store, StoreError};
use serde_json::Value;

/// Patients shown at once; a search narrows them.
pub const CHOICES: usize = 20;

/// A patient the practitioner may choose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientChoice {
    pub id: String,
    /// Name and birth date, as recorded (the page escapes them).
    pub label: String,
}

/// The practitioner, as the gate sees them when they look for a patient: reading Patients only.
fn viewer(user: &User) -> Result<AccessContext, StoreError> {
    if user.role != Role::Practitioner {
        return Err(StoreError::BadRequest(
            "only practitioners choose a patient".into(),
        ));
    }
    let mut ctx = AccessContext::operator(&user.username);
    ctx.role = Role::Practitioner;
    ctx.scopes = vec![Scope::parse("user/Patient.rs")
        .map_err(|_| StoreError::BadRequest("the picker's scope".into()))?];
    Ok(ctx)
}

fn label(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let name = &v["name"][0];
    let mut parts: Vec<String> = name["given"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if let Some(family) = name["family"].as_str() {
        parts.push(family.to_string());
    }
    if parts.is_empty() {
        parts.push(name["text"].as_str().unwrap_or("(no name)").to_string());
    }
    match v["birthDate"].as_str() {
        Some(born) => format!("{} (born {born})", parts.join(" ")),
        None => parts.join(" "),
    }
}

/// The patients `user` may see whose name matches `text` (every one, up to [`CHOICES`], when
/// `text` is empty): a search through the gate, audited as the practitioner's.
pub async fn choices(
    store: &Store,
    user: &User,
    text: &str,
) -> Result<Vec<PatientChoice>, StoreError> {
    let ctx = viewer(user)?;
    let patient = ResourceType::parse("Patient")
        .ok_or_else(|| StoreError::BadRequest("Patient is a resource type".into()))?;
    let mut pairs = vec![("_count".to_string(), CHOICES.to_string())];
    let text = text.trim();
    if !text.is_empty() {
        pairs.push(("name".into(), text.to_string()));
    }
    let query = crate::search::query::parse(patient, &pairs, false)?;
    let found = store.search(&ctx, &query).await?;
    Ok(found
        .matches
        .iter()
        .map(|m| PatientChoice {
            id: m.id.clone(),
            label: label(&m.body),
        })
        .collect())
}

/// May `user` choose patient `id`? A read through the gate: hidden and absent alike say no.
pub async fn may_choose(store: &Store, user: &User, id: &str) -> Result<bool, StoreError> {
    let ctx = viewer(user)?;
    let (Some(patient), Ok(id)) = (ResourceType::parse("Patient"), ResourceId::parse(id)) else {
        return Ok(false);
    };
    match store.read(&ctx, patient, &id).await {
        Ok(_) => Ok(true),
        Err(
            StoreError::NotFound(_)
            | StoreError::Gone { .. }
            | StoreError::Erased(_)
            | StoreError::Denied(_),
        ) => Ok(false),
        Err(e) => Err(e),
    }
}
