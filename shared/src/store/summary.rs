//! `Patient/[id]/$summary`: the International Patient Summary of a patient's record, read through
//! the gate as the caller — the resources of the patient's compartment the caller may see (scopes,
//! consents, labels), chosen by the IPS section rules of [`crate::fhir::ips`], with the Medications
//! they refer to — audited as one operation, released as the caller may receive it, then made into
//! the document Bundle.

use super::audited::{Event, Recorded};
use super::{reach, read_head, Store, StoreError, StoredResource};
use crate::access::{AccessContext, Permission};
use crate::audit::Interaction;
use crate::fhir::ips;
use crate::fhir::{ResourceId, ResourceType};
use chrono::SecondsFormat;
use sqlx::Row;

/// What a summary is made of, as read through the gate.
pub(crate) struct SummaryRecord {
    patient: StoredResource,
    entries: Vec<(ips::Section, StoredResource)>,
    referenced: Vec<StoredResource>,
}

impl SummaryRecord {
    fn all(&self) -> impl Iterator<Item = &StoredResource> {
        std::iter::once(&self.patient)
            .chain(self.entries.iter().map(|(_, r)| r))
            .chain(&self.referenced)
    }
}

impl super::release::Outgoing for SummaryRecord {
    fn release(self, deid: &super::release::Release<'_>) -> Self {
        let release = |r| super::release::release_resource(deid, r);
        SummaryRecord {
            patient: release(self.patient),
            entries: self
                .entries
                .into_iter()
                .map(|(s, r)| (s, release(r)))
                .collect(),
            referenced: self.referenced.into_iter().map(release).collect(),
        }
    }
}

fn parse(body: &[u8]) -> Result<serde_json::Value, StoreError> {
    serde_json::from_slice(body).map_err(|_| StoreError::Integrity)
}

fn ips_resource(r: StoredResource) -> Result<ips::Resource, StoreError> {
    Ok(ips::Resource {
        body: parse(&r.body)?,
        resource_type: r.resource_type.to_string(),
        id: r.id,
    })
}

impl Store {
    /// The patient's summary document, `base` the FHIR base its `fullUrl`s are under. 404 when
    /// the patient does not exist or the caller may not see them; 403 without a scope to read
    /// Patients. A resource the caller may not read is not in it.
    pub async fn summary(
        &self,
        ctx: &AccessContext,
        patient: &ResourceId,
        base: &str,
    ) -> Result<serde_json::Value, StoreError> {
        let record = self.summary_record(ctx, patient).await?;
        let contents = ips::Contents {
            patient: ips_resource(record.patient)?,
            entries: record
                .entries
                .into_iter()
                .map(|(s, r)| Ok((s, ips_resource(r)?)))
                .collect::<Result<_, StoreError>>()?,
            referenced: record
                .referenced
                .into_iter()
                .map(ips_resource)
                .collect::<Result<_, _>>()?,
        };
        let identifier = uuid::Uuid::new_v4().to_string();
        let timestamp = self
            .clock
            .now()
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        Ok(ips::document(contents, base, &identifier, &timestamp))
    }

    /// The resources of the summary, through the gate, audited and released.
    async fn summary_record(
        &self,
        ctx: &AccessContext,
        patient: &ResourceId,
    ) -> Result<SummaryRecord, StoreError> {
        let scope = format!("Patient/{patient}");
        let event = Event {
            patient: Some(scope.clone()),
            ..Event::new(Interaction::Operation, format!("{scope}/$summary"))
        };
        // One event per patient whose data the summary holds.
        let patients = |r: &SummaryRecord| {
            let mut patients: Vec<Option<String>> = r
                .all()
                .flat_map(|x| {
                    reach::compartments_of(x.resource_type, &x.id, x.patient.as_deref(), &x.body)
                })
                .flatten()
                .map(Some)
                .collect();
            patients.sort();
            patients.dedup();
            Recorded::Here(patients)
        };
        self.audited(
            ctx,
            event,
            async {
                ctx.check("Patient", Permission::Read)?;
                let plan = self.plan(ctx).await?;
                let missing = || StoreError::NotFound(scope.clone());
                // A patient the caller may not see looks like one that does not exist.
                if !plan.visible(Some(&scope), "Patient") {
                    return Err(missing());
                }
                let mut types = vec!["Patient"];
                types.extend(
                    ips::SOURCE_TYPES
                        .into_iter()
                        .filter(|t| ctx.check(t, Permission::Read).is_ok())
                        .filter(|t| plan.visible(Some(&scope), t)),
                );
                let mut tx = self.begin_for(ctx).await?;
                read_head(&mut tx, patient).await?;
                let rows = sqlx::query(
                    "SELECT h.resource_type, h.id, v.version_id, v.last_updated, v.sealed,
                            k.id AS dek_id, k.scope, k.wrapped
                       FROM resources h
                       JOIN resource_versions v
                         ON v.resource_type = h.resource_type AND v.id = h.id
                        AND v.version_id = h.version_id
                       JOIN data_keys k ON k.id = v.dek_id
                      WHERE h.compartment = $1 AND NOT h.deleted AND h.resource_type = ANY($2)
                      ORDER BY h.resource_type, h.id",
                )
                .bind(&scope)
                .bind(&types)
                .fetch_all(&mut *tx)
                .await?;
                let mut found_patient = None;
                let mut entries = Vec::new();
                let mut medications: Vec<(String, String)> = Vec::new();
                for row in &rows {
                    let type_name: String = row.try_get("resource_type")?;
                    let resource_type =
                        ResourceType::parse(&type_name).ok_or(StoreError::Integrity)?;
                    let r = self.open_row(resource_type, row).await?;
                    if !reach::body_visible(&plan, resource_type, &r.id, &r.body) {
                        continue;
                    }
                    if type_name == "Patient" {
                        if r.id == patient.as_str() {
                            found_patient = Some(r);
                        }
                        continue;
                    }
                    let doc = parse(&r.body)?;
                    if let Some(section) = ips::section_of(&type_name, &doc) {
                        if let Some(m) = ips::medication_of(&doc) {
                            medications.push(("Medication".into(), m.to_string()));
                        }
                        entries.push((section, r));
                    }
                }
                let Some(found_patient) = found_patient else {
                    return Err(missing());
                };
                medications.sort();
                medications.dedup();
                let referenced = self
                    .load_current_in(&mut tx, ctx, &plan, &medications)
                    .await?;
                drop(tx);
                Ok(SummaryRecord {
                    patient: found_patient,
                    entries,
                    referenced,
                })
            }
            .await,
            patients,
        )
        .await
    }
}
