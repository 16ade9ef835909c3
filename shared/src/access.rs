//! Who is asking: every core call that touches PHI takes an [`AccessContext`], so authorization and
//! audit cannot be skipped by forgetting a parameter.

use std::net::IpAddr;

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
}

/// The caller of one request.
#[derive(Debug, Clone)]
pub struct AccessContext {
    /// User name or client id; goes into the audit trail.
    pub principal: String,
    pub role: Role,
    /// SMART scopes granted to the caller's token.
    pub scopes: Vec<String>,
    /// Purpose of use (e.g. `TREAT`, `BTG`), if asserted.
    pub purpose_of_use: Option<String>,
    /// Network address as seen by the server.
    pub address: Option<IpAddr>,
}

impl AccessContext {
    /// The single configured principal the server acts as until SMART on FHIR authentication lands.
    pub fn development(principal: &str, address: Option<IpAddr>) -> AccessContext {
        AccessContext {
            principal: principal.to_string(),
            role: Role::System,
            scopes: vec!["system/*.cruds".into()],
            purpose_of_use: None,
            address,
        }
    }

    /// An operator running a maintenance command from the console.
    pub fn operator(principal: &str) -> AccessContext {
        AccessContext {
            principal: principal.to_string(),
            role: Role::Admin,
            scopes: Vec::new(),
            purpose_of_use: None,
            address: None,
        }
    }
}
