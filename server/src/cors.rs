//! Cross-origin calls from browser SMART apps (the Fetch standard's CORS protocol), for the
//! origins listed in `CARAPACE_CORS_ORIGINS` only, and only on the API: `/fhir` and the token
//! endpoint. The HTML sign-in pages never answer cross-origin (they are not an API, and framing or
//! scripting them from elsewhere is what a sign-in page must refuse).
//!
//! No `Access-Control-Allow-Credentials`: SMART apps send their token in `Authorization`, which
//! CORS lets a listed origin send without it, and no cookie of ours is ever usable cross-origin.
//! A preflight needs no token (browsers never send one with it); from an unlisted origin it is a
//! 403 without any `Access-Control-*` header, and the browser then refuses the call.

use crate::outcome::{ApiError, HttpResponse};
use carapace_core::config::CorsOrigin;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};

/// Request headers a browser app may send.
const ALLOW_HEADERS: &str = "Authorization, Content-Type, Accept, Prefer, If-Match, \
     If-None-Match, If-None-Exist, If-Modified-Since, X-Purpose-Of-Use, X-Break-Glass-Reason";
/// Response headers a browser app may read (besides the CORS-safelisted ones).
const EXPOSE_HEADERS: &str =
    "Location, ETag, Content-Location, Last-Modified, WWW-Authenticate, Retry-After";
/// How long a browser may cache a preflight answer (10 minutes).
const MAX_AGE: &str = "600";

/// The origins that may call, from the configuration.
pub struct Cors {
    origins: Vec<CorsOrigin>,
}

/// Which API a path belongs to, as far as CORS is concerned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Fhir,
    Token,
}

fn api(path: &str) -> Option<Api> {
    if path == "/fhir" || path.starts_with("/fhir/") {
        Some(Api::Fhir)
    } else if path == "/auth/token" {
        Some(Api::Token)
    } else {
        None
    }
}

impl Cors {
    pub fn new(origins: Vec<CorsOrigin>) -> Cors {
        Cors { origins }
    }

    /// The request's `Origin`, if it is a listed one.
    fn listed<'a>(&self, origin: Option<&'a HeaderValue>) -> Option<&'a HeaderValue> {
        let origin = origin?;
        let text = origin.to_str().ok()?;
        self.origins
            .iter()
            .any(|o| o.as_str() == text)
            .then_some(origin)
    }

    /// The answer to a CORS preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) on the API; `None` for any other request.
    pub fn preflight(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<HttpResponse> {
        if method != Method::OPTIONS
            || !headers.contains_key(header::ORIGIN)
            || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let api = api(path)?;
        let Some(origin) = self.listed(headers.get(header::ORIGIN)) else {
            return Some(
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this origin may not call the API from a browser",
                )
                .into_response(),
            );
        };
        let methods = match api {
            Api::Fhir => "GET, HEAD, POST, PUT, PATCH, DELETE",
            Api::Token => "POST",
        };
        let mut resp = Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())
            .header(header::ACCESS_CONTROL_ALLOW_METHODS, methods)
            .header(header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS)
            .header(header::ACCESS_CONTROL_MAX_AGE, MAX_AGE)
            .body(Default::default())
            .unwrap_or_default();
        vary(resp.headers_mut());
        Some(resp)
    }

    /// Mark a response to an API request: `Access-Control-Allow-Origin` for a listed origin, and
    /// `Vary: Origin` whenever an origin list exists (the answer depends on the origin, and a
    /// shared cache must not hand one origin's answer to another).
    pub fn decorate<B>(
        &self,
        path: &str,
        origin: Option<&HeaderValue>,
        resp: &mut hyper::Response<B>,
    ) {
        if self.origins.is_empty() || api(path).is_none() {
            return;
        }
        let listed = self.listed(origin).cloned();
        let headers = resp.headers_mut();
        vary(headers);
        if let Some(origin) = listed {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
        }
    }
}

fn vary(headers: &mut HeaderMap) {
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors::new(vec![CorsOrigin::parse("https://app.example").unwrap()])
    }

    fn origin(text: &str) -> HeaderValue {
        text.parse().unwrap()
    }

    fn request(origin: &str, preflight: bool) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().unwrap());
        if preflight {
            h.insert(
                header::ACCESS_CONTROL_REQUEST_METHOD,
                "GET".parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn preflights_on_the_api_are_answered_for_listed_origins_only() {
        let c = cors();
        let ok = c
            .preflight(
                &Method::OPTIONS,
                "/fhir/Patient",
                &request("https://app.example", true),
            )
            .unwrap();
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            ok.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        let no = c
            .preflight(
                &Method::OPTIONS,
                "/fhir/Patient",
                &request("https://evil.example", true),
            )
            .unwrap();
        assert_eq!(no.status(), StatusCode::FORBIDDEN);
        assert!(no
            .headers()
            .keys()
            .all(|k| !k.as_str().starts_with("access-control")));
        // Not a preflight, or not the API: the ordinary handlers answer.
        let plain = request("https://app.example", false);
        assert!(c
            .preflight(&Method::OPTIONS, "/fhir/Patient", &plain)
            .is_none());
        let login = request("https://app.example", true);
        assert!(c
            .preflight(&Method::OPTIONS, "/auth/login", &login)
            .is_none());
        assert!(c.preflight(&Method::GET, "/fhir/Patient", &login).is_none());
    }

    #[test]
    fn responses_carry_the_origin_only_when_listed() {
        let c = cors();
        let mut resp: HttpResponse = Response::new(Default::default());
        c.decorate(
            "/fhir/Patient",
            Some(&origin("https://app.example")),
            &mut resp,
        );
        assert_eq!(
            resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        assert_eq!(resp.headers()[header::VARY], "Origin");
        let mut resp: HttpResponse = Response::new(Default::default());
        c.decorate(
            "/fhir/Patient",
            Some(&origin("https://app.example.evil")),
            &mut resp,
        );
        assert!(!resp
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        let mut resp: HttpResponse = Response::new(Default::default());
        c.decorate(
            "/auth/login",
            Some(&origin("https://app.example")),
            &mut resp,
        );
        assert!(resp.headers().is_empty());
        let mut resp: HttpResponse = Response::new(Default::default());
        Cors::new(vec![]).decorate("/fhir", Some(&origin("https://app.example")), &mut resp);
        assert!(resp.headers().is_empty(), "no list, no CORS at all");
    }
}
