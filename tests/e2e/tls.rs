//! HTTPS with rustls: the server serves FHIR over TLS with an operator's certificate, and refuses
//! plaintext on that port.

use carapace_tests::*;
use std::process::Command;

#[tokio::test]
async fn serves_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let data = dir.path().join("data");
    let server = Server::start(vec![
        ("CARAPACE_DATA_DIR".into(), data.display().to_string()),
        ("CARAPACE_TLS_CERT".into(), cert.display().to_string()),
        ("CARAPACE_TLS_KEY".into(), key.display().to_string()),
    ])
    .await
    .unwrap();
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );
    let base = server.base.clone();
    let cert_arg = cert.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--cacert", &cert_arg, &format!("{base}/metadata")])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cs["fhirVersion"], "4.0.1");
    // Plain HTTP to the TLS port gets no FHIR answer.
    let plain = http(
        "GET",
        &format!("{}/metadata", server.base.replace("https://", "http://")),
        &[],
        None,
    )
    .await;
    assert!(plain.map(|r| r.status != 200).unwrap_or(true));
}
