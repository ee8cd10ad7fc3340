//! A target's base URL, parsed once at start-up: what each request's URL and `Host` header
//! are made of, so that a request concatenates one string and parses nothing else.

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};

use crate::path::CallerPath;
use crate::problem::GatewayError;

/// One base URL: `scheme://authority/base-path`.
#[derive(Debug)]
pub struct Base {
    scheme: Scheme,
    authority: Authority,
    /// The base path without a trailing slash; empty for a base URL without one.
    path: String,
    /// The `Host` header: the host, and the port unless it is the scheme's default; never a
    /// `user:password@` (`check-config` refuses one in a base URL anyway).
    host: HeaderValue,
}

impl Base {
    /// Parses a base URL already checked by the configuration (http or https, a host, no
    /// query, fragment or user, a canonical path).
    pub fn parse(url: &str) -> Result<Self, String> {
        let normal = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let uri: Uri = normal
            .as_str()
            .parse()
            .map_err(|e| format!("not a URI: {e}"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            return Err("must be an http:// or https:// URL with a host".into());
        };
        Ok(Self {
            host: host_header(scheme == Scheme::HTTPS, &authority)
                .ok_or("its host is not a header value")?,
            path: uri.path().trim_end_matches('/').to_owned(),
            scheme,
            authority,
        })
    }

    /// The base path + the caller's validated path + its query, concatenated and never
    /// resolved: the path was checked by [`CallerPath`], so the upstream gets exactly the path
    /// gstgate routed on, under the base URL's own path. (A URL parser would resolve dot
    /// segments, which is how `..` used to climb out of the base path.)
    pub fn uri(&self, path: &CallerPath) -> Result<Uri, GatewayError> {
        let query = path.query();
        let mut text = String::with_capacity(
            self.path.len() + path.path().len() + query.map_or(0, |q| q.len() + 1),
        );
        text.push_str(&self.path);
        text.push_str(path.path());
        if let Some(q) = query {
            text.push('?');
            text.push_str(q);
        }
        let invalid = |_| GatewayError::Internal("the upstream URL is not a valid URI".into());
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        // The path and query passed hyper's parser and the canonical check.
        parts.path_and_query =
            Some(PathAndQuery::from_maybe_shared(Bytes::from(text)).map_err(invalid)?);
        Uri::from_parts(parts)
            .map_err(|_| GatewayError::Internal("the upstream URL is not a valid URI".into()))
    }

    /// The `Host` header requests to this base carry.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }
}

/// The `Host` header for `authority`: the host, and the port unless it is the scheme's
/// default; never the `user:password@` an authority may carry.
pub fn host_header(https: bool, authority: &Authority) -> Option<HeaderValue> {
    let default_port = if https { 443 } else { 80 };
    match authority.port_u16() {
        Some(port) if port != default_port => {
            HeaderValue::from_str(&format!("{}:{port}", authority.host())).ok()
        }
        _ => HeaderValue::from_str(authority.host()).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str, q: Option<&str>) -> CallerPath {
        CallerPath::parse(p, q).unwrap()
    }

    #[test]
    fn the_url_is_the_base_path_then_the_callers_path_and_query() {
        let base = Base::parse("https://gsp.example.com/gus/irp/").unwrap();
        assert_eq!(
            base.uri(&path("/eicore/v1.03/Invoice", Some("a=1&b=%20")))
                .unwrap(),
            "https://gsp.example.com/gus/irp/eicore/v1.03/Invoice?a=1&b=%20"
        );
        assert_eq!(base.host(), "gsp.example.com");
        let bare = Base::parse("http://127.0.0.1:38975").unwrap();
        assert_eq!(
            bare.uri(&path("/eivital/v1.04/auth", None)).unwrap(),
            "http://127.0.0.1:38975/eivital/v1.04/auth"
        );
        assert_eq!(bare.host(), "127.0.0.1:38975");
    }

    #[test]
    fn the_host_names_a_port_only_when_it_is_not_the_schemes_default() {
        for (url, host) in [
            ("http://h:80/x", "h"),
            ("https://h:443", "h"),
            ("http://h:443", "h:443"),
            ("https://h:8443/", "h:8443"),
            ("http://[::1]:8080", "[::1]:8080"),
            // check-config refuses a user in a base URL; the Host would not carry it anyway.
            ("http://user:secret@h:8080/x", "h:8080"),
        ] {
            assert_eq!(Base::parse(url).unwrap().host(), host, "{url}");
        }
    }

    #[test]
    fn what_is_not_a_base_url_is_refused() {
        assert!(Base::parse("not a url").is_err());
        assert!(Base::parse("mailto:x@y").is_err());
    }
}
