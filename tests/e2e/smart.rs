//! SMART App Launch beyond the code flow itself: OpenID Connect id_tokens verified against the
//! server's JWKS with a real JWT library, refreshes that narrow scopes, the patient picker, EHR
//! launch contexts, and what discovery and introspection say.

use carapace_core::access::Role;
use carapace_core::config::Config;
use carapace_core::core::Core;
use carapace_core::identity::admin;
use carapace_core::identity::users::NewUser;
use carapace_tests::*;

pub(crate) const REDIRECT: &str = "http://127.0.0.1:9/smart/cb";

pub(crate) async fn core(stack: &Stack) -> Core {
    let env: std::collections::HashMap<String, String> = stack.server.env.iter().cloned().collect();
    Core::open(&Config::from_lookup(|k| env.get(k).cloned()).unwrap())
        .await
        .unwrap()
}

pub(crate) async fn register(stack: &Stack, scopes: &[&str]) -> String {
    let db = stack.db().await;
    admin::register_app(
        &db.into(),
        &carapace_core::clock::SystemClock,
        "Smart app",
        &[REDIRECT.to_string()],
        &scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    )
    .await
    .unwrap()
}

/// A user; returns the TOTP secret for roles that need one.
pub(crate) async fn user(
    stack: &Stack,
    username: &str,
    role: Role,
    patient: Option<&str>,
    practitioner: Option<&str>,
) -> Option<String> {
    let core = core(stack).await;
    let enrolled = admin::create_user(
        &core.store,
        &carapace_core::access::AccessContext::operator("test-admin"),
        &NewUser {
            username,
            role,
            patient_id: patient,
            practitioner_id: practitioner,
            password: "a smart passphrase",
        },
    )
    .await
    .unwrap();
    core.shutdown().await;
    enrolled.totp_uri.map(|uri| {
        uri.split("secret=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_string()
    })
}

pub(crate) fn authorize_url(
    stack: &Stack,
    client_id: &str,
    scope: &str,
    challenge: &str,
    extra: &[(&str, &str)],
) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", scope)
        .append_pair("state", "st-1")
        .append_pair("aud", &stack.server.base)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256");
    for (k, v) in extra {
        q.append_pair(k, v);
    }
    format!("{}/auth/authorize?{}", stack.server.origin(), q.finish())
}

/// A patient signs in (password only) and reaches the consent page.
async fn sign_in(stack: &Stack, browser: &mut Browser, url: &str, username: &str) -> String {
    let login = browser.get(url).await;
    assert_eq!(login.status, 200, "{}", login.text());
    let r = browser
        .post_form(
            &format!("{}/auth/login", stack.server.origin()),
            &[
                ("username", username),
                ("password", "a smart passphrase"),
                (
                    "continue",
                    &hidden_field(&login.text(), "continue").unwrap(),
                ),
                ("csrf", &hidden_field(&login.text(), "csrf").unwrap()),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let consent = browser.get(&r.header("location").unwrap()).await;
    assert_eq!(consent.status, 200, "{}", consent.text());
    consent.text()
}

/// Post a served form (its `continue` and `csrf`) with `fields`; returns the response.
async fn submit(
    stack: &Stack,
    browser: &mut Browser,
    page: &str,
    fields: &[(&str, &str)],
) -> HttpResponse {
    let cont = hidden_field(page, "continue").unwrap();
    let csrf = hidden_field(page, "csrf").unwrap();
    let mut all = vec![("continue", cont.as_str()), ("csrf", csrf.as_str())];
    all.extend_from_slice(fields);
    browser
        .post_form(&format!("{}/auth/consent", stack.server.origin()), &all)
        .await
}

pub(crate) fn redirect_param(location: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(location.split_once('?')?.1.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.to_string())
}

pub(crate) async fn token(stack: &Stack, fields: &[(&str, &str)]) -> HttpResponse {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        ser.append_pair(k, v);
    }
    http(
        "POST",
        &stack.server.token_url(),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(ser.finish().into_bytes()),
    )
    .await
    .unwrap()
}

pub(crate) async fn exchange(
    stack: &Stack,
    client_id: &str,
    code: &str,
    verifier: &str,
) -> HttpResponse {
    token(
        stack,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", client_id),
            ("code_verifier", verifier),
        ],
    )
    .await
}

async fn get(stack: &Stack, path: &str, access: &str) -> HttpResponse {
    http(
        "GET",
        &stack.server.url(path),
        &[("Authorization", &format!("Bearer {access}"))],
        None,
    )
    .await
    .unwrap()
}

/// Verify an id_token against the server's JWKS (found through its OpenID discovery document)
/// with jsonwebtoken: ES256, `iss` the discovery issuer, `aud` the app; returns its claims.
pub(crate) async fn verify_id_token(stack: &Stack, id_token: &str, client_id: &str) -> Value {
    let discovery = http(
        "GET",
        &stack.server.url(".well-known/openid-configuration"),
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(discovery.status, 200);
    let discovery = discovery.json();
    let jwks = http("GET", discovery["jwks_uri"].as_str().unwrap(), &[], None)
        .await
        .unwrap();
    assert_eq!(jwks.status, 200, "{}", jwks.text());
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&jwks.body).unwrap();
    let header = jsonwebtoken::decode_header(id_token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[client_id]);
    validation.set_issuer(&[discovery["issuer"].as_str().unwrap()]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "sub", "aud"]);
    jsonwebtoken::decode::<Value>(
        id_token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    )
    .unwrap()
    .claims
}

#[tokio::test]
async fn openid_fhiruser_gives_an_id_token_the_jwks_verifies_and_refreshes_only_narrow() {
    let stack = Stack::start().await.unwrap();
    let patient = stack
        .fhir()
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Oidc"}]}),
        )
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let client_id = register(
        &stack,
        &[
            "launch/patient",
            "openid",
            "fhirUser",
            "patient/*.rs",
            "offline_access",
        ],
    )
    .await;
    user(&stack, "pat.oidc", Role::Patient, Some(&patient), None).await;

    // Discovery at the origin and at the FHIR base says the same.
    let root = http(
        "GET",
        &format!("{}/.well-known/openid-configuration", stack.server.origin()),
        &[],
        None,
    )
    .await
    .unwrap();
    let base = http(
        "GET",
        &stack.server.url(".well-known/openid-configuration"),
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!((root.status, base.status), (200, 200));
    assert_eq!(root.json(), base.json());
    assert_eq!(root.json()["issuer"], stack.server.origin());
    assert_eq!(
        root.json()["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );

    let (verifier, challenge) = pkce();
    let url = authorize_url(
        &stack,
        &client_id,
        "launch/patient openid fhirUser patient/*.rs offline_access",
        &challenge,
        &[("nonce", "n-0S6_WzA2Mj")],
    );
    let mut browser = Browser::new();
    let consent = sign_in(&stack, &mut browser, &url, "pat.oidc").await;
    let done = submit(&stack, &mut browser, &consent, &[("decision", "allow")]).await;
    assert_eq!(done.status, 303, "{}", done.text());
    let code = redirect_param(&done.header("location").unwrap(), "code").unwrap();
    let t = exchange(&stack, &client_id, &code, &verifier).await;
    assert_eq!(t.status, 200, "{}", t.text());
    let t = t.json();
    let granted: Vec<&str> = t["scope"].as_str().unwrap().split(' ').collect();
    for s in [
        "patient/*.rs",
        "openid",
        "fhirUser",
        "launch/patient",
        "offline_access",
    ] {
        assert!(granted.contains(&s), "{s} in {granted:?}");
    }
    assert_eq!(t["patient"], patient.as_str());
    let claims = verify_id_token(&stack, t["id_token"].as_str().unwrap(), &client_id).await;
    assert_eq!(claims["sub"], "pat.oidc");
    assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(
        claims["fhirUser"],
        format!("{}/Patient/{patient}", stack.server.base)
    );
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());
    // The fhirUser URL is a resource the token may read.
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(
        get(&stack, &format!("Patient/{patient}"), access)
            .await
            .status,
        200
    );

    // Introspection (an administrator asks) answers what SMART lists.
    let admin = carapace_core::identity::tokens::issue(
        &stack.db().await.into(),
        chrono::Utc::now(),
        "introspector",
        Role::Admin,
        &[],
        None,
    )
    .await
    .unwrap();
    let info = http(
        "POST",
        &format!("{}/auth/introspect", stack.server.origin()),
        &[
            ("Authorization", &format!("Bearer {}", admin.access_token)),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        Some(format!("token={access}").into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(info.status, 200, "{}", info.text());
    let info = info.json();
    assert_eq!(info["active"], true);
    assert_eq!(info["client_id"], client_id.as_str());
    assert_eq!(info["sub"], "pat.oidc");
    assert_eq!(info["patient"], patient.as_str());
    assert_eq!(info["token_type"], "bearer");
    assert_eq!(
        info["fhirUser"],
        format!("{}/Patient/{patient}", stack.server.base)
    );
    assert_eq!(info["scope"], t["scope"]);
    assert!(info["exp"].as_i64().unwrap() > info["iat"].as_i64().unwrap());

    // Discovery lists what was just used, and the CapabilityStatement points at it.
    let smart = http(
        "GET",
        &stack.server.url(".well-known/smart-configuration"),
        &[],
        None,
    )
    .await
    .unwrap()
    .json();
    assert_eq!(smart["jwks_uri"], root.json()["jwks_uri"]);
    assert_eq!(smart["issuer"], root.json()["issuer"]);
    for c in [
        "sso-openid-connect",
        "launch-ehr",
        "context-ehr-patient",
        "launch-standalone",
    ] {
        assert!(
            smart["capabilities"]
                .as_array()
                .unwrap()
                .contains(&json!(c)),
            "{c}"
        );
    }
    let metadata = http("GET", &stack.server.url("metadata"), &[], None)
        .await
        .unwrap()
        .json();
    let security = &metadata["rest"][0]["security"];
    assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    let uris = &security["extension"][0];
    assert_eq!(
        uris["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    assert!(uris["extension"]
        .as_array()
        .unwrap()
        .contains(&json!({"url": "token", "valueUri": stack.server.token_url()})));

    // A tampered id_token does not verify.
    let id_token = t["id_token"].as_str().unwrap();
    let mut parts: Vec<String> = id_token.split('.').map(str::to_string).collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut forged: Value = serde_json::from_slice(&b64.decode(&parts[1]).unwrap()).unwrap();
    forged["sub"] = json!("someone.else");
    parts[1] = b64.encode(forged.to_string());
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(
        &http(
            "GET",
            &format!("{}/auth/jwks", stack.server.origin()),
            &[],
            None,
        )
        .await
        .unwrap()
        .body,
    )
    .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[&client_id]);
    assert!(jsonwebtoken::decode::<Value>(
        &parts.join("."),
        &jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap(),
        &validation,
    )
    .is_err());

    // A refresh asking for a wider scope is refused, and the refresh token still works after.
    let refresh = t["refresh_token"].as_str().unwrap().to_string();
    let refresh_with = |scope: &'static str, token: String| {
        let stack = &stack;
        let client_id = client_id.clone();
        async move {
            let mut fields = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", token.as_str()),
                ("client_id", client_id.as_str()),
            ];
            if !scope.is_empty() {
                fields.push(("scope", scope));
            }
            self::token(stack, &fields).await
        }
    };
    for wider in ["patient/*.cruds", "user/*.rs", "patient/*.rs launch"] {
        let r = refresh_with(wider, refresh.clone()).await;
        assert_eq!(r.status, 400, "{wider}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_scope", "{wider}");
    }
    // A narrower one gets exactly that, and the token reads only what it names.
    let r = refresh_with("patient/Observation.rs openid", refresh.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let narrow = r.json();
    assert_eq!(narrow["scope"], "patient/Observation.rs openid");
    assert_eq!(narrow["patient"], patient.as_str());
    let narrow_access = narrow["access_token"].as_str().unwrap();
    assert_eq!(
        get(&stack, &format!("Patient/{patient}"), narrow_access)
            .await
            .status,
        403
    );
    assert_eq!(
        get(
            &stack,
            &format!("Observation?patient={patient}"),
            narrow_access
        )
        .await
        .status,
        200
    );
    // The refreshed id_token: the same subject, no nonce (it belongs to the sign-in).
    let again = verify_id_token(&stack, narrow["id_token"].as_str().unwrap(), &client_id).await;
    assert_eq!(again["sub"], "pat.oidc");
    assert!(again.get("nonce").is_none());
    // The rotated refresh token keeps the whole grant: asked with no scope, all of it again.
    let r = refresh_with("", narrow["refresh_token"].as_str().unwrap().to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["scope"]
        .as_str()
        .unwrap()
        .split(' ')
        .any(|s| s == "patient/*.rs"));
}

/// A practitioner signs in (password, then TOTP) and reaches the page `url` leads to.
async fn practitioner_sign_in(
    stack: &Stack,
    browser: &mut Browser,
    url: &str,
    username: &str,
    secret: &str,
) -> String {
    let login = browser.get(url).await;
    assert_eq!(login.status, 200, "{}", login.text());
    let cont = hidden_field(&login.text(), "continue").unwrap();
    let totp = browser
        .post_form(
            &format!("{}/auth/login", stack.server.origin()),
            &[
                ("username", username),
                ("password", "a smart passphrase"),
                ("continue", &cont),
                ("csrf", &hidden_field(&login.text(), "csrf").unwrap()),
            ],
        )
        .await;
    assert_eq!(totp.status, 200, "{}", totp.text());
    let code = totp_rs::TOTP::from_url_unchecked(format!(
        "otpauth://totp/Carapace:{username}?secret={secret}&issuer=Carapace"
    ))
    .unwrap()
    .generate_current()
    .unwrap();
    let r = browser
        .post_form(
            &format!("{}/auth/login/totp", stack.server.origin()),
            &[
                ("code", &code),
                ("continue", &cont),
                ("csrf", &hidden_field(&totp.text(), "csrf").unwrap()),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let page = browser.get(&r.header("location").unwrap()).await;
    assert_eq!(page.status, 200, "{}", page.text());
    page.text()
}

#[tokio::test]
async fn an_ehr_launch_carries_its_patient_and_encounter_once_and_only_for_a_visible_patient() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    assert_eq!(
        fhir.put(
            "Practitioner/pr-ehr",
            &json!({"resourceType": "Practitioner", "id": "pr-ehr"})
        )
        .await
        .status,
        201
    );
    let patient = |family: &'static str| {
        let fhir = stack.fhir();
        async move {
            fhir.post(
                "Patient",
                &json!({"resourceType": "Patient", "name": [{"family": family}]}),
            )
            .await
            .json()["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let seen = patient("Seen").await;
    let unseen = patient("Unseen").await;
    assert_eq!(
        fhir.post("Consent", &permit_consent(&seen, "Practitioner/pr-ehr"))
            .await
            .status,
        201
    );
    let encounter = fhir
        .post(
            "Encounter",
            &json!({"resourceType": "Encounter", "status": "in-progress",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": format!("Patient/{seen}")}}),
        )
        .await;
    assert_eq!(encounter.status, 201, "{}", encounter.text());
    let encounter = encounter.json()["id"].as_str().unwrap().to_string();
    let client_id = register(
        &stack,
        &[
            "launch",
            "launch/patient",
            "openid",
            "fhirUser",
            "patient/*.rs",
        ],
    )
    .await;
    let secret = user(&stack, "dr.ehr", Role::Practitioner, None, Some("pr-ehr"))
        .await
        .unwrap();
    let env = stack.console_env("launcher").await;
    let make = |patient: String, encounter: Option<String>| {
        let env = env.clone();
        async move {
            let mut args = vec![
                "launch".to_string(),
                "create".into(),
                "--patient".into(),
                patient,
            ];
            if let Some(e) = encounter {
                args.extend(["--encounter".into(), e]);
            }
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                console(&env, &args, None)
            })
            .await
            .unwrap()
        }
    };
    let (ok, launch, err) = make(seen.clone(), Some(encounter.clone())).await;
    assert!(ok, "{err}");
    let launch = launch.trim().to_string();
    assert!(launch.len() >= 43, "an opaque launch id: {launch}");
    let (ok, _, err) = make("not an id!".into(), None).await;
    assert!(!ok && err.contains("not a resource id"), "{err}");

    let scope = "launch openid fhirUser patient/*.rs";
    let mut browser = Browser::new();
    let (verifier, challenge) = pkce();
    let url = authorize_url(
        &stack,
        &client_id,
        scope,
        &challenge,
        &[("launch", &launch)],
    );
    let consent = practitioner_sign_in(&stack, &mut browser, &url, "dr.ehr", &secret).await;
    assert!(consent.contains("id=\"allow\""), "{consent}");
    // No picker: the launch names the patient.
    let done = submit(&stack, &mut browser, &consent, &[("decision", "allow")]).await;
    assert_eq!(done.status, 303, "{}", done.text());
    let location = done.header("location").unwrap();
    let code = redirect_param(&location, "code").unwrap_or_else(|| panic!("{location}"));
    let t = exchange(&stack, &client_id, &code, &verifier).await;
    assert_eq!(t.status, 200, "{}", t.text());
    let t = t.json();
    assert_eq!(t["patient"], seen.as_str());
    assert_eq!(t["encounter"], encounter.as_str());
    assert_eq!(t["need_patient_banner"], true);
    assert!(t["scope"]
        .as_str()
        .unwrap()
        .split(' ')
        .any(|s| s == "launch"));
    assert!(t.get("smart_style_url").is_none());
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(
        get(&stack, &format!("Patient/{seen}"), access).await.status,
        200
    );
    assert_eq!(
        get(&stack, &format!("Encounter/{encounter}"), access)
            .await
            .status,
        200
    );

    // The same launch again: used.
    let again = browser
        .get(&authorize_url(
            &stack,
            &client_id,
            scope,
            &challenge,
            &[("launch", &launch)],
        ))
        .await;
    let refused = submit(
        &stack,
        &mut browser,
        &again.text(),
        &[("decision", "allow")],
    )
    .await;
    let location = refused.header("location").unwrap();
    assert_eq!(
        redirect_param(&location, "error").as_deref(),
        Some("invalid_scope")
    );
    assert!(redirect_param(&location, "code").is_none());
    // A launch for a patient the practitioner may not see gets no code either.
    let (ok, hidden_launch, err) = make(unseen.clone(), None).await;
    assert!(ok, "{err}");
    let page = browser
        .get(&authorize_url(
            &stack,
            &client_id,
            scope,
            &challenge,
            &[("launch", hidden_launch.trim())],
        ))
        .await;
    let refused = submit(&stack, &mut browser, &page.text(), &[("decision", "allow")]).await;
    let location = refused.header("location").unwrap();
    assert_eq!(
        redirect_param(&location, "error").as_deref(),
        Some("invalid_scope")
    );
    // `launch` without the launch scope is refused before anyone signs in.
    let no_scope = browser
        .get(&authorize_url(
            &stack,
            &client_id,
            "openid patient/*.rs",
            &challenge,
            &[("launch", "whatever")],
        ))
        .await;
    assert_eq!(no_scope.status, 303);
    assert_eq!(
        redirect_param(&no_scope.header("location").unwrap(), "error").as_deref(),
        Some("invalid_scope")
    );
}
