//! Fault drill: starts a private PostgreSQL, a persistent OpenBao (raft storage, initialised and
//! unsealed like a production one, so it survives a stop) and the `carapace-server` built beside
//! this binary, all on loopback; then, under a load of creates, updates, reads, searches and
//! transaction Bundles from a few concurrent clients (every request with a client timeout), injects
//! one fault at a time with recovery between:
//!
//! - `kill -9` of the server (the drill starts it again, as a supervisor would);
//! - `pg_ctl stop -m immediate` of the database, then a start (the server is not restarted);
//! - the key provider sealed (then unsealed), stopped (then started and unsealed) and hung
//!   (SIGSTOP, then SIGCONT).
//!
//! After each fault it checks: every write answered 2xx is in the database with its AuditEvent
//! (read back through the FHIR API), every version written meanwhile has its event, its head and
//! its index rows, every transaction Bundle is there whole or not at all, the audit chainer caught
//! up, a Bulk export of the phase's patients finishes and holds them all; that clients saw only 2xx or 503 with `Retry-After` (never another 5xx, never a wait past
//! the client timeout; connection errors only while the server process is gone); and that the
//! server answered again (a new patient created, which needs the database and the key provider)
//! within the recovery limit — without a restart in the database and key-provider cases. It ends
//! with `carapace-console audit verify` over the whole trail, prints a table, and exits non-zero
//! when an outcome is wrong.
//!
//! Run: `cargo build --release --workspace --bins && target/release/fault-drill [--clients 4]
//! [--timeout 10] [--hold 15] [--recovery-limit 30] [--max-requests 40000]`.

// The drill plays the client side, whose clock is the real one.
#![allow(clippy::disallowed_methods)]

use carapace_core::access::Role;
use carapace_tests::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    None,
    KillServer,
    StopDatabase,
    SealVault,
    StopVault,
    HangVault,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::None => "none (baseline)",
            Fault::KillServer => "server kill -9, restarted",
            Fault::StopDatabase => "PostgreSQL stop -m immediate, started",
            Fault::SealVault => "OpenBao sealed, unsealed",
            Fault::StopVault => "OpenBao killed, started",
            Fault::HangVault => "OpenBao SIGSTOP, SIGCONT",
        }
    }

    /// While the server process is gone, a client's connection is refused or reset; in every
    /// other case the server itself answers.
    fn server_gone(self) -> bool {
        self == Fault::KillServer
    }
}

/// Where the load goes: the server's base URL (a restarted server listens on a new port) and the
/// bearer token (issued again for each phase: tokens live minutes).
struct Target {
    base: RwLock<String>,
    auth: RwLock<String>,
}

impl Target {
    fn base(&self) -> String {
        self.base.read().map(|b| b.clone()).unwrap_or_default()
    }
    fn auth(&self) -> String {
        self.auth.read().map(|a| a.clone()).unwrap_or_default()
    }
}

/// A version the server acknowledged with a 2xx.
#[derive(Clone, Debug)]
struct Version {
    resource_type: &'static str,
    id: String,
    version: i64,
}

/// What the clients saw during one phase.
#[derive(Default)]
struct Tally {
    requests: usize,
    ok: usize,
    unavailable: usize,
    unavailable_without_retry_after: usize,
    other_5xx: usize,
    other_4xx: usize,
    no_answer: usize,
    timeouts: usize,
    reads_ok: usize,
    /// Set once the repair is done (the server, database or key provider back): the 503s
    /// answered after it, while the server finds its feet again (dead connections dropped).
    repaired: bool,
    unavailable_after_repair: usize,
    acked: Vec<Version>,
    /// Every transaction Bundle sent (acknowledged or not): the ids of its two entries.
    bundles: Vec<(String, String)>,
    /// A few of the unexpected answers, for the report.
    samples: Vec<String>,
}

impl Tally {
    fn sample(&mut self, what: String) {
        if self.samples.len() < 6 {
            self.samples.push(what);
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    CreatePatient,
    CreateObservation,
    UpdatePatient,
    ReadPatient,
    ReadObservation,
    Search,
    Transaction,
}

/// The mix each client cycles through: reads most, a new patient (a new compartment, so a new
/// key-encryption key and data key from the key provider) one request in nine.
const MIX: [Kind; 9] = [
    Kind::CreatePatient,
    Kind::ReadPatient,
    Kind::CreateObservation,
    Kind::Search,
    Kind::UpdatePatient,
    Kind::ReadObservation,
    Kind::Transaction,
    Kind::ReadPatient,
    Kind::CreateObservation,
];

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family}], "gender": "unknown"})
}

fn observation(patient: &str, n: usize) -> Value {
    json!({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": 60 + (n % 40), "unit": "/min",
                          "system": "http://unitsofmeasure.org", "code": "/min"}
    })
}

/// One client's state: the patients and observations it made (reads and updates use them).
struct Client {
    worker: usize,
    phase: usize,
    patients: Vec<String>,
    observations: Vec<String>,
}

/// What became of a request.
enum Reply {
    Answered(HttpResponse),
    /// Refused or reset: nobody listening, or the connection dropped.
    Unreachable(String),
    TimedOut,
}

async fn send(
    target: &Target,
    timeout: Duration,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Reply {
    let url = format!("{}/{path}", target.base());
    let auth = target.auth();
    let headers = [
        ("Content-Type", FHIR_JSON),
        ("Accept", FHIR_JSON),
        ("Authorization", auth.as_str()),
    ];
    let body = body.map(|b| b.to_string().into_bytes());
    match tokio::time::timeout(timeout, http(method, &url, &headers, body)).await {
        Err(_) => Reply::TimedOut,
        Ok(Err(e)) => Reply::Unreachable(format!("{e:#}")),
        Ok(Ok(r)) => Reply::Answered(r),
    }
}

fn version_of(r: &HttpResponse) -> Option<(String, i64)> {
    let body = r.json();
    let id = body["id"].as_str()?.to_string();
    let version = body["meta"]["versionId"].as_str()?.parse().ok()?;
    Some((id, version))
}

impl Client {
    /// Send request number `n` of the mix; record what came back in `tally`. Whether it was
    /// answered with a 2xx.
    async fn request(
        &mut self,
        n: usize,
        target: &Target,
        timeout: Duration,
        tally: &Mutex<Tally>,
    ) -> bool {
        let pick = |list: &Vec<String>| list[n % list.len()].clone();
        let (w, phase) = (self.worker, self.phase);
        let kind = MIX[n % MIX.len()];
        let mut bundle = None;
        let (method, path, body) = match kind {
            Kind::CreatePatient => (
                "POST",
                "Patient".to_string(),
                Some(patient(&format!("Drill{phase}x{w}x{n}"))),
            ),
            Kind::CreateObservation => (
                "POST",
                "Observation".into(),
                Some(observation(&pick(&self.patients), n)),
            ),
            Kind::UpdatePatient => {
                let id = pick(&self.patients);
                let mut body = patient(&format!("Drill{phase}x{w}x{n}u"));
                body["id"] = json!(id);
                ("PUT", format!("Patient/{id}"), Some(body))
            }
            Kind::ReadPatient => ("GET", format!("Patient/{}", pick(&self.patients)), None),
            Kind::ReadObservation => match self.observations.is_empty() {
                true => ("GET", format!("Patient/{}", pick(&self.patients)), None),
                false => (
                    "GET",
                    format!("Observation/{}", pick(&self.observations)),
                    None,
                ),
            },
            Kind::Search => (
                "GET",
                format!(
                    "Observation?subject=Patient/{}&_count=5",
                    pick(&self.patients)
                ),
                None,
            ),
            Kind::Transaction => {
                // Ids of the client's choosing (update-as-create), so the check below can look
                // for each entry of a Bundle whatever its answer was.
                let (p, o) = (
                    format!("fd-{phase}-{w}-{n}-p"),
                    format!("fd-{phase}-{w}-{n}-o"),
                );
                let mut pat = patient(&format!("Drill{phase}x{w}x{n}t"));
                pat["id"] = json!(p);
                let mut obs = observation(&p, n);
                obs["id"] = json!(o);
                bundle = Some((p.clone(), o.clone()));
                let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                    {"resource": pat, "request": {"method": "PUT", "url": format!("Patient/{p}")}},
                    {"resource": obs, "request": {"method": "PUT", "url": format!("Observation/{o}")}},
                ]});
                ("POST", String::new(), Some(bundle))
            }
        };
        let answer = send(target, timeout, method, &path, body).await;
        let mut t = tally.lock().expect("tally");
        t.requests += 1;
        t.bundles.extend(bundle.clone());
        let r = match answer {
            Reply::TimedOut => {
                t.timeouts += 1;
                t.sample(format!("{method} {path}: no answer within {timeout:?}"));
                return false;
            }
            Reply::Unreachable(e) => {
                t.no_answer += 1;
                t.sample(format!("{method} {path}: {e}"));
                return false;
            }
            Reply::Answered(r) => r,
        };
        match r.status {
            200..=299 => {
                t.ok += 1;
                self.acknowledged(kind, &r, bundle, &mut t);
                return true;
            }
            503 if r.header("retry-after").is_some() => {
                t.unavailable += 1;
                t.unavailable_after_repair += usize::from(t.repaired);
            }
            503 => {
                t.unavailable_without_retry_after += 1;
                t.sample(format!("{method} {path}: 503 without Retry-After"));
            }
            s @ 500..=599 => {
                t.other_5xx += 1;
                t.sample(format!("{method} {path}: {s} {}", r.text()));
            }
            s => {
                t.other_4xx += 1;
                t.sample(format!("{method} {path}: {s} {}", r.text()));
            }
        }
        false
    }

    /// Record what a 2xx acknowledged.
    fn acknowledged(
        &mut self,
        kind: Kind,
        r: &HttpResponse,
        bundle: Option<(String, String)>,
        t: &mut Tally,
    ) {
        let ack = |resource_type, (id, version): (String, i64)| Version {
            resource_type,
            id,
            version,
        };
        match kind {
            Kind::CreatePatient | Kind::UpdatePatient => {
                if let Some(v) = version_of(r) {
                    if matches!(kind, Kind::CreatePatient) {
                        self.patients.push(v.0.clone());
                    }
                    t.acked.push(ack("Patient", v));
                }
            }
            Kind::CreateObservation => {
                if let Some(v) = version_of(r) {
                    self.observations.push(v.0.clone());
                    t.acked.push(ack("Observation", v));
                }
            }
            Kind::Transaction => {
                if let Some((p, o)) = bundle {
                    t.acked.push(ack("Patient", (p.clone(), 1)));
                    t.acked.push(ack("Observation", (o.clone(), 1)));
                    self.patients.push(p);
                    self.observations.push(o);
                }
            }
            Kind::ReadPatient | Kind::ReadObservation => t.reads_ok += 1,
            Kind::Search => {}
        }
    }
}

/// What the checks after a phase found.
#[derive(Default)]
struct Checks {
    acked: usize,
    acked_stored: usize,
    acked_audited: usize,
    /// Versions written during the phase (acknowledged or not) without their AuditEvent.
    unaudited_versions: usize,
    read_events: usize,
    bundles: usize,
    bundles_split: usize,
    /// Current versions written during the phase without index rows, or without their head.
    unindexed: usize,
    headless: usize,
    chain_caught_up: bool,
    /// Patients in a Bulk export of the phase's changes, run after it (None: it did not finish):
    /// the exporter's loop survived the fault.
    exported_patients: Option<u64>,
    /// Distinct patients written with a 2xx during the phase: the export must hold them all.
    acked_patients: usize,
    /// Seconds from the start of the repair (restart, start, unseal, SIGCONT) until a new patient
    /// could be created again.
    recovery: Option<f64>,
    server_alive: bool,
    problems: Vec<String>,
}

struct Row {
    fault: Fault,
    tally: Tally,
    checks: Checks,
}

impl Row {
    /// Why this phase's outcome is wrong, if it is.
    fn failures(&self, recovery_limit: f64) -> Vec<String> {
        let (t, c) = (&self.tally, &self.checks);
        let mut f = c.problems.clone();
        let mut count = |n: usize, what: &str| {
            if n > 0 {
                f.push(format!("{n} {what}"));
            }
        };
        count(t.other_5xx, "answers with a 5xx other than 503");
        count(
            t.unavailable_without_retry_after,
            "503s without Retry-After",
        );
        count(
            t.timeouts,
            "requests without an answer within the client timeout",
        );
        count(t.other_4xx, "unexpected 4xx answers");
        if !self.fault.server_gone() {
            count(t.no_answer, "connections dropped by a running server");
        }
        count(c.acked - c.acked_stored, "acknowledged writes missing");
        count(
            c.acked - c.acked_audited,
            "acknowledged writes without their AuditEvent",
        );
        count(
            c.unaudited_versions,
            "stored versions without their AuditEvent",
        );
        count(c.bundles_split, "transaction Bundles stored in part");
        count(c.unindexed, "current versions without index rows");
        count(c.headless, "versions whose resource has no head");
        if c.read_events < t.reads_ok {
            f.push(format!(
                "{} reads answered but only {} read events recorded",
                t.reads_ok, c.read_events
            ));
        }
        if !c.chain_caught_up {
            f.push("the audit chainer did not catch up".into());
        }
        match c.exported_patients {
            None => f.push("a Bulk export after the fault did not finish".into()),
            Some(n) if (n as usize) < c.acked_patients => f.push(format!(
                "the export after the fault holds {n} patients of the {} written",
                c.acked_patients
            )),
            Some(_) => {}
        }
        match c.recovery {
            Some(s) if s <= recovery_limit => {}
            Some(s) => f.push(format!(
                "recovered after {s:.1} s (limit {recovery_limit} s)"
            )),
            None => f.push("did not recover".into()),
        }
        if self.fault != Fault::None && t.unavailable + t.no_answer == 0 {
            f.push(
                "the fault was not felt (no 503, no refused connection): nothing was tested".into(),
            );
        }
        if !c.server_alive {
            f.push("the server process died (it must ride the fault out)".into());
        }
        f
    }
}

struct Drill {
    stack: Stack,
    target: Arc<Target>,
    /// One patient per client, made before the first phase: every client has one to read.
    seeds: Vec<String>,
    clients: usize,
    timeout: Duration,
    hold: Duration,
    recovery_limit: f64,
    budget: Arc<AtomicUsize>,
}

impl Drill {
    async fn authorize(&mut self) -> anyhow::Result<()> {
        // A registered backend client, signed in afresh: its exports run under its registration.
        let pool = self.stack.db().await;
        self.stack.server.authorize(&pool).await;
        pool.close().await;
        *self.target.auth.write().expect("auth") = self.stack.server.bearer();
        Ok(())
    }

    async fn phase(&mut self, phase: usize, fault: Fault) -> anyhow::Result<Row> {
        eprintln!("phase {phase}: {}", fault.name());
        self.authorize().await?;
        let since = chrono::Utc::now();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for worker in 0..self.clients {
            let mut client = Client {
                worker,
                phase,
                patients: vec![self.seeds[worker].clone()],
                observations: vec![],
            };
            let (target, tally, stop) = (self.target.clone(), tally.clone(), stop.clone());
            let (timeout, budget) = (self.timeout, self.budget.clone());
            workers.push(tokio::spawn(async move {
                let mut n = worker;
                let spend = || {
                    budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                        .is_ok()
                };
                while !stop.load(Ordering::Relaxed) && spend() {
                    if !client.request(n, &target, timeout, &tally).await {
                        // Retried soon (a client in a hurry), not in a tight loop.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    n += 1;
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        self.inject(fault).await?;
        tokio::time::sleep(self.hold).await;
        // Recovery is timed from the start of the repair: a server's or database's start counts.
        let recovered = Instant::now();
        self.recover(fault).await?;
        tally.lock().expect("tally").repaired = true;
        let recovery = self.probe(phase, &tally).await;
        let recovery = recovery.then(|| recovered.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.await?;
        }
        let tally = Arc::try_unwrap(tally)
            .map_err(|_| anyhow::anyhow!("a client still runs"))?
            .into_inner()
            .map_err(|_| anyhow::anyhow!("a client panicked"))?;
        let mut checks = self.check(since, &tally).await?;
        checks.recovery = recovery;
        checks.server_alive = fault.server_gone() || self.server_alive();
        Ok(Row {
            fault,
            tally,
            checks,
        })
    }

    async fn inject(&mut self, fault: Fault) -> anyhow::Result<()> {
        let signal = |pid: Option<u32>, sig| {
            // SAFETY: kill(2) on a child process of this drill.
            pid.map(|p| unsafe { libc::kill(p as i32, sig) })
        };
        match fault {
            Fault::None => {}
            Fault::KillServer => {
                signal(self.stack.server.pid(), libc::SIGKILL);
            }
            Fault::StopDatabase => self.stack.postgres.stop_immediately()?,
            Fault::SealVault => self.stack.bao.seal().await?,
            Fault::StopVault => self.stack.bao.stop(),
            Fault::HangVault => {
                signal(self.stack.bao.pid(), libc::SIGSTOP);
            }
        }
        Ok(())
    }

    async fn recover(&mut self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::None => {}
            Fault::KillServer => {
                self.stack.server.restart().await?;
                *self.target.base.write().expect("base") = self.stack.server.base.clone();
            }
            Fault::StopDatabase => self.stack.postgres.start_after_crash()?,
            Fault::SealVault => self.stack.bao.unseal().await?,
            Fault::StopVault => self.stack.bao.restart().await?,
            Fault::HangVault => {
                // SAFETY: kill(2) on a child process of this drill.
                if let Some(p) = self.stack.bao.pid() {
                    unsafe { libc::kill(p as i32, libc::SIGCONT) };
                }
            }
        }
        Ok(())
    }

    /// Create new patients until one is created (the database and the key provider both
    /// answering) and the seed patient reads; false if that did not happen within the limit.
    async fn probe(&self, phase: usize, tally: &Mutex<Tally>) -> bool {
        let deadline = Instant::now() + Duration::from_secs_f64(self.recovery_limit * 2.0);
        let mut n = 0;
        while Instant::now() < deadline {
            n += 1;
            let body = patient(&format!("Probe{phase}x{n}"));
            let created = send(&self.target, self.timeout, "POST", "Patient", Some(body)).await;
            if let Reply::Answered(r) = created {
                if r.status == 201 {
                    if let Some(v) = version_of(&r) {
                        tally.lock().expect("tally").acked.push(Version {
                            resource_type: "Patient",
                            id: v.0,
                            version: v.1,
                        });
                    }
                    let path = format!("Patient/{}", self.seeds[0]);
                    if let Reply::Answered(r) =
                        send(&self.target, self.timeout, "GET", &path, None).await
                    {
                        if r.status == 200 {
                            return true;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn server_alive(&self) -> bool {
        // A zombie (exited, not yet reaped) shows state Z in /proc; a running server does not.
        self.stack
            .server
            .pid()
            .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .map(|r| r.trim_start().starts_with(['R', 'S', 'D']))
            })
            .unwrap_or(false)
    }

    async fn check(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        tally: &Tally,
    ) -> anyhow::Result<Checks> {
        let db = self.stack.db().await;
        let mut c = Checks {
            acked: tally.acked.len(),
            bundles: tally.bundles.len(),
            ..Checks::default()
        };
        let types: Vec<&str> = tally.acked.iter().map(|v| v.resource_type).collect();
        let ids: Vec<&str> = tally.acked.iter().map(|v| v.id.as_str()).collect();
        let versions: Vec<i64> = tally.acked.iter().map(|v| v.version).collect();
        let stored: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM unnest($1::text[], $2::text[], $3::int8[]) AS a(t, i, v)
              WHERE EXISTS (SELECT 1 FROM resource_versions r
                             WHERE r.resource_type = a.t AND r.id = a.i AND r.version_id = a.v)",
        )
        .bind(&types)
        .bind(&ids)
        .bind(&versions)
        .fetch_one(&db)
        .await?;
        c.acked_stored = usize::try_from(stored)?;
        // The write events since the phase began, through the API, by the version each names.
        let mut audited = std::collections::HashSet::new();
        for action in ["C", "U"] {
            for event in self.events(since, &format!("action={action}")).await? {
                for e in event["entity"].as_array().into_iter().flatten() {
                    if let Some(what) = e["what"]["reference"].as_str() {
                        audited.insert(what.to_string());
                    }
                }
            }
        }
        let named = |t: &str, i: &str, v: i64| format!("{t}/{i}/_history/{v}");
        c.acked_audited = tally
            .acked
            .iter()
            .filter(|v| audited.contains(&named(v.resource_type, &v.id, v.version)))
            .count();
        let written: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT resource_type, id, version_id FROM resource_versions
              WHERE last_updated >= $1 AND resource_type IN ('Patient', 'Observation')",
        )
        .bind(since)
        .fetch_all(&db)
        .await?;
        c.unaudited_versions = written
            .iter()
            .filter(|(t, i, v)| !audited.contains(&named(t, i, *v)))
            .count();
        c.read_events = self.events(since, "subtype=read&outcome=0").await?.len();
        let (ps, os): (Vec<&str>, Vec<&str>) = tally
            .bundles
            .iter()
            .map(|(p, o)| (p.as_str(), o.as_str()))
            .unzip();
        let split: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM unnest($1::text[], $2::text[]) AS b(p, o)
              WHERE EXISTS (SELECT 1 FROM resources WHERE resource_type = 'Patient' AND id = b.p)
                <> EXISTS (SELECT 1 FROM resources WHERE resource_type = 'Observation' AND id = b.o)",
        )
        .bind(&ps)
        .bind(&os)
        .fetch_one(&db)
        .await?;
        c.bundles_split = usize::try_from(split)?;
        let unindexed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM resources r
               JOIN resource_versions v USING (resource_type, id, version_id)
              WHERE v.last_updated >= $1 AND NOT r.deleted
                AND NOT EXISTS (SELECT 1 FROM search_hash h
                                 WHERE h.resource_type = r.resource_type AND h.id = r.id)",
        )
        .bind(since)
        .fetch_one(&db)
        .await?;
        c.unindexed = usize::try_from(unindexed)?;
        let headless: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM resource_versions v
              WHERE v.last_updated >= $1
                AND NOT EXISTS (SELECT 1 FROM resources r
                                 WHERE r.resource_type = v.resource_type AND r.id = v.id)",
        )
        .bind(since)
        .fetch_one(&db)
        .await?;
        c.headless = usize::try_from(headless)?;
        // The chainer links queued events every second: it must be running again.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && !c.chain_caught_up {
            let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_unchained")
                .fetch_one(&db)
                .await?;
            c.chain_caught_up = pending == 0;
            if !c.chain_caught_up {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        db.close().await;
        c.acked_patients = tally
            .acked
            .iter()
            .filter(|v| v.resource_type == "Patient")
            .map(|v| v.id.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len();
        c.exported_patients = self.export(since).await?;
        Ok(c)
    }

    /// A Bulk export of the patients changed since `since`: how many it holds, once it finished
    /// (within a minute).
    async fn export(&self, since: chrono::DateTime<chrono::Utc>) -> anyhow::Result<Option<u64>> {
        let auth = self.target.auth();
        let headers = [
            ("Authorization", auth.as_str()),
            ("Accept", FHIR_JSON),
            ("Prefer", "respond-async"),
        ];
        let from = (since - chrono::Duration::seconds(1)).format("%Y-%m-%dT%H:%M:%SZ");
        let url = format!("{}/$export?_type=Patient&_since={from}", self.target.base());
        let r = http("GET", &url, &headers, None).await?;
        anyhow::ensure!(
            r.status == 202,
            "export kick-off: {} {}",
            r.status,
            r.text()
        );
        let status = r.header("content-location").unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let r = http("GET", &status, &headers[..2], None).await?;
            match r.status {
                200 => {
                    let manifest = r.json();
                    let outputs = manifest["output"].as_array().cloned().unwrap_or_default();
                    return Ok(Some(
                        outputs.iter().filter_map(|o| o["count"].as_u64()).sum(),
                    ));
                }
                202 => tokio::time::sleep(Duration::from_millis(200)).await,
                other => anyhow::bail!("export status: {other} {}", r.text()),
            }
        }
        Ok(None)
    }

    /// Every AuditEvent recorded since `since` (less a second) matching `query`, page by page.
    async fn events(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        query: &str,
    ) -> anyhow::Result<Vec<Value>> {
        let admin = self
            .stack
            .token(
                "fault-drill-auditor",
                Role::Admin,
                "user/AuditEvent.rs",
                None,
            )
            .await?;
        let auth = format!("Bearer {admin}");
        let from = (since - chrono::Duration::seconds(1)).format("%Y-%m-%dT%H:%M:%SZ");
        let mut url = format!(
            "{}/AuditEvent?date=ge{from}&{query}&_count=1000",
            self.target.base()
        );
        let mut events = Vec::new();
        loop {
            let r = http("GET", &url, &[("Authorization", auth.as_str())], None).await?;
            anyhow::ensure!(
                r.status == 200,
                "AuditEvent search: {} {}",
                r.status,
                r.text()
            );
            let page = r.json();
            for e in page["entry"].as_array().into_iter().flatten() {
                events.push(e["resource"].clone());
            }
            let next = page["link"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str());
            match next {
                Some(next) => url = next.to_string(),
                None => return Ok(events),
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let clients: usize = arg("--clients").unwrap_or(4);
    let timeout = Duration::from_secs_f64(arg("--timeout").unwrap_or(10.0));
    let hold = Duration::from_secs_f64(arg("--hold").unwrap_or(15.0));
    let recovery_limit: f64 = arg("--recovery-limit").unwrap_or(30.0);
    let max_requests: usize = arg("--max-requests").unwrap_or(40_000);
    eprintln!("starting PostgreSQL, a persistent OpenBao and carapace-server on loopback ...");
    let postgres = Postgres::start().await?;
    let bao = Bao::start_persistent().await?;
    let exports = tempfile::tempdir()?;
    let env = vec![(
        "CARAPACE_EXPORT_DIR".to_string(),
        exports.path().display().to_string(),
    )];
    let stack = Stack::start_on(postgres, bao, env).await?;
    let target = Arc::new(Target {
        base: RwLock::new(stack.server.base.clone()),
        auth: RwLock::new(stack.server.bearer()),
    });
    let mut seeds = Vec::new();
    for w in 0..clients {
        let r = stack
            .fhir()
            .post("Patient", &patient(&format!("Seed{w}")))
            .await;
        seeds.push(r.created_id());
    }
    let mut drill = Drill {
        stack,
        target,
        seeds,
        clients,
        timeout,
        hold,
        recovery_limit,
        budget: Arc::new(AtomicUsize::new(max_requests)),
    };
    let mut rows = Vec::new();
    for (phase, fault) in [
        Fault::None,
        Fault::KillServer,
        Fault::StopDatabase,
        Fault::SealVault,
        Fault::StopVault,
        Fault::HangVault,
    ]
    .into_iter()
    .enumerate()
    {
        rows.push(drill.phase(phase, fault).await?);
    }
    let env = drill.stack.console_env("fault-drill").await;
    let (verified, out, err) = console(&env, &["audit", "verify"], None);
    print_table(&rows, timeout, recovery_limit);
    println!(
        "\n`carapace-console audit verify` over the whole trail: {}",
        if verified { "intact" } else { "FAILED" }
    );
    let mut wrong = !verified;
    if !verified {
        println!("{out}{err}");
    }
    for r in &rows {
        let failures = r.failures(recovery_limit);
        if !failures.is_empty() {
            wrong = true;
            println!("\n{}: WRONG — {}", r.fault.name(), failures.join("; "));
            for s in &r.tally.samples {
                println!("  e.g. {s}");
            }
        }
    }
    if wrong {
        eprintln!("server log: {}", drill.stack.server.log.display());
        std::process::exit(1);
    }
    Ok(())
}

fn print_table(rows: &[Row], timeout: Duration, recovery_limit: f64) {
    println!(
        "| fault | requests | 2xx | 503 + Retry-After (after the repair) | other 5xx | no answer (connection) | timeouts (> {:.0} s) | acknowledged writes stored | with their AuditEvent | Bundles whole | export after it | recovery (s) | outcome |",
        timeout.as_secs_f64()
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|");
    for r in rows {
        let (t, c) = (&r.tally, &r.checks);
        println!(
            "| {} | {} | {} | {} ({}) | {} | {} | {} | {}/{} | {}/{} | {}/{} | {} | {} | {} |",
            r.fault.name(),
            t.requests,
            t.ok,
            t.unavailable,
            t.unavailable_after_repair,
            t.other_5xx + t.unavailable_without_retry_after,
            t.no_answer,
            t.timeouts,
            c.acked_stored,
            c.acked,
            c.acked_audited,
            c.acked,
            c.bundles - c.bundles_split,
            c.bundles,
            match c.exported_patients {
                Some(n) => format!("{n} patients ({} written)", c.acked_patients),
                None => "unfinished".into(),
            },
            c.recovery
                .map(|s| format!("{s:.1}"))
                .unwrap_or_else(|| "—".into()),
            if r.failures(recovery_limit).is_empty() {
                "ok"
            } else {
                "WRONG"
            }
        );
    }
}
