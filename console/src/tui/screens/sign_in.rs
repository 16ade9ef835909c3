//! The sign-in screen: an administrator's user name, password and TOTP or recovery code, asked
//! for once the core is open (a code typed earlier could expire while the console starts).

use crate::tui::form::Form;
use carapace_core::access::AccessContext;
use carapace_core::core::Core;
use carapace_core::identity::users;

/// Keys of the screen: the status line shows them.
pub const KEYS: &[(&str, &str)] = &[("Tab", "next field"), ("Enter", "sign in"), ("Esc", "quit")];

/// The empty sign-in form.
pub fn form() -> Form {
    Form::new(
        "Sign in",
        &[
            ("username", false),
            ("password", true),
            ("TOTP or recovery code", true),
        ],
    )
    .hint("Sign in as an administrator. Tab moves between fields, Enter signs in.")
}

/// Sign in with what `form` holds (audited either way); the form is emptied, with the one answer
/// for any failure shown on it.
pub async fn sign_in(core: &Core, form: &mut Form) -> Option<AccessContext> {
    let (username, password, code) = (
        form.value(0).to_string(),
        form.value(1).to_string(),
        form.value(2).to_string(),
    );
    *form = self::form();
    match crate::operator::sign_in(core, &username, &password, &code).await {
        Ok(Some(ctx)) => Some(ctx),
        Ok(None) => {
            form.error = Some(users::LoginError::Invalid.to_string());
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "console sign-in failed");
            form.error = Some("the sign-in service is unavailable".into());
            None
        }
    }
}
