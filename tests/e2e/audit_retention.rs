//! Audit retention: events past their time are archived to a sealed file (with the chain's
//! anchors), then removed — all but those of patients under a legal hold — and `audit verify`
//! proves the rest of the trail and `audit verify --archive` each file, while nobody removes an
//! event any other way.
//!
//! The old events are recorded years ago by a store whose clock is set back that far (their tags
//! cover the time, so nothing is edited afterwards); there is no server, whose own events of today
//! would be the first in the chain.

use carapace_core::access::{AccessContext, Role, Scope};
use carapace_core::clock::FixedClock;
use carapace_core::config::Config;
use carapace_core::core::Core;
use carapace_core::fhir::{ResourceId, ResourceType};
use carapace_core::store::{Created, Store};
use carapace_tests::*;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Fixture names that must never appear in an archive file.
const CANARIES: [&str; 4] = [
    "Zorblatt-Held",
    "Pemberton-Released",
    "Quimbly-Gone",
    "Vexworth-Gone",
];

async fn patient(store: &Store, ctx: &AccessContext, family: &str) -> String {
    let created = store
        .create(
            ctx,
            ResourceType::parse("Patient").unwrap(),
            json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Canary"]}],
                   "birthDate": "1961-02-03"}),
            None,
        )
        .await
        .unwrap();
    let Created::New(stored) = created else {
        panic!("a new patient")
    };
    for _ in 0..2 {
        store
            .read(
                ctx,
                ResourceType::parse("Patient").unwrap(),
                &ResourceId::parse(&stored.id).unwrap(),
            )
            .await
            .unwrap();
    }
    format!("Patient/{}", stored.id)
}

async fn read(store: &Store, ctx: &AccessContext, reference: &str) {
    let id = reference.strip_prefix("Patient/").unwrap();
    store
        .read(
            ctx,
            ResourceType::parse("Patient").unwrap(),
            &ResourceId::parse(id).unwrap(),
        )
        .await
        .unwrap();
}

async fn run(env: &[(String, String)], args: &[&str]) -> (bool, String, String) {
    let env = env.to_vec();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        console(&env, &args, None)
    })
    .await
    .unwrap()
}

/// `carapace-console audit verify --archive FILE`.
async fn verify_archive(env: &[(String, String)], file: &Path) -> (bool, String, String) {
    run(
        env,
        &["audit", "verify", "--archive", &file.display().to_string()],
    )
    .await
}

async fn count(db: &sqlx::PgPool, sql: &str, patient: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(patient)
        .fetch_one(db)
        .await
        .unwrap()
}

async fn start_of(db: &sqlx::PgPool) -> (i64, Vec<u8>) {
    sqlx::query_as("SELECT seq, link FROM audit_chain_start")
        .fetch_one(db)
        .await
        .unwrap()
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A database, an OpenBao and a core whose clock stands 3,000 days back (no server), with an
/// archive directory of the test's own and the owner's pool.
struct Trail {
    bao: Bao,
    env: Vec<(String, String)>,
    archive_dir: tempfile::TempDir,
    config: Config,
    clock: Arc<FixedClock>,
    core: Core,
    db: sqlx::PgPool,
}

impl Trail {
    async fn start() -> Trail {
        let bao = Bao::start_dev().await.unwrap();
        let postgres = Postgres::shared().await.unwrap();
        let name = format!("t_audit_retention_{}", uuid::Uuid::new_v4().simple());
        let url = postgres.database(&name).await.unwrap();
        let archive_dir = tempfile::tempdir().unwrap();
        let mut env = bao.env(&format!("carapace-{}", uuid::Uuid::new_v4().simple()));
        env.push(("CARAPACE_DATABASE_URL".into(), url.clone()));
        env.push((
            "CARAPACE_AUDIT_ARCHIVE_DIR".into(),
            archive_dir.path().display().to_string(),
        ));
        let map: std::collections::HashMap<String, String> = env.iter().cloned().collect();
        let config = Config::from_lookup(|k| map.get(k).cloned()).unwrap();
        let clock = Arc::new(FixedClock::new(
            chrono::Utc::now() - chrono::Duration::days(3000),
        ));
        let core = Core::open_with_clock(&config, clock.clone()).await.unwrap();
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .unwrap();
        Trail {
            bao,
            env,
            archive_dir,
            config,
            clock,
            core,
            db,
        }
    }
}

#[tokio::test]
async fn old_audit_events_are_archived_then_removed_and_both_parts_verify() {
    let Trail {
        bao,
        env,
        archive_dir,
        config,
        clock,
        core,
        db,
    } = Trail::start().await;
    assert_eq!(config.retention.audit_days, 2555, "the default retention");
    let store = &core.store;
    // Years ago: patients made and read, each event recorded then.
    let mut clinician = AccessContext::operator("dr.longago");
    clinician.scopes = vec![Scope::parse("user/*.cruds").unwrap()];
    let held = patient(store, &clinician, CANARIES[0]).await;
    let released = patient(store, &clinician, CANARIES[1]).await;
    let gone = patient(store, &clinician, CANARIES[2]).await;
    store.chain_audit().await.unwrap();
    let of_patient = "SELECT count(*) FROM audit_events WHERE patient = $1";
    let held_before = count(&db, of_patient, &held).await;
    let released_before = count(&db, of_patient, &released).await;
    assert_eq!(
        (held_before, released_before),
        (3, 3),
        "a create and two reads each"
    );
    let gone_ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM audit_events WHERE patient = $1")
        .bind(&gone)
        .fetch_all(&db)
        .await
        .unwrap();
    // An anchor kept from back then (what `audit verify` prints as its head).
    let (anchor_link,): (Vec<u8>,) = sqlx::query_as("SELECT link FROM audit_links WHERE seq = 3")
        .fetch_one(&db)
        .await
        .unwrap();
    let anchor = format!("3:{}", hex(&anchor_link));
    // Two patients under a legal hold (one released before the second run).
    for p in [&held, &released] {
        sqlx::query(
            "INSERT INTO legal_holds (patient, reason_sealed, placed_by, placed_at)
             VALUES ($1, '\\x00', 'counsel', now())",
        )
        .bind(p)
        .execute(&db)
        .await
        .unwrap();
    }

    // Archiving is for administrators: anyone else is refused (and that is audited).
    let mut practitioner = AccessContext::operator("dr.curious");
    practitioner.role = Role::Practitioner;
    let refused = store
        .archive_audit(&practitioner, &config.retention, chrono::Utc::now(), false)
        .await;
    assert!(refused.is_err(), "{refused:?}");

    // The first run, through the core (as the server's retention task calls it).
    let officer = AccessContext::operator("records.officer");
    let dry = store
        .archive_audit(&officer, &config.retention, chrono::Utc::now(), true)
        .await
        .unwrap();
    assert!(dry.file.is_none() && dry.archived > 0, "{dry:?}");
    assert!(
        files_in(archive_dir.path()).is_empty(),
        "a dry run writes nothing"
    );
    let first = store
        .archive_audit(&officer, &config.retention, chrono::Utc::now(), false)
        .await
        .unwrap();
    let (from, to) = first.segment.unwrap();
    assert_eq!(from, 1);
    assert_eq!(first.archived, u64::try_from(to).unwrap());
    assert_eq!(first.held_kept, 6, "{first:?}");
    assert_eq!(first.removed, first.archived - 6);
    let file1 = first.file.clone().unwrap();
    assert_eq!(
        file1.file_name().unwrap().to_str().unwrap(),
        format!("audit-1-{to}.ndjson.sealed")
    );
    assert_eq!(
        hex(&sha2::Sha256::digest(std::fs::read(&file1).unwrap())),
        first.sha256.clone().unwrap()
    );
    assert_eq!(
        files_in(archive_dir.path()),
        vec![file1.clone()],
        "no .part left"
    );
    assert_eq!(
        start_of(&db).await,
        (to + 1, first.anchor.clone().unwrap().1)
    );
    // Held patients' events stay (with their links); the others' rows are gone.
    assert_eq!(count(&db, of_patient, &held).await, held_before);
    assert_eq!(count(&db, of_patient, &released).await, released_before);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE id = ANY($1)")
        .bind(&gone_ids)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(left, 0, "the events of a patient under no hold are removed");
    let links_below: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_links WHERE seq <= $1")
        .bind(to)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(links_below, 6, "the kept events keep their links");

    // More years-ago activity, then one hold ends.
    clock.advance(chrono::Duration::days(1));
    read(store, &clinician, &held).await;
    read(store, &clinician, &released).await;
    let vex = patient(store, &clinician, CANARIES[3]).await;
    store.chain_audit().await.unwrap();
    sqlx::query(
        "UPDATE legal_holds SET released_by = 'counsel', released_at = now() WHERE patient = $1",
    )
    .bind(&released)
    .execute(&db)
    .await
    .unwrap();

    // The second run from the console continues from the new start.
    let admin = carapace_core::identity::tokens::issue(
        &db.clone().into(),
        chrono::Utc::now(),
        "records.officer",
        Role::Admin,
        &[],
        None,
    )
    .await
    .unwrap();
    let mut console_env = env.clone();
    console_env.push(("CARAPACE_ADMIN_TOKEN".into(), admin.access_token));
    let (ok, out, err) = run(&console_env, &["audit", "archive", "--dry-run"]).await;
    assert!(ok, "{out} {err}");
    assert!(
        out.contains(&format!("would archive events {}-", to + 1)),
        "{out}"
    );
    assert_eq!(files_in(archive_dir.path()).len(), 1);
    let (ok, out, err) = run(&console_env, &["audit", "archive"]).await;
    assert!(ok, "{out} {err}");
    assert!(
        out.contains(&format!("archived events {}-", to + 1)),
        "{out}"
    );
    assert!(out.contains("their hold ended"), "{out}");
    let (to2, link2): (i64, Vec<u8>) =
        sqlx::query_as("SELECT last_seq, end_link FROM audit_archives WHERE first_seq = $1")
            .bind(to + 1)
            .fetch_one(&db)
            .await
            .unwrap();
    let file2 = archive_dir
        .path()
        .join(format!("audit-{}-{to2}.ndjson.sealed", to + 1));
    assert_eq!(
        files_in(archive_dir.path()),
        vec![file1.clone(), file2.clone()]
    );
    assert!(out.contains(&format!("{to2}:{}", hex(&link2))), "{out}");
    assert_eq!(start_of(&db).await, (to2 + 1, link2));
    assert_eq!(
        count(&db, of_patient, &held).await,
        held_before + 1,
        "a held patient's events stay, old and new"
    );
    assert_eq!(
        count(&db, of_patient, &released).await,
        0,
        "once the hold ends the next run removes what it kept"
    );
    assert_eq!(count(&db, of_patient, &vex).await, 0);

    // The rest of the trail verifies, with the held events below its start; an anchor from
    // before the start is accepted as archived.
    let (ok, out, err) = run(&console_env, &["audit", "verify"]).await;
    assert!(ok && out.contains("audit chain intact"), "{out} {err}");
    assert!(
        out.contains(&format!("live trail starts at event {}", to2 + 1))
            && out.contains("after 2 archived segment(s)")
            && out.contains("4 archived events kept for legal holds"),
        "{out}"
    );
    let (ok, out, err) = run(&console_env, &["audit", "verify", "--anchor", &anchor]).await;
    assert!(ok, "{out} {err}");
    assert!(
        out.contains(&format!(
            "the anchor lies in the archive audit-1-{to}.ndjson.sealed"
        )),
        "{out}"
    );

    // Each archive verifies on its own and joins the next part.
    let file1_arg = file1.display().to_string();
    let (ok, out, err) = run(&console_env, &["audit", "verify", "--archive", &file1_arg]).await;
    assert!(ok, "{out} {err}");
    assert!(
        out.contains(&format!("audit archive intact: audit-1-{to}.ndjson.sealed"))
            && out.contains(&format!("{to} events verified"))
            && out.contains(&format!("joins archive audit-{}-{to2}", to + 1)),
        "{out}"
    );
    let (ok, out, err) = run(
        &console_env,
        &["audit", "verify", "--archive", &file2.display().to_string()],
    )
    .await;
    assert!(ok && out.contains("joins the live trail"), "{out} {err}");
    let (ok, out, err) = run(
        &console_env,
        &[
            "audit",
            "verify",
            "--archive",
            &file1_arg,
            "--anchor",
            &anchor,
        ],
    )
    .await;
    assert!(
        ok && out.contains("found in the archive and unchanged"),
        "{out} {err}"
    );
    let mut wrong = anchor_link.clone();
    wrong[0] ^= 1;
    let wrong = format!("3:{}", hex(&wrong));
    let (ok, out, err) = run(
        &console_env,
        &[
            "audit",
            "verify",
            "--archive",
            &file1_arg,
            "--anchor",
            &wrong,
        ],
    )
    .await;
    assert!(!ok && err.contains("not the anchor"), "{out} {err}");

    // A copy under another name is the same archive; one byte changed is not.
    let copies = tempfile::tempdir().unwrap();
    let renamed = copies.path().join("kept-offsite.bin");
    std::fs::copy(&file1, &renamed).unwrap();
    let (ok, out, err) = verify_archive(&console_env, &renamed).await;
    assert!(ok, "{out} {err}");
    let mut bytes = std::fs::read(&file1).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    let tampered = copies.path().join("tampered.bin");
    std::fs::write(&tampered, &bytes).unwrap();
    let (ok, out, err) = verify_archive(&console_env, &tampered).await;
    assert!(!ok && err.contains("audit archive BROKEN"), "{out} {err}");

    // Nothing of what the events say is readable in the files.
    for file in [&file1, &file2] {
        let bytes = std::fs::read(file).unwrap();
        for plain in CANARIES.iter().copied().chain([
            "Canary",
            "1961",
            "Patient/",
            "dr.longago",
            "records.officer",
        ]) {
            assert!(
                !bytes.windows(plain.len()).any(|w| w == plain.as_bytes()),
                "{plain} in {}",
                file.display()
            );
        }
    }

    // No one removes an event or moves the start any other way: not the owner, not with the
    // purge marker set by hand, not the server's role, not the purge function asked to take
    // recent events.
    let refused = |sql: &'static str, role: Option<&'static str>| {
        let db = db.clone();
        async move {
            let mut tx = db.begin().await.unwrap();
            if let Some(role) = role {
                sqlx::query(&format!("SET LOCAL ROLE {role}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            sqlx::query("SELECT set_config('carapace.audit_purge', 'on', true)")
                .execute(&mut *tx)
                .await
                .unwrap();
            let err = sqlx::query(sql).execute(&mut *tx).await.unwrap_err();
            err.to_string()
        }
    };
    for sql in [
        "DELETE FROM audit_events WHERE id = (SELECT max(id) FROM audit_events)",
        "DELETE FROM audit_events WHERE id = (SELECT min(id) FROM audit_events)",
        "DELETE FROM audit_events",
        "DELETE FROM audit_links",
        "DELETE FROM audit_archives",
    ] {
        let err = refused(sql, None).await;
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    let err = refused("UPDATE audit_chain_start SET seq = 1", None).await;
    assert!(err.contains("moves only with an archive"), "{err}");
    for sql in [
        "DELETE FROM audit_events",
        "INSERT INTO audit_archives (first_seq, last_seq, start_link, end_link, events, held_kept,
                                     file_name, sha256, archived_at, archived_by)
         SELECT seq, seq + 100, link, link, 100, 0, 'x', sha256('x'), now(), 'mallory'
           FROM audit_chain_start",
    ] {
        let err = refused(sql, Some("carapace_app")).await;
        assert!(err.contains("permission denied"), "{sql}: {err}");
    }
    let err = refused(
        "SELECT * FROM carapace_audit_purge(
             (SELECT seq FROM audit_chain_start), (SELECT seq FROM audit_chain_head),
             (SELECT link FROM audit_chain_start), (SELECT link FROM audit_chain_head),
             now(), 'audit-1-1.ndjson.sealed', sha256('x'), now(), 'mallory')",
        Some("carapace_app"),
    )
    .await;
    assert!(err.contains("not an archive file name"), "{err}");
    let err = refused(
        "SELECT p.* FROM audit_chain_start s, audit_chain_head h,
             LATERAL carapace_audit_purge(
                 s.seq, h.seq, s.link, h.link, now(),
                 format('audit-%s-%s.ndjson.sealed', s.seq, h.seq), sha256('x'), now(), 'mallory') p",
        Some("carapace_app"),
    )
    .await;
    assert!(
        err.contains("younger than 365 days are never removed"),
        "{err}"
    );
    // One run at a time: while another holds the run's lock, a run is refused at once.
    let mut other = db.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('carapace-audit-archive', 0))")
        .execute(&mut *other)
        .await
        .unwrap();
    let busy = store
        .archive_audit(&officer, &config.retention, chrono::Utc::now(), false)
        .await;
    assert!(
        busy.as_ref()
            .is_err_and(|e| e.to_string().contains("in progress")),
        "{busy:?}"
    );
    other.rollback().await.unwrap();
    // The store lied to about the time writes its file, is refused by the database, and leaves
    // nothing behind.
    let events_now: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&db)
        .await
        .unwrap();
    let future = chrono::Utc::now() + chrono::Duration::days(3000);
    let lied = store
        .archive_audit(&officer, &config.retention, future, false)
        .await;
    assert!(
        lied.as_ref()
            .is_err_and(|e| e.to_string().contains("never removed")),
        "{lied:?}"
    );
    assert_eq!(
        files_in(archive_dir.path()),
        vec![file1.clone(), file2.clone()]
    );
    assert_eq!(start_of(&db).await.0, to2 + 1);
    let events_after: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(events_after >= events_now, "nothing removed");
    let (ok, out, err) = run(&console_env, &["audit", "verify"]).await;
    assert!(ok && out.contains("audit chain intact"), "{out} {err}");
    core.shutdown().await;
    drop(bao);
}

/// A segment whose chain is broken is never archived: the run stops at the break, writes no file
/// and removes nothing.
#[tokio::test]
async fn a_broken_chain_is_never_archived() {
    let trail = Trail::start().await;
    let store = &trail.core.store;
    let mut clinician = AccessContext::operator("dr.longago");
    clinician.scopes = vec![Scope::parse("user/*.cruds").unwrap()];
    for family in ["Ada", "Bea"] {
        patient(store, &clinician, family).await;
    }
    store.chain_audit().await.unwrap();
    // Someone able to switch the triggers off edits one old event.
    let mut tx = trail.db.begin().await.unwrap();
    for sql in [
        "ALTER TABLE audit_events DISABLE TRIGGER USER",
        "UPDATE audit_events SET principal = 'mallory'
          WHERE id = (SELECT event_id FROM audit_links WHERE seq = 4)",
        "ALTER TABLE audit_events ENABLE TRIGGER USER",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&trail.db)
        .await
        .unwrap();
    let officer = AccessContext::operator("records.officer");
    let refused = store
        .archive_audit(&officer, &trail.config.retention, chrono::Utc::now(), false)
        .await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("broken at event 4")),
        "{refused:?}"
    );
    assert!(
        !trail.archive_dir.path().exists() || files_in(trail.archive_dir.path()).is_empty(),
        "no file, not even a part"
    );
    assert_eq!(start_of(&trail.db).await.0, 1);
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&trail.db)
        .await
        .unwrap();
    assert!(after >= events, "nothing removed");
    trail.core.shutdown().await;
}

#[tokio::test]
async fn the_server_role_cannot_give_an_event_a_place_an_archive_freed() {
    let stack = Stack::start().await.unwrap();
    let p = stack
        .fhir()
        .post("Patient", &json!({"resourceType": "Patient"}))
        .await;
    assert_eq!(p.status, 201);
    let db = stack.db().await;
    // Wait for the chainer, so there is a head above 0.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sqlx::query_scalar::<_, i64>("SELECT seq FROM audit_chain_head")
        .fetch_one(&db)
        .await
        .unwrap()
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "nothing chained");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let event: i64 = sqlx::query_scalar("SELECT max(id) FROM audit_events")
        .fetch_one(&db)
        .await
        .unwrap();
    let mut conn = db.acquire().await.unwrap();
    sqlx::query("SET ROLE carapace_app")
        .execute(&mut *conn)
        .await
        .unwrap();
    // A link at or below the head (a place an archive may have freed) is refused...
    let below =
        sqlx::query("INSERT INTO audit_links (seq, event_id, link) VALUES (1, $1, '\\x00')")
            .bind(event)
            .execute(&mut *conn)
            .await;
    let why = below
        .expect_err("a link was placed below the head")
        .to_string();
    assert!(why.contains("above the chain head"), "{why}");
    // ...and so is an event written already chained.
    let chained = sqlx::query(
        "INSERT INTO audit_events (recorded, action, outcome, principal, event, seq, link)
         VALUES (now(), 'R', '0', 'x', '{}', 999999, '\\x00')",
    )
    .execute(&mut *conn)
    .await;
    let why = chained
        .expect_err("an event was written chained")
        .to_string();
    assert!(why.contains("chained by the chainer"), "{why}");
    sqlx::query("RESET ROLE").execute(&mut *conn).await.unwrap();
}
