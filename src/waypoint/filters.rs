//! HTTPRoute filters applied to one request or response: header modifiers (set, add,
//! remove), redirects (the `Location` the Gateway API spec derives from scheme, hostname,
//! port and path), URL rewrites (Host and path, with `ReplaceFullPath` or
//! `ReplacePrefixMatch` against the prefix that matched), and mirror sampling.
//!
//! Everything here is a pure function of the filter and the request: the waypoint's server
//! calls it in rule order, then backend order, and sends what comes out.

use http::header::HOST;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::model::http_route_rules::{
    HeaderModifier, PathModifier, RequestMirror, RequestRedirect,
};

/// Applies a header modifier: `set` replaces, `add` appends another value, `remove` drops
/// (names are case-insensitive). Names and values were checked when the model was built; one
/// that no longer parses is skipped.
pub fn modify_headers(headers: &mut HeaderMap, modifier: &HeaderModifier) {
    for header in &modifier.set {
        if let (Ok(name), Ok(value)) = parse_header(&header.name, &header.value) {
            headers.insert(name, value);
        }
    }
    for header in &modifier.add {
        if let (Ok(name), Ok(value)) = parse_header(&header.name, &header.value) {
            headers.append(name, value);
        }
    }
    for name in &modifier.remove {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
}

fn parse_header(
    name: &str,
    value: &str,
) -> (
    Result<HeaderName, http::header::InvalidHeaderName>,
    Result<HeaderValue, http::header::InvalidHeaderValue>,
) {
    (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    )
}

/// The path after a `ReplaceFullPath` / `ReplacePrefixMatch` modifier. `matched_prefix` is
/// the `PathPrefix` value the request matched (`/` when the rule had no path match).
pub fn modified_path(path: &str, modifier: &PathModifier, matched_prefix: Option<&str>) -> String {
    match modifier.kind.as_str() {
        "ReplaceFullPath" => modifier
            .replace_full_path
            .clone()
            .unwrap_or_else(|| "/".into()),
        "ReplacePrefixMatch" => {
            let prefix = matched_prefix.unwrap_or("/").trim_end_matches('/');
            let rest = path.strip_prefix(prefix).unwrap_or(path);
            let replacement = modifier
                .replace_prefix_match
                .as_deref()
                .unwrap_or("/")
                .trim_end_matches('/');
            let joined = format!("{replacement}{rest}");
            if joined.is_empty() {
                "/".into()
            } else if !joined.starts_with('/') {
                format!("/{joined}")
            } else {
                joined
            }
        }
        _ => path.to_owned(),
    }
}

/// What a request looks like to a redirect: how it arrived.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    /// `http` (plaintext inside the tunnel) unless the caller said otherwise.
    pub scheme: &'a str,
    /// The Host (or `:authority`) without a port; the Service's address when absent.
    pub host: &'a str,
    /// The port the caller addressed (the Service port).
    pub port: u16,
    /// The path.
    pub path: &'a str,
    /// The query, without `?`.
    pub query: Option<&'a str>,
}

/// The status and `Location` of a redirect, as the Gateway API spec derives them: the
/// scheme, host and path given, else the request's; the port given, else the new scheme's
/// well-known port when the scheme changes, else the request's; a well-known port is left
/// out of the URL. The query is kept.
pub fn redirect(
    redirect: &RequestRedirect,
    arrival: &Arrival<'_>,
    matched_prefix: Option<&str>,
) -> (StatusCode, String) {
    let scheme = redirect.scheme.as_deref().unwrap_or(arrival.scheme);
    let host = redirect.hostname.as_deref().unwrap_or(arrival.host);
    let port = match redirect.port.and_then(|p| u16::try_from(p).ok()) {
        Some(port) => port,
        None if redirect.scheme.is_some() => well_known_port(scheme),
        None => arrival.port,
    };
    let path = redirect.path.as_ref().map_or_else(
        || arrival.path.to_owned(),
        |m| modified_path(arrival.path, m, matched_prefix),
    );
    let authority = if port == well_known_port(scheme) {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    let query = arrival.query.map(|q| format!("?{q}")).unwrap_or_default();
    let status = redirect
        .status_code
        .and_then(|c| u16::try_from(c).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::FOUND);
    (status, format!("{scheme}://{authority}{path}{query}"))
}

fn well_known_port(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

/// Sets the Host header (HTTP/1.1) a rewrite names; for HTTP/2 the caller puts it in the
/// URI's authority.
pub fn rewrite_host(headers: &mut HeaderMap, hostname: &str) {
    if let Ok(value) = HeaderValue::from_str(hostname) {
        headers.insert(HOST, value);
    }
}

/// Whether this request is one of the mirrored share (`roll` is uniform in [0, 1)).
pub fn mirrors(mirror: &RequestMirror, roll: f64) -> bool {
    let share = match (&mirror.fraction, mirror.percent) {
        (Some(f), _) if f.denominator > 0 => f.numerator as f64 / f.denominator as f64,
        (_, Some(percent)) => percent as f64 / 100.0,
        _ => 1.0,
    };
    roll < share
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::http_route_rules::BackendRef;
    use crate::model::http_route_rules::{Fraction, HttpHeader};

    fn replace_prefix(to: &str) -> PathModifier {
        PathModifier {
            kind: "ReplacePrefixMatch".into(),
            replace_full_path: None,
            replace_prefix_match: Some(to.into()),
        }
    }

    #[test]
    fn prefix_replacement_keeps_the_rest_of_the_path() {
        for (prefix, to, path, want) in [
            ("/foo", "/xyz", "/foo/bar", "/xyz/bar"),
            ("/foo", "/xyz", "/foo", "/xyz"),
            ("/foo/", "/xyz", "/foo/bar", "/xyz/bar"),
            ("/foo", "/xyz/", "/foo/bar", "/xyz/bar"),
            ("/foo", "/", "/foo/bar", "/bar"),
            ("/foo", "/", "/foo", "/"),
            ("/", "/api", "/users", "/api/users"),
        ] {
            assert_eq!(
                modified_path(path, &replace_prefix(to), Some(prefix)),
                want,
                "{prefix} -> {to} on {path}"
            );
        }
        let full = PathModifier {
            kind: "ReplaceFullPath".into(),
            replace_full_path: Some("/one".into()),
            replace_prefix_match: None,
        };
        assert_eq!(modified_path("/any/thing", &full, Some("/any")), "/one");
    }

    #[test]
    fn header_modifiers_set_add_and_remove() {
        let mut headers = HeaderMap::new();
        headers.insert("x-set", HeaderValue::from_static("old"));
        headers.insert("x-add", HeaderValue::from_static("first"));
        headers.insert("x-remove", HeaderValue::from_static("gone"));
        modify_headers(
            &mut headers,
            &HeaderModifier {
                set: vec![HttpHeader {
                    name: "X-Set".into(),
                    value: "new".into(),
                }],
                add: vec![HttpHeader {
                    name: "x-add".into(),
                    value: "second".into(),
                }],
                remove: vec!["X-Remove".into()],
            },
        );
        assert_eq!(headers.get("x-set").unwrap(), "new");
        let added: Vec<_> = headers.get_all("x-add").iter().collect();
        assert_eq!(added, ["first", "second"]);
        assert!(headers.get("x-remove").is_none());
    }

    fn arrival<'a>(path: &'a str, query: Option<&'a str>) -> Arrival<'a> {
        Arrival {
            scheme: "http",
            host: "echo.shop",
            port: 8080,
            path,
            query,
        }
    }

    #[test]
    fn redirects_derive_scheme_host_port_and_path_as_the_spec_says() {
        let to = |r: RequestRedirect| redirect(&r, &arrival("/old/x", Some("a=1")), Some("/old"));
        assert_eq!(
            to(RequestRedirect::default()),
            (StatusCode::FOUND, "http://echo.shop:8080/old/x?a=1".into())
        );
        assert_eq!(
            to(RequestRedirect {
                scheme: Some("https".into()),
                ..Default::default()
            }),
            (StatusCode::FOUND, "https://echo.shop/old/x?a=1".into()),
            "a scheme change goes to the well-known port"
        );
        assert_eq!(
            to(RequestRedirect {
                hostname: Some("example.org".into()),
                port: Some(80),
                status_code: Some(301),
                ..Default::default()
            }),
            (
                StatusCode::MOVED_PERMANENTLY,
                "http://example.org/old/x?a=1".into()
            )
        );
        assert_eq!(
            to(RequestRedirect {
                path: Some(replace_prefix("/new")),
                status_code: Some(308),
                ..Default::default()
            }),
            (
                StatusCode::PERMANENT_REDIRECT,
                "http://echo.shop:8080/new/x?a=1".into()
            )
        );
        for code in [303, 307] {
            let (status, _) = to(RequestRedirect {
                status_code: Some(code),
                ..Default::default()
            });
            assert_eq!(status.as_u16() as i64, code);
        }
    }

    #[test]
    fn mirror_share_follows_percent_or_fraction() {
        let mirror = |percent, fraction| RequestMirror {
            backend_ref: BackendRef {
                group: None,
                kind: None,
                name: "m".into(),
                namespace: None,
                port: Some(80),
            },
            percent,
            fraction,
        };
        assert!(mirrors(&mirror(None, None), 0.999));
        assert!(mirrors(&mirror(Some(10), None), 0.05));
        assert!(!mirrors(&mirror(Some(10), None), 0.15));
        assert!(!mirrors(&mirror(Some(0), None), 0.0));
        let half = Some(Fraction {
            numerator: 1,
            denominator: 2,
        });
        assert!(mirrors(&mirror(None, half.clone()), 0.49));
        assert!(!mirrors(&mirror(None, half), 0.5));
    }
}
