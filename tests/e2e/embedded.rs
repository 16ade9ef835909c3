//! The newcomer's default: no database URL, no Vault. The server runs its own PostgreSQL cluster
//! under the data directory with a file key provider, stops it on SIGTERM, and keeps the data across
//! restarts.

use carapace_tests::*;
use std::os::unix::fs::PermissionsExt;

#[tokio::test]
async fn embedded_mode_keeps_its_data_across_restarts() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("carapace-data");
    let env = vec![(
        "CARAPACE_DATA_DIR".to_string(),
        data_dir.display().to_string(),
    )];
    let mut server = Server::start(env).await.unwrap();
    let pool = embedded_pool(&data_dir).await;
    server.authorize(&pool).await;
    pool.close().await;
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
