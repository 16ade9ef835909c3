//! Sealing resources at rest: compress, then AES-256-GCM under a data key (DEK), with additional
//! authenticated data that binds the ciphertext to its row so that a copied ciphertext fails to open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Format byte at the front of every sealed value, so the layout can change later.
const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;

/// A 256-bit data encryption key in the clear. Zeroized when dropped; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Dek([u8; 32]);

impl Dek {
    pub fn from_bytes(bytes: &[u8]) -> Option<Dek> {
        let key: [u8; 32] = bytes.try_into().ok()?;
        Some(Dek(key))
    }

    pub fn random() -> Dek {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Dek(key)
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Dek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dek(..)")
    }
}

/// What a sealed value is bound to: opening it under any other binding fails.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub resource_type: &'a str,
    pub id: &'a str,
    pub version_id: i64,
    /// The key scope (patient compartment or resource type) whose DEK sealed it.
    pub compartment: &'a str,
}

impl Binding<'_> {
    fn aad(&self) -> Vec<u8> {
        // Length-prefixed fields: no two different bindings encode to the same bytes.
        let mut aad = b"carapace/resource/v1".to_vec();
        for part in [
            self.resource_type.as_bytes(),
            self.id.as_bytes(),
            &self.version_id.to_be_bytes(),
            self.compartment.as_bytes(),
        ] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part);
        }
        aad
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed value is malformed")]
    Malformed,
    /// Wrong key, tampered ciphertext, or a ciphertext moved from another row.
    #[error("sealed value failed authentication")]
    Authentication,
}

/// Compress `plaintext` and encrypt it under `dek`, bound to `binding`.
pub fn seal(dek: &Dek, binding: Binding<'_>, plaintext: &[u8]) -> Vec<u8> {
    seal_with_aad(dek, &binding.aad(), plaintext)
}

/// Decrypt and decompress a value sealed by [`seal`] under the same key and binding.
pub fn open(dek: &Dek, binding: Binding<'_>, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    open_with_aad(dek, &binding.aad(), sealed)
}

/// Seal arbitrary bytes with caller-chosen associated data (key wrapping uses this).
pub fn seal_with_aad(dek: &Dek, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let compressed = lz4_flex::compress_prepend_size(plaintext);
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let cipher = Aes256Gcm::new(dek.expose().into());
    // Encryption with a valid key and in-memory buffers cannot fail; an empty result would be caught
    // by `open` (authentication) rather than silently stored.
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &compressed,
                aad,
            },
        )
        .unwrap_or_default();
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out
}

pub fn open_with_aad(dek: &Dek, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    let (format, rest) = sealed.split_first().ok_or(SealError::Malformed)?;
    if *format != FORMAT_V1 || rest.len() < NONCE_LEN + 16 {
        return Err(SealError::Malformed);
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let cipher = Aes256Gcm::new(dek.expose().into());
    let compressed = cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| SealError::Authentication)?;
    // Authenticated, so the size prefix is ours, not an attacker's.
    lz4_flex::decompress_size_prepended(&compressed).map_err(|_| SealError::Malformed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn binding<'a>(id: &'a str, version_id: i64, compartment: &'a str) -> Binding<'a> {
        Binding {
            resource_type: "Patient",
            id,
            version_id,
            compartment,
        }
    }

    #[test]
    fn round_trips_and_hides_the_plaintext() {
        let dek = Dek::random();
        let text = br#"{"resourceType":"Patient","name":[{"family":"Canaryfamily"}]}"#;
        let sealed = seal(&dek, binding("a", 1, "Patient/a"), text);
        assert!(!sealed.windows(12).any(|w| w == b"Canaryfamily"));
        assert_eq!(
            open(&dek, binding("a", 1, "Patient/a"), &sealed).unwrap(),
            text
        );
    }

    #[test]
    fn a_ciphertext_moved_to_another_row_fails_to_open() {
        let dek = Dek::random();
        let sealed = seal(&dek, binding("a", 1, "Patient/a"), b"{}");
        for other in [
            binding("b", 1, "Patient/a"),
            binding("a", 2, "Patient/a"),
            binding("a", 1, "Patient/b"),
        ] {
            assert_eq!(open(&dek, other, &sealed), Err(SealError::Authentication));
        }
        assert_eq!(
            open(&Dek::random(), binding("a", 1, "Patient/a"), &sealed),
            Err(SealError::Authentication)
        );
    }

    #[test]
    fn tampering_and_truncation_are_detected() {
        let dek = Dek::random();
        let mut sealed = seal(&dek, binding("a", 1, "P"), b"{\"a\":1}");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(
            open(&dek, binding("a", 1, "P"), &sealed),
            Err(SealError::Authentication)
        );
        assert_eq!(
            open(&dek, binding("a", 1, "P"), &sealed[..5]),
            Err(SealError::Malformed)
        );
    }

    #[test]
    fn nonces_are_fresh() {
        let dek = Dek::random();
        let a = seal(&dek, binding("a", 1, "P"), b"same");
        let b = seal(&dek, binding("a", 1, "P"), b"same");
        assert_ne!(a, b);
    }
}
