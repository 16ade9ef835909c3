//! The sign-in page in a real browser: headless Chromium (Debian's `chromium`, driven by
//! playwright-core from `tests/browser/`) goes through sign-in, TOTP and consent; the app exchanges
//! the code with its PKCE verifier and reads a resource with the token. `tests/run` installs the
//! browser and sets CARAPACE_CHROMIUM; without it the test says it is skipped.

use carapace_core::access::Role;
use carapace_core::config::Config;
use carapace_core::core::Core;
use carapace_core::identity::admin;
use carapace_core::identity::users::NewUser;
use carapace_tests::*;
use std::path::Path;

#[tokio::test]
async fn a_practitioner_signs_in_with_totp_in_chromium_and_the_app_reads_with_the_token() {
    let Ok(chromium) = std::env::var("CARAPACE_CHROMIUM") else {
        eprintln!("SKIPPED: set CARAPACE_CHROMIUM (tests/run installs Debian's chromium)");
        return;
    };
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        scripts.join("node_modules/playwright-core").exists(),
        "run `npm ci` in tests/browser"
    );
    let stack = Stack::start().await.unwrap();
    let created = stack
        .fhir()
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Browser"}]}),
        )
        .await;
    let patient = created.json()["id"].as_str().unwrap().to_string();
    let redirect = "http://127.0.0.1:9/app/callback";
    let db = stack.db().await;
    let client_id = carapace_core::identity::admin::register_app(
        &db.clone().into(),
        &carapace_core::clock::SystemClock,
        "Ward <b>viewer</b>",
        &[redirect.to_string()],
        &["user/*.rs".into(), "offline_access".into()],
    )
    .await
    .unwrap();
    let env: std::collections::HashMap<String, String> = stack.server.env.iter().cloned().collect();
    let core = Core::open(&Config::from_lookup(|k| env.get(k).cloned()).unwrap())
        .await
        .unwrap();
    let enrolled = admin::create_user(
        &core.store,
        &carapace_core::access::AccessContext::operator("test-admin"),
        &NewUser {
            username: "dr.chromium",
            role: Role::Practitioner,
            patient_id: None,
            practitioner_id: Some("pr-c"),
            password: "browser passphrase",
        },
    )
    .await
    .unwrap();
    let uri = enrolled.totp_uri.unwrap();
    let secret = uri
        .split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();

    let (verifier, challenge) = pkce();
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &client_id)
        .append_pair("redirect_uri", redirect)
        .append_pair("scope", "user/*.rs offline_access")
        .append_pair("state", "browser-state")
        .append_pair("aud", &stack.server.base)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .finish();
    let shot = std::env::temp_dir().join("carapace-consent.png");
    let out = tokio::process::Command::new("node")
        .arg(scripts.join("authorize.mjs"))
        .current_dir(&scripts)
        .env("CARAPACE_CHROMIUM", chromium)
        .env(
            "AUTHORIZE_URL",
            format!("{}/auth/authorize?{query}", stack.server.origin()),
        )
        .env("REDIRECT_PREFIX", redirect)
        .env("USERNAME", "dr.chromium")
        .env("PASSWORD", "browser passphrase")
        .env("TOTP_SECRET", secret)
        .env("SCREENSHOT", &shot)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "browser run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(result["scopes"].as_str().unwrap().contains("user/*.rs"));
    let url = result["redirect"].as_str().unwrap();
    let params: Vec<(String, String)> =
        form_urlencoded::parse(url.split_once('?').unwrap().1.as_bytes())
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("state"), "browser-state");
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 1000,
        "a screenshot of the consent page"
    );

    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", &get("code"))
        .append_pair("redirect_uri", redirect)
        .append_pair("client_id", &client_id)
        .append_pair("code_verifier", &verifier)
        .finish();
    let token = http(
        "POST",
        &stack.server.token_url(),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(form.into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(token.status, 200, "{}", token.text());
    let access = token.json()["access_token"].as_str().unwrap().to_string();
    assert!(
        token.json()["refresh_token"].is_string(),
        "offline_access was asked for"
    );
    let patient_url = stack.server.url(&format!("Patient/{patient}"));
    let bearer = format!("Bearer {access}");
    let auth = [("Authorization", bearer.as_str())];
    let read_patient = || http("GET", &patient_url, &auth, None);
    // No consent names the practitioner yet: the patient is not there for them.
    assert_eq!(read_patient().await.unwrap().status, 404);
    // The consent names the practitioner's record, which must exist (referential integrity).
    let practitioner = stack
        .fhir()
        .put(
            "Practitioner/pr-c",
            &json!({"resourceType": "Practitioner", "id": "pr-c"}),
        )
        .await;
    assert_eq!(practitioner.status, 201, "{}", practitioner.text());
    let consent = stack
        .fhir()
        .post("Consent", &permit_consent(&patient, "Practitioner/pr-c"))
        .await;
    assert_eq!(consent.status, 201, "{}", consent.text());
    let read = read_patient().await.unwrap();
    assert_eq!(read.status, 200);
    assert_eq!(read.json()["name"][0]["family"], "Browser");
    // The practitioner's token reads but cannot write (user/*.rs).
    let write = http(
        "POST",
        &stack.server.url("Patient"),
        &[
            ("Authorization", &format!("Bearer {access}")),
            ("Content-Type", FHIR_JSON),
        ],
        Some(b"{\"resourceType\":\"Patient\"}".to_vec()),
    )
    .await
    .unwrap();
    assert_eq!(write.status, 403);
    core.shutdown().await;
}

/// Defect 12 in a real browser: a SMART app page on a listed origin reads a resource with its
/// token from headless Chromium (preflight, then the call, its ETag readable); the same page on an
/// unlisted origin is stopped by the browser itself.
#[tokio::test]
async fn a_browser_app_on_a_listed_origin_calls_the_api_from_chromium() {
    let Ok(chromium) = std::env::var("CARAPACE_CHROMIUM") else {
        eprintln!("SKIPPED: set CARAPACE_CHROMIUM (tests/run installs Debian's chromium)");
        return;
    };
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        scripts.join("node_modules/playwright-core").exists(),
        "run `npm ci` in tests/browser"
    );
    // Page origins on loopback, as the server is: no private-network rules get in the way.
    let listed = format!("http://localhost:{}", free_port());
    let unlisted = format!("http://localhost:{}", free_port());
    let stack = Stack::start_with(
        Bao::start_dev().await.unwrap(),
        vec![("CARAPACE_CORS_ORIGINS".into(), listed.clone())],
    )
    .await
    .unwrap();
    let created = stack
        .fhir()
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "CrossOrigin"}]}),
        )
        .await;
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_str().unwrap().to_string();
    let out = tokio::process::Command::new("node")
        .arg(scripts.join("cors.mjs"))
        .current_dir(&scripts)
        .env("CARAPACE_CHROMIUM", chromium)
        .env("RESOURCE_URL", stack.server.url(&format!("Patient/{id}")))
        .env("TOKEN", stack.server.token.as_deref().unwrap())
        .env("ORIGINS", format!("{listed},{unlisted}"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "browser run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let console = String::from_utf8_lossy(&out.stderr);
    let ok = &result[listed.as_str()];
    assert_eq!(ok["status"], 200, "{result} {console}");
    assert_eq!(ok["family"], "CrossOrigin", "{result}");
    assert_eq!(ok["etag"], "W/\"1\"", "ETag is exposed: {result}");
    let refused = &result[unlisted.as_str()];
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("Failed to fetch")),
        "{result}"
    );
}

/// The patient picker in Chromium: a practitioner's app asks `launch/patient` with no EHR launch;
/// after sign-in and consent the practitioner chooses among the patients they may see (a search
/// narrows the list; one without a consent for them is never offered), a choice altered in the
/// page to a patient they may not see is refused, and the token is for the chosen patient only.
#[tokio::test]
async fn a_practitioner_picks_a_patient_in_chromium_and_the_token_is_for_that_patient_only() {
    let Ok(chromium) = std::env::var("CARAPACE_CHROMIUM") else {
        eprintln!("SKIPPED: set CARAPACE_CHROMIUM (tests/run installs Debian's chromium)");
        return;
    };
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        scripts.join("node_modules/playwright-core").exists(),
        "run `npm ci` in tests/browser"
    );
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let practitioner = fhir
        .put(
            "Practitioner/pr-pick",
            &json!({"resourceType": "Practitioner", "id": "pr-pick"}),
        )
        .await;
    assert_eq!(practitioner.status, 201, "{}", practitioner.text());
    let mut ids = Vec::new();
    for (family, consented) in [("Alpha", true), ("Beta", true), ("Hidden", false)] {
        let p = fhir
            .post(
                "Patient",
                &json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Pat"]}],
                        "birthDate": "1980-01-01"}),
            )
            .await
            .json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        if consented {
            let c = fhir
                .post("Consent", &permit_consent(&p, "Practitioner/pr-pick"))
                .await;
            assert_eq!(c.status, 201, "{}", c.text());
        }
        ids.push(p);
    }
    let (alpha, beta, hidden) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    let client_id = crate::smart::register(
        &stack,
        &["launch/patient", "patient/*.rs", "openid", "fhirUser"],
    )
    .await;
    let secret = crate::smart::user(
        &stack,
        "dr.picker",
        Role::Practitioner,
        None,
        Some("pr-pick"),
    )
    .await
    .unwrap();
    let (verifier, challenge) = pkce();
    let url = crate::smart::authorize_url(
        &stack,
        &client_id,
        "launch/patient patient/*.rs openid fhirUser",
        &challenge,
        &[],
    );
    let out = tokio::process::Command::new("node")
        .arg(scripts.join("authorize.mjs"))
        .current_dir(&scripts)
        .env("CARAPACE_CHROMIUM", chromium)
        .env("AUTHORIZE_URL", &url)
        .env("REDIRECT_PREFIX", crate::smart::REDIRECT)
        .env("USERNAME", "dr.picker")
        .env("PASSWORD", "a smart passphrase")
        .env("TOTP_SECRET", secret)
        .env("PICK_PATIENT", &alpha)
        .env("FORGE_PATIENT", &hidden)
        .env("PICK_SEARCH", "Alp")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "browser run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut listed: Vec<String> =
        serde_json::from_value(result["picker"]["listed"].clone()).unwrap();
    listed.sort();
    let mut expected = vec![alpha.clone(), beta.clone()];
    expected.sort();
    assert_eq!(
        listed, expected,
        "only the patients the practitioner may see"
    );
    assert_eq!(result["picker"]["searched"], json!([alpha.clone()]));
    let forged = result["picker"]["forged"].as_str().unwrap();
    assert_eq!(
        crate::smart::redirect_param(forged, "error").as_deref(),
        Some("invalid_scope"),
        "{forged}"
    );
    assert!(crate::smart::redirect_param(forged, "code").is_none());
    let redirect = result["redirect"].as_str().unwrap();
    let code = crate::smart::redirect_param(redirect, "code").unwrap();
    let t = crate::smart::exchange(&stack, &client_id, &code, &verifier).await;
    assert_eq!(t.status, 200, "{}", t.text());
    let t = t.json();
    assert_eq!(t["patient"], alpha.as_str());
    let claims =
        crate::smart::verify_id_token(&stack, t["id_token"].as_str().unwrap(), &client_id).await;
    assert_eq!(
        claims["fhirUser"],
        format!("{}/Practitioner/pr-pick", stack.server.base)
    );
    let bearer = format!("Bearer {}", t["access_token"].as_str().unwrap());
    let status = |id: String| {
        let url = stack.server.url(&format!("Patient/{id}"));
        let bearer = bearer.clone();
        async move {
            http("GET", &url, &[("Authorization", bearer.as_str())], None)
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(status(alpha.clone()).await, 200);
    // Beta is visible to the practitioner, but not through a token for Alpha.
    assert_eq!(status(beta.clone()).await, 404);
    assert_eq!(status(hidden.clone()).await, 404);
}
