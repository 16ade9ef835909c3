//! pgAudit in the embedded cluster: a DBA reading the tables directly, and any role change, is in
//! PostgreSQL's log as `AUDIT:` lines; the server's own reads and writes are not (they are in
//! the audit trail, and would drown the log).

use carapace_tests::*;
use std::path::Path;

/// The embedded cluster's log from byte `from` on.
fn log_since(data_dir: &Path, from: usize) -> String {
    let log = std::fs::read(data_dir.join("postgres/server.log")).unwrap();
    String::from_utf8_lossy(&log[from.min(log.len())..]).into_owned()
}

fn log_len(data_dir: &Path) -> usize {
    std::fs::metadata(data_dir.join("postgres/server.log"))
        .unwrap()
        .len() as usize
}

/// `psql` as the cluster's superuser over its unix socket, as a DBA on the machine would.
fn psql(data_dir: &Path, sql: &str) -> String {
    let bin = carapace_core::db::embedded::find_bin_dir().unwrap();
    let out = std::process::Command::new(bin.join("psql"))
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(data_dir.join("run"))
        .args([
            "-U",
            carapace_core::db::embedded::SUPERUSER,
            "-d",
            "carapace",
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `AUDIT: SESSION` lines of `class` (READ, WRITE, ROLE, DDL...) in `log`.
fn audit_lines<'a>(log: &'a str, class: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains("AUDIT: SESSION,") && l.contains(&format!(",{class},")))
        .collect()
}

#[tokio::test]
async fn a_dba_reading_the_tables_is_in_the_database_log_and_the_server_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("carapace-data");
    let env = vec![(
        "CARAPACE_DATA_DIR".to_string(),
        data_dir.display().to_string(),
    )];
    let mut server = Server::start(env).await.unwrap();
    // The server's own DDL (its migrations, at the first start) is logged: DDL is, for everyone.
    let start = log_since(&data_dir, 0);
    assert!(
        !audit_lines(&start, "DDL").is_empty(),
        "the migrations' DDL is logged"
    );
    let pool = embedded_pool(&data_dir).await;
    server.authorize(&pool).await;
    pool.close().await;
    let fhir = Fhir { server: &server };

    // Normal requests — a write, a read, a search — add no READ or WRITE line.
    let from = log_len(&data_dir);
    let created = fhir
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Auditson"}]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_string();
    assert_eq!(fhir.get(&format!("Patient/{id}")).await.status, 200);
    assert_eq!(fhir.get("Patient?family=Auditson").await.status, 200);
    let during = log_since(&data_dir, from);
    assert!(
        audit_lines(&during, "READ").is_empty() && audit_lines(&during, "WRITE").is_empty(),
        "the server's own statements are not logged: {during}"
    );

    // A DBA reading a table directly shows up, with the table and the statement.
    let from = log_len(&data_dir);
    let count = psql(&data_dir, "SELECT count(*) FROM resource_versions");
    assert!(count.trim().parse::<i64>().unwrap() >= 1);
    let dba = log_since(&data_dir, from);
    let reads = audit_lines(&dba, "READ");
    assert!(
        reads.iter().any(|l| l.contains("public.resource_versions")
            && l.contains("SELECT count(*) FROM resource_versions")),
        "{dba}"
    );

    // A role made by anyone shows up.
    let from = log_len(&data_dir);
    psql(&data_dir, "CREATE ROLE dba_made_this NOLOGIN");
    let roles = log_since(&data_dir, from);
    assert!(
        audit_lines(&roles, "ROLE")
            .iter()
            .any(|l| l.contains("CREATE ROLE") && l.contains("dba_made_this")),
        "{roles}"
    );
}
