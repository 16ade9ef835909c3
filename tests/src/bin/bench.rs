//! Benchmark: starts a private PostgreSQL, `bao server -dev` and the release `carapace-server`, then
//! drives read-by-id and create workloads at 1 and 32 concurrent clients over loopback (and a read
//! by id as a practitioner under consent at 32; creating patients, each with a key-encryption key
//! of its own; and reads through a second server whose data-key cache is off, so each read unwraps
//! its key in Vault — under the patient's own KEK, or under the main key) and prints a table: throughput, p50, p99, Vault
//! calls per 1,000 requests and the server's peak RSS. Each row is also run against `hello-server`
//! (a trivial hyper server in its own process) just before, with the same driver, concurrency and
//! duration, and printed beside it as hello's throughput and the workload's throughput and p50 as
//! ratios of hello's: on a shared, noisy machine the ratios are what compare between runs.
//!
//! With `wrk` installed (Debian package `wrk`), the read by id at 1 and 32 connections is also
//! measured with it, the load generator of issue 19's figures, against both servers.
//!
//! Run: `cargo build --release --workspace --bins && target/release/bench [--seconds N]
//! [--integrity on|off]`.

use carapace_core::access::Role;
use carapace_tests::*;
use std::sync::Arc;

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Read,
    /// A read by id as a practitioner user whose reach is a patient's permit Consent: the access
    /// gate reads the consents on every request, as it does for every caller narrowed by consent.
    ReadAsPractitioner,
    Create,
    /// A new patient: a new compartment, so a new KEK in Vault and a data key under it.
    CreatePatient,
    /// A read by id of an Observation with no data-key cache: its key unwrapped under its
    /// patient's own KEK (one of 200).
    ReadUncachedPatientKey,
    /// The same for a Practitioner: its key unwrapped under the main key.
    ReadUncachedMainKey,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Read => "read by id",
            Workload::ReadAsPractitioner => "read by id (practitioner)",
            Workload::Create => "create",
            Workload::CreatePatient => "create patient (new KEK)",
            Workload::ReadUncachedPatientKey => "read by id, no key cache (patient KEK)",
            Workload::ReadUncachedMainKey => "read by id, no key cache (main key)",
        }
    }

    fn uncached(self) -> bool {
        matches!(
            self,
            Workload::ReadUncachedPatientKey | Workload::ReadUncachedMainKey
        )
    }
}

struct Row {
    name: &'static str,
    concurrency: usize,
    timing: Timing,
    hello: Timing,
    vault_per_1000: f64,
}

/// Where a run's requests go: carapace-server, or the hello server in its place (which answers
/// everything with 200).
#[derive(Clone)]
struct Target {
    base: String,
    auth: String,
    hello: bool,
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

/// Drive `workload` against `target` from `concurrency` clients for `seconds`.
async fn measure(
    target: Target,
    workload: Workload,
    concurrency: usize,
    seconds: f64,
    read_ids: Arc<Vec<String>>,
    patients: Arc<Vec<String>>,
) -> Timing {
    drive(concurrency, seconds, move |n| {
        let target = target.clone();
        let (read_ids, patients) = (read_ids.clone(), patients.clone());
        async move {
            let (base, auth) = (&target.base, target.auth.as_str());
            match workload {
                Workload::Read
                | Workload::ReadAsPractitioner
                | Workload::ReadUncachedPatientKey => {
                    let url = format!("{base}/Observation/{}", read_ids[n % read_ids.len()]);
                    let headers = [("Accept", FHIR_JSON), ("Authorization", auth)];
                    matches!(http("GET", &url, &headers, None).await, Ok(r) if r.status == 200)
                }
                Workload::ReadUncachedMainKey => {
                    let url = format!("{base}/Practitioner/{}", patients[n % patients.len()]);
                    let headers = [("Accept", FHIR_JSON), ("Authorization", auth)];
                    matches!(http("GET", &url, &headers, None).await, Ok(r) if r.status == 200)
                }
                Workload::CreatePatient => {
                    let body = json!({"resourceType": "Patient", "name": [{"family": format!("New{n}")}]});
                    let url = format!("{base}/Patient");
                    let headers = [
                        ("Content-Type", FHIR_JSON),
                        ("Prefer", "return=minimal"),
                        ("Authorization", auth),
                    ];
                    let created = if target.hello { 200 } else { 201 };
                    let body = body.to_string().into_bytes();
                    matches!(http("POST", &url, &headers, Some(body)).await, Ok(r) if r.status == created)
                }
                Workload::Create => {
                    let body = observation(&patients[n % patients.len()], n);
                    let url = format!("{base}/Observation");
                    let headers = [
                        ("Content-Type", FHIR_JSON),
                        ("Prefer", "return=minimal"),
                        ("Authorization", auth),
                    ];
                    let created = if target.hello { 200 } else { 201 };
                    matches!(http("POST", &url, &headers, Some(body)).await, Ok(r) if r.status == created)
                }
            }
        }
    })
    .await
}

/// One table row: the hello server first, then carapace-server, the same requests from the same
/// driver at the same concurrency for the same time.
#[allow(clippy::too_many_arguments)]
async fn run(
    server: &Server,
    hello: &Hello,
    auth: &str,
    workload: Workload,
    concurrency: usize,
    seconds: f64,
    read_ids: Arc<Vec<String>>,
    patients: Arc<Vec<String>>,
) -> Row {
    let hello_target = Target {
        base: hello.base.clone(),
        auth: auth.to_string(),
        hello: true,
    };
    let hello_timing = measure(
        hello_target,
        workload,
        concurrency,
        seconds,
        read_ids.clone(),
        patients.clone(),
    )
    .await;
    let calls_before = server
        .metric("carapace_key_provider_calls_total")
        .await
        .unwrap_or(0);
    let target = Target {
        base: server.base.clone(),
        auth: auth.to_string(),
        hello: false,
    };
    let timing = measure(target, workload, concurrency, seconds, read_ids, patients).await;
    let calls_after = server
        .metric("carapace_key_provider_calls_total")
        .await
        .unwrap_or(0);
    Row {
        name: workload.name(),
        concurrency,
        vault_per_1000: (calls_after - calls_before) as f64 * 1000.0
            / timing.latencies.len().max(1) as f64,
        timing,
        hello: hello_timing,
    }
}

/// A practitioner user (`bench-dr`, Practitioner/pr-bench) whom every patient's permit Consent
/// names, as tests/e2e/consent.rs sets one up.
async fn practitioner(stack: &Stack, patients: &[String]) -> anyhow::Result<()> {
    let fhir = stack.fhir();
    let r = fhir
        .put(
            "Practitioner/pr-bench",
            &json!({"resourceType": "Practitioner", "id": "pr-bench"}),
        )
        .await;
    anyhow::ensure!(r.status < 300, "Practitioner: {}", r.text());
    stack
        .token_user("bench-dr", "practitioner", Some("pr-bench"))
        .await;
    for p in patients {
        let r = fhir
            .post("Consent", &permit_consent(p, "Practitioner/pr-bench"))
            .await;
        anyhow::ensure!(r.status == 201, "Consent: {}", r.text());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: f64 = arg("--seconds").unwrap_or(10.0);
    eprintln!("starting PostgreSQL, OpenBao, carapace-server and hello-server ...");
    // `--integrity off`: the server without referential integrity, to measure what it costs.
    let integrity: String = arg("--integrity").unwrap_or_else(|| "on".into());
    let mut env = unlimited();
    env.push(("CARAPACE_REFERENTIAL_INTEGRITY".into(), integrity));
    // Over the cluster's unix socket, as the embedded default connects.
    let stack = Stack::start_over_socket(Bao::start_dev().await?, env).await?;
    eprintln!("{UNLIMITED_NOTE}");
    let hello = Hello::start().await?;
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
    practitioner(&stack, &patients).await?;
    // 200 practitioners, all under one data key (wrapped by the main key), for the uncached rows.
    let mut practitioners = Vec::new();
    for i in 0..200 {
        let r = fhir
            .post(
                "Practitioner",
                &json!({"resourceType": "Practitioner", "name": [{"family": format!("Doc{i}")}]}),
            )
            .await;
        practitioners.push(r.json()["id"].as_str().unwrap_or_default().to_string());
    }
    // A second server on the same database and Vault whose key cache holds a key for one use:
    // every read unwraps its key in Vault, as a cold server does for each compartment's first.
    let mut uncached_env = server.env.clone();
    uncached_env.push(("CARAPACE_DEK_CACHE_MAX_USES".into(), "1".into()));
    let uncached = Server::start(uncached_env).await?;
    let (read_ids, patients) = (Arc::new(read_ids), Arc::new(patients));
    let practitioners = Arc::new(practitioners);
    let system = server.bearer();
    // Warm-up: every data key unwrapped once, connections open (to both servers).
    run(
        server,
        &hello,
        &system,
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
        (Workload::ReadAsPractitioner, 32),
        (Workload::Create, 1),
        (Workload::Create, 32),
        (Workload::CreatePatient, 1),
        (Workload::CreatePatient, 32),
        (Workload::ReadUncachedPatientKey, 1),
        (Workload::ReadUncachedPatientKey, 32),
        (Workload::ReadUncachedMainKey, 1),
        (Workload::ReadUncachedMainKey, 32),
    ] {
        eprintln!(
            "running {} x{concurrency} for {seconds} s (hello-server, then carapace-server)",
            workload.name()
        );
        // Issued for each row: access tokens live five minutes.
        let auth = match workload {
            Workload::ReadAsPractitioner => format!(
                "Bearer {}",
                stack
                    .token("bench-dr", Role::Practitioner, "user/*.rs", None)
                    .await?
            ),
            // The warm-up's token may have expired by now (a long run): a fresh one.
            _ => format!(
                "Bearer {}",
                stack
                    .token("bench-system", Role::System, "system/*.cruds", None)
                    .await?
            ),
        };
        let (target, second) = match workload {
            Workload::ReadUncachedMainKey => (&uncached, practitioners.clone()),
            w if w.uncached() => (&uncached, patients.clone()),
            _ => (server, patients.clone()),
        };
        rows.push(
            run(
                target,
                &hello,
                &auth,
                workload,
                concurrency,
                seconds,
                read_ids.clone(),
                second,
            )
            .await,
        );
    }
    let wrk_rows = match wrk_available() {
        true => {
            let mut out = vec![];
            for connections in [1, 32] {
                eprintln!("wrk: read by id x{connections} (hello-server, then carapace-server)");
                let auth = format!(
                    "Bearer {}",
                    stack
                        .token("bench-system", Role::System, "system/*.cruds", None)
                        .await?
                );
                let hello_row = wrk(&hello.base, &auth, &read_ids, connections, seconds)?;
                let row = wrk(&server.base, &auth, &read_ids, connections, seconds)?;
                out.push((connections, row, hello_row));
            }
            out
        }
        false => {
            eprintln!("wrk is not installed (Debian package wrk): its rows are left out");
            vec![]
        }
    };
    let rss = server.pid().map(peak_rss_mb).unwrap_or(f64::NAN);
    let uncached_rss = uncached.pid().map(peak_rss_mb).unwrap_or(f64::NAN);
    let hello_rss = peak_rss_mb(hello.pid());
    println!("| workload | concurrency | requests | errors | throughput (req/s) | p50 (ms) | p99 (ms) | Vault calls / 1,000 req |{VS_HELLO_HEADER}");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|{VS_HELLO_ALIGN}");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |{}",
            r.name,
            r.concurrency,
            r.timing.latencies.len(),
            r.timing.errors,
            r.timing.throughput(),
            r.timing.percentile(0.50).as_secs_f64() * 1000.0,
            r.timing.percentile(0.99).as_secs_f64() * 1000.0,
            r.vault_per_1000,
            vs_hello(&r.timing, &r.hello)
        );
    }
    if !wrk_rows.is_empty() {
        println!("\nThe same read by id from `wrk` (2 threads, keep-alive connections):\n");
        println!("| workload | connections | throughput (req/s) | p50 (ms) | non-2xx | hello (req/s) | hello p50 (ms) | throughput / hello |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for (connections, row, hello_row) in &wrk_rows {
            println!(
                "| read by id (wrk) | {connections} | {:.0} | {:.3} | {} | {:.0} | {:.3} | {:.3} |",
                row.rate,
                row.p50_ms,
                row.non_2xx,
                hello_row.rate,
                hello_row.p50_ms,
                row.rate / hello_row.rate
            );
        }
    }
    let hello_errors: usize = rows.iter().map(|r| r.hello.errors).sum();
    println!(
        "\nserver peak RSS (VmHWM): {rss:.1} MB (the uncached server: {uncached_rss:.1} MB); hello-server peak RSS: {hello_rss:.1} MB; {} cores; {} s per workload and server",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        seconds
    );
    let errors: usize = rows.iter().map(|r| r.timing.errors).sum::<usize>()
        + wrk_rows
            .iter()
            .map(|(_, row, _)| row.non_2xx as usize)
            .sum::<usize>();
    if errors > 0 {
        anyhow::bail!(
            "{errors} requests to carapace-server failed: the figures above are not valid"
        );
    }
    if hello_errors > 0 {
        anyhow::bail!(
            "{hello_errors} requests to hello-server failed: its figures are not a baseline"
        );
    }
    Ok(())
}

/// What `wrk` measured.
struct WrkRow {
    rate: f64,
    p50_ms: f64,
    non_2xx: u64,
}

fn wrk_available() -> bool {
    std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok()
}

/// `wrk` reading the observations `ids` by id (a Lua script takes each request's path from
/// them in turn) at `base` over `connections` connections for `seconds`.
fn wrk(
    base: &str,
    auth: &str,
    ids: &[String],
    connections: usize,
    seconds: f64,
) -> anyhow::Result<WrkRow> {
    let dir = tempfile::tempdir()?;
    let path = base
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
        .unwrap_or_default();
    let list: Vec<String> = ids
        .iter()
        .map(|id| format!("\"{path}/Observation/{id}\""))
        .collect();
    let script = format!(
        "local paths = {{{}}}\nlocal n = 0\nrequest = function()\n  n = n + 1\n  \
         return wrk.format(\"GET\", paths[(n % #paths) + 1])\nend\n",
        list.join(",")
    );
    let lua = dir.path().join("reads.lua");
    std::fs::write(&lua, script)?;
    let out = std::process::Command::new("wrk")
        .arg(format!("-t{}", connections.min(2)))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", seconds.ceil() as u64))
        .args(["--latency", "-H"])
        .arg(format!("Authorization: {auth}"))
        .args(["-H", "Accept: application/fhir+json", "-s"])
        .arg(&lua)
        .arg(base)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(out.status.success(), "wrk failed: {text}");
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
    };
    let rate = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Requests/sec in: {text}"))?;
    let p50_ms = field("50%")
        .map(|v| {
            let (number, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
            let n: f64 = number.parse().unwrap_or(f64::NAN);
            match unit {
                "us" => n / 1000.0,
                "ms" => n,
                "s" => n * 1000.0,
                _ => f64::NAN,
            }
        })
        .unwrap_or(f64::NAN);
    let non_2xx = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(WrkRow {
        rate,
        p50_ms,
        non_2xx,
    })
}
