//! Who people and programs are: user accounts and their sign-in ([`users`]), access tokens and
//! backend clients ([`tokens`]), the SMART authorization-code flow for apps ([`authorize`]),
//! OpenID Connect id_tokens ([`oidc`]), the practitioner's patient picker ([`picker`]), EHR launch
//! contexts ([`launch`]), and the
//! audited administrative operations that create and change them ([`admin`]).

pub mod admin;
pub mod authorize;
pub mod launch;
pub mod oidc;
pub mod picker;
pub mod tokens;
pub mod users;
