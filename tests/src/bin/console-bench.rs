//! Console benchmark: is the full-screen console responsive over a large audit trail? Starts a
//! private PostgreSQL, `bao server -dev` and the release `carapace-server`, fills the trail with
//! 100,000+ AuditEvents made the real way (audited reads through the API), then drives the
//! console's own `App` as an operator would: every keypress handled, applied against the core and
//! drawn at 120×36, timed from key to drawn screen. Prints a table (p50 and worst per key), the
//! chain verification's time and whether keys were answered while it ran, and peak RSS.
//!
//! Run: `cargo build --release --workspace --bins && target/release/console-bench [--events N]`
//! (`--hold` keeps the stack running afterwards, its database URL printed).

use carapace_console::tui::{App, Screen};
use carapace_core::config::Config;
use carapace_core::core::Core;
use carapace_tests::*;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use std::time::{Duration, Instant};

struct Console {
    app: App,
    core: Core,
    terminal: Terminal<TestBackend>,
}

impl Console {
    /// One key, as the event loop does it: handle, apply, draw. Returns the time it took.
    async fn press(&mut self, code: KeyCode) -> Duration {
        let start = Instant::now();
        if let Some(action) = self.app.handle_key(KeyEvent::new(code, KeyModifiers::NONE)) {
            self.app.apply(action, &self.core).await;
        }
        let app = &self.app;
        self.terminal.draw(|f| app.draw(f)).expect("draw");
        start.elapsed()
    }

    /// `key` pressed `n` times: how long each took.
    async fn repeat(&mut self, key: char, n: usize) -> Vec<Duration> {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            times.push(self.press(KeyCode::Char(key)).await);
        }
        times
    }

    async fn chars(&mut self, text: &str) {
        for c in text.chars() {
            self.press(KeyCode::Char(c)).await;
        }
    }

    /// Open the filter form with `agent` and `patient` typed, focus on the last field (the
    /// next Enter runs it).
    async fn filter(&mut self, agent: &str, patient: &str) {
        self.press(KeyCode::Char('c')).await;
        self.press(KeyCode::Char('f')).await;
        self.press(KeyCode::Tab).await;
        self.press(KeyCode::Tab).await;
        self.chars(agent).await;
        self.press(KeyCode::Tab).await;
        self.chars(patient).await;
        for _ in 0..3 {
            self.press(KeyCode::Tab).await;
        }
    }
}

struct Timed {
    key: &'static str,
    what: &'static str,
    times: Vec<Duration>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let target: i64 = arg("--events").unwrap_or(100_000);
    eprintln!("starting PostgreSQL, OpenBao and carapace-server ...");
    let stack = Stack::start_with(Bao::start_dev().await?, unlimited()).await?;
    eprintln!("{UNLIMITED_NOTE}");
    let fhir = stack.fhir();
    let patients = fhir.bench_patients(100).await;
    let patients = std::sync::Arc::new(patients);
    let db = stack.db().await;
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_events")
            .fetch_one(&db)
            .await
            .unwrap_or(0)
    };
    let started = Instant::now();
    while count().await < target {
        let (auth, base, patients) = (
            stack.server.bearer(),
            stack.server.base.clone(),
            patients.clone(),
        );
        drive(32, 5.0, move |n| {
            let url = format!("{base}/Patient/{}", patients[n % patients.len()]);
            let auth = auth.clone();
            async move {
                let headers = [("Accept", FHIR_JSON), ("Authorization", auth.as_str())];
                matches!(http("GET", &url, &headers, None).await, Ok(r) if r.status == 200)
            }
        })
        .await;
        eprintln!("{} audit events", count().await);
    }
    let events = count().await;
    eprintln!(
        "{events} audit events written in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // The server links committed events into the chain after the fact; measure the console on a
    // server that has caught up (not one still busy chaining the burst above).
    let caught_up = Instant::now();
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_unchained")
        .fetch_one(&db)
        .await
        .unwrap_or(0)
        > 0
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "the server chained them {:.1} s later",
        caught_up.elapsed().as_secs_f64()
    );

    let env: std::collections::HashMap<String, String> = stack.server.env.iter().cloned().collect();
    let config = Config::from_lookup(|k| env.get(k).cloned())?;
    let core = Core::open_console(&config).await?;
    let password = "benchmark operator passphrase";
    let enrolled =
        carapace_core::identity::admin::bootstrap_admin(&core.store, "bench.admin", password)
            .await?;
    let code = totp_rs::TOTP::from_url_unchecked(enrolled.totp_uri.as_deref().unwrap_or(""))?
        .generate_current()?;
    let mut c = Console {
        app: App::new(config.sessions),
        core,
        terminal: Terminal::new(TestBackend::new(120, 36))?,
    };
    for field in ["bench.admin", password, code.as_str()] {
        c.chars(field).await;
        c.press(KeyCode::Enter).await;
    }
    anyhow::ensure!(
        c.app.screen == Screen::Dashboard,
        "the operator could not sign in"
    );
    let some_patient = format!("Patient/{}", patients[7]);

    let mut rows: Vec<Timed> = Vec::new();
    let mut timed = |key, what, times| rows.push(Timed { key, what, times });
    timed(
        "1",
        "dashboard (counts over the whole trail)",
        c.repeat('1', 10).await,
    );
    timed(
        "4",
        "audit screen, newest 50 events",
        c.repeat('4', 10).await,
    );
    timed(
        "j",
        "next event (detail pane redrawn)",
        c.repeat('j', 50).await,
    );
    timed("n", "next page (40 pages deep)", c.repeat('n', 40).await);
    timed("p", "previous page", c.repeat('p', 20).await);
    let mut t = Vec::new();
    for _ in 0..5 {
        c.filter("", &some_patient).await;
        t.push(c.press(KeyCode::Enter).await);
    }
    timed("f ⏎", "filter: one patient", t);
    let mut t = Vec::new();
    for _ in 0..5 {
        c.filter("nobody.at.all", "").await;
        t.push(c.press(KeyCode::Enter).await);
    }
    timed("f ⏎", "filter: an agent with no events", t);
    c.press(KeyCode::Char('c')).await;
    timed("2", "users screen", c.repeat('2', 5).await);
    c.press(KeyCode::Char('4')).await;

    // Verify the whole chain on its own task; keys are answered meanwhile.
    let verify_started = Instant::now();
    let mut during = vec![c.press(KeyCode::Char('v')).await];
    while c.app.job.is_some() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        during.push(c.press(KeyCode::Char('j')).await);
        if c.app.tick().is_some() {
            c.app.finish_job(&c.core).await;
        }
    }
    let verify = verify_started.elapsed();
    anyhow::ensure!(
        c.app.chain.starts_with("Audit chain intact"),
        "verification: {}",
        c.app.chain
    );
    let verified = c
        .app
        .chain
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    timed("v, j…", "keys while the chain is verified", during);

    println!("| key | what | presses | p50 (ms) | worst (ms) |");
    println!("|---|---|---:|---:|---:|");
    for r in &mut rows {
        r.times.sort();
        println!(
            "| `{}` | {} | {} | {:.1} | {:.1} |",
            r.key,
            r.what,
            r.times.len(),
            ms(percentile(&r.times, 0.5)),
            ms(*r.times.last().unwrap_or(&Duration::ZERO))
        );
    }
    println!(
        "\n{events} AuditEvents; {verified} in {:.1} s; console peak RSS (VmHWM) {:.1} MB, server {:.1} MB; {} cores",
        verify.as_secs_f64(),
        peak_rss_mb(std::process::id()),
        stack.server.pid().map(peak_rss_mb).unwrap_or(f64::NAN),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    );
    c.core.shutdown().await;
    if args.iter().any(|a| a == "--hold") {
        eprintln!("holding the stack: {} (Ctrl-C ends)", stack.database_url);
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}
