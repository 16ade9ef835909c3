//! Search benchmark (issue 4): loads Synthea transaction bundles with 8 concurrent clients, then
//! measures a patient-scoped search page, a count over all Observations by code, and
//! `Patient/{id}/$everything`, and prints a table with the server's peak RSS. Each timed row is
//! also run against `hello-server` (a trivial hyper server in its own process) just before, with
//! the same driver, concurrency and duration, and printed as ratios of hello's figures.
//!
//! Run: `cargo build --release --workspace --bins && target/release/search-bench [--synthea DIR]
//! [--patients N] [--seconds S] [--integrity on|off] [--hold]`; `--hold` stops after the load,
//! leaving the stack running for a look at the database; `--integrity off` runs the server without
//! referential integrity, to measure what it costs. Without `--synthea` (or when the directory is missing) it loads a
//! generated Synthea-shaped set of `--patients` patients (default 120, ~760 resources each).

use carapace_tests::synthea::{self, NamedBundle};
use carapace_tests::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

struct Row {
    name: String,
    concurrency: usize,
    timing: Timing,
    hello: Timing,
}

/// A workload's URL for request `n`, on the base URL given (carapace-server's, or hello-server's
/// in its place).
type Url = Arc<dyn Fn(&str, usize) -> String + Send + Sync>;

/// The most frequent Observation LOINC code in the bundles.
fn commonest_code(bundles: &[NamedBundle]) -> String {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for b in bundles {
        for e in b.bundle["entry"].as_array().into_iter().flatten() {
            let r = &e["resource"];
            if r["resourceType"] == "Observation" {
                for c in r["code"]["coding"].as_array().into_iter().flatten() {
                    if c["system"] == "http://loinc.org" {
                        if let Some(code) = c["code"].as_str() {
                            *counts.entry(code.to_string()).or_default() += 1;
                        }
                    }
                }
            }
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(c, _)| c)
        .unwrap_or_else(|| "8302-2".into())
}

/// Run GETs of `url(base, n)` from `concurrency` clients for `seconds` against `base`.
async fn get_all(base: String, auth: String, concurrency: usize, seconds: f64, url: Url) -> Timing {
    drive(concurrency, seconds, move |n| {
        let (url, auth) = (url(&base, n), auth.clone());
        async move {
            let headers = [("Accept", FHIR_JSON), ("Authorization", auth.as_str())];
            matches!(http("GET", &url, &headers, None).await, Ok(r) if r.status == 200)
        }
    })
    .await
}

/// One table row: the same GETs against hello-server, then carapace-server, from the same
/// driver at the same concurrency for the same time.
async fn timed(
    server: &Server,
    hello: &Hello,
    name: &str,
    concurrency: usize,
    seconds: f64,
    url: Url,
) -> Row {
    let auth = server.bearer();
    let hello = get_all(
        hello.base.clone(),
        auth.clone(),
        concurrency,
        seconds,
        url.clone(),
    )
    .await;
    let timing = get_all(server.base.clone(), auth, concurrency, seconds, url).await;
    Row {
        name: name.to_string(),
        concurrency,
        timing,
        hello,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds: f64 = arg("--seconds").unwrap_or(10.0);
    let patients: usize = arg("--patients").unwrap_or(120);
    let dir: Option<std::path::PathBuf> = arg::<String>("--synthea").map(Into::into);
    let (source, bundles) = match &dir {
        Some(d) if d.is_dir() => (
            format!("Synthea export {}", d.display()),
            synthea::read_dir(d)?,
        ),
        _ => (
            format!("generated Synthea-shaped set ({patients} patients)"),
            synthea::generate(patients, 760),
        ),
    };
    let code = commonest_code(&bundles);
    eprintln!(
        "{} bundles from {source}; starting PostgreSQL, OpenBao, carapace-server and hello-server ...",
        bundles.len()
    );
    // `--integrity off`: the server without referential integrity, to measure what it costs.
    let integrity: String = arg("--integrity").unwrap_or_else(|| "on".into());
    let mut env = unlimited();
    env.push(("CARAPACE_REFERENTIAL_INTEGRITY".into(), integrity));
    let stack = Stack::start_with(Bao::start_dev().await?, env).await?;
    eprintln!("{UNLIMITED_NOTE}");
    let hello = Hello::start().await?;
    let server = &stack.server;

    eprintln!("loading with 8 concurrent clients ...");
    let load = synthea::load(&server.base, &server.bearer(), bundles, 8).await;
    for (name, status, text) in load.failures.iter().take(5) {
        eprintln!("  not accepted: {name}: {status} {text}");
    }
    // Fresh planner statistics and visibility map, as autovacuum leaves them after a bulk load.
    let db = stack.db().await;
    sqlx::query("VACUUM (ANALYZE)").execute(&db).await?;
    if args.iter().any(|a| a == "--hold") {
        // For looking at the loaded database by hand: print where it is and wait to be stopped.
        eprintln!("loaded; database {} (Ctrl-C to stop)", stack.database_url);
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }
    let fhir = stack.fhir();
    let count_url = format!("Observation?code=http://loinc.org|{code}&_summary=count");
    let matched = fhir.get(&count_url).await.json()["total"]
        .as_u64()
        .unwrap_or(0);
    let total_obs = fhir.get("Observation?_summary=count").await.json()["total"]
        .as_u64()
        .unwrap_or(0);

    // A count over every Observation with the commonest code, one at a time.
    let mut count_times = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let r = fhir.get(&count_url).await;
        count_times.push(started.elapsed());
        anyhow::ensure!(r.status == 200, "count failed: {}", r.text());
    }
    count_times.sort();

    let ids = Arc::new(load.patients.clone());
    anyhow::ensure!(!ids.is_empty(), "no patients were loaded");
    let (ids1, code1) = (ids.clone(), code.clone());
    let search: Url = Arc::new(move |base, n| {
        format!(
            "{base}/Observation?patient={}&code=http://loinc.org|{code1}&_count=20",
            ids1[n % ids1.len()]
        )
    });
    let ids2 = ids.clone();
    let everything: Url =
        Arc::new(move |base, n| format!("{base}/Patient/{}/$everything", ids2[n % ids2.len()]));
    timed(server, &hello, "warm-up", 8, 2.0, search.clone()).await;
    let mut rows = Vec::new();
    for c in [1, 8] {
        eprintln!(
            "patient-scoped search x{c} for {seconds} s (hello-server, then carapace-server)"
        );
        rows.push(
            timed(
                server,
                &hello,
                "Observation?patient=X&code=Y (page of 20)",
                c,
                seconds,
                search.clone(),
            )
            .await,
        );
    }
    eprintln!("$everything x8 for {seconds} s (hello-server, then carapace-server)");
    rows.push(
        timed(
            server,
            &hello,
            "Patient/X/$everything (first page)",
            8,
            seconds,
            everything,
        )
        .await,
    );
    let rss = server.pid().map(peak_rss_mb).unwrap_or(f64::NAN);
    let hello_rss = peak_rss_mb(hello.pid());

    println!("source: {source}");
    println!(
        "load: {}/{} bundles accepted, {} resources in {:.1} s = {:.0} resources/s (8 clients, transactions, encryption and every index)",
        load.accepted,
        load.bundles,
        load.resources,
        load.seconds,
        load.resources as f64 / load.seconds
    );
    println!(
        "count: Observation?code=http://loinc.org|{code}&_summary=count = {matched} of {total_obs} Observations; p50 {:.1} ms, max {:.1} ms (20 runs)",
        count_times[count_times.len() / 2].as_secs_f64() * 1000.0,
        count_times.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    println!("\n| workload | concurrency | requests | errors | throughput (req/s) | p50 (ms) | p99 (ms) |{VS_HELLO_HEADER}");
    println!("|---|---:|---:|---:|---:|---:|---:|{VS_HELLO_ALIGN}");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} |{}",
            r.name,
            r.concurrency,
            r.timing.latencies.len(),
            r.timing.errors,
            r.timing.throughput(),
            r.timing.percentile(0.5).as_secs_f64() * 1000.0,
            r.timing.percentile(0.99).as_secs_f64() * 1000.0,
            vs_hello(&r.timing, &r.hello)
        );
    }
    println!(
        "\nserver peak RSS (VmHWM): {rss:.1} MB; hello-server peak RSS: {hello_rss:.1} MB; {} cores; {seconds} s per timed workload and server",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let hello_errors: usize = rows.iter().map(|r| r.hello.errors).sum();
    if hello_errors > 0 {
        anyhow::bail!(
            "{hello_errors} requests to hello-server failed: its figures are not a baseline"
        );
    }
    if !load.failures.is_empty() {
        anyhow::bail!("{} bundles were not accepted", load.failures.len());
    }
    Ok(())
}
