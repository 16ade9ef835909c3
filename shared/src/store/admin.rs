//! Administrative operations are core operations: each takes the operator's [`AccessContext`], is
//! refused unless the operator is an administrator, and writes its AuditEvent in the same
//! transaction as the change — or, when it fails, on its own. The fronts call the operation and
//! never audit it themselves (users: create, lock, unlock, role, MFA reset, in
//! [`crate::identity::users`]; break-the-glass review in [`Store::review_btg`]).

use super::{Store, StoreError};
use crate::access::{AccessContext, Denied, Role};
use crate::audit::{AuditRecord, Interaction, Outcome};

impl Store {
    /// The transaction of an administrative change, once the operator is known to be an
    /// administrator.
    pub(crate) async fn begin_admin(
        &self,
        ctx: &AccessContext,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        if ctx.role != Role::Admin {
            return Err(Denied::AdministratorsOnly.into());
        }
        Ok(self.pool.begin().await?)
    }

    /// Audit the change `what` (`user-lock:alice`) in its transaction, and commit both.
    pub(crate) async fn commit_admin(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        ctx: &AccessContext,
        what: &str,
    ) -> Result<(), StoreError> {
        self.audit_in(&mut tx, ctx, &admin_record(self, what, Outcome::Success))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A failed administrative operation is audited too, on its own (its change rolled back).
    pub(crate) async fn audit_admin_result<T, E: std::fmt::Display>(
        &self,
        ctx: &AccessContext,
        what: &str,
        result: Result<T, E>,
    ) -> Result<T, E> {
        if result.is_err() {
            let record = admin_record(self, what, Outcome::MinorFailure);
            if let Err(e) = self.audit_record(ctx, &record).await {
                tracing::error!(error = %e, "could not audit a failed administrative operation");
            }
        }
        result
    }
}

pub(super) fn admin_record(store: &Store, what: &str, outcome: Outcome) -> AuditRecord {
    AuditRecord {
        query: None,
        interaction: Interaction::Admin,
        outcome,
        recorded: store.clock.now(),
        what: Some(format!("urn:carapace:admin:{what}")),
        patient: None,
    }
}
