//! `docs/admin-openapi.json` is a valid OpenAPI 3.1 document and describes exactly the admin
//! listener's routes: the same (method, path) pairs as the router in `src/admin/mod.rs`, every
//! reference resolves, the security of each path is the listener's, and every documented
//! operation answers on a real gateway (never `route_not_found` or `method_not_allowed`).

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn document() -> Value {
    let text = std::fs::read_to_string(format!("{ROOT}/docs/admin-openapi.json")).unwrap();
    serde_json::from_str(&text).expect("docs/admin-openapi.json is JSON")
}

/// (method, path) of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// (method, path) of every `.route("…", get(…).post(…))` in the admin router's source.
fn routed() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(format!("{ROOT}/src/admin/mod.rs")).unwrap();
    let mut out = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find(".route(") {
        let call = &rest[at + ".route(".len()..];
        let call = call.trim_start();
        let path_end = call[1..].find('"').unwrap() + 1;
        let path = &call[1..path_end];
        // The handlers follow up to the route call's end: the next `.route(` or a blank line.
        let tail = &call[path_end..];
        let end = tail
            .find(".route(")
            .or_else(|| tail.find("\n\n"))
            .unwrap_or(tail.len());
        for method in ["get", "post"] {
            if tail[..end].contains(&format!("{method}(")) {
                out.insert((method.to_uppercase(), path.to_owned()));
            }
        }
        rest = &call[path_end..];
    }
    out
}

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "$ref" {
                    out.push(child.as_str().unwrap().to_owned());
                } else {
                    refs(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| refs(i, out)),
        _ => {}
    }
}

/// Read into a typed OpenAPI 3.1 model (the `oas3` crate): a missing required field, a wrong
/// type, an unknown schema type or security scheme, or another OpenAPI version is refused.
#[test]
fn the_document_is_valid_openapi_3_1() {
    let text = std::fs::read_to_string(format!("{ROOT}/docs/admin-openapi.json")).unwrap();
    let spec = oas3::from_json(&text).unwrap_or_else(|e| panic!("not OpenAPI: {e}"));
    let version = spec.validate_version().expect("an OpenAPI 3.1 version");
    assert_eq!((version.major, version.minor), (3, 1));
    let paths = spec.paths.as_ref().expect("paths");
    let documented_paths: BTreeSet<String> = documented(&document())
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(paths.len(), documented_paths.len());
    // A broken document is refused: the check can fail.
    let broken = text.replacen("\"type\": \"http\"", "\"type\": \"htp\"", 1);
    assert_ne!(broken, text);
    assert!(oas3::from_json(&broken).is_err());
}

#[test]
fn the_document_lists_exactly_the_routes_of_the_admin_router() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let routes = routed();
    assert!(routes.len() >= 9, "{routes:?}");
    assert_eq!(documented(&doc), routes);
}

#[test]
fn references_resolve_and_the_security_matches_the_listener() {
    let doc = document();
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r.strip_prefix('#').expect("local references only");
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            // `/admin/*` always needs the admin token; `/metrics` and `/status` may need the
            // monitoring token (`{}`, no requirement, is one of the alternatives); the probes
            // never need anything.
            let alternatives: Vec<String> = op
                .get("security")
                .and_then(|s| s.as_array())
                .map(|list| list.iter().map(|req| req.to_string()).collect())
                .unwrap_or_default();
            let expected: Vec<String> = match path.as_str() {
                p if p.starts_with("/admin/") => vec![r#"{"adminToken":[]}"#.into()],
                "/metrics" | "/status" => [
                    "{}",
                    r#"{"monitoringToken":[]}"#,
                    r#"{"monitoringBasic":[]}"#,
                    r#"{"adminToken":[]}"#,
                ]
                .map(String::from)
                .to_vec(),
                _ => Vec::new(),
            };
            assert_eq!(alternatives, expected, "{method} {path}");
            let secured = !alternatives.is_empty();
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} documents no response"
            );
            if secured {
                assert!(op["responses"].get("401").is_some(), "{method} {path}");
            }
        }
    }
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    for (method, path) in documented(&document()) {
        let concrete = path
            .replace("{upstream}", "einvoice")
            .replace("{gstin}", GSTIN);
        let url = format!("http://{}{concrete}", gw.admin);
        // Without the token: `/admin/*` must answer 401, the rest 200.
        let req = match method.as_str() {
            "GET" => gw.http.get(&url),
            _ => gw.http.post(&url),
        };
        let res = req.send().await.unwrap();
        if path.starts_with("/admin/") {
            assert_eq!(res.status(), 401, "{method} {path}");
        } else {
            assert_eq!(res.status(), 200, "{method} {path}");
        }
        // With it, the route exists: whatever the outcome, it is not "no such route".
        let req = match method.as_str() {
            "GET" => gw.http.get(&url),
            _ => gw.http.post(&url),
        }
        .bearer_auth(ADMIN_TOKEN);
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let body = res.text().await.unwrap();
        assert!(
            !body.contains("route_not_found") && !body.contains("method_not_allowed"),
            "{method} {path}: {status} {body}"
        );
    }
}
