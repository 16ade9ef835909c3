//! `Patient/[id]/$everything`: the patient's compartment, current versions, through the gate,
//! paged by a sealed cursor.

use super::audited::{Event, Recorded};
use super::{
    reach, read_head, Store, StoreError, StoredResource, MAX_FILL_ROUNDS, MAX_HISTORY_COUNT,
};
use crate::access::{AccessContext, Permission};
use crate::audit::Interaction;
use crate::fhir::{ResourceId, ResourceType};
use crate::search::interaction_params::EverythingQuery;
use sqlx::Row;

pub struct EverythingPage {
    pub entries: Vec<StoredResource>,
    /// Sealed: opaque to the client, bound to `$everything` pages.
    pub next: Option<String>,
}

impl Store {
    /// `Patient/{id}/$everything`: the current resources in the patient's compartment (every resource
    /// sealed under the patient's key scope), narrowed to the types the caller may read, ordered by
    /// type and id, one page at a time.
    pub async fn everything(
        &self,
        ctx: &AccessContext,
        patient: &ResourceId,
        query: &EverythingQuery,
    ) -> Result<EverythingPage, StoreError> {
        let scope = format!("Patient/{patient}");
        let reference = format!("Patient/{patient}/$everything");
        let event = Event::new(Interaction::Operation, reference);
        self.audited(
            ctx,
            event,
            async {
                let scope: &str = &scope;
                ctx.check("Patient", Permission::Read)?;
                super::release::since_allowed(ctx, query.since)?;
                let plan = self.plan(ctx).await?;
                let open: Vec<&str> = ResourceType::all()
                    .map(|t| t.as_str())
                    .filter(|t| ctx.check(t, Permission::Read).is_ok())
                    .filter(|t| plan.visible(Some(scope), t))
                    .collect();
                // A compartment the caller may see nothing of looks like a patient that does not exist.
                if open.is_empty() {
                    return Err(StoreError::NotFound(format!("Patient/{patient}")));
                }
                let mut after: Option<(String, String)> = match &query.after {
                    Some(text) => Some(self.open_position("everything", text).await?),
                    None => None,
                };
                let mut tx = self.begin_for(ctx).await?;
                // The patient must exist (and not be deleted) for its compartment to be asked for.
                read_head(&mut tx, patient).await?;
                let readable: Vec<&str> = open
                    .into_iter()
                    .filter(|t| {
                        query.types.is_empty() || query.types.iter().any(|q| q.as_str() == *t)
                    })
                    .collect();
                let count = query.count.clamp(1, MAX_HISTORY_COUNT);
                let mut entries = Vec::with_capacity(count);
                let mut next = None;
                // Pages are filled past what the caller may not see (a label, another patient's
                // compartment), and the sealed position never tells what was skipped.
                'pages: for round in 0..MAX_FILL_ROUNDS {
                    let rows = sqlx::query(
                        "SELECT h.resource_type, h.id, v.version_id, v.last_updated, v.sealed,
                        k.id AS dek_id, k.scope, k.wrapped
                   FROM resources h
                   JOIN resource_versions v
                     ON v.resource_type = h.resource_type AND v.id = h.id
                    AND v.version_id = h.version_id
                   JOIN data_keys k ON k.id = v.dek_id
                  WHERE h.compartment = $1 AND NOT h.deleted
                    AND h.resource_type = ANY($2)
                    AND ($3::timestamptz IS NULL OR v.last_updated >= $3)
                    AND ($4::text IS NULL OR (h.resource_type, h.id) > ($4, $5))
                  ORDER BY h.resource_type, h.id
                  LIMIT $6",
                    )
                    .bind(scope)
                    .bind(&readable)
                    .bind(query.since)
                    .bind(after.as_ref().map(|(t, _)| t.clone()))
                    .bind(after.as_ref().map(|(_, i)| i.clone()))
                    .bind(i64::try_from(count + 1).unwrap_or(i64::MAX))
                    .fetch_all(&mut *tx)
                    .await?;
                    let exhausted = rows.len() <= count;
                    for row in &rows {
                        if entries.len() == count {
                            next = after.clone();
                            break 'pages;
                        }
                        let type_name: String = row.try_get("resource_type")?;
                        let resource_type =
                            ResourceType::parse(&type_name).ok_or(StoreError::Integrity)?;
                        let entry = self.open_row(resource_type, row).await?;
                        after = Some((type_name, entry.id.clone()));
                        if reach::body_visible(&plan, resource_type, &entry.id, &entry.body) {
                            entries.push(entry);
                        }
                    }
                    if exhausted {
                        break;
                    }
                    if round + 1 == MAX_FILL_ROUNDS {
                        next = after.clone();
                    }
                }
                drop(tx);
                let next = match next {
                    Some(position) => Some(self.seal_position("everything", &position).await?),
                    None => None,
                };
                Ok(EverythingPage { entries, next })
            }
            .await,
            |_| Recorded::Here(vec![Some(scope.clone())]),
        )
        .await
    }

    /// One statement in a transaction of its own under the caller's row-level security.
    pub(crate) async fn fetch_all_for<'q>(
        &self,
        ctx: &AccessContext,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<sqlx::postgres::PgRow>, StoreError> {
        let mut tx = self.begin_for(ctx).await?;
        let rows = query.fetch_all(&mut *tx).await?;
        // Read only: the rollback goes out with the connection's next statement.
        drop(tx);
        Ok(rows)
    }
}
