//! Subscription rest-hooks sent: the server's worker over the core's outbox
//! (`store/notify.rs`). Every second it matches what was written (`fan_out_subscriptions`),
//! claims the notifications due, POSTs each and settles it.
//!
//! The request is made here by hand on hyper's client connection rather than through a pooled
//! client (hyper-util's legacy `Client`, reqwest): the endpoint's name is resolved once, every
//! address checked (public unless an administrator allowed the origin) and the connection made
//! to the address checked — a pooled client resolves again as it connects, and a name that
//! answers a public address to the check and a private one to the connect would pass. TLS is
//! rustls (ring, Mozilla's roots from `webpki-roots`), as the listener's. No redirect is
//! followed (a 3xx is a failure), the response body is never read, the whole exchange has a
//! time-out, and the channel's headers are sent and never logged.

use bytes::Bytes;
use carapace_core::store::{Delivery, Store};
use http_body_util::{Either, Empty, Full};
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

/// How often the worker looks for work.
const POLL: Duration = Duration::from_millis(500);
/// Connecting, TLS, and the response's head, together.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Start the worker for the life of the process.
pub fn start(store: Arc<Store>) {
    let tls = client_tls().map(Arc::new);
    tokio::spawn(async move {
        loop {
            if let Err(e) = store.fan_out_subscriptions().await {
                tracing::warn!(error = %e, "matching writes against Subscriptions failed; retrying");
            }
            match store.claim_notifications().await {
                Ok(deliveries) => {
                    let sends = deliveries.into_iter().map(|d| {
                        let (store, tls) = (store.clone(), tls.clone());
                        async move {
                            let sent = match &d.refused {
                                Some(reason) => Err(reason.clone()),
                                None => send(&tls, &d).await,
                            };
                            if let Err(e) = store.settle_notification(d, sent).await {
                                tracing::warn!(error = %e, "recording a notification's outcome failed");
                            }
                        }
                    });
                    futures_util::future::join_all(sends).await;
                }
                Err(e) => tracing::warn!(error = %e, "claiming notifications failed; retrying"),
            }
            tokio::time::sleep(POLL).await;
        }
    });
}

/// TLS for https endpoints; `None` (never with ring, which has TLS 1.2 and 1.3) fails every
/// https delivery rather than sending without it.
fn client_tls() -> Option<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .ok()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// Addresses a rest-hook may not reach unless its origin is allowed: loopback, private,
/// link-local, shared, unspecified, multicast, documentation and other reserved ranges.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (18..20).contains(&o[1]))
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            // 6to4 carries an IPv4 address: it is as public as that address.
            if s[0] == 0x2002 {
                let [a, b] = s[1].to_be_bytes();
                let [c, d] = s[2].to_be_bytes();
                return is_public(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)));
            }
            // Global unicast only (2000::/3), less what tunnels or documents: Teredo
            // (2001::/32), documentation (2001:db8::/32), NAT64 (64:ff9b::/96 is outside
            // 2000::/3 already), and everything else — IPv4-compatible `::a.b.c.d`, site- and
            // link-local, unique local, discard — is outside 2000::/3.
            (s[0] & 0xe000) == 0x2000 && !(s[0] == 0x2001 && (s[1] == 0x0000 || s[1] == 0x0db8))
        }
    }
}

async fn send(tls: &Option<Arc<rustls::ClientConfig>>, d: &Delivery) -> Result<(), String> {
    match tokio::time::timeout(TIMEOUT, exchange(tls, d)).await {
        Ok(answer) => answer,
        Err(_) => Err("the endpoint did not answer within 10 seconds".into()),
    }
}

async fn exchange(tls: &Option<Arc<rustls::ClientConfig>>, d: &Delivery) -> Result<(), String> {
    let url = &d.endpoint;
    let host = url
        .host_str()
        .ok_or("the endpoint has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url
        .port_or_known_default()
        .ok_or("the endpoint has no port")?;
    let https = url.scheme() == "https";
    if !https && !d.any_address {
        return Err("plain http is only for allowed origins".into());
    }
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|_| "the endpoint's name did not resolve".to_string())?
        .collect();
    // Every address the name gives must be allowed: none is tried that is not.
    if addresses.is_empty() || (!d.any_address && !addresses.iter().all(|a| is_public(a.ip()))) {
        return Err("the endpoint's address is not a public one".into());
    }
    let mut stream = None;
    for address in &addresses {
        if let Ok(s) = tokio::net::TcpStream::connect(address).await {
            stream = Some(s);
            break;
        }
    }
    let stream = stream.ok_or("could not connect to the endpoint")?;
    let _ = stream.set_nodelay(true);
    let request = request_for(d)?;
    let status = if https {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| "the endpoint's host is not a TLS server name".to_string())?;
        let tls = tls.clone().ok_or("TLS is not available")?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, stream)
            .await
            .map_err(|_| "the TLS handshake with the endpoint failed".to_string())?;
        post(TokioIo::new(stream), request).await?
    } else {
        post(TokioIo::new(stream), request).await?
    };
    if status.is_success() {
        Ok(())
    } else if status.is_redirection() {
        Err(format!(
            "the endpoint answered HTTP {} (redirects are not followed)",
            status.as_u16()
        ))
    } else {
        Err(format!("the endpoint answered HTTP {}", status.as_u16()))
    }
}

type HookBody = Either<Full<Bytes>, Empty<Bytes>>;

fn request_for(d: &Delivery) -> Result<hyper::Request<HookBody>, String> {
    let url = &d.endpoint;
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let authority = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    let mut builder = hyper::Request::post(target)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "carapace-subscriptions");
    for (name, value) in &d.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let body = match &d.body {
        Some(b) => {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/fhir+json");
            Either::Left(Full::new(Bytes::from(b.clone())))
        }
        None => Either::Right(Empty::new()),
    };
    // The channel's headers were checked when the Subscription was written; the message does
    // not repeat them.
    builder
        .body(body)
        .map_err(|_| "the notification could not be built from the channel's headers".into())
}

async fn post<I>(io: I, request: hyper::Request<HookBody>) -> Result<hyper::StatusCode, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|_| "the HTTP exchange with the endpoint failed".to_string())?;
    let driving = tokio::spawn(conn);
    let answer = sender.send_request(request).await;
    // The response's body is never read: the connection goes with it.
    driving.abort();
    answer
        .map(|r| r.status())
        .map_err(|_| "the HTTP exchange with the endpoint failed".into())
}

#[cfg(test)]
mod tests {
    use super::is_public;

    #[test]
    fn only_public_addresses_are_public() {
        for ip in [
            "8.8.8.8",
            "2606:4700::1111",
            "93.184.216.34",
            "2002:0808:0808::1",
        ] {
            assert!(
                is_public(ip.parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into())),
                "{ip}"
            );
        }
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::7f00:1",
            "2002:7f00:1::1",
            "2001:0:4136:e378::1",
            "fec0::1",
            "100::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(
                !is_public(
                    ip.parse()
                        .unwrap_or(std::net::Ipv4Addr::new(8, 8, 8, 8).into())
                ),
                "{ip}"
            );
        }
    }
}
