//! R4 Subscriptions (rest-hook) that deliver: a local endpoint receives the notifications of
//! what matches, nothing for what does not or for what the Subscription's owner may not see;
//! a failing endpoint is retried, the Subscription shows `status: error` and recovers; whole
//! resources go only to allowed endpoints; every delivery is audited.

use carapace_core::access::Role;
use carapace_tests::*;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";

/// One request the endpoint received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// A rest-hook endpoint on loopback: records every request; answers 500 while `failing`.
struct Endpoint {
    origin: String,
    received: Arc<Mutex<Vec<Received>>>,
    failing: Arc<AtomicBool>,
}

impl Endpoint {
    async fn start() -> Endpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let received: Arc<Mutex<Vec<Received>>> = Default::default();
        let failing = Arc::new(AtomicBool::new(false));
        let (r, f) = (received.clone(), failing.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (r, f) = (r.clone(), f.clone());
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (r, f) = (r.clone(), f.clone());
                        async move {
                            let header = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string)
                            };
                            let (authorization, content_type) =
                                (header("authorization"), header("content-type"));
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                            r.lock().unwrap().push(Received {
                                path,
                                authorization,
                                content_type,
                                body,
                            });
                            let status = if f.load(Ordering::SeqCst) { 500 } else { 204 };
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    },
                );
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Endpoint {
            origin,
            received,
            failing,
        }
    }

    fn at(&self, path: &str) -> Vec<Received> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Wait (at most 20 s) until `path` has received `n` requests.
    async fn wait_for(&self, path: &str, n: usize) -> Vec<Received> {
        for _ in 0..200 {
            let got = self.at(path);
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{path} received {} requests, not {n}", self.at(path).len());
    }
}

async fn stack_for(endpoint: &Endpoint) -> Stack {
    Stack::start_with(
        Bao::start_dev().await.unwrap(),
        vec![
            (
                "CARAPACE_SUBSCRIPTION_ALLOWED_ORIGINS".into(),
                endpoint.origin.clone(),
            ),
            (
                "CARAPACE_SUBSCRIPTION_FULL_PAYLOAD".into(),
                endpoint.origin.clone(),
            ),
            ("CARAPACE_SUBSCRIPTION_RETRY_MS".into(), "100".into()),
        ],
    )
    .await
    .unwrap()
}

fn obs(patient: &str, code: &str, label: Option<&str>) -> Value {
    let mut o = json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")}});
    if let Some(label) = label {
        o["meta"] = json!({"security": [{"system": CONFIDENTIALITY, "code": label}]});
    }
    o
}

fn subscription(criteria: &str, endpoint: &str, extra: Value) -> Value {
    let mut channel = json!({"type": "rest-hook", "endpoint": endpoint});
    if let Value::Object(more) = extra {
        for (k, v) in more {
            channel[k] = v;
        }
    }
    json!({"resourceType": "Subscription", "status": "requested", "reason": "test",
        "criteria": criteria, "channel": channel})
}

async fn as_caller(
    stack: &Stack,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> HttpResponse {
    let auth = format!("Bearer {token}");
    http(
        method,
        &stack.server.url(path),
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", FHIR_JSON),
        ],
        body.map(|b| b.to_string().into_bytes()),
    )
    .await
    .unwrap()
}

fn created(r: &HttpResponse) -> String {
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

/// A practitioner's Subscription is evaluated as the practitioner: notified of the matching
/// Observation of the patient whose consent opens their record to them, and of nothing else — not
/// a non-matching one, not another patient's, not one labelled above their ceiling (V) — while
/// the system client's Subscription, which sees both patients, is told of both patients' matches. Pings carry no
/// body and the channel's header; each delivery is an AuditEvent.
#[tokio::test]
async fn rest_hooks_notify_only_what_the_owner_may_see() {
    let endpoint = Endpoint::start().await;
    let stack = stack_for(&endpoint).await;
    let f = stack.fhir();
    assert!(matches!(
        f.put(
            "Practitioner/pr-1",
            &json!({"resourceType": "Practitioner", "id": "pr-1"})
        )
        .await
        .status,
        200 | 201
    ));
    let a = created(
        &f.post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Alpha"}]}),
        )
        .await,
    );
    let b = created(
        &f.post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Bravo"}]}),
        )
        .await,
    );
    assert_eq!(
        f.post("Consent", &permit_consent(&a, "Practitioner/pr-1"))
            .await
            .status,
        201
    );
    stack.token_user("dr", "practitioner", Some("pr-1")).await;
    let dr = stack
        .token("dr", Role::Practitioner, "user/*.cruds", None)
        .await
        .unwrap();

    let criteria = "Observation?code=http://loinc.org|8867-4";
    let mine = as_caller(
        &stack,
        &dr,
        "POST",
        "Subscription",
        Some(&subscription(
            criteria,
            &format!("{}/dr", endpoint.origin),
            json!({"header": ["Authorization: Bearer hook-secret"]}),
        )),
    )
    .await;
    let mine = created(&mine);
    let stored = as_caller(&stack, &dr, "GET", &format!("Subscription/{mine}"), None).await;
    assert_eq!(
        stored.json()["status"],
        "active",
        "requested becomes active"
    );
    assert_eq!(
        created(
            &f.post(
                "Subscription",
                &subscription(criteria, &format!("{}/all", endpoint.origin), json!({}))
            )
            .await
        )
        .len(),
        36
    );

    // Not a match; another patient's; labelled above a practitioner's ceiling; then a match.
    created(&f.post("Observation", &obs(&a, "2339-0", None)).await);
    created(&f.post("Observation", &obs(&b, "8867-4", None)).await);
    created(&f.post("Observation", &obs(&a, "8867-4", Some("V"))).await);
    let seen = created(&f.post("Observation", &obs(&a, "8867-4", None)).await);

    // The system client sees B's (no label ceiling is above Normal for it: not the V one).
    let all = endpoint.wait_for("/all", 2).await;
    let to_dr = endpoint.wait_for("/dr", 1).await;
    // Whatever was queued with the others has been sent by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(endpoint.at("/all").len(), 2, "{all:?}");
    let to_dr_now = endpoint.at("/dr");
    assert_eq!(to_dr_now.len(), 1, "only the visible match: {to_dr_now:?}");
    let ping = &to_dr[0];
    assert!(ping.body.is_empty(), "a ping has no body");
    assert_eq!(ping.authorization.as_deref(), Some("Bearer hook-secret"));

    let events = stack
        .audit_events("subtype=subscription-notification")
        .await;
    let by_dr: Vec<&Value> = events
        .iter()
        .filter(|e| e["agent"][0]["who"]["display"] == "dr")
        .collect();
    assert_eq!(by_dr.len(), 1, "{events:?}");
    assert_eq!(by_dr[0]["outcome"], "0");
    let names = by_dr[0]["entity"].to_string();
    assert!(
        names.contains(&format!("Observation/{seen}/_history/1")),
        "{names}"
    );
    assert!(names.contains(&format!("Patient/{a}")), "{names}");
    // The header's value is the endpoint's secret: it is in no log line.
    assert!(!stack.server.log_text().contains("hook-secret"));
}

/// A Subscription the server cannot serve is refused with 422 naming the problem, and nothing is
/// stored: criteria that do not parse or name unknown parameters, other channels, a plain-http
/// endpoint nobody allowed, whole resources to an endpoint not listed for them.
#[tokio::test]
async fn subscriptions_the_server_cannot_serve_are_refused() {
    let endpoint = Endpoint::start().await;
    let stack = stack_for(&endpoint).await;
    let f = stack.fhir();
    let ok_endpoint = format!("{}/x", endpoint.origin);
    let cases = [
        (
            subscription("Nothing?code=1", &ok_endpoint, json!({})),
            "resource type",
        ),
        (
            subscription("Observation?no-such-param=1", &ok_endpoint, json!({})),
            "criteria",
        ),
        (
            subscription("Observation?_count=1", &ok_endpoint, json!({})),
            "_count",
        ),
        (
            json!({"resourceType": "Subscription", "status": "requested", "reason": "t",
                "criteria": "Observation?code=1", "channel": {"type": "websocket"}}),
            "websocket",
        ),
        (
            json!({"resourceType": "Subscription", "status": "requested", "reason": "t",
                "criteria": "Observation?code=1", "channel": {"type": "email", "endpoint": "mailto:a@b.example"}}),
            "email",
        ),
        (
            subscription("Observation?code=1", "http://hooks.example/x", json!({})),
            "https",
        ),
        (
            subscription(
                "Observation?code=1",
                "https://hooks.example/x",
                json!({"payload": "application/fhir+json"}),
            ),
            "CARAPACE_SUBSCRIPTION_FULL_PAYLOAD",
        ),
        (
            subscription(
                "Observation?code=1",
                &ok_endpoint,
                json!({"header": ["Host: elsewhere"]}),
            ),
            "Host",
        ),
    ];
    let before = stack.stored_versions().await;
    for (body, named) in cases {
        let r = f.post("Subscription", &body).await;
        assert_eq!(r.status, 422, "{body}: {}", r.text());
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
        assert!(r.text().contains(named), "{named}: {}", r.text());
    }
    assert_eq!(
        stack.stored_versions().await,
        before,
        "nothing refused is stored"
    );

    // Whole resources go to an endpoint listed for them, as the owner reads them.
    let full = created(
        &f.post(
            "Subscription",
            &subscription(
                "Observation?code=http://loinc.org|8867-4",
                &format!("{}/full", endpoint.origin),
                json!({"payload": "application/fhir+json"}),
            ),
        )
        .await,
    );
    assert!(!full.is_empty());
    let p = created(&f.post("Patient", &json!({"resourceType": "Patient"})).await);
    let o = created(&f.post("Observation", &obs(&p, "8867-4", None)).await);
    let got = endpoint.wait_for("/full", 1).await;
    assert_eq!(
        got[0].content_type.as_deref(),
        Some("application/fhir+json")
    );
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["id"], o.as_str());
    assert_eq!(body["resourceType"], "Observation");
}

/// An endpoint that fails is retried with back-off; after three failures in a row the
/// Subscription shows `status: error` and an `error` text; once the endpoint answers again the
/// notification is delivered and the Subscription is active again. Both are audited.
#[tokio::test]
async fn a_failing_endpoint_is_retried_and_the_subscription_recovers() {
    let endpoint = Endpoint::start().await;
    let stack = stack_for(&endpoint).await;
    let f = stack.fhir();
    endpoint.failing.store(true, Ordering::SeqCst);
    let sub = created(
        &f.post(
            "Subscription",
            &subscription(
                "Observation?code=http://loinc.org|8867-4",
                &format!("{}/flaky", endpoint.origin),
                json!({}),
            ),
        )
        .await,
    );
    let p = created(&f.post("Patient", &json!({"resourceType": "Patient"})).await);
    created(&f.post("Observation", &obs(&p, "8867-4", None)).await);

    let mut status = Value::Null;
    for _ in 0..200 {
        status = f.get(&format!("Subscription/{sub}")).await.json();
        if status["status"] == "error" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status["status"], "error", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains("HTTP 500"), "{error}");
    assert!(endpoint.at("/flaky").len() >= 3, "retried");

    endpoint.failing.store(false, Ordering::SeqCst);
    for _ in 0..200 {
        status = f.get(&format!("Subscription/{sub}")).await.json();
        if status["status"] == "active" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status["status"], "active", "{status}");
    assert!(status.get("error").is_none(), "{status}");

    let events = stack
        .audit_events("subtype=subscription-notification")
        .await;
    let outcomes: Vec<&str> = events
        .iter()
        .filter_map(|e| e["outcome"].as_str())
        .collect();
    assert!(
        outcomes.contains(&"8") && outcomes.contains(&"0"),
        "{outcomes:?}"
    );
}

/// An https endpoint at a loopback address nobody allowed is never reached: the name's address
/// is checked before connecting, every attempt fails, and the Subscription says why.
#[tokio::test]
async fn an_endpoint_at_a_non_public_address_is_not_reached() {
    let endpoint = Endpoint::start().await;
    let stack = stack_for(&endpoint).await;
    let f = stack.fhir();
    // The same listener, named so that its origin is not the allowed one.
    let port = endpoint.origin.rsplit(':').next().unwrap();
    let sub = created(
        &f.post(
            "Subscription",
            &subscription(
                "Observation?code=http://loinc.org|8867-4",
                &format!("https://localhost:{port}/inside"),
                json!({}),
            ),
        )
        .await,
    );
    let p = created(&f.post("Patient", &json!({"resourceType": "Patient"})).await);
    created(&f.post("Observation", &obs(&p, "8867-4", None)).await);
    let mut status = Value::Null;
    for _ in 0..200 {
        status = f.get(&format!("Subscription/{sub}")).await.json();
        if status["status"] == "error" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status["status"], "error", "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not a public one"),
        "{status}"
    );
    assert!(
        endpoint.received.lock().unwrap().is_empty(),
        "no connection was made"
    );
}

/// Two server nodes on one database both work the outbox; each notification is sent once.
#[tokio::test]
async fn two_nodes_send_each_notification_once() {
    let endpoint = Endpoint::start().await;
    let stack = stack_for(&endpoint).await;
    let mut second = Server::start(stack.server.env.clone()).await.unwrap();
    second.token = stack.server.token.clone();
    let f = stack.fhir();
    let g = Fhir { server: &second };
    created(
        &f.post(
            "Subscription",
            &subscription(
                "Observation?code=http://loinc.org|8867-4",
                &format!("{}/both", endpoint.origin),
                json!({}),
            ),
        )
        .await,
    );
    let p = created(&f.post("Patient", &json!({"resourceType": "Patient"})).await);
    for i in 0..20 {
        let node = if i % 2 == 0 { &f } else { &g };
        created(&node.post("Observation", &obs(&p, "8867-4", None)).await);
    }
    endpoint.wait_for("/both", 20).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(endpoint.at("/both").len(), 20, "each once");
    let sent = stack
        .audit_events("subtype=subscription-notification&outcome=0&_count=100")
        .await;
    assert_eq!(sent.len(), 20);
}

#[tokio::test]
async fn an_owner_may_keep_at_most_a_hundred_active_subscriptions() {
    let endpoint = Endpoint::start().await;
    let stack = stack_for(&endpoint).await;
    let f = stack.fhir();
    let hook = format!("{}/x", endpoint.origin);
    // Each active Subscription costs an audited search per matching write: bounded per owner.
    for i in 0..100 {
        let r = f
            .post(
                "Subscription",
                &subscription(&format!("Observation?code={i}"), &hook, json!({})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let before = stack.stored_versions().await;
    let over = f
        .post(
            "Subscription",
            &subscription("Observation?code=x", &hook, json!({})),
        )
        .await;
    assert_eq!(over.status, 422, "{}", over.text());
    assert!(over.text().contains("at most 100"), "{}", over.text());
    assert_eq!(stack.stored_versions().await, before, "nothing was stored");
    // One that is off costs nothing and is not counted.
    let mut off = subscription("Observation?code=y", &hook, json!({}));
    off["status"] = json!("off");
    let off = f.post("Subscription", &off).await;
    assert_eq!(off.status, 201, "{}", off.text());
}
