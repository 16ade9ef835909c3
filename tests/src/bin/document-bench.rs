//! document-bench: Binary documents through carapace-server — raw uploads and downloads of 1 MB,
//! 100 MB and 1 GB (each a patient's, sealed in chunks, SHA-256 and SHA-1 computed on the way
//! in, SHA-256 checked on the way out), and 8 concurrent uploads of 10 MB. Each row is measured
//! against `hello-server` in the same run with the same client (an upload it reads and drops; a
//! download of the same size from `/bytes/N`) and printed as MB/s and a ratio of hello's, with
//! the server's peak RSS so far (VmHWM) — which must stay under 300 MB for the 1 GB case.
//!
//! Run: `cargo build --release --workspace --bins && target/release/document-bench [--repeat N]`
//! (the 1 MB row is repeated N times, 20 by default, the 100 MB row N/10 times at least once).

use anyhow::{bail, Context};
use carapace_tests::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MB: u64 = 1_000_000;

/// The URL a download of (id, size) goes to.
type DownloadUrl = Box<dyn Fn(&str, u64) -> String + Send + Sync>;

/// Where a row's requests go.
struct Target {
    upload: String,
    download: DownloadUrl,
    headers: Vec<(String, String)>,
}

impl Target {
    fn headers(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Upload `size` bytes; the id the server gave (or `size` for hello), and the time.
    async fn upload(&self, size: u64, seed: u64) -> anyhow::Result<(String, Duration)> {
        let started = Instant::now();
        let (r, _) = upload_stream("POST", &self.upload, &self.headers(), size, seed).await?;
        let took = started.elapsed();
        if !(200..300).contains(&r.status) {
            bail!("upload of {size} bytes: {} {}", r.status, r.text());
        }
        let id = r
            .json()
            .get("id")
            .and_then(|v| v.as_str())
            .unwrap_or("hello")
            .to_string();
        Ok((id, took))
    }

    async fn download(&self, id: &str, size: u64) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let d = download_digest(&(self.download)(id, size), &self.headers()).await?;
        let took = started.elapsed();
        if d.status != 200 || d.cut_short || d.len != size {
            bail!("download of {size} bytes: {} ({} bytes)", d.status, d.len);
        }
        Ok(took)
    }
}

/// MB/s of `bytes` moved in `took`.
fn rate(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / MB as f64 / took.as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let repeat: u64 = arg("--repeat").unwrap_or(20);
    eprintln!("starting PostgreSQL, OpenBao, carapace-server and hello-server ...");
    let stack = Stack::start_with(Bao::start_dev().await?, unlimited()).await?;
    eprintln!("{UNLIMITED_NOTE}");
    let hello = Hello::start().await?;
    let server_pid = stack.server.pid().context("the server's pid")?;
    let patient = stack
        .fhir()
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Bench"}]}),
        )
        .await
        .created_id();
    let server_url = stack.server.url("Binary");
    let binary_base = stack.server.url("Binary/");
    let carapace = Arc::new(Target {
        upload: server_url,
        download: Box::new(move |id, _| format!("{binary_base}{id}")),
        headers: vec![
            ("Authorization".into(), stack.server.bearer()),
            ("Content-Type".into(), "application/pdf".into()),
            ("X-Security-Context".into(), format!("Patient/{patient}")),
        ],
    });
    let hello_base = hello.base.clone();
    let yardstick = Arc::new(Target {
        upload: format!("{}/upload", hello.base),
        download: Box::new(move |_, size| format!("{hello_base}/bytes/{size}")),
        headers: vec![("Content-Type".into(), "application/pdf".into())],
    });

    println!("| workload | hello (MB/s) | Carapace (MB/s) | ÷ hello | server peak RSS (MB) |");
    println!("|---|---:|---:|---:|---:|");
    let mut seed = 0;
    for (label, size, times) in [
        ("1 MB", MB, repeat.max(1)),
        ("100 MB", 100 * MB, (repeat / 10).max(1)),
        ("1 GB", 1000 * MB, 1),
    ] {
        let (mut up, mut down, mut hello_up, mut hello_down) = (
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
        );
        for _ in 0..times {
            seed += 1;
            let (_, t) = yardstick.upload(size, seed).await?;
            hello_up += t;
            hello_down += yardstick.download("", size).await?;
            let (id, t) = carapace.upload(size, seed).await?;
            up += t;
            down += carapace.download(&id, size).await?;
        }
        let moved = size * times;
        let rss = peak_rss_mb(server_pid);
        for (what, hello_t, ours) in [("upload", hello_up, up), ("download", hello_down, down)] {
            println!(
                "| {what} {label} | {:.0} | {:.1} | {:.3}× | {rss:.1} |",
                rate(moved, hello_t),
                rate(moved, ours),
                rate(moved, ours) / rate(moved, hello_t),
            );
        }
    }
    // Eight uploads of 10 MB at once: what the server takes in together.
    let mut row = Vec::new();
    for target in [&yardstick, &carapace] {
        let started = Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let target = Arc::clone(target);
                tokio::spawn(async move { target.upload(10 * MB, 1000 + i).await })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        row.push(rate(80 * MB, started.elapsed()));
    }
    println!(
        "| 8 × 10 MB uploads at once | {:.0} | {:.1} | {:.3}× | {:.1} |",
        row[0],
        row[1],
        row[1] / row[0],
        peak_rss_mb(server_pid)
    );
    Ok(())
}
