//! Bulk Data export benchmark (issue 16): loads the Synthea set as search-bench does, makes a
//! Group of every patient, then times a system `$export` and a `Group/[id]/$export` from kick-off
//! to manifest (polling every 100 ms), downloads every file of the system export one at a time
//! and then four at a time, and samples the server's resident memory throughout (the server is
//! restarted after the load, so the figure is the exports' own). As every benchmark here does,
//! each row is preceded by `hello-server` measured in the same run (GETs of its fixed body, at the
//! row's concurrency), and its figures are printed also as ratios of hello's requests/s.
//!
//! Run: `cargo build --release -p carapace-tests --bin export-bench -p carapace-server &&
//! target/release/export-bench [--synthea DIR] [--patients N] [--hello-seconds S] [--hold]`.
//! DIR defaults to `../shared/data/synthea-120` beside the repository when it is there, else a
//! generated Synthea-shaped set of N patients (default 120) is loaded. `--hold` stops after the
//! load and the Group: it prints the base URL and the Group's id and, every minute, a fresh
//! system token (tokens live five minutes), for trying a client by hand; Ctrl-C stops it.

use carapace_tests::synthea;
use carapace_tests::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The shared Synthea export beside the repository (`/work/shared/data/synthea-120`).
const SYNTHEA_120: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/synthea-120");

/// How often the status URL is polled (the server's Retry-After says 2 s; a benchmark asks more).
const POLL: Duration = Duration::from_millis(100);

/// An export that completed: what its manifest lists and how long kick-off to manifest took.
struct Export {
    seconds: f64,
    /// (url, type, count) of each output file.
    files: Vec<(String, String, u64)>,
    resources: u64,
    errors: usize,
}

/// Kick off `path` (`$export`, `Group/{id}/$export`) and poll its status URL until the manifest.
async fn export(base: &str, auth: &str, path: &str) -> anyhow::Result<Export> {
    let started = Instant::now();
    let kick_off = [
        ("Accept", FHIR_JSON),
        ("Prefer", "respond-async"),
        ("Authorization", auth),
    ];
    let r = http("GET", &format!("{base}/{path}"), &kick_off, None).await?;
    anyhow::ensure!(
        r.status == 202,
        "kick-off {path}: {} {}",
        r.status,
        r.text()
    );
    let status_url = r
        .header("content-location")
        .ok_or_else(|| anyhow::anyhow!("kick-off {path}: no Content-Location"))?;
    let poll = [("Accept", "application/json"), ("Authorization", auth)];
    let manifest: Value = loop {
        let r = http("GET", &status_url, &poll, None).await?;
        match r.status {
            200 => break serde_json::from_slice(&r.body)?,
            202 => tokio::time::sleep(POLL).await,
            s => anyhow::bail!("status of {path}: {s} {}", r.text()),
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "{path} not complete after 30 minutes"
        );
    };
    let seconds = started.elapsed().as_secs_f64();
    let files: Vec<(String, String, u64)> = manifest["output"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            (
                f["url"].as_str().unwrap_or_default().to_string(),
                f["type"].as_str().unwrap_or_default().to_string(),
                f["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    Ok(Export {
        seconds,
        resources: files.iter().map(|f| f.2).sum(),
        errors: manifest["error"].as_array().map_or(0, Vec::len),
        files,
    })
}

/// What downloading a set of files took.
struct Downloaded {
    bytes: u64,
    lines: u64,
    seconds: f64,
}

/// GET every file with `concurrency` clients taking the next file from one queue; each answer
/// must be NDJSON with as many lines as the manifest counted.
async fn download_all(
    files: &[(String, String, u64)],
    auth: &str,
    concurrency: usize,
) -> anyhow::Result<Downloaded> {
    let queue = Arc::new(Mutex::new(files.to_vec()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (queue, auth) = (queue.clone(), auth.to_string());
        workers.push(tokio::spawn(async move {
            let (mut bytes, mut lines) = (0u64, 0u64);
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop());
                let Some((url, _, count)) = next else { break };
                let headers = [
                    ("Accept", "application/fhir+ndjson"),
                    ("Authorization", auth.as_str()),
                ];
                let r = http("GET", &url, &headers, None).await?;
                anyhow::ensure!(r.status == 200, "download {url}: {}", r.status);
                anyhow::ensure!(
                    r.header("content-type").as_deref() == Some("application/fhir+ndjson"),
                    "download {url}: not NDJSON"
                );
                let n = r.body.iter().filter(|b| **b == b'\n').count() as u64;
                anyhow::ensure!(n == count, "download {url}: {n} lines, manifest {count}");
                bytes += r.body.len() as u64;
                lines += n;
            }
            Ok((bytes, lines))
        }));
    }
    let (mut bytes, mut lines) = (0, 0);
    for w in workers {
        let (b, l) = w.await??;
        bytes += b;
        lines += l;
    }
    Ok(Downloaded {
        bytes,
        lines,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A process's resident memory now (VmRSS) in MB.
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<f64>()
        .ok()?;
    Some(kb / 1024.0)
}

/// Samples a process's resident memory every 100 ms until [`RssSampler::peak`].
struct RssSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<f64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss_mb(pid).unwrap_or(0.0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak.max(rss_mb(pid).unwrap_or(0.0))
        });
        RssSampler { stop, task }
    }

    /// The highest sample (MB).
    async fn peak(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(f64::NAN)
    }
}

/// Hello's requests/s for its fixed body, from `concurrency` clients for `seconds`.
async fn hello_rate(hello: &Hello, concurrency: usize, seconds: f64) -> anyhow::Result<f64> {
    let url = hello.url("/");
    let t = drive(concurrency, seconds, move |_| {
        let url = url.clone();
        async move { matches!(http("GET", &url, &[], None).await, Ok(r) if r.status == 200) }
    })
    .await;
    anyhow::ensure!(
        t.errors == 0,
        "{} requests to hello-server failed",
        t.errors
    );
    Ok(t.throughput())
}

struct Row {
    name: String,
    concurrency: usize,
    resources: u64,
    bytes: u64,
    files: usize,
    seconds: f64,
    rss: f64,
    hello: f64,
}

impl Row {
    fn print(&self) {
        let rate = self.resources as f64 / self.seconds;
        let mb_s = self.bytes as f64 / 1e6 / self.seconds;
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.2} | {:.0} | {:.1} | {:.0} | {:.0} | {:.3}× | {:.4}× |",
            self.name,
            self.concurrency,
            self.resources,
            self.files,
            self.bytes as f64 / 1e6,
            self.seconds,
            rate,
            mb_s,
            self.rss,
            self.hello,
            rate / self.hello,
            mb_s / self.hello
        );
    }
}

/// A fresh token of a new backend client with `system/*.cruds` (tokens live five minutes; each
/// phase gets its own, and a job's files open only for the client that started it).
async fn fresh_token(stack: &mut Stack) -> String {
    let db = stack.db().await;
    stack.server.authorize(&db).await;
    db.close().await;
    stack.server.bearer()
}

/// `--hold`: print where the stack is and a fresh token every minute until Ctrl-C.
async fn hold(stack: &mut Stack, group: &str) -> anyhow::Result<()> {
    println!("base: {}", stack.server.base);
    println!("group: {group}");
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = every.tick() => {
                let token = fresh_token(stack).await;
                println!("token: {}", token.trim_start_matches("Bearer "));
            }
            r = tokio::signal::ctrl_c() => return Ok(r?),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let hello_seconds: f64 = arg("--hello-seconds").unwrap_or(3.0);
    let patients: usize = arg("--patients").unwrap_or(120);
    let dir: std::path::PathBuf = arg::<String>("--synthea")
        .unwrap_or_else(|| SYNTHEA_120.into())
        .into();
    let (source, bundles) = if dir.is_dir() {
        (
            format!("Synthea export {}", dir.display()),
            synthea::read_dir(&dir)?,
        )
    } else {
        (
            format!("generated Synthea-shaped set ({patients} patients)"),
            synthea::generate(patients, 760),
        )
    };
    eprintln!(
        "{} bundles from {source}; starting PostgreSQL, OpenBao, carapace-server and hello-server ...",
        bundles.len()
    );
    let exports = tempfile::tempdir()?;
    let mut env = unlimited();
    env.push((
        "CARAPACE_EXPORT_DIR".into(),
        exports.path().display().to_string(),
    ));
    let mut stack = Stack::start_with(Bao::start_dev().await?, env).await?;
    eprintln!("{UNLIMITED_NOTE}");
    let hello = Hello::start().await?;
    let pid = stack
        .server
        .pid()
        .ok_or_else(|| anyhow::anyhow!("no server process"))?;

    eprintln!("loading with 8 concurrent clients ...");
    let auth = stack.server.bearer();
    let load = synthea::load(&stack.server.base, &auth, bundles, 8).await;
    for (name, status, text) in load.failures.iter().take(5) {
        eprintln!("  not accepted: {name}: {status} {text}");
    }
    anyhow::ensure!(!load.patients.is_empty(), "no patients were loaded");
    let db = stack.db().await;
    sqlx::query("VACUUM (ANALYZE)").execute(&db).await?;
    db.close().await;
    let members: Vec<Value> = load
        .patients
        .iter()
        .map(|p| json!({"entity": {"reference": format!("Patient/{p}")}}))
        .collect();
    let r = stack
        .fhir()
        .post(
            "Group",
            &json!({"resourceType": "Group", "type": "person", "actual": true,
                    "name": "export-bench: every patient", "member": members}),
        )
        .await;
    anyhow::ensure!(r.status == 201, "Group: {} {}", r.status, r.text());
    let group = r
        .header("location")
        .and_then(|l| {
            l.split("/Group/")
                .nth(1)
                .map(|s| s.split('/').next().unwrap_or("").to_string())
        })
        .filter(|id| !id.is_empty())
        .ok_or_else(|| anyhow::anyhow!("Group: no Location"))?;
    if std::env::args().any(|a| a == "--hold") {
        return hold(&mut stack, &group).await;
    }
    let load_rss = peak_rss_mb(pid);
    // The exports run in a fresh server process: what the load left resident is not theirs.
    stack.server.restart().await?;
    let pid = stack
        .server
        .pid()
        .ok_or_else(|| anyhow::anyhow!("no server process"))?;

    let mut rows = Vec::new();
    let base = stack.server.base.clone();
    eprintln!("system export (hello-server first) ...");
    let hello_1 = hello_rate(&hello, 1, hello_seconds).await?;
    let auth = fresh_token(&mut stack).await;
    let sampler = RssSampler::start(pid);
    let system = export(&base, &auth, "$export").await?;
    let rss = sampler.peak().await;
    // The NDJSON's size is known once the files are downloaded; the row is completed below.
    let system_row = rows.len();
    rows.push(Row {
        name: "system `$export` (kick-off → manifest)".into(),
        concurrency: 1,
        resources: system.resources,
        bytes: 0,
        files: system.files.len(),
        seconds: system.seconds,
        rss,
        hello: hello_1,
    });
    for (concurrency, name) in [
        (1, "download every file, one at a time"),
        (4, "download every file, 4 at a time"),
    ] {
        eprintln!("{name} (hello-server first) ...");
        let hello_c = hello_rate(&hello, concurrency, hello_seconds).await?;
        let sampler = RssSampler::start(pid);
        let d = download_all(&system.files, &auth, concurrency).await?;
        let rss = sampler.peak().await;
        rows[system_row].bytes = d.bytes;
        rows.push(Row {
            name: name.into(),
            concurrency,
            resources: d.lines,
            bytes: d.bytes,
            files: system.files.len(),
            seconds: d.seconds,
            rss,
            hello: hello_c,
        });
    }
    eprintln!("Group export (hello-server first) ...");
    let hello_1 = hello_rate(&hello, 1, hello_seconds).await?;
    let auth = fresh_token(&mut stack).await;
    let sampler = RssSampler::start(pid);
    let grouped = export(&base, &auth, &format!("Group/{group}/$export")).await?;
    let rss = sampler.peak().await;
    let group_bytes = download_all(&grouped.files, &auth, 4).await?.bytes;
    rows.push(Row {
        name: format!(
            "`Group/[id]/$export`, {} members (kick-off → manifest)",
            load.patients.len()
        ),
        concurrency: 1,
        resources: grouped.resources,
        bytes: group_bytes,
        files: grouped.files.len(),
        seconds: grouped.seconds,
        rss,
        hello: hello_1,
    });
    let export_hwm = peak_rss_mb(pid);
    let sampled = rows.iter().map(|r| r.rss).fold(0.0, f64::max);
    let hello_rss = peak_rss_mb(hello.pid());

    println!("source: {source}");
    println!(
        "load: {}/{} bundles accepted, {} resources in {:.1} s = {:.0} resources/s (8 clients)",
        load.accepted,
        load.bundles,
        load.resources,
        load.seconds,
        load.resources as f64 / load.seconds
    );
    println!(
        "system export: {} resources in {} files, {} error files; Group export: {} resources in {} files, {} error files",
        system.resources,
        system.files.len(),
        system.errors,
        grouped.resources,
        grouped.files.len(),
        grouped.errors
    );
    println!("\n| workload | concurrency | resources | files | NDJSON (MB) | seconds | resources/s | MB/s | server peak RSS, sampled (MB) | hello (req/s) | resources/s ÷ hello | MB/s ÷ hello |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        r.print();
    }
    let peak = export_hwm.max(sampled);
    println!(
        "\nserver peak RSS during the exports and downloads: {peak:.1} MB (a process started after the load: VmHWM {export_hwm:.1} MB, VmRSS sampled every 100 ms {sampled:.1} MB); during the load: {load_rss:.1} MB; hello-server peak RSS: {hello_rss:.1} MB; {} cores; hello measured for {hello_seconds} s before each row",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let rate = rows[system_row].resources as f64 / rows[system_row].seconds;
    let download = rows
        .iter()
        .filter(|r| r.name.starts_with("download"))
        .map(|r| r.bytes as f64 / 1e6 / r.seconds)
        .fold(f64::INFINITY, f64::min);
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    println!(
        "targets: system export ≥ 10,000 resources/s — {} ({rate:.0}); peak RSS < 300 MB — {} ({peak:.0}); downloads ≥ 100 MB/s — {} (slowest {download:.0})",
        verdict(rate >= 10_000.0),
        verdict(peak < 300.0),
        verdict(download >= 100.0)
    );
    if !load.failures.is_empty() {
        anyhow::bail!("{} bundles were not accepted", load.failures.len());
    }
    Ok(())
}
