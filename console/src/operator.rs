//! The operator: an administrator signed in at the console. Every action is audited with them as
//! the agent.

use carapace_core::access::{AccessContext, Role, Scope};
use carapace_core::core::Core;
use carapace_core::identity::users;

/// Sign an administrator in (password and TOTP or recovery code), audited either way: the
/// operator's context, or `None` for any failure (one answer whatever went wrong).
pub async fn sign_in(
    core: &Core,
    username: &str,
    password: &str,
    code: &str,
) -> anyhow::Result<Option<AccessContext>> {
    // The name as typed is whatever someone typed: recorded printable.
    let ctx = AccessContext::operator(&carapace_core::fhir::printable(username));
    let user = users::login(
        &core.store,
        core.store.now(),
        username,
        password,
        Some(code),
    )
    .await;
    let ok = matches!(&user, Ok(u) if u.role == Role::Admin);
    core.store.record_admin(&ctx, "console-login", ok).await?;
    Ok(ok.then_some(ctx))
}

/// The operator's context for FHIR work through the core (finding patients, writing consents,
/// reading the trail): the operator with exactly the scopes that work needs.
pub fn scoped(principal: &str, scopes: &[&str]) -> AccessContext {
    let mut ctx = AccessContext::operator(principal);
    ctx.scopes = scopes.iter().filter_map(|s| Scope::parse(s).ok()).collect();
    ctx
}
