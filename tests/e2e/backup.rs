//! The restore drill, on the embedded default as it ships: data written, a full backup, more
//! writes, a time noted, more writes, an incremental backup; then `carapace-console restore --to`
//! that time into a fresh data directory and `carapace-server` started on it serves exactly what
//! existed then — resources, versions, the search index and the audit trail — and the backup
//! repository holds no byte of the data in the clear.

use carapace_tests::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An administrator token in the cluster under `data_dir` (what `carapace-console login` gives).
async fn admin_token(data_dir: &Path) -> String {
    let pool = embedded_pool(data_dir).await;
    let token = carapace_core::identity::tokens::issue(
        &pool.clone().into(),
        chrono::Utc::now(),
        "drill.admin",
        carapace_core::access::Role::Admin,
        &[carapace_core::access::Scope::parse("user/AuditEvent.rs").unwrap()],
        None,
    )
    .await
    .unwrap()
    .access_token;
    pool.close().await;
    token
}

fn console_env(data_dir: &Path, token: &str) -> Vec<(String, String)> {
    vec![
        ("CARAPACE_DATA_DIR".into(), data_dir.display().to_string()),
        ("CARAPACE_ADMIN_TOKEN".into(), token.into()),
    ]
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// `bytes` decompressed as lz4 (pgBackRest's `compress-type` here), when they are lz4 at all.
fn lz4_decompressed(bytes: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut child = std::process::Command::new("lz4")
        .args(["-dc", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("lz4 (Debian package lz4; tests/run installs it)");
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out.status.success().then_some(out.stdout)
}

struct Written {
    id: String,
}

async fn create(fhir: &Fhir<'_>, body: Value) -> Written {
    let r = fhir
        .post(body["resourceType"].as_str().unwrap(), &body)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    Written {
        id: r.json()["id"].as_str().unwrap().to_string(),
    }
}

async fn update(fhir: &Fhir<'_>, kind: &str, id: &str, mut body: Value) {
    body["id"] = json!(id);
    let r = fhir.put(&format!("{kind}/{id}"), &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Drill"]}]})
}

fn observation(patient: &str, value: f64) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
    })
}

async fn search_total(fhir: &Fhir<'_>, query: &str) -> usize {
    let r = fhir.get(query).await;
    assert_eq!(r.status, 200, "{query}: {}", r.text());
    r.json()["entry"].as_array().map(Vec::len).unwrap_or(0)
}

async fn version(fhir: &Fhir<'_>, reference: &str) -> String {
    let r = fhir.get(reference).await;
    assert_eq!(r.status, 200, "{reference}: {}", r.text());
    r.json()["meta"]["versionId"].as_str().unwrap().to_string()
}

async fn history_len(fhir: &Fhir<'_>, reference: &str) -> usize {
    search_total(fhir, &format!("{reference}/_history")).await
}

/// What the operator `drill.admin` did, as the trail's administrative events name it.
async fn admin_actions(server: &Server, token: &str) -> Vec<Value> {
    let auth = format!("Bearer {token}");
    let r = http(
        "GET",
        &server.url("AuditEvent?subtype=admin&agent=drill.admin&_count=500"),
        &[("Authorization", auth.as_str())],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| e["resource"]["entity"][0]["what"]["reference"].clone())
        .collect()
}

/// AuditEvents about a patient, read by an administrator.
async fn audit_about(server: &Server, token: &str, patient: &str) -> usize {
    let auth = format!("Bearer {token}");
    let r = http(
        "GET",
        &server.url(&format!("AuditEvent?patient=Patient/{patient}&_count=200")),
        &[("Authorization", auth.as_str())],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["entry"].as_array().map(Vec::len).unwrap_or(0)
}

#[tokio::test]
async fn restore_drill_to_a_point_in_time() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("carapace-data");
    let mut server = Server::start_embedded(&data_dir).await.unwrap();
    let fhir = Fhir { server: &server };
    let canary = format!(
        "Canarywick{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let before = format!(
        "Beforeton{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let after = format!("Afterby{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);

    // Phase A, then a full backup.
    let p1 = create(&fhir, patient(&canary)).await;
    let p2 = create(&fhir, patient("Drillson")).await;
    let o1 = create(&fhir, observation(&p1.id, 72.0)).await;
    update(&fhir, "Observation", &o1.id, observation(&p1.id, 75.0)).await;
    let mut p1_v2 = patient(&canary);
    p1_v2["gender"] = json!("female");
    update(&fhir, "Patient", &p1.id, p1_v2.clone()).await;
    let before_any_backup = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (ok, out, err) = console(
        &console_env(&data_dir, &admin_token(&data_dir).await),
        &["backup"],
        None,
    );
    assert!(ok, "full backup: {out} {err}");
    eprintln!("{out}");
    assert!(out.contains("full backup"), "{out}");

    // Phase B: a new patient, an update, a delete; then the time to restore to.
    let p3 = create(&fhir, patient(&before)).await;
    update(&fhir, "Patient", &p2.id, patient("Drillson-Updated")).await;
    let gone = fhir.delete(&format!("Observation/{}", o1.id)).await;
    assert!(gone.status == 200 || gone.status == 204, "{}", gone.text());
    // The restore's operator: a token issued before the target time is in the restored data.
    let restore_token = admin_token(&data_dir).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let target = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Phase C: after the target, then an incremental backup (it also archives that WAL).
    let p4 = create(&fhir, patient(&after)).await;
    let mut p1_v3 = p1_v2.clone();
    p1_v3["gender"] = json!("other");
    update(&fhir, "Patient", &p1.id, p1_v3).await;
    let gone = fhir.delete(&format!("Patient/{}", p2.id)).await;
    assert!(gone.status == 200 || gone.status == 204, "{}", gone.text());
    let (ok, out, err) = console(
        &console_env(&data_dir, &admin_token(&data_dir).await),
        &["backup", "--incremental"],
        None,
    );
    assert!(ok, "incremental backup: {out} {err}");
    eprintln!("{out}");
    assert!(out.contains("incr backup"), "{out}");
    assert!(
        out.lines().filter(|l| l.contains(" full ")).count() == 1
            && out.lines().filter(|l| l.contains(" incr ")).count() == 1,
        "one full and one incremental backup listed: {out}"
    );

    // The repository: encrypted, and no byte of the data in the clear — neither the canary
    // (sealed by Carapace anyway) nor the patient's id, which the database holds in the clear
    // (so only the repository's encryption hides it). The same grep finds the id in the cluster.
    let repo = data_dir.join("backup/repo");
    let repo_files = files(&repo);
    assert!(repo_files.len() > 5, "{repo_files:?}");
    for file in &repo_files {
        let bytes = std::fs::read(file).unwrap();
        assert!(
            bytes.starts_with(b"Salted__"),
            "{} is not encrypted",
            file.display()
        );
        let decompressed = lz4_decompressed(&bytes);
        for form in std::iter::once(&bytes).chain(decompressed.as_ref()) {
            assert!(!contains(form, &canary), "canary in {}", file.display());
            assert!(
                !contains(form, &p1.id),
                "a patient id in {}",
                file.display()
            );
        }
    }
    let in_cluster = files(&data_dir.join("postgres"))
        .iter()
        .any(|f| contains(&std::fs::read(f).unwrap_or_default(), &p1.id));
    assert!(in_cluster, "the grep finds the id where it is in the clear");
    // Nothing that opens the repository is in it or beside it: its passphrase only wrapped.
    let wrapped = std::fs::read_to_string(data_dir.join("backup/cipher-pass.wrapped")).unwrap();
    assert!(wrapped.starts_with("file:v"), "{wrapped}");
    assert!(files(&data_dir.join("backup"))
        .iter()
        .all(|f| f.file_name().unwrap() != "master.key"));

    // Restore to the target into a fresh data directory; the server starts on it.
    let restored_dir = tmp.path().join("restored");
    let started = std::time::Instant::now();
    let (ok, out, err) = console(
        &console_env(&data_dir, &restore_token),
        &[
            "restore",
            "--to",
            &target.to_rfc3339(),
            "--into",
            &restored_dir.display().to_string(),
        ],
        None,
    );
    assert!(ok, "restore: {out} {err}");
    eprintln!("restore took {:?}", started.elapsed());
    // A time before the first backup finished cannot be restored: refused, naming why, and
    // nothing made in the directory asked for.
    let too_early_dir = tmp.path().join("too-early");
    let (ok, out, err) = console(
        &console_env(&data_dir, &admin_token(&data_dir).await),
        &[
            "restore",
            "--to",
            &before_any_backup.to_rfc3339(),
            "--into",
            &too_early_dir.display().to_string(),
        ],
        None,
    );
    assert!(!ok, "a restore to before any backup: {out}");
    assert!(err.contains("no backup had finished by"), "{err}");
    assert!(!too_early_dir.join("postgres/PG_VERSION").exists());
    // Signed in against the database backed up, and audited there too.
    let source_actions = admin_actions(&server, &admin_token(&data_dir).await).await;
    assert!(
        source_actions
            .iter()
            .any(|w| w == "urn:carapace:admin:restore"),
        "{source_actions:?}"
    );
    assert!(server.terminate().unwrap());
    let restored_env = vec![(
        "CARAPACE_DATA_DIR".to_string(),
        restored_dir.display().to_string(),
    )];
    let mut restored = Server::start(restored_env).await.unwrap();
    let pool = embedded_pool(&restored_dir).await;
    restored.authorize(&pool).await;
    pool.close().await;
    let fhir = Fhir { server: &restored };
    // Resources and versions as they were at the target.
    assert_eq!(version(&fhir, &format!("Patient/{}", p1.id)).await, "2");
    assert_eq!(history_len(&fhir, &format!("Patient/{}", p1.id)).await, 2);
    let p1_read = fhir.get(&format!("Patient/{}", p1.id)).await.json();
    assert_eq!(p1_read["gender"], "female");
    assert_eq!(p1_read["name"][0]["family"], canary.as_str());
    assert_eq!(version(&fhir, &format!("Patient/{}", p2.id)).await, "2");
    assert_eq!(version(&fhir, &format!("Patient/{}", p3.id)).await, "1");
    assert_eq!(
        fhir.get(&format!("Patient/{}", p4.id)).await.status,
        404,
        "written after the target"
    );
    assert_eq!(
        fhir.get(&format!("Observation/{}", o1.id)).await.status,
        410,
        "deleted before the target"
    );
    assert_eq!(
        history_len(&fhir, &format!("Observation/{}", o1.id)).await,
        3
    );

    // The search index agrees: what existed then is found, what came later is not.
    assert_eq!(
        search_total(&fhir, &format!("Patient?family={canary}")).await,
        1
    );
    assert_eq!(
        search_total(&fhir, &format!("Patient?family={before}")).await,
        1
    );
    assert_eq!(
        search_total(&fhir, &format!("Patient?family={after}")).await,
        0
    );
    assert_eq!(
        search_total(&fhir, "Patient?family=Drillson-Updated").await,
        1,
        "the update before the target, not the delete after it"
    );
    assert_eq!(
        search_total(&fhir, &format!("Observation?subject=Patient/{}", p1.id)).await,
        0,
        "the deleted observation is not found"
    );

    // The audit trail: the chain verifies, and holds the writes before the target only.
    let token = admin_token(&restored_dir).await;
    assert!(audit_about(&restored, &token, &p3.id).await >= 1);
    assert_eq!(audit_about(&restored, &token, &p4.id).await, 0);
    let (ok, out, err) = console(
        &console_env(&restored_dir, &token),
        &["audit", "verify"],
        None,
    );
    assert!(ok, "audit verify on the restored data: {out} {err}");
    // The restore itself is in the restored trail, under the operator who ran it.
    let whats = admin_actions(&restored, &token).await;
    assert_eq!(
        whats
            .iter()
            .filter(|w| *w == "urn:carapace:admin:restore")
            .count(),
        1,
        "{whats:?}"
    );
    assert_eq!(
        whats
            .iter()
            .filter(|w| *w == "urn:carapace:admin:backup")
            .count(),
        1,
        "the full backup (before the target), not the incremental one: {whats:?}"
    );
}

/// A restore is refused before anything is written to whoever is not an operator (the database
/// backed up being there to ask), and the repository stays closed to whoever lacks the key
/// provider: a wrapped passphrase that no longer opens (another keyring) restores nothing.
#[tokio::test]
async fn a_restore_without_the_key_provider_opens_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("carapace-data");
    let env = vec![(
        "CARAPACE_DATA_DIR".to_string(),
        data_dir.display().to_string(),
    )];
    let mut server = Server::start(env).await.unwrap();
    let token = admin_token(&data_dir).await;
    let (ok, out, err) = console(&console_env(&data_dir, &token), &["backup"], None);
    assert!(ok, "{out} {err}");
    assert!(server.terminate().unwrap());
    // No operator: refused against the database backed up, before anything is written.
    let into = tmp.path().join("restored");
    let no_operator = vec![(
        "CARAPACE_DATA_DIR".to_string(),
        data_dir.display().to_string(),
    )];
    let (ok, out, err) = console(
        &no_operator,
        &[
            "restore",
            "--to",
            &chrono::Utc::now().to_rfc3339(),
            "--into",
            &into.display().to_string(),
        ],
        None,
    );
    assert!(!ok && err.contains("operator sign-in"), "{out} {err}");
    assert!(!into.exists(), "nothing restored");
    // Another master key: the wrapped passphrase fails authentication.
    let key = data_dir.join("master.key");
    let original = std::fs::read(&key).unwrap();
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    carapace_core::crypto::keys::FileKeyring::open_or_create(&other).unwrap();
    std::fs::copy(other.join("master.key"), &key).unwrap();
    let (ok, out, err) = console(
        &console_env(&data_dir, &token),
        &[
            "restore",
            "--to",
            &chrono::Utc::now().to_rfc3339(),
            "--into",
            &into.display().to_string(),
        ],
        None,
    );
    std::fs::write(&key, original).unwrap();
    assert!(!ok, "{out}");
    assert!(err.contains("key"), "{err}");
    assert!(!into.join("postgres").exists(), "nothing restored");
}

/// With Vault as the key provider the repository's passphrase is wrapped by Vault transit, no key
/// file is in the data directory or copied by a restore, and the restored server opens the data
/// through the same Vault.
#[tokio::test]
async fn a_restore_under_vault_needs_vault_and_no_key_file() {
    let bao = Bao::start_dev().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("carapace-data");
    let mut env = bao.env(&format!("carapace-{}", uuid::Uuid::new_v4().simple()));
    env.push((
        "CARAPACE_DATA_DIR".to_string(),
        data_dir.display().to_string(),
    ));
    let mut server = Server::start(env.clone()).await.unwrap();
    let pool = embedded_pool(&data_dir).await;
    server.authorize(&pool).await;
    pool.close().await;
    let fhir = Fhir { server: &server };
    let kept = create(&fhir, patient("Vaultkept")).await;
    let with_token = |dir: &Path, token: String| {
        let mut e: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| k != "CARAPACE_DATA_DIR")
            .cloned()
            .collect();
        e.push(("CARAPACE_DATA_DIR".into(), dir.display().to_string()));
        e.push(("CARAPACE_ADMIN_TOKEN".into(), token));
        e
    };
    let (ok, out, err) = console(
        &with_token(&data_dir, admin_token(&data_dir).await),
        &["backup"],
        None,
    );
    assert!(ok, "{out} {err}");
    let wrapped = std::fs::read_to_string(data_dir.join("backup/cipher-pass.wrapped")).unwrap();
    assert!(
        wrapped.starts_with("vault:v"),
        "wrapped by Vault: {wrapped}"
    );
    assert!(!data_dir.join("master.key").exists());
    let token = admin_token(&data_dir).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let target = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = create(&fhir, patient("Vaultlater")).await;
    let (ok, out, err) = console(
        &with_token(&data_dir, admin_token(&data_dir).await),
        &["backup", "--incremental"],
        None,
    );
    assert!(ok, "{out} {err}");

    let restored_dir = tmp.path().join("restored");
    let (ok, out, err) = console(
        &with_token(&data_dir, token),
        &[
            "restore",
            "--to",
            &target.to_rfc3339(),
            "--into",
            &restored_dir.display().to_string(),
        ],
        None,
    );
    assert!(ok, "restore: {out} {err}");
    assert!(
        !restored_dir.join("master.key").exists(),
        "no key file copied"
    );
    assert!(server.terminate().unwrap());
    let mut restored_env: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "CARAPACE_DATA_DIR")
        .cloned()
        .collect();
    restored_env.push((
        "CARAPACE_DATA_DIR".into(),
        restored_dir.display().to_string(),
    ));
    let mut restored = Server::start(restored_env).await.unwrap();
    let pool = embedded_pool(&restored_dir).await;
    restored.authorize(&pool).await;
    pool.close().await;
    let fhir = Fhir { server: &restored };
    let read = fhir.get(&format!("Patient/{}", kept.id)).await;
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["name"][0]["family"], "Vaultkept");
    assert_eq!(fhir.get(&format!("Patient/{}", later.id)).await.status, 404);
}
