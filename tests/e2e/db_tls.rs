//! PostgreSQL over TLS: `sslmode=verify-full` in `CARAPACE_DATABASE_URL` against a cluster whose
//! certificate (for `localhost`) a test CA signed, and whose `pg_hba.conf` takes TLS only. The
//! server works through it; with a CA that did not sign the certificate, an address the
//! certificate does not name, or without TLS, it refuses to start, saying why and never the
//! password.

use carapace_core::db::embedded::Cluster;
use carapace_tests::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>.pem`, `<name>.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        dir,
    );
}

/// `server.pem` / `server.key` for `localhost`, signed by the CA `ca`.
fn make_server_cert(dir: &Path, ca: &str) {
    openssl(
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
        dir,
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.pem",
            "-extfile",
            "server.ext",
        ],
        dir,
    );
}

/// `bytes` as `name` in the cluster's directory, owned by its user, mode 0600.
fn write_owned(pg_dir: &Path, name: &str, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let path = pg_dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let owner = std::fs::metadata(pg_dir).unwrap();
    std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
}

#[tokio::test]
async fn the_server_connects_with_verify_full_and_refuses_a_wrong_ca_or_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_ca(&certs, "ca");
    make_ca(&certs, "other-ca");
    make_server_cert(&certs, "ca");

    // A cluster of the test's own, first started plain, then with TLS and hostssl only.
    let cluster_dir = tmp.path().join("cluster");
    let port = free_port();
    let dir = cluster_dir.clone();
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(&dir, Some(port)))
        .await
        .unwrap()
        .unwrap();
    let pg_dir = cluster.pg_dir().to_path_buf();
    drop(cluster);
    write_owned(
        &pg_dir,
        "server.pem",
        &std::fs::read(certs.join("server.pem")).unwrap(),
    );
    write_owned(
        &pg_dir,
        "server.key",
        &std::fs::read(certs.join("server.key")).unwrap(),
    );
    let mut conf = std::fs::read_to_string(pg_dir.join("postgresql.conf")).unwrap();
    conf.push_str("\nssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n");
    write_owned(&pg_dir, "postgresql.conf", conf.as_bytes());
    write_owned(
        &pg_dir,
        "pg_hba.conf",
        b"local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
    );
    let dir = cluster_dir.clone();
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(&dir, Some(port)))
        .await
        .unwrap()
        .unwrap();
    cluster.ensure_database("carapace_tls").await.unwrap();

    let password = format!("never-shown-{}", uuid::Uuid::new_v4().simple());
    let url = |mode: &str, ca: &str| {
        format!(
            "postgres://carapace:{password}@localhost:{port}/carapace_tls?sslmode={mode}&sslrootcert={}",
            certs.join(format!("{ca}.pem")).display()
        )
    };
    let env = |database_url: String| {
        vec![
            ("CARAPACE_DATABASE_URL".to_string(), database_url),
            (
                "CARAPACE_DATA_DIR".to_string(),
                tmp.path().join("data").display().to_string(),
            ),
        ]
    };

    // verify-full with the CA that signed the certificate: the server works.
    let good = url("verify-full", "ca");
    let mut server = Server::start(env(good.clone())).await.unwrap();
    let pool = sqlx::PgPool::connect(&good).await.unwrap();
    server.authorize(&pool).await;
    let fhir = Fhir { server: &server };
    let created = fhir
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Tls"}]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_string();
    assert_eq!(fhir.get(&format!("Patient/{id}")).await.status, 200);
    // Every connection to the database is encrypted (and there are some over TCP).
    let mut admin = sqlx::ConnectOptions::connect(&cluster.connect_options("postgres"))
        .await
        .unwrap();
    let (encrypted, all): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s
           JOIN pg_stat_activity a USING (pid)
          WHERE a.datname = 'carapace_tls' AND a.client_addr IS NOT NULL",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(all > 0 && encrypted == all, "{encrypted} of {all} over TLS");
    pool.close().await;
    assert!(server.terminate().unwrap());

    // A CA that did not sign the server's certificate: refused at start, the password unsaid.
    let err = Server::start(env(url("verify-full", "other-ca")))
        .await
        .err()
        .expect("a server that trusts another CA does not start")
        .to_string();
    eprintln!("wrong CA: {}", err.lines().last().unwrap_or_default());
    assert!(
        err.contains("connecting to PostgreSQL at localhost"),
        "{err}"
    );
    assert!(
        err.to_lowercase().contains("certificate") || err.to_lowercase().contains("tls"),
        "{err}"
    );
    assert!(!err.contains(&password), "{err}");

    // verify-full checks the name too: the right CA, but an address the certificate does not name.
    let by_address = url("verify-full", "ca").replace("@localhost:", "@127.0.0.1:");
    let err = Server::start(env(by_address))
        .await
        .err()
        .expect("a certificate for another name is refused")
        .to_string();
    assert!(err.contains("not valid for name"), "{err}");
    assert!(!err.contains(&password), "{err}");

    // Plaintext: pg_hba.conf takes TLS only.
    let err = Server::start(env(url("disable", "ca")))
        .await
        .err()
        .expect("a server without TLS does not start")
        .to_string();
    eprintln!("plaintext: {}", err.lines().last().unwrap_or_default());
    assert!(
        err.contains("pg_hba.conf") && err.contains("no encryption"),
        "{err}"
    );
    assert!(!err.contains(&password), "{err}");
}
