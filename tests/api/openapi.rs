//! `GET /api/v1/openapi.json`: a valid OpenAPI 3 document generated from the code, listing every `/api/v1`
//! route of the contract; and `GET /api/v1/docs`, the page rendering it.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{header, spawn_app, strings_of};

/// Every operation the contract (§6) and the operator auth define.
const CONTRACT_ROUTES: &[(&str, &str)] = &[
    ("post", "/api/auth/login"),
    ("post", "/api/auth/refresh"),
    ("post", "/api/v1/connect-sessions"),
    ("get", "/api/v1/connections"),
    ("get", "/api/v1/connections/{seller_id}"),
    ("delete", "/api/v1/connections/{seller_id}"),
    ("post", "/api/v1/connections/{seller_id}/refresh"),
    ("get", "/api/v1/connections/{seller_id}/pipeline"),
    ("put", "/api/v1/connections/{seller_id}/pipeline"),
    ("post", "/api/v1/sales/orders"),
    ("get", "/api/v1/sales/orders"),
    ("get", "/api/v1/sales/orders/{id}"),
    ("patch", "/api/v1/sales/orders/{id}"),
    ("post", "/api/v1/sales/orders/{id}/retry"),
    ("post", "/api/v1/webhooks"),
    ("get", "/api/v1/webhooks"),
    ("get", "/api/v1/webhooks/{id}"),
    ("patch", "/api/v1/webhooks/{id}"),
    ("delete", "/api/v1/webhooks/{id}"),
    ("get", "/api/v1/webhooks/{id}/deliveries"),
    ("get", "/api/v1/events"),
    ("post", "/api/v1/events/{id}/redeliver"),
];

/// Structural checks of an OpenAPI 3 document: version and info, operations with responses, every path
/// parameter declared, every `$ref` resolving to a component.
fn validate(doc: &Value) -> Result<(), String> {
    let version = doc["openapi"].as_str().ok_or("no openapi version")?;
    if !version.starts_with("3.") {
        return Err(format!("openapi {version} is not 3.x"));
    }
    if doc["info"]["title"].as_str().is_none_or(str::is_empty)
        || doc["info"]["version"].as_str().is_none()
    {
        return Err("info.title and info.version are required".into());
    }
    let paths = doc["paths"].as_object().ok_or("no paths")?;
    for (path, item) in paths {
        if !path.starts_with('/') {
            return Err(format!("path {path} must start with /"));
        }
        let declared_in_path: BTreeSet<&str> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        for (method, op) in item.as_object().ok_or("path item is not an object")? {
            let responses = op["responses"]
                .as_object()
                .ok_or(format!("{method} {path}: no responses"))?;
            if responses.is_empty() {
                return Err(format!("{method} {path}: empty responses"));
            }
            let params: BTreeSet<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .filter_map(|p| p["name"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            if params != declared_in_path {
                return Err(format!(
                    "{method} {path}: path parameters {params:?} do not match {declared_in_path:?}"
                ));
            }
        }
    }
    let schemas = doc["components"]["schemas"].as_object();
    let mut refs = Vec::new();
    collect_refs(doc, &mut refs);
    for r in refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .ok_or(format!("unexpected $ref {r}"))?;
        if !schemas.is_some_and(|s| s.contains_key(name)) {
            return Err(format!("$ref {r} does not resolve"));
        }
    }
    Ok(())
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref" {
                    if let Some(s) = v.as_str() {
                        out.push(s.to_owned());
                    }
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_openapi_document_is_valid_and_lists_every_api_route() {
    let app = spawn_app().await;
    // Public: no API key needed to read the contract.
    let resp = app.get("/api/v1/openapi.json").await;
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    validate(&doc).unwrap_or_else(|e| panic!("{e}\n{doc:#}"));
    for (method, path) in CONTRACT_ROUTES {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from the document"
        );
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn every_operation_has_an_id_no_other_operation_has() {
    let app = spawn_app().await;
    let mut seen = std::collections::HashMap::new();
    for (method, path, op) in app.document_operations().await {
        let id = op["operationId"].as_str().unwrap_or_default().to_owned();
        assert!(!id.is_empty(), "{method} {path} has no operationId");
        if let Some(other) = seen.insert(id.clone(), format!("{method} {path}")) {
            panic!("{id} names both {other} and {method} {path}");
        }
    }
    assert!(seen.len() >= 20, "{seen:?}");
}

#[tokio::test]
async fn every_operation_declares_the_errors_it_can_answer() {
    let app = spawn_app().await;
    let mut checked = 0;
    for (method, path, op) in app.document_operations().await {
        if !path.starts_with("/api/v1/")
            || path.ends_with("/openapi.json")
            || path.ends_with("/docs")
        {
            continue;
        }
        let declared = |status: &str| !op["responses"][status].is_null();
        let mut wanted = vec!["400", "401", "429", "503"];
        if !op["requestBody"].is_null() {
            wanted.extend(["408", "413", "422"]);
        }
        if path.contains('{') {
            wanted.push("404");
        }
        for status in wanted {
            assert!(
                declared(status),
                "{method} {path} does not declare {status}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 20, "{checked}");
    // What the document says is what the service does: no token, 401.
    let resp = app.get("/api/v1/connections/seller-1").await;
    assert_eq!(resp.status().as_u16(), 401);
}

/// Every event of the catalogue is an OpenAPI 3.1 webhook whose body names the event and whose `data`
/// schema is in the document with the fields the producer sends.
#[tokio::test]
async fn every_outgoing_event_is_a_webhook_of_the_document() {
    use amocrm_connector::domain::events::EventKind;
    let app = spawn_app().await;
    let doc: Value = app.get("/api/v1/openapi.json").await.json().await.unwrap();
    for kind in EventKind::ALL {
        let body = &doc["webhooks"][kind.as_str()]["post"]["requestBody"]["content"]["application/json"]
            ["schema"];
        assert_eq!(
            body["properties"]["event"]["enum"][0],
            kind.as_str(),
            "webhook {} missing: {doc:#}",
            kind.as_str()
        );
        let reference = body["properties"]["data"]["$ref"].as_str().unwrap();
        let name = reference.trim_start_matches("#/components/schemas/");
        assert!(
            doc["components"]["schemas"][name]["properties"].is_object(),
            "{name} has no schema"
        );
    }
    let paid = &doc["components"]["schemas"]["PaymentCompleted"]["properties"];
    for field in ["order_id", "order_number", "lead_id", "amount", "currency"] {
        assert!(paid[field].is_object(), "payment.completed lacks {field}");
    }
}

#[tokio::test]
async fn the_docs_page_loads_the_vendored_redoc_from_this_host_only() {
    let app = spawn_app().await;
    let resp = app.get("/api/v1/docs").await;
    assert_eq!(resp.status(), 200);
    let policy = header(&resp, "content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
    ] {
        assert!(policy.contains(directive), "{directive} not in {policy}");
    }
    assert!(
        !policy.contains("http") && !policy.contains("unsafe-eval"),
        "{policy}"
    );
    let html = resp.text().await.unwrap();
    assert!(
        html.contains(r#"data-spec-url="/api/v1/openapi.json""#),
        "{html}"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page names another host: {html}"
    );
    let bundle = format!(
        "/api/v1/docs/redoc.standalone.js?v={}",
        amocrm_connector::web::openapi::REDOC_VERSION
    );
    assert!(
        html.contains(&format!(r#"<script src="{bundle}">"#)),
        "{html}"
    );

    let resp = app.get(&bundle).await;
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "content-type").starts_with("text/javascript"));
    assert!(header(&resp, "cache-control").contains("max-age=31536000"));
    // The vendored file as it is, but for the logo's URL: nothing on the page names another host.
    let vendored = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/vendor/redoc/redoc.standalone.js"
    ))
    .unwrap();
    let logo = amocrm_connector::web::openapi::REDOC_LOGO;
    assert!(vendored.contains(logo));
    assert_eq!(resp.text().await.unwrap(), vendored.replace(logo, "data:,"));
    let resp = app.get("/api/v1/docs/docs.js").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("Redoc.init"));
}

/// The reference reads as prose: a summary that says what the operation does (never its route), a
/// description, and a tag that the contents list.
#[tokio::test]
async fn every_operation_has_a_summary_a_description_and_a_listed_tag() {
    let app = spawn_app().await;
    let doc: Value = app.get("/api/v1/openapi.json").await.json().await.unwrap();
    let tags: Vec<&str> = strings_of(&doc["tags"], "name").collect();
    let mut seen = 0;
    for group in ["paths", "webhooks"] {
        for (path, item) in doc[group].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let summary = op["summary"].as_str().unwrap_or_default();
                assert!(
                    !summary.is_empty() && !summary.contains('/') && !summary.contains('`'),
                    "{method} {path}: summary {summary:?}"
                );
                let description = op["description"].as_str().unwrap_or_default();
                assert!(
                    description.len() > 20 && !description.starts_with('`'),
                    "{method} {path}: description {description:?}"
                );
                let tag = op["tags"][0].as_str().unwrap_or_default();
                assert!(
                    tags.contains(&tag),
                    "{method} {path}: tag {tag:?} not in {tags:?}"
                );
                seen += 1;
            }
        }
    }
    assert!(seen >= 25 + 13, "{seen}");
}

/// Every request body, every response with a body and every outgoing event carries an example; an error's
/// example is the contract's error body with the code of its status. (ci/openapi/examples.py checks each
/// against its schema.)
#[tokio::test]
async fn every_body_in_the_document_has_an_example_errors_included() {
    let app = spawn_app().await;
    let doc: Value = app.get("/api/v1/openapi.json").await.json().await.unwrap();
    let mut errors = 0;
    for group in ["paths", "webhooks"] {
        for (path, item) in doc[group].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if let Some(body) = op["requestBody"]["content"].as_object() {
                    for media in body.values() {
                        assert!(
                            media["example"].is_object(),
                            "{method} {path}: request body without an example"
                        );
                    }
                }
                for (status, response) in op["responses"].as_object().unwrap() {
                    let Some(content) = response["content"].as_object() else {
                        continue;
                    };
                    for media in content.values() {
                        let example = &media["example"];
                        assert!(example.is_object(), "{method} {path} {status}: no example");
                        if status.starts_with('4') || status.starts_with('5') {
                            let error = &example["error"];
                            for field in ["code", "message", "timestamp", "request_id"] {
                                assert!(
                                    error[field].is_string(),
                                    "{method} {path} {status}: example lacks error.{field}"
                                );
                            }
                            assert!(error["details"].is_object());
                            let code = error["code"].as_str().unwrap();
                            let expected = match status.as_str() {
                                "400" | "413" => "BAD_REQUEST",
                                "401" => "INVALID_TOKEN",
                                "403" => "INSUFFICIENT_PERMISSION",
                                "404" => "RESOURCE_NOT_FOUND",
                                "408" => "REQUEST_TIMEOUT",
                                "409" => "DUPLICATE_RESOURCE",
                                "422" => "VALIDATION_ERROR",
                                "429" => "RATE_LIMIT_EXCEEDED",
                                "503" => "MAINTENANCE_MODE",
                                _ => "INTERNAL_SERVER_ERROR",
                            };
                            assert_eq!(code, expected, "{method} {path} {status}");
                            errors += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(errors >= 100, "{errors}");
}

/// Each outgoing event tells a receiver how to check it: the signature headers, and an example body of that
/// event.
#[tokio::test]
async fn every_outgoing_event_documents_its_signature_headers_and_an_example() {
    use amocrm_connector::domain::events::EventKind;
    let app = spawn_app().await;
    let doc: Value = app.get("/api/v1/openapi.json").await.json().await.unwrap();
    for kind in EventKind::ALL {
        let op = &doc["webhooks"][kind.as_str()]["post"];
        let headers: Vec<&str> = op["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no headers", kind.as_str()))
            .iter()
            .filter(|p| p["in"] == "header")
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(
            headers,
            ["X-Signature", "X-Webhook-Id", "X-Webhook-Timestamp"],
            "{}",
            kind.as_str()
        );
        assert!(op["description"].as_str().unwrap().contains("HMAC-SHA256"));
        let example = &op["requestBody"]["content"]["application/json"]["example"];
        assert_eq!(example["event"], kind.as_str());
        assert!(example["data"].is_object());
    }
}
