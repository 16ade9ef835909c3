//! The newcomer's default: no database URL, no Vault. The server runs its own PostgreSQL cluster
//! under the data directory with a file key provider, stops it on SIGTERM, and keeps the data across
//! restarts.

use carapace_tests::*;
use std::os::unix::fs::PermissionsExt;

#[tokio::test]
async fn embedded_mode_keeps_its_data_across_restarts() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("carapace-data");
    let mut server = Server::start_embedded(&data_dir).await.unwrap();
    let fhir = Fhir { server: &server };
    assert_eq!(fhir.get("metadata").await.status, 200);
    let created = fhir
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Embedded"}]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_string();

    let log = server.log_text();
    assert!(
        log.contains("DEVELOPMENT ONLY"),
        "one loud warning about the file key provider"
    );
    let key = data_dir.join("master.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // PostgreSQL listens on a unix socket only.
    let conf = std::fs::read_to_string(data_dir.join("postgres/postmaster.opts")).unwrap();
    assert!(
        conf.contains("listen_addresses=") && !conf.contains("listen_addresses=127"),
        "{conf}"
    );

    // SIGTERM: a clean exit that stops the cluster too.
    assert!(server.terminate().unwrap(), "clean exit");
    assert!(
        !data_dir.join("postgres/postmaster.pid").exists(),
        "cluster stopped"
    );

    // Restart: same data directory, same data, same keys.
    server.restart().await.unwrap();
    let fhir = Fhir { server: &server };
    let read = fhir.get(&format!("Patient/{id}")).await;
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["name"][0]["family"], "Embedded");
}

/// Defect 11: a second server on a data directory in use exits at once with a message naming the
/// directory and the first server's pid, without touching its cluster (before the fix it started,
/// attached to the first one's PostgreSQL, and answered 401 to everything once the first stopped).
/// The console still works on the same directory while the server runs.
#[tokio::test]
async fn a_second_server_on_a_data_directory_in_use_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("carapace-data");
    let env = vec![(
        "CARAPACE_DATA_DIR".to_string(),
        data_dir.display().to_string(),
    )];
    let mut first = Server::start(env.clone()).await.unwrap();
    let pid = first.pid().unwrap();
    let pool = embedded_pool(&data_dir).await;
    first.authorize(&pool).await;
    pool.close().await;

    let started = std::time::Instant::now();
    let err = Server::start(env.clone()).await.err().unwrap().to_string();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "refused at once"
    );
    let canonical = std::fs::canonicalize(&data_dir).unwrap();
    assert!(
        err.contains(&canonical.display().to_string()) && err.contains("in use"),
        "{err}"
    );
    assert!(err.contains(&format!("pid {pid}")), "{err}");

    // The first server and its cluster are untouched; the console works beside it.
    let fhir = Fhir { server: &first };
    let created = fhir
        .post("Patient", &json!({"resourceType": "Patient"}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let (ok, out, stderr) = console(
        &env,
        &["bootstrap-admin", "--username", "ops", "--password-stdin"],
        Some("correct horse battery staple"),
    );
    assert!(ok, "console beside the server: {out} {stderr}");
    assert_eq!(fhir.get("metadata").await.status, 200);
    assert_eq!(
        fhir.get(&format!(
            "Patient/{}",
            created.json()["id"].as_str().unwrap()
        ))
        .await
        .status,
        200,
        "the console did not stop the server's cluster"
    );

    // Once the first has stopped, the directory is free.
    assert!(first.terminate().unwrap());
    let second = Server::start(env).await.unwrap();
    let r = http("GET", &second.url("metadata"), &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}
