//! The edge of the HTTP layer: what a request head may be (URL length, header count and size) and
//! how its body may be encoded, checked once for every request before any handler reads it; and
//! an OperationOutcome body for the few requests hyper refuses by itself, before any handler runs.
//!
//! | limit                                   | value   | refusal |
//! |-----------------------------------------|---------|---------|
//! | request target (path and query)         | 16 KiB  | 414     |
//! | header fields                           | 100     | 431     |
//! | one header field (name and value)       | 16 KiB  | 431     |
//! | all header fields together              | 64 KiB  | 431     |
//! | `Content-Encoding` other than identity  |         | 415     |
//!
//! hyper is configured to parse a head of up to 256 KiB, so a head near a size limit reaches
//! [`check`] and gets a precise message; it keeps its own limit of 100 header fields (raising it
//! moves every request's header array from the stack to the heap). What hyper refuses itself (more
//! than 100 fields, a URL past its fixed 65,534 bytes, a head past 256 KiB, a head it cannot parse)
//! is answered with its own status (431, 414, 400) and an OperationOutcome by [`Refusals`].

use crate::outcome::ApiError;
use hyper::{HeaderMap, StatusCode, Uri};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest request target served. Searches longer than this go by `POST [type]/_search`.
pub const MAX_URL_BYTES: usize = 16 * 1024;
/// Most header fields in one request (browsers and FHIR clients send about 15).
pub const MAX_HEADERS: usize = 100;
/// Longest single header field; a bearer token is under 1 KiB.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// All header fields together.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// What hyper parses at most (its read buffer; hyper's minimum is 8 KiB) before it refuses alone.
pub const HYPER_MAX_BUF_BYTES: usize = 256 * 1024;

/// Every limit above, for one request: the first one broken, as the client will be told.
pub fn check(uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
    let target = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_URL_BYTES {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "too-costly",
            format!(
                "the URL is {target} bytes; the limit is {MAX_URL_BYTES} (send long searches as \
                 POST [type]/_search with a form body)"
            ),
        ));
    }
    if headers.len() > MAX_HEADERS {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too-costly",
            format!(
                "the request has {} header fields; the limit is {MAX_HEADERS}",
                headers.len()
            ),
        ));
    }
    let mut total = 0;
    for (name, value) in headers {
        let size = name.as_str().len() + value.len();
        if size > MAX_HEADER_BYTES {
            return Err(ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too-costly",
                format!(
                    "the header field {} is {size} bytes; the limit is {MAX_HEADER_BYTES}",
                    carapace_core::fhir::printable(name.as_str())
                ),
            ));
        }
        total += size;
    }
    if total > MAX_HEAD_BYTES {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too-costly",
            format!("the header fields total {total} bytes; the limit is {MAX_HEAD_BYTES}"),
        ));
    }
    content_encoding(headers)
}

/// No request body is decoded here, so only `identity` may be declared: a body in an encoding
/// the server does not apply would otherwise be parsed as if it were plain.
fn content_encoding(headers: &HeaderMap) -> Result<(), ApiError> {
    for value in headers.get_all(hyper::header::CONTENT_ENCODING) {
        let text = String::from_utf8_lossy(value.as_bytes());
        for coding in text.split(',').map(str::trim) {
            if !coding.eq_ignore_ascii_case("identity") {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "not-supported",
                    format!(
                        "Content-Encoding '{}' is not supported; send the body unencoded \
                         (identity)",
                        carapace_core::fhir::printable(coding)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The connection as hyper sees it, with one change on the way out: the bare response hyper writes
/// by itself when it cannot take a request head (400, 414 or 431 with no body, before any handler
/// ran) is replaced by the same status with an OperationOutcome. hyper offers no hook for those
/// responses; they are the only ones without a `Content-Type`, since every response the handlers
/// build has one, and hyper closes the connection after them.
pub struct Refusals<T> {
    inner: T,
    /// The replacement still to be written, and how much of it is.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> Refusals<T> {
    pub fn new(inner: T) -> Refusals<T> {
        Refusals {
            inner,
            pending: None,
        }
    }
}

/// The replacement for `head` if it is one of hyper's own refusals.
fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let version = if head.starts_with(b"HTTP/1.1 ") {
        "HTTP/1.1"
    } else if head.starts_with(b"HTTP/1.0 ") {
        "HTTP/1.0"
    } else {
        return None;
    };
    let status = match head.get(9..13)? {
        b"400 " => StatusCode::BAD_REQUEST,
        b"414 " => StatusCode::URI_TOO_LONG,
        b"431 " => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => return None,
    };
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let has_type = head[..end]
        .split(|b| *b == b'\n')
        .any(|line| line.to_ascii_lowercase().starts_with(b"content-type:"));
    if has_type {
        return None;
    }
    let error = crate::outcome::refused_by_http_layer(status);
    let body = error.body();
    let mut out = format!(
        "{version} {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        crate::outcome::FHIR_JSON,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

impl<T: AsyncWrite + Unpin> Refusals<T> {
    /// Write what is left of a replacement; `Ready(Ok)` once it is all out.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.pending {
            if *done >= bytes.len() {
                self.pending = None;
                break;
            }
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Refusals<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Refusals<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.drain(cx))?;
        if let Some(replaced) = replacement(buf) {
            // hyper's refusal is a head only, written whole; it counts as written, and the
            // replacement goes out in its place (now, or on the flush hyper does next).
            self.pending = Some((replaced, 0));
            if let Poll::Ready(Err(e)) = self.drain(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper puts a head in a buffer of its own, first: a refusal is that buffer alone.
        match bufs.iter().find(|b| !b.is_empty()) {
            Some(head) if replacement(head).is_some() => self.poll_write(cx, head),
            _ => {
                std::task::ready!(self.drain(cx))?;
                Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        // Kept as the connection has it: hyper then writes a head and its body in one call
        // instead of copying the body after the head.
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn limits_name_what_was_too_large() {
        let uri: Uri = "/fhir/Patient".parse().unwrap();
        assert!(check(&uri, &HeaderMap::new()).is_ok());
        let long: Uri = format!("/fhir/Patient?name={}", "a".repeat(MAX_URL_BYTES))
            .parse()
            .unwrap();
        let e = check(&long, &HeaderMap::new()).err().unwrap();
        assert_eq!(e.status, StatusCode::URI_TOO_LONG);
        let many: Vec<(String, String)> = (0..=MAX_HEADERS)
            .map(|i| (format!("x-h{i}"), "v".into()))
            .collect();
        let many: Vec<(&str, String)> = many.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let e = check(&uri, &headers(&many)).err().unwrap();
        assert_eq!(e.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let big = headers(&[("x-big", "b".repeat(MAX_HEADER_BYTES))]);
        let e = check(&uri, &big).err().unwrap();
        assert!(e.message.contains("x-big"), "{}", e.message);
        let chunks: Vec<(String, String)> = (0..5)
            .map(|i| (format!("x-c{i}"), "c".repeat(MAX_HEADER_BYTES - 10)))
            .collect();
        let chunks: Vec<(&str, String)> = chunks
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let e = check(&uri, &headers(&chunks)).err().unwrap();
        assert!(e.message.contains("total"), "{}", e.message);
    }

    #[test]
    fn only_identity_content_encoding_is_taken() {
        let uri: Uri = "/fhir/Patient".parse().unwrap();
        for ok in ["identity", "Identity", "identity, identity"] {
            assert!(check(&uri, &headers(&[("content-encoding", ok.into())])).is_ok());
        }
        let long = "x".repeat(500);
        for bad in ["br", "gzip", "x-evil", "identity, br", long.as_str()] {
            let e = check(&uri, &headers(&[("content-encoding", bad.into())]))
                .err()
                .unwrap();
            assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{bad}");
            assert!(e.message.len() < 200, "bounded: {}", e.message);
        }
        let e = check(&uri, &headers(&[("content-encoding", "br".into())]))
            .err()
            .unwrap();
        assert!(e.message.contains("'br'"), "{}", e.message);
    }

    #[test]
    fn only_hypers_bare_refusals_are_replaced() {
        let bare =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(replacement(bare).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        assert!(out.contains("application/fhir+json"), "{out}");
        assert!(out.contains("OperationOutcome"), "{out}");
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        // A handler's own 400 (it has a Content-Type) and other statuses pass untouched.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/fhir+json\r\ncontent-length: 2\r\n\r\n{}";
        assert!(replacement(ours).is_none());
        assert!(replacement(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(replacement(b"{\"resourceType\":\"Patient\"}").is_none());
    }
}
