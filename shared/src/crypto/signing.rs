//! The server's own signature, for OpenID Connect id_tokens: ES256 (ECDSA over P-256 with SHA-256),
//! made by the key provider.
//!
//! - Vault transit: the key `<key>-oidc` (type `ecdsa-p256`, made on first use) signs through
//!   `transit/sign/<key>-oidc` with JWS marshaling; its private half never leaves Vault. The
//!   public halves (every version) are read from `transit/keys/<key>-oidc` for the JWKS.
//! - File keyring (development): `<data_dir>/oidc-signing.key` (PKCS#8, base64, 0600), made on
//!   first use, signed with `ring` (already in the tree under rustls and jsonwebtoken; RustCrypto's
//!   `p256` would be a second implementation of the same curve).
//!
//! A key is named (`kid`) by its RFC 7638 JWK thumbprint, so a verifier can pick it from the JWKS
//! and a rotated Vault key's versions never share a name. Nothing here knows tokens or FHIR.

use crate::crypto::keys::{check_private, vault_error, FileKeyring, KeyError, KeyProvider};
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use std::sync::atomic::Ordering;

/// The DER prefix of a P-256 SubjectPublicKeyInfo, before its 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

const FILE_NAME: &str = "oidc-signing.key";

/// A public signing key as a JWK (`kty` EC, `crv` P-256, `alg` ES256, `use` sig).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicJwk {
    pub kid: String,
    x: String,
    y: String,
}

impl PublicJwk {
    /// From an uncompressed SEC1 point (`04 || x || y`).
    fn from_point(point: &[u8]) -> Result<PublicJwk, KeyError> {
        if point.len() != 65 || point[0] != 4 {
            return Err(KeyError::Other(
                "the signing key is not a P-256 point".into(),
            ));
        }
        let x = B64URL.encode(&point[1..33]);
        let y = B64URL.encode(&point[33..]);
        // RFC 7638: the required members, lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = B64URL.encode(crate::crypto::sha256(canonical.as_bytes()));
        Ok(PublicJwk { kid, x, y })
    }

    /// From a PEM SubjectPublicKeyInfo, as Vault gives it.
    fn from_pem(pem: &str) -> Result<PublicJwk, KeyError> {
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = B64
            .decode(body)
            .map_err(|_| KeyError::Other("the signing key's public half is not PEM".into()))?;
        match der.split_at_checked(P256_SPKI_PREFIX.len()) {
            Some((prefix, point)) if prefix == P256_SPKI_PREFIX => PublicJwk::from_point(point),
            _ => Err(KeyError::Other("the signing key is not a P-256 key".into())),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
                           "kid": self.kid, "x": self.x, "y": self.y})
    }
}

impl KeyProvider {
    /// Sign `message` (a JWS signing input) with ES256 under the key named `kid`, which must be
    /// the current one ([`KeyProvider::current_signing_key`]). Returns the raw `r || s` signature.
    pub async fn sign_es256(&self, kid: &str, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            KeyProvider::Vault(v) => {
                let (version, key) = vault_current(v).await?;
                if key.kid != kid {
                    return Err(KeyError::Other(
                        "the signing key changed; sign again".into(),
                    ));
                }
                let client = v.client.read().await;
                v.calls.fetch_add(1, Ordering::Relaxed);
                let mut opts = vaultrs::api::transit::requests::SignDataRequest::builder();
                opts.key_version(version)
                    .hash_algorithm(vaultrs::api::transit::HashAlgorithm::Sha2_256)
                    .marshaling_algorithm(vaultrs::api::transit::MarshalingAlgorithm::Jws);
                let out = vaultrs::transit::data::sign(
                    &*client,
                    &v.config.mount,
                    &vault_key(v),
                    &B64.encode(message),
                    Some(&mut opts),
                )
                .await
                .map_err(vault_error)?;
                // `vault:v<N>:<base64url r||s>`
                let sig = out.signature.rsplit(':').next().unwrap_or("");
                B64URL
                    .decode(sig)
                    .map_err(|_| KeyError::Other("Vault returned no JWS signature".into()))
            }
            KeyProvider::File(f) => {
                let (pair, key) = file_pair(f)?;
                if key.kid != kid {
                    return Err(KeyError::Other(
                        "the signing key changed; sign again".into(),
                    ));
                }
                let rng = ring::rand::SystemRandom::new();
                pair.sign(&rng, message)
                    .map(|s| s.as_ref().to_vec())
                    .map_err(|_| KeyError::Other("signing failed".into()))
            }
        }
    }

    /// The key new signatures are made with (made on first use).
    pub async fn current_signing_key(&self) -> Result<PublicJwk, KeyError> {
        match self {
            KeyProvider::Vault(v) => Ok(vault_current(v).await?.1),
            KeyProvider::File(f) => Ok(file_pair(f)?.1),
        }
    }

    /// Every public key a signature still valid may have been made with: the JWKS.
    pub async fn signing_keys(&self) -> Result<Vec<PublicJwk>, KeyError> {
        match self {
            KeyProvider::Vault(v) => Ok(vault_versions(v)
                .await?
                .into_iter()
                .map(|(_, k)| k)
                .collect()),
            KeyProvider::File(f) => Ok(vec![file_pair(f)?.1]),
        }
    }
}

fn vault_key(v: &crate::crypto::keys::VaultTransit) -> String {
    format!("{}-oidc", v.config.key_name)
}

/// The key's versions with their public halves, oldest first; the key is made if absent.
async fn vault_versions(
    v: &crate::crypto::keys::VaultTransit,
) -> Result<Vec<(u64, PublicJwk)>, KeyError> {
    use vaultrs::api::transit::responses::ReadKeyData;
    use vaultrs::error::ClientError;
    let name = vault_key(v);
    let client = v.client.read().await;
    v.calls.fetch_add(1, Ordering::Relaxed);
    let read = match vaultrs::transit::key::read(&*client, &v.config.mount, &name).await {
        Ok(r) => r,
        Err(ClientError::APIError { code: 404, .. }) => {
            v.calls.fetch_add(2, Ordering::Relaxed);
            let mut opts = vaultrs::api::transit::requests::CreateKeyRequest::builder();
            opts.key_type(vaultrs::api::transit::KeyType::EcdsaP256);
            vaultrs::transit::key::create(&*client, &v.config.mount, &name, Some(&mut opts))
                .await
                .map_err(vault_error)?;
            vaultrs::transit::key::read(&*client, &v.config.mount, &name)
                .await
                .map_err(vault_error)?
        }
        Err(e) => return Err(vault_error(e)),
    };
    let ReadKeyData::Asymmetric(keys) = read.keys else {
        return Err(KeyError::Other(format!(
            "the Vault key {name} is not an ecdsa-p256 signing key"
        )));
    };
    let mut versions = keys
        .iter()
        .map(|(version, entry)| {
            let version: u64 = version
                .parse()
                .map_err(|_| KeyError::Other("Vault named a key version oddly".into()))?;
            Ok((version, PublicJwk::from_pem(&entry.public_key)?))
        })
        .collect::<Result<Vec<_>, KeyError>>()?;
    versions.sort_by_key(|(version, _)| *version);
    Ok(versions)
}

async fn vault_current(
    v: &crate::crypto::keys::VaultTransit,
) -> Result<(u64, PublicJwk), KeyError> {
    vault_versions(v)
        .await?
        .pop()
        .ok_or_else(|| KeyError::Other("the Vault signing key has no version".into()))
}

/// The dev keyring's signing key pair, made on first use.
fn file_pair(f: &FileKeyring) -> Result<(ring::signature::EcdsaKeyPair, PublicJwk), KeyError> {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING as ALG};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = f
        .path
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join(FILE_NAME);
    let rng = ring::rand::SystemRandom::new();
    let io = |e: std::io::Error| KeyError::Other(format!("{}: {e}", path.display()));
    if !path.exists() {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ALG, &rng)
            .map_err(|_| KeyError::Other("could not make a signing key".into()))?;
        // create_new: two processes starting together keep the first one's key.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut file) => {
                file.write_all(B64.encode(pkcs8.as_ref()).as_bytes())
                    .map_err(io)?;
                file.sync_all().map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
    }
    check_private(&path)?;
    let text = std::fs::read_to_string(&path).map_err(io)?;
    let der = B64
        .decode(text.trim())
        .map_err(|_| KeyError::Other(format!("{} is corrupt", path.display())))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ALG, &der, &rng)
        .map_err(|_| KeyError::Other(format!("{} is corrupt", path.display())))?;
    let jwk = PublicJwk::from_point(pair.public_key().as_ref())?;
    Ok((pair, jwk))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_keyring_signs_es256_that_its_jwk_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyProvider::File(FileKeyring::open_or_create(dir.path()).unwrap());
        let key = keys.current_signing_key().await.unwrap();
        // The same key on the next call (it is kept), and the JWKS lists it.
        assert_eq!(keys.current_signing_key().await.unwrap(), key);
        assert_eq!(keys.signing_keys().await.unwrap(), vec![key.clone()]);
        let header = B64URL.encode(format!(r#"{{"alg":"ES256","kid":"{}"}}"#, key.kid));
        let claims = B64URL.encode(r#"{"sub":"x"}"#);
        let input = format!("{header}.{claims}");
        let sig = keys.sign_es256(&key.kid, input.as_bytes()).await.unwrap();
        let jwt = format!("{input}.{}", B64URL.encode(sig));
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.to_json()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let decoded = jsonwebtoken::decode::<serde_json::Value>(
            &jwt,
            &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(decoded.claims["sub"], "x");
        // Another kid is refused rather than signed under a name that is not the key's.
        assert!(keys.sign_es256("other", input.as_bytes()).await.is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_p256_spki_pem_gives_its_point() {
        // `openssl ecparam -name prime256v1 -genkey | openssl ec -pubout`
        let pem = "-----BEGIN PUBLIC KEY-----\n\
            MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEa8HN5TX9fAToXK0uXYIi2jFS7YDU\n\
            L+QFqR7MI4ERpYMnSJt55ivPH9asX6w9dF1FsBqQpl/Jc69TTkgfk2jwew==\n\
            -----END PUBLIC KEY-----\n";
        let jwk = PublicJwk::from_pem(pem).unwrap();
        assert_eq!(jwk.to_json()["crv"], "P-256");
        assert!(PublicJwk::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END").is_err());
    }
}
