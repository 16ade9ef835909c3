//! The official R4 examples round-trip: PUT each, GET it back, compare modulo `meta`. Every example
//! the server accepts must come back exactly (decimals included); every refusal must be a 4xx
//! OperationOutcome, never a 5xx. Skipped (with a message) when the examples have not been fetched:
//! `tests/run` fetches them. Referential integrity is off here: the examples refer to resources
//! of examples that are not loaded (or come later in the order they are put).

use carapace_tests::conformance::{round_trip_all, Verdict};
use carapace_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_examples_round_trip() {
    let Some(dir) = examples_dir() else {
        eprintln!("SKIPPED: R4 examples not found (run tests/run, or set CARAPACE_R4_EXAMPLES)");
        return;
    };
    let stack = Stack::start_with(
        Bao::start_dev().await.unwrap(),
        vec![("CARAPACE_REFERENTIAL_INTEGRITY".into(), "off".into())],
    )
    .await
    .unwrap();
    let report = round_trip_all(&stack.server.base, &stack.server.bearer(), &dir, 8)
        .await
        .unwrap();
    eprintln!("{}", report.summary());
    assert!(
        report.total > 5000,
        "all examples were tried: {}",
        report.total
    );
    let server_errors: Vec<_> = report
        .results
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::ServerError(_)))
        .collect();
    assert!(
        server_errors.is_empty(),
        "5xx on examples: {server_errors:#?}"
    );
    let mismatches: Vec<_> = report
        .results
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Mismatch(_)))
        .collect();
    assert!(
        mismatches.is_empty(),
        "accepted examples that did not round-trip: {mismatches:#?}"
    );
    assert!(
        report.passed * 100 >= report.total * 99,
        "{}",
        report.summary()
    );
}
