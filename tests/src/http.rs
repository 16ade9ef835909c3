//! HTTP clients: one request ([`http`]) on a shared connection pool, the complete response it
//! returns, and [`Fhir`], the FHIR JSON helpers that send a server's kept token.

use crate::processes::Server;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::time::Duration;

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }

    /// `Type/id` of each entry of a Bundle whose `search.mode` is `mode` (`match`, `include`).
    pub fn entry_refs(&self, mode: &str) -> Vec<String> {
        self.json()["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["search"]["mode"] == mode)
            .map(|e| {
                let r = &e["resource"];
                let part = |k: &str| {
                    r[k].as_str()
                        .expect("an entry's resource has a type and id")
                };
                format!("{}/{}", part("resourceType"), part("id"))
            })
            .collect()
    }

    /// A Bundle's `next` link, if it has one.
    pub fn next_link(&self) -> Option<String> {
        self.json()["link"]
            .as_array()?
            .iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_string)
    }

    /// The id of the resource a create answered with 201 (anything else fails the test).
    pub fn created_id(&self) -> String {
        assert_eq!(self.status, 201, "{}", self.text());
        self.json()["id"]
            .as_str()
            .expect("a created resource's id")
            .to_string()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> &'static HttpClient {
    static CLIENT: std::sync::OnceLock<HttpClient> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .build(connector)
    })
}

/// One HTTP request.
pub async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> anyhow::Result<HttpResponse> {
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = tokio::time::timeout(Duration::from_secs(120), client().request(req))
        .await
        .context("request timed out")??;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(HttpResponse {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

pub(crate) async fn http_json(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let r = http(
        method,
        url,
        headers,
        body.map(|b| b.to_string().into_bytes()),
    )
    .await?;
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    Ok((r.status, v))
}

/// A FHIR request with `token` (FHIR JSON in and out; `extra` headers replace those).
pub async fn call_as(
    server: &crate::processes::Server,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    extra: &[(&str, &str)],
) -> HttpResponse {
    let auth = format!("Bearer {token}");
    let mut headers = vec![
        ("Authorization", auth.as_str()),
        ("Accept", FHIR_JSON),
        ("Content-Type", FHIR_JSON),
    ];
    for (k, v) in extra {
        headers.retain(|(h, _)| !h.eq_ignore_ascii_case(k));
        headers.push((k, v));
    }
    let body = body.map(|b| b.to_string().into_bytes());
    http(method, &server.url(path), &headers, body)
        .await
        .expect("request")
}

/// Every `match` entry of a search and of the pages its `next` links lead to (at most 50).
pub async fn all_pages(server: &crate::processes::Server, token: &str, path: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut url = server.url(path);
    for _ in 0..50 {
        let auth = format!("Bearer {token}");
        let page = http(
            "GET",
            &url,
            &[("Authorization", &auth), ("Accept", FHIR_JSON)],
            None,
        )
        .await
        .expect("GET");
        assert_eq!(page.status, 200, "{}", page.text());
        seen.extend(page.entry_refs("match"));
        match page.next_link() {
            Some(next) => url = next,
            None => break,
        }
    }
    seen.sort();
    seen
}

/// FHIR helpers over [`http`], with the FHIR JSON media type.
pub struct Fhir<'a> {
    pub server: &'a Server,
}

pub const FHIR_JSON: &str = "application/fhir+json";

impl Fhir<'_> {
    pub async fn get(&self, path: &str) -> HttpResponse {
        let auth = self.server.bearer();
        let headers = [("Accept", FHIR_JSON), ("Authorization", auth.as_str())];
        http("GET", &self.server.url(path), &headers, None)
            .await
            .expect("GET")
    }

    pub async fn post(&self, path: &str, body: &Value) -> HttpResponse {
        self.send("POST", path, body, &[]).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> HttpResponse {
        self.send("PUT", path, body, &[]).await
    }

    pub async fn delete(&self, path: &str) -> HttpResponse {
        let auth = self.server.bearer();
        http(
            "DELETE",
            &self.server.url(path),
            &[("Authorization", &auth)],
            None,
        )
        .await
        .expect("DELETE")
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: &Value,
        extra: &[(&str, &str)],
    ) -> HttpResponse {
        self.raw(method, path, body.to_string().into_bytes(), extra)
            .await
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        extra: &[(&str, &str)],
    ) -> HttpResponse {
        let auth = self.server.bearer();
        let mut headers = vec![
            ("Content-Type", FHIR_JSON),
            ("Accept", FHIR_JSON),
            ("Authorization", auth.as_str()),
        ];
        for (k, v) in extra {
            headers.retain(|(h, _)| !h.eq_ignore_ascii_case(k));
            headers.push((k, v));
        }
        http(method, &self.server.url(path), &headers, Some(body))
            .await
            .expect("request")
    }
}

/// A request body fed from a channel, for uploads too large to hold.
pub struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// Bytes that do not compress (as a scanned document's do not), the same for the same `seed`.
pub fn document_bytes(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let mut x = ((offset + i) / 8) ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> (((offset + i) % 8) * 8)) as u8
        })
        .collect()
}

/// Send `size` bytes of [`document_bytes`]`(seed)` as a streamed body (1 MiB at a time; never
/// held whole); the response and the SHA-256 of what was sent.
pub async fn upload_stream(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    size: u64,
    seed: u64,
) -> anyhow::Result<(HttpResponse, Vec<u8>)> {
    use sha2::Digest;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let producer = tokio::spawn(async move {
        let mut digest = sha2::Sha256::new();
        let mut sent = 0u64;
        while sent < size {
            let n = (size - sent).min(1 << 20) as usize;
            let piece = document_bytes(seed, sent, n);
            digest.update(&piece);
            sent += n as u64;
            if tx.send(Bytes::from(piece)).await.is_err() {
                break;
            }
        }
        digest.finalize().to_vec()
    });
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-length", size.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(ChannelBody(rx))?;
    let client: Client<hyper_util::client::legacy::connect::HttpConnector, ChannelBody> =
        Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(Duration::from_secs(900), client.request(req))
        .await
        .context("upload timed out")??;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    let digest = producer.await?;
    Ok((
        HttpResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        },
        digest,
    ))
}

/// What a streamed download gave: status, headers, bytes received, their SHA-256, and whether the
/// body ended in an error (cut short) rather than at its end.
pub struct Downloaded {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub len: u64,
    pub sha256: Vec<u8>,
    pub cut_short: bool,
}

/// GET `url`, hashing the body as it arrives (never holding it).
pub async fn download_digest(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Downloaded> {
    use sha2::Digest;
    let mut req = hyper::Request::builder().method("GET").uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(Duration::from_secs(900), client().request(req))
        .await
        .context("download timed out")??;
    let (parts, mut body) = resp.into_parts();
    let mut digest = sha2::Sha256::new();
    let mut len = 0u64;
    let mut cut_short = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    len += data.len() as u64;
                    digest.update(&data);
                }
            }
            Err(_) => {
                cut_short = true;
                break;
            }
        }
    }
    let declared: Option<u64> = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if declared.is_some_and(|d| d != len) {
        cut_short = true;
    }
    Ok(Downloaded {
        status: parts.status.as_u16(),
        headers: parts.headers,
        len,
        sha256: digest.finalize().to_vec(),
        cut_short,
    })
}

/// `status()` until it answers `want`, for up to two seconds (every 20 ms); the last answer. For
/// what another process changed: a server hears of a token ended elsewhere by the database's
/// notification, within milliseconds, not before its next request.
pub async fn status_within<F, Fut>(want: u16, mut status: F) -> u16
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let got = status().await;
        if got == want || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
