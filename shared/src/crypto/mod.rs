//! Cryptography at rest: sealing with AES-256-GCM under data keys ([`seal`]), the key providers that
//! make and wrap those keys ([`keys`]), streams sealed in chunks ([`chunks`]), the bounded cache of unwrapped keys ([`dek_cache`]) and
//! digests. Nothing here knows FHIR, SQL or who is asking.

pub mod chunks;
pub mod dek_cache;
pub mod keys;
mod seal;
pub mod signing;

pub use seal::*;

/// SHA-256 of `bytes`: token and code hashes, conditional-write lock keys.
pub(crate) fn sha256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}
