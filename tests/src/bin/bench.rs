//! Benchmark: starts a private PostgreSQL, `bao server -dev` and the release `carapace-server`, then
//! drives read-by-id and create workloads at 1 and 32 concurrent clients over loopback and prints a
//! table: throughput, p50, p99, Vault calls per 1,000 requests and the server's peak RSS.
//!
//! Run: `cargo build --release --workspace --bins && target/release/bench [--seconds N]`.

use carapace_tests::*;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy)]
enum Workload {
    Read,
    Create,
}

struct Row {
    name: &'static str,
    concurrency: usize,
    requests: usize,
    errors: usize,
    throughput: f64,
    p50: Duration,
    p99: Duration,
    vault_per_1000: f64,
}

fn observation(patient: &str, n: usize) -> Vec<u8> {
    json!({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": "2026-11-23T10:00:00Z",
        "valueQuantity": {"value": 60 + (n % 40), "unit": "beats/minute",
                          "system": "http://unitsofmeasure.org", "code": "/min"}
    })
    .to_string()
    .into_bytes()
}

async fn run(
    server: &Server,
    workload: Workload,
    concurrency: usize,
    seconds: f64,
    read_ids: Arc<Vec<String>>,
    patients: Arc<Vec<String>>,
) -> Row {
    let calls_before = server
        .metric("carapace_key_provider_calls_total")
        .await
        .unwrap_or(0);
    let (auth, base) = (server.bearer(), server.base.clone());
    let t = drive(concurrency, seconds, move |n| {
        let (auth, base) = (auth.clone(), base.clone());
        let (read_ids, patients) = (read_ids.clone(), patients.clone());
        async move {
            match workload {
                Workload::Read => {
                    let url = format!("{base}/Observation/{}", read_ids[n % read_ids.len()]);
                    let headers = [("Accept", FHIR_JSON), ("Authorization", auth.as_str())];
                    matches!(http("GET", &url, &headers, None).await, Ok(r) if r.status == 200)
                }
                Workload::Create => {
                    let body = observation(&patients[n % patients.len()], n);
                    let url = format!("{base}/Observation");
                    let headers = [
                        ("Content-Type", FHIR_JSON),
                        ("Prefer", "return=minimal"),
                        ("Authorization", auth.as_str()),
                    ];
                    matches!(http("POST", &url, &headers, Some(body)).await, Ok(r) if r.status == 201)
                }
            }
        }
    })
    .await;
    let calls_after = server
        .metric("carapace_key_provider_calls_total")
        .await
        .unwrap_or(0);
    Row {
        name: match workload {
            Workload::Read => "read by id",
            Workload::Create => "create",
        },
        concurrency,
        requests: t.latencies.len(),
        errors: t.errors,
        throughput: t.throughput(),
        p50: t.percentile(0.50),
        p99: t.percentile(0.99),
        vault_per_1000: (calls_after - calls_before) as f64 * 1000.0
            / t.latencies.len().max(1) as f64,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: f64 = arg("--seconds").unwrap_or(10.0);
    eprintln!("starting PostgreSQL, OpenBao and carapace-server ...");
    let stack = Stack::start().await?;
    let server = &stack.server;
    let fhir = stack.fhir();
    // 200 patients, 2,000 observations: reads spread over many compartments (and data keys).
    let patients = fhir.bench_patients(200).await;
    let mut read_ids = Vec::new();
    for i in 0..2000 {
        let r = fhir
            .raw(
                "POST",
                "Observation",
                observation(&patients[i % patients.len()], i),
                &[],
            )
            .await;
        read_ids.push(r.json()["id"].as_str().unwrap_or_default().to_string());
    }
    let (read_ids, patients) = (Arc::new(read_ids), Arc::new(patients));
    // Warm-up: every data key unwrapped once, connections open.
    run(
        server,
        Workload::Read,
        8,
        2.0,
        read_ids.clone(),
        patients.clone(),
    )
    .await;

    let mut rows = Vec::new();
    for (workload, concurrency) in [
        (Workload::Read, 1),
        (Workload::Read, 32),
        (Workload::Create, 1),
        (Workload::Create, 32),
    ] {
        eprintln!(
            "running {} x{concurrency} for {seconds} s",
            match workload {
                Workload::Read => "read",
                Workload::Create => "create",
            }
        );
        rows.push(
            run(
                server,
                workload,
                concurrency,
                seconds,
                read_ids.clone(),
                patients.clone(),
            )
            .await,
        );
    }
    let rss = server.pid().map(peak_rss_mb).unwrap_or(f64::NAN);
    println!("| workload | concurrency | requests | errors | throughput (req/s) | p50 (ms) | p99 (ms) | Vault calls / 1,000 req |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            r.name,
            r.concurrency,
            r.requests,
            r.errors,
            r.throughput,
            r.p50.as_secs_f64() * 1000.0,
            r.p99.as_secs_f64() * 1000.0,
            r.vault_per_1000
        );
    }
    println!(
        "\nserver peak RSS (VmHWM): {rss:.1} MB; {} cores; {} s per workload",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        seconds
    );
    Ok(())
}
