//! Benchmark tools: the trivial `hello-server` measured in the same run as a yardstick, the
//! request driver and its timings, the `vs_hello` table columns, peak memory, command-line options.

use crate::http::Fhir;
use crate::processes::bin_path;
use anyhow::{anyhow, Context};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `hello-server` (`src/bin/hello-server.rs`): the trivial hyper server the benchmarks
/// measure in the same run, as a yardstick for a shared, noisy machine. Killed when dropped.
pub struct Hello {
    child: Child,
    /// `http://127.0.0.1:PORT`; every path answers 200 with the same small JSON body.
    pub base: String,
}

impl Hello {
    /// Start it on a free loopback port and wait until it accepts connections.
    pub async fn start() -> anyhow::Result<Hello> {
        let mut child = Command::new(bin_path("hello-server"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting hello-server")?;
        let stdout = child.stdout.take().context("hello-server stdout")?;
        // Like carapace-server, it prints its URL on stdout once it is listening.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(base) = line.split("listening: ").nth(1) {
                    let _ = tx.send(base.trim().to_string());
                }
            }
        });
        let mut hello = Hello {
            child,
            base: String::new(),
        };
        hello.base = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await?
            .map_err(|_| anyhow!("hello-server did not start"))?;
        Ok(hello)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Hello {
    fn drop(&mut self) {
        // Nothing to flush or stop cleanly.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What [`drive`] measured: every request's latency (sorted), the failures, the wall time.
pub struct Timing {
    pub latencies: Vec<std::time::Duration>,
    pub errors: usize,
    pub seconds: f64,
}

impl Timing {
    pub fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.seconds
    }

    pub fn percentile(&self, p: f64) -> std::time::Duration {
        percentile(&self.latencies, p)
    }
}

/// Run `request(n)` from `concurrency` clients for `seconds` (client `w` sends n = w, w + c,
/// w + 2c, ...); a request reports whether it succeeded. For benchmark tables.
pub async fn drive<F, Fut>(concurrency: usize, seconds: f64, request: F) -> Timing
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    use std::sync::atomic::{AtomicBool, Ordering};
    let (stop, request) = (
        std::sync::Arc::new(AtomicBool::new(false)),
        std::sync::Arc::new(request),
    );
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (stop, request) = (stop.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors, mut n) = (Vec::new(), 0, worker);
            while !stop.load(Ordering::Relaxed) {
                let started = std::time::Instant::now();
                let ok = request(n).await;
                latencies.push(started.elapsed());
                errors += usize::from(!ok);
                n += concurrency;
            }
            (latencies, errors)
        }));
    }
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap_or_default();
        latencies.extend(l);
        errors += e;
    }
    latencies.sort();
    Timing {
        latencies,
        errors,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Header cells for the columns [`vs_hello`] prints, after a table's own.
pub const VS_HELLO_HEADER: &str = " hello (req/s) | throughput ÷ hello | p50 ÷ hello |";
/// Alignment cells for [`VS_HELLO_HEADER`].
pub const VS_HELLO_ALIGN: &str = "---:|---:|---:|";

/// A workload's figures beside the hello server's, measured in the same run with the same driver
/// and concurrency: hello's throughput, the workload's throughput as a fraction of it, and the
/// workload's p50 as a multiple of hello's. The ratios are what compare across runs and machines.
pub fn vs_hello(workload: &Timing, hello: &Timing) -> String {
    let p50 = |t: &Timing| t.percentile(0.50).as_secs_f64();
    format!(
        " {:.0} | {:.3}× | {:.1}× |",
        hello.throughput(),
        workload.throughput() / hello.throughput(),
        p50(workload) / p50(hello)
    )
}

/// The `p` quantile (0..1) of sorted latencies.
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// A process's peak resident memory (VmHWM) in MB, for benchmark tables.
pub fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// The value after `--name` on the command line, parsed (benchmarks' and tools' options).
pub fn arg<T: std::str::FromStr>(name: &str) -> Option<T> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
}

impl Fhir<'_> {
    /// Create `n` patients named `Bench0`, `Bench1`, ... (benchmarks' data); their ids.
    pub async fn bench_patients(&self, n: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let r = self
                .post(
                    "Patient",
                    &json!({"resourceType": "Patient", "name": [{"family": format!("Bench{i}")}]}),
                )
                .await;
            ids.push(r.json()["id"].as_str().unwrap_or_default().to_string());
        }
        ids
    }
}

/// The server settings every benchmark starts with: rate limits off, so that a figure measures
/// the server's work and never its throttling (the defaults, 1,000 requests a second per caller,
/// would cap a 32-connection run). Printed with the results ([`UNLIMITED_NOTE`]).
pub fn unlimited() -> Vec<(String, String)> {
    [
        "CARAPACE_RATE_LIMIT_CLIENT",
        "CARAPACE_RATE_LIMIT_ADDRESS",
        "CARAPACE_RATE_LIMIT_AUTH",
    ]
    .iter()
    .map(|name| (name.to_string(), "0".to_string()))
    .collect()
}

/// What a benchmark's output says about [`unlimited`].
pub const UNLIMITED_NOTE: &str =
    "rate limits off for this run (CARAPACE_RATE_LIMIT_CLIENT/_ADDRESS/_AUTH=0)";
