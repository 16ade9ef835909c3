//! Who is asking, and what they may do: every core call that touches PHI takes an [`AccessContext`]
//! built from a verified token, and asks it here — scopes ∩ role ∩ compartment — before touching
//! data.
//!
//! Scopes follow SMART App Launch 2.0 (`patient/Observation.rs`, `user/*.cruds`, `system/*.rs`);
//! SMART v1 forms (`patient/*.read`, `user/Observation.write`, `system/*.*`) are accepted and mapped
//! (`read` → `rs`, `write` → `cud`, `*` → `cruds`).

pub mod policy;

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

/// The roles a principal can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Practitioner,
    Patient,
    Analytics,
    System,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Practitioner => "practitioner",
            Role::Patient => "patient",
            Role::Analytics => "analytics",
            Role::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "practitioner" => Role::Practitioner,
            "patient" => Role::Patient,
            "analytics" => Role::Analytics,
            "system" => Role::System,
            _ => return None,
        })
    }
}

/// What a request does to a resource, in SMART v2 letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Permission {
    fn bit(self) -> u8 {
        match self {
            Permission::Create => 1,
            Permission::Read => 2,
            Permission::Update => 4,
            Permission::Delete => 8,
            Permission::Search => 16,
        }
    }
}

/// Whose data a scope reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// Only the launch patient's compartment.
    Patient,
    /// What the signed-in user may see.
    User,
    /// A backend system.
    System,
}

/// One parsed SMART scope for resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub context: Context,
    /// `None` for `*`.
    pub resource_type: Option<String>,
    permissions: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{0}' is not a SMART resource scope")]
pub struct InvalidScope(pub String);

impl Scope {
    /// Parse a SMART v2 or v1 resource scope. Non-resource scopes (`openid`, `launch/patient`,
    /// `offline_access`) are not `Scope`s: see [`is_resource_scope`].
    pub fn parse(s: &str) -> Result<Scope, InvalidScope> {
        let bad = || InvalidScope(crate::fhir::printable(s));
        let (context, rest) = s.split_once('/').ok_or_else(bad)?;
        let context = match context {
            "patient" => Context::Patient,
            "user" => Context::User,
            "system" => Context::System,
            _ => return Err(bad()),
        };
        let (resource, perms) = rest.split_once('.').ok_or_else(bad)?;
        let resource_type = match resource {
            "*" => None,
            t if crate::fhir::schema::is_resource_type(t) => Some(t.to_string()),
            _ => return Err(bad()),
        };
        // v2 letters may carry a query (`?category=...`); we do not narrow by it, so refuse rather
        // than grant more than was asked.
        if perms.contains('?') {
            return Err(bad());
        }
        let permissions = match perms {
            "read" => 2 | 16,
            "write" => 1 | 4 | 8,
            "*" => 31,
            letters => {
                let mut bits = 0u8;
                let mut last = 0usize;
                for ch in letters.chars() {
                    let (bit, order) = match ch {
                        'c' => (1, 1),
                        'r' => (2, 2),
                        'u' => (4, 3),
                        'd' => (8, 4),
                        's' => (16, 5),
                        _ => return Err(bad()),
                    };
                    // v2 requires the letters in `cruds` order, each at most once.
                    if order <= last {
                        return Err(bad());
                    }
                    last = order;
                    bits |= bit;
                }
                if bits == 0 {
                    return Err(bad());
                }
                bits
            }
        };
        Ok(Scope {
            context,
            resource_type,
            permissions,
        })
    }

    pub fn allows(&self, resource_type: &str, permission: Permission) -> bool {
        self.permissions & permission.bit() != 0
            && self
                .resource_type
                .as_deref()
                .is_none_or(|t| t == resource_type)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let context = match self.context {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        };
        let mut letters = String::new();
        for (bit, ch) in [(1, 'c'), (2, 'r'), (4, 'u'), (8, 'd'), (16, 's')] {
            if self.permissions & bit != 0 {
                letters.push(ch);
            }
        }
        write!(
            f,
            "{context}/{}.{letters}",
            self.resource_type.as_deref().unwrap_or("*")
        )
    }
}

/// Scopes that grant no resource access but are part of SMART.
pub fn is_resource_scope(s: &str) -> bool {
    s.starts_with("patient/") || s.starts_with("user/") || s.starts_with("system/")
}

/// Why access was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No scope grants this interaction on this type: 403.
    #[error("the token's scopes do not allow {interaction} on {resource_type}")]
    Scope {
        interaction: &'static str,
        resource_type: String,
    },
    /// The data is outside what this caller may see: answered as not found.
    #[error("not found")]
    Hidden,
    /// A write would put data outside what the caller may write (their patient's compartment,
    /// or a compartment no consent opens to them): 403.
    #[error("this caller may not write into that patient's record")]
    OutsideCompartment,
    /// Administrative operations (users, roles, MFA, sessions) are for administrators: 403.
    #[error("administrative operations are for administrators")]
    AdministratorsOnly,
    /// A write would lower a security label; declassifying is the patient's alone: 403.
    #[error("a security label is lowered only by the patient whose record it is")]
    LabelLowered,
    /// A write would label data above what the caller may read: 403.
    #[error("this caller may not write data labelled above what it may read")]
    LabelAboveCeiling,
    /// Consents are written by their patient, an administrator or a system client: 403.
    #[error("Consent resources are managed by their patient, an administrator or the EHR system")]
    ConsentManagedByPatient,
    /// Analytics users never write: 403.
    #[error("the {0} role may not write")]
    ReadOnlyRole(&'static str),
    /// An analytics caller receives de-identified data only: a search by what could single out a
    /// person (a name, an identifier, a date finer than a year), or a check of a stored
    /// resource's own content, is refused: 403.
    #[error("analytics callers receive de-identified data only; {0} could identify a person")]
    Reidentifying(String),
    /// AuditEvents are read by administrators, and by patients for their own record: 403.
    #[error("AuditEvents are readable by administrators, and by patients for their own record")]
    AuditReaders,
    /// A break-the-glass assertion refused (role not allowed, no reason, expired): 403.
    #[error("{0}")]
    BreakGlass(String),
}

/// The caller of one request.
#[derive(Debug, Clone)]
pub struct AccessContext {
    /// User name or client id; goes into the audit trail.
    pub principal: String,
    pub role: Role,
    /// Resource scopes granted to the caller's token, already limited to what the role allows.
    pub scopes: Vec<Scope>,
    /// The launch patient (`Patient/<id>` compartment) for patient-context tokens.
    pub patient: Option<String>,
    /// Purpose of use (e.g. `TREAT`, `BTG`), if asserted.
    pub purpose_of_use: Option<String>,
    /// The reason given with a break-the-glass assertion (`X-Break-Glass-Reason`).
    pub btg_reason: Option<String>,
    /// Network address as seen by the server.
    pub address: Option<IpAddr>,
    /// The client (SMART app or backend client) the token was issued to, if any: with the
    /// principal, who owns what the caller starts (a Bulk export job).
    pub client: Option<String>,
    /// The policy's decisions for this request, computed by the store on first use and shared by
    /// every clone (the entries of a Bundle).
    pub plan: Arc<OnceLock<Arc<crate::access::policy::Plan>>>,
}

impl AccessContext {
    /// An operator running a command from the console, already authenticated there.
    pub fn operator(principal: &str) -> AccessContext {
        AccessContext {
            principal: principal.to_string(),
            role: Role::Admin,
            scopes: Vec::new(),
            patient: None,
            purpose_of_use: None,
            btg_reason: None,
            address: None,
            client: None,
            plan: Default::default(),
        }
    }

    /// May this caller perform `permission` on resources of `resource_type` at all?
    pub fn check(&self, resource_type: &str, permission: Permission) -> Result<(), Denied> {
        if self
            .scopes
            .iter()
            .any(|s| s.allows(resource_type, permission))
        {
            Ok(())
        } else {
            Err(Denied::Scope {
                interaction: match permission {
                    Permission::Create => "create",
                    Permission::Read => "read",
                    Permission::Update => "update",
                    Permission::Delete => "delete",
                    Permission::Search => "search",
                },
                resource_type: resource_type.to_string(),
            })
        }
    }

    /// The key scope a caller restricted to one patient may touch, if restricted.
    pub fn compartment(&self) -> Option<String> {
        // A token carries patient scopes only with a launch patient; then every scope it has is
        // narrowed to that compartment.
        self.patient.as_ref().map(|p| format!("Patient/{p}"))
    }
}

/// Which scope contexts a role may hold: a patient never gets `user/` or `system/` access, a
/// practitioner never `system/`, a backend client only `system/`, an analytics user only `user/`
/// (and the policy lets them read only, under research consents).
pub fn role_allows(role: Role, context: Context) -> bool {
    matches!(
        (role, context),
        (Role::Patient, Context::Patient)
            | (Role::Practitioner, Context::User | Context::Patient)
            | (Role::Admin, Context::User | Context::System)
            | (Role::System, Context::System)
            | (Role::Analytics, Context::User)
    )
}

/// How sign-in failures are limited, beyond the per-user back-off.
#[derive(Debug, Clone, Copy)]
pub struct SignInLimits {
    /// `CARAPACE_LOGIN_FAILURE_DECAY_HOURS` (default 24): a user's failures stop counting once the
    /// last one is this old, so a few typos a day never add up to a back-off.
    pub decay: chrono::Duration,
    /// `CARAPACE_LOGIN_ADDRESS_FAILURES` (default 50): sign-in failures one client address (an
    /// IPv4 address or an IPv6 /64) may have per window, whatever the usernames; past it, every
    /// sign-in from the address is refused until the window ends.
    pub address_failures: i32,
    /// `CARAPACE_LOGIN_ADDRESS_WINDOW_MINUTES` (default 60).
    pub address_window: chrono::Duration,
}

impl Default for SignInLimits {
    fn default() -> Self {
        SignInLimits {
            decay: chrono::Duration::hours(24),
            address_failures: 50,
            address_window: chrono::Duration::minutes(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(scopes: &[&str], patient: Option<&str>) -> AccessContext {
        AccessContext {
            principal: "t".into(),
            role: Role::System,
            scopes: scopes.iter().map(|s| Scope::parse(s).unwrap()).collect(),
            patient: patient.map(str::to_string),
            purpose_of_use: None,
            btg_reason: None,
            address: None,
            client: None,
            plan: Default::default(),
        }
    }

    #[test]
    fn v2_and_v1_scopes_parse_and_map() {
        let s = Scope::parse("patient/Observation.rs").unwrap();
        assert!(
            s.allows("Observation", Permission::Read)
                && s.allows("Observation", Permission::Search)
        );
        assert!(
            !s.allows("Observation", Permission::Create) && !s.allows("Patient", Permission::Read)
        );
        let v1 = Scope::parse("patient/*.read").unwrap();
        assert_eq!(v1.to_string(), "patient/*.rs");
        assert_eq!(
            Scope::parse("user/*.write").unwrap().to_string(),
            "user/*.cud"
        );
        assert_eq!(
            Scope::parse("system/*.*").unwrap().to_string(),
            "system/*.cruds"
        );
        assert_eq!(
            Scope::parse("user/*.cruds").unwrap().to_string(),
            "user/*.cruds"
        );
        for bad in [
            "patient/Observation.sr",
            "patient/Observation.rr",
            "patient/Foo.rs",
            "admin/*.rs",
            "patient/Observation",
            "patient/Observation.x",
            "patient/Observation.rs?category=a",
            "openid",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decisions_combine_scope_and_compartment() {
        let c = ctx(&["patient/Observation.rs"], Some("p1"));
        assert!(c.check("Observation", Permission::Read).is_ok());
        assert!(c.check("Observation", Permission::Update).is_err());
        assert!(c.check("Condition", Permission::Read).is_err());
        assert_eq!(c.compartment().as_deref(), Some("Patient/p1"));
        let sys = ctx(&["system/*.rs"], None);
        assert!(sys.compartment().is_none() && sys.check("Patient", Permission::Read).is_ok());
        assert!(sys.check("Patient", Permission::Delete).is_err());
    }

    #[test]
    fn roles_limit_scope_contexts() {
        assert!(role_allows(Role::Patient, Context::Patient));
        assert!(!role_allows(Role::Patient, Context::User));
        assert!(!role_allows(Role::Practitioner, Context::System));
        assert!(!role_allows(Role::System, Context::User));
        assert!(role_allows(Role::Analytics, Context::User));
        assert!(!role_allows(Role::Analytics, Context::System));
    }
}
