//! SMART on FHIR Backend Services and token enforcement, one rule per case: every FHIR request needs
//! a valid token (401), scopes limit interactions (403), a patient-context token sees only its
//! patient's compartment (404, indistinguishable from not found), and client assertions are checked
//! for audience, replay, algorithm, key id, lifetime and issuer.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use carapace_core::access::{Role, Scope};
use carapace_tests::*;
use jsonwebtoken::Algorithm;

async fn get(stack: &Stack, path: &str, token: Option<&str>) -> HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Accept", FHIR_JSON)];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    http("GET", &stack.server.url(path), &headers, None)
        .await
        .unwrap()
}

fn assert_invalid_client(r: &HttpResponse, why: &str) {
    assert_eq!(r.status, 401, "{why}: {}", r.text());
    assert_eq!(r.json()["error"], "invalid_client", "{why}");
    assert!(r.json().get("access_token").is_none());
}

#[tokio::test]
async fn fhir_requests_need_a_valid_unexpired_unrevoked_token() {
    let stack = Stack::start().await.unwrap();
    let created = stack
        .fhir()
        .post("Patient", &json!({"resourceType": "Patient"}))
        .await;
    let path = format!("Patient/{}", created.json()["id"].as_str().unwrap());

    // Discovery is open.
    assert_eq!(get(&stack, "metadata", None).await.status, 200);
    let smart = get(&stack, ".well-known/smart-configuration", None)
        .await
        .json();
    assert_eq!(smart["token_endpoint"], stack.server.token_url());
    assert_eq!(
        smart["token_endpoint_auth_signing_alg_values_supported"],
        json!(["RS384", "ES384"])
    );

    // No token, a malformed one, a made-up one: 401 with a Bearer challenge and an OperationOutcome.
    for token in [None, Some(""), Some("not-a-token")] {
        let r = get(&stack, &path, token).await;
        assert_eq!(r.status, 401, "{token:?}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer "));
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
    }
    let r = http(
        "GET",
        &stack.server.url(&path),
        &[("Authorization", "Basic YTpi")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);

    // An expired token: time passes (the token's expiry moves into the past).
    let client =
        BackendClient::register(&stack.db().await, Algorithm::ES384, &["system/*.rs"]).await;
    let token = client.token(&stack.server, "system/*.rs").await;
    assert_eq!(get(&stack, &path, Some(&token)).await.status, 200);
    sqlx::query(
        "UPDATE access_tokens SET expires_at = now() - interval '1 second' WHERE subject = $1",
    )
    .bind(&client.client_id)
    .execute(&stack.db().await)
    .await
    .unwrap();
    assert_eq!(
        status_within(401, || async {
            get(&stack, &path, Some(&token)).await.status
        })
        .await,
        401
    );

    // Revocation takes effect on the next request; introspection agrees.
    let token = client.token(&stack.server, "system/*.rs").await;
    let introspect = |t: String, auth: String| {
        let url = format!("{}/auth/introspect", stack.server.origin());
        async move {
            let form = format!("token={t}");
            let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
            if !auth.is_empty() {
                headers.push(("Authorization", auth.as_str()));
            }
            http("POST", &url, &headers, Some(form.into_bytes()))
                .await
                .unwrap()
        }
    };
    // (Introspection is for administrators: see `introspection_is_for_administrators_...`.)
    let admin = format!(
        "Bearer {}",
        carapace_core::identity::tokens::issue(
            &stack.db().await.into(),
            chrono::Utc::now(),
            "ops",
            carapace_core::access::Role::Admin,
            &[],
            None,
        )
        .await
        .unwrap()
        .access_token
    );
    let info = introspect(token.clone(), admin.clone()).await;
    assert_eq!(info.json()["active"], true, "{}", info.text());
    assert_eq!(info.json()["scope"], "system/*.rs");
    assert_eq!(
        introspect(token.clone(), String::new()).await.status,
        401,
        "introspection needs a token"
    );
    let revoke = http(
        "POST",
        &format!("{}/auth/revoke", stack.server.origin()),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(format!("token={token}").into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(revoke.status, 200);
    assert_eq!(get(&stack, &path, Some(&token)).await.status, 401);
    assert_eq!(introspect(token, admin).await.json()["active"], false);
}

#[tokio::test]
async fn client_assertions_are_verified_rule_by_rule() {
    let stack = Stack::start().await.unwrap();
    let db = stack.db().await;
    let client = BackendClient::register(&db, Algorithm::ES384, &["system/*.rs"]).await;
    let url = stack.server.token_url();
    let scope = "system/*.rs";

    // The good case, with ES384 and with RS384.
    let ok = BackendClient::request_token(
        &stack.server,
        &client.sign(client.header(), &client.claims(&url)),
        scope,
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let body = ok.json();
    assert_eq!(body["token_type"], "bearer");
    assert!(body["expires_in"].as_i64().unwrap() <= 300);
    assert!(
        body.get("refresh_token").is_none(),
        "no refresh tokens for backend clients"
    );
    let rsa = BackendClient::register(&db, Algorithm::RS384, &["system/*.rs"]).await;
    assert!(!rsa.token(&stack.server, scope).await.is_empty());

    // Another audience.
    let mut claims = client.claims(&url);
    claims["aud"] = json!("https://elsewhere.example/auth/token");
    assert_invalid_client(
        &BackendClient::request_token(&stack.server, &client.sign(client.header(), &claims), scope)
            .await,
        "aud",
    );

    // Replayed jti.
    let assertion = client.sign(client.header(), &client.claims(&url));
    assert_eq!(
        BackendClient::request_token(&stack.server, &assertion, scope)
            .await
            .status,
        200
    );
    assert_invalid_client(
        &BackendClient::request_token(&stack.server, &assertion, scope).await,
        "replay",
    );

    // alg: none.
    let header = B64URL.encode(json!({"alg": "none", "typ": "JWT", "kid": client.kid}).to_string());
    let payload = B64URL.encode(client.claims(&url).to_string());
    assert_invalid_client(
        &BackendClient::request_token(&stack.server, &format!("{header}.{payload}."), scope).await,
        "alg none",
    );

    // HS256 "signed" with the client's public key (the classic key-confusion attack).
    let mut hs = jsonwebtoken::Header::new(Algorithm::HS256);
    hs.kid = Some(client.kid.clone());
    for secret in [
        client.jwk.to_string(),
        client.jwk["x"].as_str().unwrap().to_string(),
    ] {
        let forged = jsonwebtoken::encode(
            &hs,
            &client.claims(&url),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert_invalid_client(
            &BackendClient::request_token(&stack.server, &forged, scope).await,
            "HS256",
        );
    }

    // Unknown kid, and a key of another client under our client id.
    let mut unknown = client.header();
    unknown.kid = Some("no-such-kid".into());
    assert_invalid_client(
        &BackendClient::request_token(
            &stack.server,
            &client.sign(unknown, &client.claims(&url)),
            scope,
        )
        .await,
        "kid",
    );
    let mut stolen_claims = rsa.claims(&url);
    stolen_claims["iss"] = json!(client.client_id);
    stolen_claims["sub"] = json!(client.client_id);
    let mut rsa_header = rsa.header();
    rsa_header.kid = Some(client.kid.clone());
    assert_invalid_client(
        &BackendClient::request_token(&stack.server, &rsa.sign(rsa_header, &stolen_claims), scope)
            .await,
        "wrong key",
    );

    // exp too far ahead, already expired, missing; iss != sub; missing jti.
    let now = chrono::Utc::now().timestamp();
    for (field, value) in [
        ("exp", json!(now + 3600)),
        ("exp", json!(now - 10)),
        ("sub", json!("someone-else")),
        ("jti", json!("")),
    ] {
        let mut claims = client.claims(&url);
        claims[field] = value.clone();
        assert_invalid_client(
            &BackendClient::request_token(
                &stack.server,
                &client.sign(client.header(), &claims),
                scope,
            )
            .await,
            &format!("{field}={value}"),
        );
    }
    let mut no_exp = client.claims(&url);
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_invalid_client(
        &BackendClient::request_token(&stack.server, &client.sign(client.header(), &no_exp), scope)
            .await,
        "no exp",
    );

    // Scopes the client is not registered for.
    let r = BackendClient::request_token(
        &stack.server,
        &client.sign(client.header(), &client.claims(&url)),
        "system/*.cruds",
    )
    .await;
    assert_eq!(
        r.status,
        400,
        "write scopes are not registered: {}",
        r.text()
    );
    assert_eq!(r.json()["error"], "invalid_scope");
    let r = BackendClient::request_token(
        &stack.server,
        &client.sign(client.header(), &client.claims(&url)),
        "patient/*.rs",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_scope");

    // A disabled client gets nothing, and its tokens stop working (once the server hears of it).
    let token = client.token(&stack.server, scope).await;
    assert!(carapace_core::identity::admin::disable_client(
        &db.clone().into(),
        &carapace_core::clock::SystemClock,
        &client.client_id
    )
    .await
    .unwrap());
    assert_invalid_client(
        &BackendClient::request_token(
            &stack.server,
            &client.sign(client.header(), &client.claims(&url)),
            scope,
        )
        .await,
        "disabled",
    );
    assert_eq!(get(&stack, "metadata", Some(&token)).await.status, 200);
    let created = stack
        .fhir()
        .post("Patient", &json!({"resourceType": "Patient"}))
        .await
        .json();
    let path = format!("Patient/{}", created["id"].as_str().unwrap());
    assert_eq!(
        status_within(401, || async {
            get(&stack, &path, Some(&token)).await.status
        })
        .await,
        401
    );
}

#[tokio::test]
async fn scopes_limit_interactions_and_patient_tokens_see_only_their_compartment() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let db = stack.db().await;
    let pa = fhir
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Alpha"}]}),
        )
        .await
        .json();
    let pb = fhir
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Beta"}]}),
        )
        .await
        .json();
    let (a, b) = (pa["id"].as_str().unwrap(), pb["id"].as_str().unwrap());
    let obs = |p: &str| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "hr"},
                               "subject": {"reference": format!("Patient/{p}")}})
    };
    let oa = fhir.post("Observation", &obs(a)).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ob = fhir.post("Observation", &obs(b)).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Wrong scope: a read-only Observation token may not read Patients or write anything (403).
    let client = BackendClient::register(&db, Algorithm::ES384, &["system/Observation.rs"]).await;
    let obs_only = client.token(&stack.server, "system/Observation.rs").await;
    assert_eq!(
        get(&stack, &format!("Observation/{oa}"), Some(&obs_only))
            .await
            .status,
        200
    );
    let r = get(&stack, &format!("Patient/{a}"), Some(&obs_only)).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["issue"][0]["code"], "forbidden");
    let auth = format!("Bearer {obs_only}");
    let post = http(
        "POST",
        &stack.server.url("Observation"),
        &[("Content-Type", FHIR_JSON), ("Authorization", &auth)],
        Some(obs(a).to_string().into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(post.status, 403);
    assert_eq!(
        get(&stack, "_history", Some(&obs_only)).await.status,
        403,
        "system history needs a wildcard scope"
    );

    // Patient A's token (as the authorization-code flow issues it for a patient app).
    let scopes = [Scope::parse("patient/*.rs").unwrap()];
    let issued = carapace_core::identity::tokens::issue(
        &db.clone().into(),
        chrono::Utc::now(),
        "patient-a",
        Role::Patient,
        &scopes,
        Some(a),
    )
    .await
    .unwrap();
    let ta = issued.access_token.as_str();
    assert_eq!(
        get(&stack, &format!("Patient/{a}"), Some(ta)).await.status,
        200
    );
    assert_eq!(
        get(&stack, &format!("Observation/{oa}"), Some(ta))
            .await
            .status,
        200
    );
    assert_eq!(
        get(&stack, &format!("Observation/{oa}/_history/1"), Some(ta))
            .await
            .status,
        200
    );

    // B's data through A's token looks exactly like data that does not exist.
    for path in [
        format!("Patient/{b}"),
        format!("Observation/{ob}"),
        format!("Observation/{ob}/_history/1"),
        format!("Observation/{ob}/_history"),
        format!("Patient/{b}/_history"),
    ] {
        let r = get(&stack, &path, Some(ta)).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        let (t, id) = path.split_once('/').unwrap();
        let id = id.split('/').next().unwrap();
        let absent = get(&stack, &format!("{t}/does-not-exist"), Some(ta)).await;
        assert_eq!(absent.status, 404);
        assert_eq!(
            r.text().replace(id, "X"),
            absent.text().replace("does-not-exist", "X"),
            "{path}"
        );
        assert!(!r.text().contains("Beta"));
    }
    // Type history is narrowed to A's compartment.
    let history = get(&stack, "Observation/_history", Some(ta)).await.json();
    let ids: Vec<&str> = history["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![oa.as_str()]);
    // Read-only patient scope: no writes, not even into A's own compartment.
    let auth = format!("Bearer {ta}");
    let put = http(
        "PUT",
        &stack.server.url(&format!("Patient/{a}")),
        &[("Content-Type", FHIR_JSON), ("Authorization", &auth)],
        Some(pa.to_string().into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(put.status, 403);

    // A patient token with write scope still cannot write into another compartment.
    let scopes = [Scope::parse("patient/*.cruds").unwrap()];
    let tw = carapace_core::identity::tokens::issue(
        &db.clone().into(),
        chrono::Utc::now(),
        "patient-a",
        Role::Patient,
        &scopes,
        Some(a),
    )
    .await
    .unwrap()
    .access_token;
    let auth = format!("Bearer {tw}");
    let send = |method: &'static str, path: String, body: Value| {
        let (url, auth) = (stack.server.url(&path), auth.clone());
        async move {
            http(
                method,
                &url,
                &[("Content-Type", FHIR_JSON), ("Authorization", &auth)],
                Some(body.to_string().into_bytes()),
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(send("POST", "Observation".into(), obs(a)).await.status, 201);
    assert_eq!(send("POST", "Observation".into(), obs(b)).await.status, 403);
    let mut moved = fhir.get(&format!("Observation/{ob}")).await.json();
    moved["status"] = json!("amended");
    assert_eq!(
        send("PUT", format!("Observation/{ob}"), moved.clone())
            .await
            .status,
        403,
        "writing into B's compartment"
    );
    moved["subject"] = json!({"reference": format!("Patient/{a}")});
    assert_eq!(
        send("PUT", format!("Observation/{ob}"), moved).await.status,
        404,
        "B's observation is invisible"
    );
    assert_eq!(
        send("DELETE", format!("Observation/{ob}"), json!({}))
            .await
            .status,
        404
    );
    assert_eq!(
        fhir.get(&format!("Observation/{ob}")).await.json()["status"],
        "final",
        "B's data unchanged"
    );

    // Every refusal is in the audit trail.
    let denied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE outcome <> '0' AND principal IN ($1, 'patient-a')",
    )
    .bind(&client.client_id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(denied >= 8, "{denied}");
}

#[tokio::test]
async fn the_readme_registration_script_gets_a_working_token() {
    let stack = Stack::start().await.unwrap();
    let admin = carapace_core::identity::tokens::issue(
        &stack.db().await.into(),
        chrono::Utc::now(),
        "script-admin",
        Role::Admin,
        &[],
        None,
    )
    .await
    .unwrap()
    .access_token;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ehr-token.sh");
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(stack.server.env.iter().cloned())
        .env("CARAPACE_ADMIN_TOKEN", admin)
        .env("CARAPACE_URL", stack.server.origin())
        .env("CONSOLE", bin_path("carapace-console"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let response: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(response["scope"], "system/*.rs", "{response}");
    let token = response["access_token"].as_str().unwrap();
    assert_eq!(
        get(&stack, "Patient/none", Some(token)).await.status,
        404,
        "the token is accepted"
    );
}

/// Defect 7 (issue 13): introspection maps tokens to people, so it is for administrators and for
/// backend clients an operator registered for it (`client register --introspect`); any other
/// caller gets 403 and learns nothing about the token, not even whether it is active.
#[tokio::test]
async fn introspection_is_for_administrators_and_registered_clients_only() {
    let stack = Stack::start().await.unwrap();
    let db = stack.db().await;
    let url = format!("{}/auth/introspect", stack.server.origin());
    let introspect = |token: String, bearer: String| {
        let url = url.clone();
        async move {
            http(
                "POST",
                &url,
                &[
                    ("Content-Type", "application/x-www-form-urlencoded"),
                    ("Authorization", &format!("Bearer {bearer}")),
                ],
                Some(format!("token={token}").into_bytes()),
            )
            .await
            .unwrap()
        }
    };
    let plain = BackendClient::register(&db, Algorithm::ES384, &["system/*.rs"]).await;
    let target = plain.token(&stack.server, "system/*.rs").await;

    // A plain backend client, even one with every FHIR scope: 403, nothing about the token.
    let plain_token = plain.token(&stack.server, "system/*.rs").await;
    let full = stack.server.token.clone().unwrap();
    for caller in [plain_token, full] {
        let r = introspect(target.clone(), caller).await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.json()["error"], "insufficient_scope");
        assert!(r.json().get("active").is_none(), "{}", r.text());
    }
    // A patient's or practitioner's token: 403 too.
    let practitioner = carapace_core::identity::tokens::issue(
        &db.clone().into(),
        chrono::Utc::now(),
        "dr.curious",
        Role::Practitioner,
        &[Scope::parse("user/*.rs").unwrap()],
        None,
    )
    .await
    .unwrap()
    .access_token;
    assert_eq!(introspect(target.clone(), practitioner).await.status, 403);

    // An administrator: 200, active, with the holder.
    let admin = carapace_core::identity::tokens::issue(
        &db.clone().into(),
        chrono::Utc::now(),
        "ops",
        Role::Admin,
        &[],
        None,
    )
    .await
    .unwrap()
    .access_token;
    let r = introspect(target.clone(), admin.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["active"], true);
    assert_eq!(r.json()["client_id"], plain.client_id.as_str());

    // A client registered with `carapace-console client register --introspect`: 200.
    let (private_pem, jwk) = BackendClient::keypair(Algorithm::ES384);
    let dir = tempfile::tempdir().unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, json!({"keys": [jwk.clone()]}).to_string()).unwrap();
    let out = tokio::process::Command::new(bin_path("carapace-console"))
        .args([
            "client",
            "register",
            "--name",
            "resource server",
            "--jwks-file",
        ])
        .arg(&jwks_file)
        .args(["--scope", "system/Patient.r", "--introspect"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(stack.server.env.iter().cloned())
        .env("CARAPACE_ADMIN_TOKEN", &admin)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let introspector = BackendClient {
        client_id: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        kid: jwk["kid"].as_str().unwrap().to_string(),
        alg: Algorithm::ES384,
        private_pem,
        jwk,
    };
    let own = introspector.token(&stack.server, "system/Patient.r").await;
    let r = introspect(target.clone(), own.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["active"], true);
    assert_eq!(r.json()["scope"], "system/*.rs");
    assert_eq!(
        introspect("no-such-token".into(), own.clone()).await.json()["active"],
        false
    );
    // Once the client is disabled its token is no token at all: 401.
    assert!(carapace_core::identity::admin::disable_client(
        &db.clone().into(),
        &carapace_core::clock::SystemClock,
        &introspector.client_id
    )
    .await
    .unwrap());
    assert_eq!(
        status_within(401, || async {
            introspect(target.clone(), own.clone()).await.status
        })
        .await,
        401
    );
}
