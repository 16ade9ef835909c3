//! Rate limits: per signed-in caller (Binary downloads included), per client address (as the
//! trusted proxy reports it; IPv6 by /64) and stricter per address on `/auth/*`. Past the burst:
//! 429, `Retry-After` and an OperationOutcome `throttled`; other callers and addresses go on; the
//! limit recovers after the wait; 0 turns a limit off; probes are never throttled.

use carapace_tests::*;
use std::time::Duration;

fn limits(client: u32, address: u32, auth: u32) -> Vec<(String, String)> {
    vec![
        ("CARAPACE_RATE_LIMIT_CLIENT".into(), client.to_string()),
        ("CARAPACE_RATE_LIMIT_ADDRESS".into(), address.to_string()),
        ("CARAPACE_RATE_LIMIT_AUTH".into(), auth.to_string()),
        // The harness's loopback connection is the proxy; X-Forwarded-For names the client.
        ("CARAPACE_TRUSTED_PROXIES".into(), "127.0.0.1".into()),
    ]
}

/// Send `request` until it is refused (at most `most` times); returns how many passed and the
/// refusal, having checked that the burst (twice `rate`) passed, and no more than it and what
/// the rate refilled meanwhile.
async fn until_throttled<F, Fut>(rate: u32, most: usize, request: F) -> (usize, HttpResponse)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = HttpResponse>,
{
    let started = std::time::Instant::now();
    for passed in 0..most {
        let r = request().await;
        if r.status == 429 {
            let refilled = (f64::from(rate) * started.elapsed().as_secs_f64()).ceil() as usize;
            let burst = 2 * rate as usize;
            assert!(
                (burst..=burst + refilled + 1).contains(&passed),
                "{passed} passed: a burst of {burst} and {refilled} refilled"
            );
            return (passed, r);
        }
    }
    panic!("no 429 within {most} requests");
}

fn assert_throttled(r: &HttpResponse) -> u64 {
    assert_eq!(r.status, 429, "{}", r.text());
    let outcome = r.json();
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    assert_eq!(outcome["issue"][0]["code"], "throttled", "{outcome}");
    let wait: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&wait), "{wait}");
    wait
}

#[tokio::test]
async fn a_caller_past_its_burst_gets_429_and_others_do_not() {
    let stack = Stack::start_with(Bao::start_dev().await.unwrap(), limits(5, 0, 0))
        .await
        .unwrap();
    let fhir = stack.fhir();
    let (_, refused) = until_throttled(5, 40, || fhir.get("Patient/none")).await;
    let wait = assert_throttled(&refused);
    // A Binary's raw download is a request of the same caller: refused too.
    let binary = http(
        "GET",
        &stack.server.url("Binary/none"),
        &[
            ("Accept", "application/octet-stream"),
            ("Authorization", &stack.server.bearer()),
        ],
        None,
    )
    .await
    .unwrap();
    assert_throttled(&binary);

    // Another caller has a bucket of its own.
    let other = stack
        .token(
            "another-caller",
            carapace_core::access::Role::System,
            "system/*.rs",
            None,
        )
        .await
        .unwrap();
    let r = http(
        "GET",
        &stack.server.url("Patient/none"),
        &[("Authorization", &format!("Bearer {other}"))],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.text());

    // After the wait, the first caller is served again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(fhir.get("Patient/none").await.status, 404);
}

async fn from(server: &Server, address: &str, method: &str, path: &str) -> HttpResponse {
    http(
        method,
        &format!("{}{path}", server.origin()),
        &[("X-Forwarded-For", address)],
        None,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn an_address_past_its_burst_gets_429_and_auth_is_stricter() {
    let stack = Stack::start_with(Bao::start_dev().await.unwrap(), limits(0, 5, 1))
        .await
        .unwrap();
    let server = &stack.server;
    let (_, refused) = until_throttled(5, 40, || {
        from(server, "203.0.113.5", "GET", "/fhir/Patient/x")
    })
    .await;
    assert_throttled(&refused);
    // Probes are not counted, so a load balancer never takes a node out for its own probing.
    assert_eq!(
        from(server, "203.0.113.5", "GET", "/readyz").await.status,
        200
    );
    assert_eq!(
        from(server, "203.0.113.5", "GET", "/livez").await.status,
        200
    );
    // Another address is served.
    let other = from(server, "203.0.113.6", "GET", "/fhir/Patient/x").await;
    assert_eq!(other.status, 401, "not throttled: asked for a token");

    // IPv6: one /64 is one client.
    let (_, refused) = until_throttled(5, 40, || {
        from(server, "2001:db8:0:7::1", "GET", "/fhir/Patient/x")
    })
    .await;
    assert_throttled(&refused);
    let same_64 = from(server, "2001:db8:0:7::ffff", "GET", "/fhir/Patient/x").await;
    assert_eq!(same_64.status, 429);
    let next_64 = from(server, "2001:db8:0:8::1", "GET", "/fhir/Patient/x").await;
    assert_eq!(next_64.status, 401);

    // /auth/* from one address: a burst of 2, well before the address limit.
    let (_, refused) = until_throttled(1, 10, || {
        from(server, "198.51.100.7", "POST", "/auth/token")
    })
    .await;
    assert_throttled(&refused);
    // ...while the same address still reads the API (its own, larger budget).
    let api = from(server, "198.51.100.7", "GET", "/fhir/Patient/x").await;
    assert_eq!(api.status, 401);
}

#[tokio::test]
async fn zero_turns_every_limit_off() {
    let stack = Stack::start_with(Bao::start_dev().await.unwrap(), limits(0, 0, 0))
        .await
        .unwrap();
    let fhir = stack.fhir();
    for _ in 0..60 {
        assert_eq!(fhir.get("Patient/none").await.status, 404);
        let token = from(&stack.server, "198.51.100.8", "POST", "/auth/token").await;
        assert_ne!(token.status, 429, "{}", token.text());
    }
}
