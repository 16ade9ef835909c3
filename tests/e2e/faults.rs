//! Faults a client must be able to ride out: the database stopped (as a crash stops it) and the
//! key provider hung. The answer is a 503 with Retry-After soon enough for a client's timeout,
//! never a 500 or a hang; what was acknowledged before is still there; and the same server process
//! serves again once the fault is gone. (The whole drill, under load and with every fault, is
//! `target/release/fault-drill`.)

use carapace_tests::*;
use std::time::{Duration, Instant};

/// Far below a client's timeout (10 s in the drill): a request during an outage waits for a
/// connection or the key provider for at most a few seconds, then is told to come back.
const PROMPT: Duration = Duration::from_secs(8);

fn assert_retry_later(r: &HttpResponse, took: Duration, what: &str) {
    assert_eq!(r.status, 503, "{what}: {}", r.text());
    assert!(r.header("retry-after").is_some(), "{what}: {:?}", r.headers);
    assert_eq!(r.json()["issue"][0]["code"], "transient", "{what}");
    assert!(took < PROMPT, "{what}: answered after {took:?}");
}

/// Send until `ok` holds for the answer, for up to `limit`; the time it took.
async fn until(limit: Duration, mut send: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if send().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// `pg_ctl stop -m immediate`: requests are answered 503 + Retry-After within seconds (the pool's
/// acquire timeout was 10 s, so a request that had to connect hung past a client's timeout), and once PostgreSQL
/// has started again (crash recovery) the same server process serves, with what it acknowledged
/// before the crash.
#[tokio::test]
async fn a_crashed_database_gives_a_prompt_503_and_the_server_recovers_without_a_restart() {
    let stack = Stack::start_on_own_cluster().await.unwrap();
    let fhir = stack.fhir();
    let id = fhir
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "gender": "female"}),
        )
        .await
        .created_id();
    let pid = stack.server.pid();
    stack.postgres.stop_immediately().unwrap();
    // The pool's idle connections are dead now: each fails at once. Twenty requests at a time use
    // them all up; every later request must connect, and waits for the pool's acquire timeout.
    let (url, auth) = (
        stack.server.url(&format!("Patient/{id}")),
        stack.server.bearer(),
    );
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let (url, auth) = (url.clone(), auth.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let r = http("GET", &url, &[("Authorization", auth.as_str())], None).await;
                (r.unwrap(), started.elapsed())
            })
        })
        .collect();
    for answer in burst {
        let (r, took) = answer.await.unwrap();
        assert_retry_later(&r, took, "a read while the database is down");
    }
    for _ in 0..2 {
        let started = Instant::now();
        let read = fhir.get(&format!("Patient/{id}")).await;
        assert_retry_later(
            &read,
            started.elapsed(),
            "a read while the database is down",
        );
        let started = Instant::now();
        let create = fhir
            .post("Patient", &json!({"resourceType": "Patient"}))
            .await;
        assert_retry_later(
            &create,
            started.elapsed(),
            "a create while the database is down",
        );
    }
    stack.postgres.start_after_crash().unwrap();
    let back = until(Duration::from_secs(30), async || {
        fhir.get(&format!("Patient/{id}")).await.status == 200
    })
    .await;
    assert!(
        back.is_some(),
        "the server did not serve again after PostgreSQL started"
    );
    assert_eq!(stack.server.pid(), pid, "the same process serves");
    let after = fhir
        .post("Patient", &json!({"resourceType": "Patient"}))
        .await;
    assert_eq!(after.status, 201, "{}", after.text());
    // The create acknowledged before the crash has its event, and the chainer links again.
    let created = stack.audit_events("action=C").await;
    assert!(
        created.iter().any(|e| e["entity"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x["what"]["reference"] == format!("Patient/{id}/_history/1"))),
        "the acknowledged create's AuditEvent is there"
    );
    let db = stack.db().await;
    let chained = until(Duration::from_secs(20), async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_unchained")
            .fetch_one(&db)
            .await
            .is_ok_and(|n| n == 0)
    })
    .await;
    assert!(
        chained.is_some(),
        "the audit chainer links the queued events again"
    );
}

/// OpenBao stopped with SIGSTOP (it accepts connections, answers nothing): a read under a cached
/// data key still answers 200; a new patient, whose key-encryption key must be made, answers 503
/// + Retry-After within the key provider's timeout (creating the key and then asking whether it
/// exists took two timeouts, past a client's); after SIGCONT it is created.
#[tokio::test]
async fn a_hung_key_provider_gives_a_prompt_503_for_a_new_key_while_cached_keys_serve() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let id = fhir
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "gender": "male"}),
        )
        .await
        .created_id();
    let pid = stack.bao.pid().expect("OpenBao runs") as i32;
    // SAFETY: kill(2) on the test's own OpenBao process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let read = fhir.get(&format!("Patient/{id}")).await;
    let started = Instant::now();
    let create = fhir
        .post("Patient", &json!({"resourceType": "Patient"}))
        .await;
    let took = started.elapsed();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(read.status, 200, "a cached key serves: {}", read.text());
    assert_retry_later(&create, took, "a new patient while OpenBao hangs");
    let back = until(Duration::from_secs(30), async || {
        fhir.post("Patient", &json!({"resourceType": "Patient"}))
            .await
            .status
            == 201
    })
    .await;
    assert!(
        back.is_some(),
        "new patients are created again after SIGCONT"
    );
}
