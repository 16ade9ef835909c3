//! HTTPS with rustls (ring provider): TLS 1.2 and 1.3, safe defaults, no client certificates.

use anyhow::Context;
use carapace_core::config::TlsConfig;
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

pub fn acceptor(config: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(&config.cert)
            .with_context(|| format!("opening {}", config.cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .context("reading the certificate chain")?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(&config.key)
            .with_context(|| format!("opening {}", config.key.display()))?,
    ))
    .context("reading the private key")?
    .context("no private key in the key file")?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the certificate and key do not match")?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}
