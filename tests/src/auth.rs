//! Auth clients: SMART backend clients with real key pairs (client credentials), the server's kept
//! token, and a scripted browser with PKCE for the authorization-code flow.

use crate::http::{http, HttpResponse};
use crate::processes::Server;
use serde_json::{json, Value};
use std::process::Command;

/// A SMART backend client with a real key pair (made by `openssl`), registered directly in the
/// database the way `carapace-console client register` does.
pub struct BackendClient {
    pub client_id: String,
    pub kid: String,
    pub alg: jsonwebtoken::Algorithm,
    pub private_pem: Vec<u8>,
    /// The public JWK as registered.
    pub jwk: Value,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl BackendClient {
    /// A fresh key pair: `ES384` (P-384) or `RS384` (RSA 2048).
    pub fn keypair(alg: jsonwebtoken::Algorithm) -> (Vec<u8>, Value) {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
        use base64::Engine;
        let kid = uuid::Uuid::new_v4().simple().to_string();
        match alg {
            jsonwebtoken::Algorithm::ES384 => {
                let pem = openssl(&[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-384",
                ]);
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("k.pem");
                std::fs::write(&path, &pem).unwrap();
                let der = openssl(&[
                    "pkey",
                    "-in",
                    path.to_str().unwrap(),
                    "-pubout",
                    "-outform",
                    "DER",
                ]);
                // SubjectPublicKeyInfo ends with the uncompressed point 04 || X || Y.
                let point = &der[der.len() - 97..];
                let jwk = json!({"kty": "EC", "crv": "P-384", "kid": kid, "alg": "ES384", "use": "sig",
                                 "x": B64URL.encode(&point[1..49]), "y": B64URL.encode(&point[49..])});
                (pem, jwk)
            }
            _ => {
                let pem = openssl(&[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ]);
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("k.pem");
                std::fs::write(&path, &pem).unwrap();
                let modulus = String::from_utf8(openssl(&[
                    "rsa",
                    "-in",
                    path.to_str().unwrap(),
                    "-noout",
                    "-modulus",
                ]))
                .unwrap();
                let hex = modulus.trim().trim_start_matches("Modulus=");
                let n: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                let jwk = json!({"kty": "RSA", "kid": kid, "alg": "RS384", "use": "sig",
                                 "n": B64URL.encode(n), "e": "AQAB"});
                (pem, jwk)
            }
        }
    }

    /// Register a new client with `scopes` in the server's database.
    pub async fn register(
        pool: &sqlx::PgPool,
        alg: jsonwebtoken::Algorithm,
        scopes: &[&str],
    ) -> BackendClient {
        BackendClient::register_with(pool, alg, scopes, false).await
    }

    /// Register a new client, registered to introspect tokens if `introspect`.
    pub async fn register_with(
        pool: &sqlx::PgPool,
        alg: jsonwebtoken::Algorithm,
        scopes: &[&str],
        introspect: bool,
    ) -> BackendClient {
        let (private_pem, jwk) = BackendClient::keypair(alg);
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let client_id = carapace_core::identity::admin::register_client(
            &pool.clone().into(),
            &carapace_core::clock::SystemClock,
            "test client",
            &json!({"keys": [jwk.clone()]}),
            &scopes,
            introspect,
        )
        .await
        .expect("register client");
        BackendClient {
            client_id,
            kid: jwk["kid"].as_str().unwrap().to_string(),
            alg,
            private_pem,
            jwk,
        }
    }

    /// A signed client assertion with the given claims.
    pub fn sign(&self, header: jsonwebtoken::Header, claims: &Value) -> String {
        let key = match self.alg {
            jsonwebtoken::Algorithm::ES384 => {
                jsonwebtoken::EncodingKey::from_ec_pem(&self.private_pem)
            }
            _ => jsonwebtoken::EncodingKey::from_rsa_pem(&self.private_pem),
        }
        .unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    /// The standard claims for `token_url`, expiring in 4 minutes.
    pub fn claims(&self, token_url: &str) -> Value {
        let exp = chrono::Utc::now().timestamp() + 240;
        json!({"iss": self.client_id, "sub": self.client_id, "aud": token_url, "exp": exp,
               "jti": uuid::Uuid::new_v4().to_string()})
    }

    pub fn header(&self) -> jsonwebtoken::Header {
        let mut h = jsonwebtoken::Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        h
    }

    /// POST a client-credentials token request with this assertion.
    pub async fn request_token(server: &Server, assertion: &str, scope: &str) -> HttpResponse {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            .append_pair("client_assertion", assertion)
            .append_pair("scope", scope)
            .finish();
        http(
            "POST",
            &server.token_url(),
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Some(form.into_bytes()),
        )
        .await
        .expect("token request")
    }

    /// A fresh access token for `scope`.
    pub async fn token(&self, server: &Server, scope: &str) -> String {
        let assertion = self.sign(self.header(), &self.claims(&server.token_url()));
        let r = BackendClient::request_token(server, &assertion, scope).await;
        assert_eq!(r.status, 200, "token request failed: {}", r.text());
        r.json()["access_token"].as_str().unwrap().to_string()
    }
}

impl Server {
    pub fn token_url(&self) -> String {
        format!("{}/auth/token", self.origin())
    }

    /// Register a full-access backend client and keep its token for the FHIR helpers.
    pub async fn authorize(&mut self, pool: &sqlx::PgPool) {
        let client =
            BackendClient::register(pool, jsonwebtoken::Algorithm::ES384, &["system/*.cruds"])
                .await;
        self.token = Some(client.token(self, "system/*.cruds").await);
    }

    /// `Authorization` header value for the kept token.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token.as_deref().unwrap_or(""))
    }
}

/// A scripted browser for the authorization-code flow: follows nothing by itself, keeps its
/// cookies (by name; an empty value removes one).
pub struct Browser {
    pub cookies: std::collections::BTreeMap<String, String>,
}

impl Browser {
    pub fn new() -> Browser {
        Browser {
            cookies: Default::default(),
        }
    }

    fn remember(&mut self, r: &HttpResponse) {
        if let Some(set) = r.header("set-cookie") {
            let pair = set.split(';').next().unwrap_or("");
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() {
                    self.cookies.remove(name.trim());
                } else {
                    self.cookies.insert(name.trim().into(), value.into());
                }
            }
        }
    }

    /// The `Cookie` header this browser sends.
    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub async fn get(&mut self, url: &str) -> HttpResponse {
        let cookie = self.cookie_header();
        let r = http("GET", url, &[("Cookie", &cookie)], None)
            .await
            .expect("GET");
        self.remember(&r);
        r
    }

    pub async fn post_form(&mut self, url: &str, fields: &[(&str, &str)]) -> HttpResponse {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in fields {
            ser.append_pair(k, v);
        }
        let cookie = self.cookie_header();
        let r = http(
            "POST",
            url,
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Cookie", &cookie),
            ],
            Some(ser.finish().into_bytes()),
        )
        .await
        .expect("POST");
        self.remember(&r);
        r
    }
}

impl Default for Browser {
    fn default() -> Self {
        Browser::new()
    }
}

/// The value of a hidden input in a served page.
pub fn hidden_field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(
        html[start..end]
            .replace("&amp;", "&")
            .replace("&quot;", "\"")
            .replace("&#x27;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">"),
    )
}

/// PKCE: a verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
    use base64::Engine;
    let verifier = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let challenge = B64URL.encode(<sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes()));
    (verifier, challenge)
}
