//! The HTTP layer's own edges (issue 13, defects 11 and 12): body encodings the server does not
//! apply, request heads past the limits, a database outage while a token is checked, and CORS for
//! browser SMART apps.

use carapace_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A response read off a raw socket: status, lower-cased header lines, body.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn assert_outcome(&self, status: u16, what: &str) {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("application/fhir+json")),
            "{what}: {:?}",
            self.headers
        );
        let outcome: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", self.body));
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{what}");
        assert!(
            outcome["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{what}: {outcome}"
        );
    }
}

/// Send `head` (a request without body, `Connection: close` added) on a fresh connection: the
/// harness's HTTP client cannot build URLs past 64 KiB, which is the point here.
async fn raw_request(server: &Server, request_line: &str, headers: &[(String, String)]) -> Raw {
    let authority = server.origin().trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let mut head = format!("{request_line}\r\nHost: {authority}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // The server may answer and close before it has read everything (that is its right).
    let _ = stream.write_all(head.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_end(&mut out),
    )
    .await
    .expect("an answer within 30 s");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Raw {
        status,
        headers,
        body: body.to_string(),
    }
}

/// Defect 11: a body in an encoding the server does not decode (`br`, `x-evil`, even `gzip`) is
/// refused with 415 naming the encoding, never parsed as if it were plain; `identity` is plain.
#[tokio::test]
async fn bodies_in_unknown_content_encodings_are_refused() {
    let stack = Stack::start().await.unwrap();
    let f = stack.fhir();
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Encoded"}]});
    for coding in ["br", "x-evil", "gzip", "identity, br"] {
        let r = f
            .send("POST", "Patient", &patient, &[("Content-Encoding", coding)])
            .await;
        assert_eq!(r.status, 415, "{coding}: {}", r.text());
        let diagnostics = r.json()["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .to_string();
        let named = coding.rsplit(',').next().unwrap().trim();
        assert!(
            diagnostics.contains(&format!("'{named}'")),
            "{coding}: {diagnostics}"
        );
    }
    // Bounded and printable, whatever was sent.
    let long = format!("x-{}\u{7f}", "e".repeat(4000)).replace('\u{7f}', "~");
    let r = f
        .send("POST", "Patient", &patient, &[("Content-Encoding", &long)])
        .await;
    assert_eq!(r.status, 415);
    assert!(r.text().len() < 500, "{}", r.text());
    let none = f.get("Patient?family=Encoded").await;
    assert_eq!(none.status, 200);
    assert!(
        none.json()["entry"].as_array().is_none_or(|e| e.is_empty()),
        "nothing was created: {}",
        none.text()
    );
    let plain = f
        .send(
            "POST",
            "Patient",
            &patient,
            &[("Content-Encoding", "identity")],
        )
        .await;
    assert_eq!(plain.status, 201, "{}", plain.text());
}

/// Defect 11: request heads past the limits (a 100 KB URL, 200 header fields, one 64 KB field,
/// and heads past what hyper parses at all) are refused with 414 or 431 and an OperationOutcome
/// in `application/fhir+json`, and the server keeps serving.
#[tokio::test]
async fn oversized_request_heads_are_refused_with_an_operation_outcome() {
    let stack = Stack::start().await.unwrap();
    let server = &stack.server;
    let long = |n: usize| format!("GET /fhir/Patient?name={} HTTP/1.1", "a".repeat(n));
    // Past the server's limit, and past hyper's own (65,534 bytes).
    raw_request(server, &long(20_000), &[])
        .await
        .assert_outcome(414, "20 KB URL");
    raw_request(server, &long(100_000), &[])
        .await
        .assert_outcome(414, "100 KB URL");
    let many = |n: usize| -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("X-Filler-{i}"), "v".into()))
            .collect()
    };
    let get = "GET /fhir/metadata HTTP/1.1";
    raw_request(server, get, &many(200))
        .await
        .assert_outcome(431, "200 header fields");
    // Past what hyper itself parses (400 fields): short ones, so the whole head is read at once
    // and the answer is not lost to a reset.
    let short: Vec<(String, String)> = (0..450).map(|i| (format!("X{i}"), "v".into())).collect();
    raw_request(server, get, &short)
        .await
        .assert_outcome(431, "450 header fields");
    let big = vec![("X-Big".to_string(), "b".repeat(64 * 1024))];
    raw_request(server, get, &big)
        .await
        .assert_outcome(431, "a 64 KB header field");
    // Garbage is a 400 with an outcome too.
    raw_request(server, "GET /fhir/metadata HTTP/9", &[])
        .await
        .assert_outcome(400, "a malformed request line");

    let fine = raw_request(server, get, &many(20)).await;
    assert_eq!(fine.status, 200, "{}", fine.body);
    assert_eq!(stack.fhir().get("metadata").await.status, 200, "still up");
}

/// Defect 11: when the database is away, a valid token is not called invalid (401 tells the client
/// to throw it away and sign in again): the answer is 503 with Retry-After and an OperationOutcome.
#[tokio::test]
async fn a_database_outage_while_checking_a_token_is_503_not_401() {
    // A cluster of its own: it is stopped below.
    let mut stack = Stack::start_on_own_cluster().await.unwrap();
    assert_eq!(stack.fhir().get("Patient").await.status, 200);
    let client = BackendClient::register(
        &stack.db().await,
        jsonwebtoken::Algorithm::ES384,
        &["system/*.rs"],
    )
    .await;
    stack.postgres.stop().unwrap();
    // Asking for a token meanwhile is a retry later too (RFC 6749 temporarily_unavailable),
    // not a server error.
    let url = stack.server.token_url();
    let token = BackendClient::request_token(
        &stack.server,
        &client.sign(client.header(), &client.claims(&url)),
        "system/*.rs",
    )
    .await;
    assert_eq!(token.status, 503, "{}", token.text());
    assert_eq!(token.json()["error"], "temporarily_unavailable");
    assert!(token.header("retry-after").is_some());
    let r = stack.fhir().get("Patient").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    assert!(r.header("www-authenticate").is_none());
    let outcome = r.json();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "transient");
    let text = r.text();
    assert!(
        !text.contains("connect") && !text.contains("SQL") && !text.contains("5432"),
        "no backend detail: {text}"
    );
    // A new connection attempt is refused too: still 503.
    let again = stack.fhir().get("Observation").await;
    assert_eq!(again.status, 503, "{}", again.text());
}

const APP: &str = "https://app.example";

async fn preflight(server: &Server, url: &str, origin: &str) -> HttpResponse {
    http(
        "OPTIONS",
        url,
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "GET"),
            (
                "Access-Control-Request-Headers",
                "authorization, x-purpose-of-use",
            ),
        ],
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("preflight to {url} on {}: {e}", server.base))
}

fn cors_headers(r: &HttpResponse) -> Vec<String> {
    r.headers
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

/// Defect 12: browser SMART apps on a listed origin can call /fhir and /auth/token: preflights are
/// answered without a token, answers carry `Access-Control-Allow-Origin`; other origins get no
/// `Access-Control-*` header at all, and `*` is refused at start-up.
#[tokio::test]
async fn browser_apps_on_listed_origins_may_call_the_api() {
    let stack = Stack::start_with(
        Bao::start_dev().await.unwrap(),
        vec![(
            "CARAPACE_CORS_ORIGINS".into(),
            format!("{APP}, http://localhost:3000"),
        )],
    )
    .await
    .unwrap();
    let server = &stack.server;

    let ok = preflight(server, &server.url("Patient?name=x"), APP).await;
    assert_eq!(ok.status, 204, "{}", ok.text());
    assert_eq!(
        ok.header("access-control-allow-origin").as_deref(),
        Some(APP)
    );
    let methods = ok.header("access-control-allow-methods").unwrap();
    assert!(
        methods.contains("GET") && methods.contains("PUT"),
        "{methods}"
    );
    let allowed = ok.header("access-control-allow-headers").unwrap();
    for h in [
        "Authorization",
        "Content-Type",
        "Prefer",
        "If-Match",
        "X-Purpose-Of-Use",
    ] {
        assert!(allowed.contains(h), "{h} in {allowed}");
    }
    assert!(ok.header("access-control-max-age").is_some());
    assert!(ok.header("vary").is_some_and(|v| v.contains("Origin")));
    assert!(ok.header("access-control-allow-credentials").is_none());

    let token = preflight(server, &server.token_url(), "http://localhost:3000").await;
    assert_eq!(token.status, 204);
    assert_eq!(
        token.header("access-control-allow-methods").as_deref(),
        Some("POST")
    );

    for origin in ["https://evil.example", "https://app.example.evil", "null"] {
        let no = preflight(server, &server.url("Patient"), origin).await;
        assert_eq!(no.status, 403, "{origin}");
        assert_eq!(no.json()["resourceType"], "OperationOutcome");
        assert!(cors_headers(&no).is_empty(), "{origin}: {:?}", no.headers);
    }
    // The sign-in pages are no API: no CORS there.
    let login = preflight(server, &format!("{}/auth/login", server.origin()), APP).await;
    assert!(cors_headers(&login).is_empty(), "{:?}", login.headers);

    // Actual calls: the listed origin may read the answer and its headers.
    let auth = server.bearer();
    let created = http(
        "POST",
        &server.url("Patient"),
        &[
            ("Origin", APP),
            ("Authorization", &auth),
            ("Content-Type", FHIR_JSON),
        ],
        Some(json!({"resourceType": "Patient"}).to_string().into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(created.status, 201);
    assert_eq!(
        created.header("access-control-allow-origin").as_deref(),
        Some(APP)
    );
    let exposed = created.header("access-control-expose-headers").unwrap();
    for h in ["Location", "ETag", "Content-Location", "Last-Modified"] {
        assert!(exposed.contains(h), "{h} in {exposed}");
    }
    // A 401 is readable by the app too (so it knows to get a token).
    let unauth = http("GET", &server.url("Patient"), &[("Origin", APP)], None)
        .await
        .unwrap();
    assert_eq!(unauth.status, 401);
    assert_eq!(
        unauth.header("access-control-allow-origin").as_deref(),
        Some(APP)
    );
    let other = http(
        "GET",
        &server.url("Patient"),
        &[("Origin", "https://evil.example"), ("Authorization", &auth)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(other.status, 200);
    assert!(cors_headers(&other).is_empty(), "{:?}", other.headers);
    assert!(other.header("vary").is_some_and(|v| v.contains("Origin")));

    // `*` (or anything but exact origins) stops the server at start-up, naming the setting.
    let mut env = stack.server.env.clone();
    env.retain(|(k, _)| k != "CARAPACE_CORS_ORIGINS");
    env.push(("CARAPACE_CORS_ORIGINS".into(), "*".into()));
    let err = Server::start(env).await.err().unwrap().to_string();
    assert!(err.contains("CARAPACE_CORS_ORIGINS"), "{err}");
}

/// Defect 12, by default: no origin is listed, so no response carries CORS headers and a
/// preflight is not answered as one.
#[tokio::test]
async fn without_listed_origins_there_is_no_cors() {
    let stack = Stack::start().await.unwrap();
    let server = &stack.server;
    let r = preflight(server, &server.url("Patient"), APP).await;
    assert!(cors_headers(&r).is_empty(), "{:?}", r.headers);
    let auth = server.bearer();
    let read = http(
        "GET",
        &server.url("Patient"),
        &[("Origin", APP), ("Authorization", &auth)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(read.status, 200);
    assert!(cors_headers(&read).is_empty(), "{:?}", read.headers);
}
