//! In-process API tests: the real router (`app`) over the real engine (the
//! BPF datapath is loaded, so these need root; in CI they never skip),
//! driven with `oneshot` — no socket. Each test runs in its own network
//! namespace with a veth pair to attach to, and its own policy directory.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use vtap_core::engine::Engine;
use vtap_core::store::PolicyStore;

use super::{AppState, Auth, Core, app};

const TOKEN: &str = "0123456789abcdef-test-token";

fn require_root() -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("API tests need root (they load the BPF datapath); CI must run them as root");
    }
    eprintln!("skipping: needs root");
    false
}

struct Env {
    state: AppState,
    dir: std::path::PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private netns with `veth-a`/`veth-b`, a fresh policy dir, the real
/// engine. A current-thread runtime keeps every thread in this netns.
fn env(auth: Auth) -> Option<Env> {
    if !require_root() {
        return None;
    }
    // SAFETY: affects only this thread.
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
    for args in [
        &["link", "set", "lo", "up"][..],
        &[
            "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b",
        ],
        &["link", "set", "veth-a", "up"],
        &["link", "set", "veth-b", "up"],
    ] {
        assert!(
            std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap()
                .success()
        );
    }
    let dir = std::env::temp_dir().join(format!(
        "vtap-api-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    let (store, policies) = PolicyStore::open(&dir.join("policies")).unwrap();
    assert!(policies.is_empty());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut engine = Engine::new().expect("load datapath");
    let captures = Arc::new(
        vtap_core::capture::sink::Captures::new(&dir, Default::default(), Default::default())
            .unwrap(),
    );
    engine.set_captures(captures.clone());
    let state = AppState {
        core: Arc::new(Mutex::new(Core {
            engine,
            store: Some(store),
            taps_file: Some(dir.join("taps.json")),
        })),
        ready: Arc::new(AtomicBool::new(true)),
        auth: Arc::new(auth),
        body_limit: 64 * 1024,
        request_timeout: Duration::from_secs(10),
        captures,
        ring_reader: Arc::new(Mutex::new(None)),
        probes: Default::default(),
        bpf_pin: Default::default(),
    };
    Some(Env { state, dir, rt })
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    /// Every error is `{"error": ..., "details": [...]}`.
    fn error(&self) -> Value {
        let v = self.json();
        assert!(v["error"].is_string(), "no error field: {}", self.text);
        assert!(v["details"].is_array(), "no details field: {}", self.text);
        v
    }
}

impl Env {
    fn call(&self, method: &str, uri: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(
                body.map(|s| Body::from(s.to_string()))
                    .unwrap_or_else(Body::empty),
            )
            .unwrap();
        let router = app(self.state.clone());
        self.rt.block_on(async move {
            let r = router.oneshot(req).await.unwrap();
            let status = r.status();
            let headers = r.headers().clone();
            let bytes = r.into_body().collect().await.unwrap().to_bytes();
            Resp {
                status,
                headers,
                text: String::from_utf8_lossy(&bytes).into_owned(),
            }
        })
    }
    fn get(&self, uri: &str) -> Resp {
        self.call("GET", uri, None, &[])
    }
    fn put(&self, uri: &str, body: &str) -> Resp {
        self.call(
            "PUT",
            uri,
            Some(body),
            &[("content-type", "application/json")],
        )
    }
    fn delete(&self, uri: &str) -> Resp {
        self.call("DELETE", uri, None, &[])
    }
}

fn policy(name: &str, vlan: u32) -> String {
    json!({"version": 1, "name": name, "taps": ["veth-a"], "match": {"protocol": "icmp"},
           "outputs": [{"interface": "veth-b", "vlan": vlan}]})
    .to_string()
}

#[test]
fn health_ready_openapi_and_unknown_paths() {
    let Some(e) = env(Auth::default()) else {
        return;
    };
    assert_eq!(e.get("/healthz").status, StatusCode::OK);
    assert_eq!(e.get("/readyz").status, StatusCode::OK);
    let doc = e.get("/api/v1/openapi.json");
    assert_eq!(doc.status, StatusCode::OK);
    let v = doc.json();
    for p in [
        "/api/v1/policies",
        "/api/v1/policies/{name}",
        "/api/v1/taps",
        "/api/v1/taps/{iface}",
        "/api/v1/stats",
    ] {
        assert!(v["paths"][p].is_object(), "openapi lacks {p}");
    }
    let r = e.get("/api/v1/nope");
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    r.error();
    let r = e.call("POST", "/api/v1/policies/x", Some("{}"), &[]);
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    r.error();
}

#[test]
fn policy_lifecycle_with_etags_dry_run_and_persistence() {
    let Some(e) = env(Auth::default()) else {
        return;
    };
    // Create.
    let r = e.put("/api/v1/policies/icmp", &policy("icmp", 100));
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json()["created"], json!(["icmp"]));
    let file = e.dir.join("policies/icmp.yaml");
    assert!(file.exists(), "persisted");
    // Get, with ETag.
    let g = e.get("/api/v1/policies/icmp");
    assert_eq!(g.status, StatusCode::OK);
    let etag = g.json()["etag"].as_str().unwrap().to_string();
    assert_eq!(
        g.headers[header::ETAG].to_str().unwrap(),
        format!("\"{etag}\"")
    );
    assert_eq!(g.json()["status"]["active"], json!(true), "{}", g.text);
    assert_eq!(g.json()["taps"], json!(["veth-a"]));
    // List.
    let l = e.get("/api/v1/policies");
    assert_eq!(l.json()["policies"].as_array().unwrap().len(), 1);
    // Same content: unchanged, same ETag.
    let r = e.put("/api/v1/policies/icmp", &policy("icmp", 100));
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["unchanged"], json!(["icmp"]));
    // Dry run: reports, changes nothing.
    let r = e.put("/api/v1/policies/icmp?dry_run=true", &policy("icmp", 200));
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["dry_run"], json!(true));
    assert_eq!(r.json()["replaced"], json!(["icmp"]));
    assert_eq!(
        e.get("/api/v1/policies/icmp").json()["etag"]
            .as_str()
            .unwrap(),
        etag
    );
    // Stale If-Match → 409; current If-Match → 200.
    let r = e.call(
        "PUT",
        "/api/v1/policies/icmp",
        Some(&policy("icmp", 200)),
        &[("if-match", "\"0000\"")],
    );
    assert_eq!(r.status, StatusCode::CONFLICT);
    r.error();
    let quoted = format!("\"{etag}\"");
    let r = e.call(
        "PUT",
        "/api/v1/policies/icmp",
        Some(&policy("icmp", 200)),
        &[("if-match", &quoted)],
    );
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["replaced"], json!(["icmp"]));
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("vlan: 200")
    );
    // The old ETag is stale now.
    let r = e.call(
        "DELETE",
        "/api/v1/policies/icmp",
        None,
        &[("if-match", &quoted)],
    );
    assert_eq!(r.status, StatusCode::CONFLICT);
    // Delete (dry run first).
    let r = e.delete("/api/v1/policies/icmp?dry_run=true");
    assert_eq!(r.status, StatusCode::OK);
    assert!(file.exists());
    let r = e.delete("/api/v1/policies/icmp");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["deleted"], json!(["icmp"]));
    assert!(!file.exists(), "file removed");
    let r = e.delete("/api/v1/policies/icmp");
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    r.error();
    let r = e.get("/api/v1/policies/icmp");
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    r.error();
    // A restart finds what the files say.
    let (_, reloaded) = PolicyStore::open(&e.dir.join("policies")).unwrap();
    assert!(reloaded.is_empty());
}

#[test]
fn every_bad_input_class_gets_its_status_and_changes_nothing() {
    let Some(e) = env(Auth::default()) else {
        return;
    };
    let count = |e: &Env| {
        e.get("/api/v1/policies").json()["policies"]
            .as_array()
            .unwrap()
            .len()
    };
    // 400 malformed JSON.
    let r = e.put("/api/v1/policies/a", "{not json");
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    r.error();
    // 400 bad query.
    let r = e.put("/api/v1/policies/a?dry_run=perhaps", &policy("a", 1));
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    r.error();
    // 422 unknown field, with its path.
    let mut v: Value = serde_json::from_str(&policy("a", 1)).unwrap();
    v["match"]["dst_port"] = json!(80);
    let r = e.put("/api/v1/policies/a", &v.to_string());
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.error()["details"][0]["field"],
        json!("match.dst_port"),
        "{}",
        r.text
    );
    // 422: every validation error at once, with field paths.
    let mut v: Value = serde_json::from_str(&policy("a", 5000)).unwrap();
    v["match"]["src"] = json!(["10.0.0.0/33"]);
    let r = e.put("/api/v1/policies/a", &v.to_string());
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<String> = r.error()["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap().to_string())
        .collect();
    assert!(
        fields.iter().any(|f| f.ends_with("outputs[0].vlan")),
        "{fields:?}"
    );
    assert!(
        fields.iter().any(|f| f.ends_with("match.src[0]")),
        "{fields:?}"
    );
    // 422 name mismatch.
    let r = e.put("/api/v1/policies/b", &policy("a", 1));
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error()["details"][0]["field"], json!("name"));
    // 422 mirror loop (output is a tapped interface).
    let looped = json!({"version": 1, "name": "l", "taps": ["veth-a"], "outputs": [{"interface": "veth-a"}]});
    let r = e.put("/api/v1/policies/l", &looped.to_string());
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    // 413 too large.
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(70 * 1024));
    let r = e.put("/api/v1/policies/a", &big);
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    r.error();
    // Nothing was created by any of them, and no file was written.
    assert_eq!(count(&e), 0);
    assert_eq!(
        std::fs::read_dir(e.dir.join("policies")).unwrap().count(),
        0
    );
}

#[test]
fn batch_is_all_or_nothing() {
    let Some(e) = env(Auth::default()) else {
        return;
    };
    let bad: Value = serde_json::from_str(&policy("b", 9999)).unwrap();
    let good: Value = serde_json::from_str(&policy("a", 1)).unwrap();
    let r = e.put(
        "/api/v1/policies",
        &json!({"policies": [good, bad]}).to_string(),
    );
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    r.error();
    assert_eq!(
        e.get("/api/v1/policies").json()["policies"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let good2: Value = serde_json::from_str(&policy("b", 2)).unwrap();
    let r = e.put(
        "/api/v1/policies",
        &json!({"policies": [good, good2]}).to_string(),
    );
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["created"], json!(["a", "b"]));
    assert_eq!(
        e.get("/api/v1/policies").json()["policies"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Duplicate names in one batch.
    let r = e.put(
        "/api/v1/policies",
        &json!({"policies": [good.clone(), good]}).to_string(),
    );
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[test]
fn authentication() {
    let Some(e) = env(Auth {
        token: Some(TOKEN.into()),
        public_read: false,
    }) else {
        return;
    };
    let bearer = format!("Bearer {TOKEN}");
    let r = e.get("/api/v1/policies");
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    r.error();
    assert_eq!(e.get("/metrics").status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        e.call(
            "GET",
            "/api/v1/policies",
            None,
            &[("authorization", "Bearer wrong")]
        )
        .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        e.call(
            "GET",
            "/api/v1/policies",
            None,
            &[("authorization", &bearer)]
        )
        .status,
        StatusCode::OK
    );
    assert_eq!(
        e.put("/api/v1/policies/a", &policy("a", 1)).status,
        StatusCode::UNAUTHORIZED
    );
    let r = e.call(
        "PUT",
        "/api/v1/policies/a",
        Some(&policy("a", 1)),
        &[("authorization", &bearer)],
    );
    assert_eq!(r.status, StatusCode::CREATED);
    // Health is always open.
    assert_eq!(e.get("/healthz").status, StatusCode::OK);

    let Some(p) = env(Auth {
        token: Some(TOKEN.into()),
        public_read: true,
    }) else {
        return;
    };
    assert_eq!(p.get("/api/v1/policies").status, StatusCode::OK);
    assert_eq!(p.get("/metrics").status, StatusCode::OK);
    assert_eq!(
        p.put("/api/v1/policies/a", &policy("a", 1)).status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        p.delete("/api/v1/taps/veth-a").status,
        StatusCode::UNAUTHORIZED
    );
}

#[test]
fn taps_attach_list_detach() {
    let Some(e) = env(Auth::default()) else {
        return;
    };
    let r = e.put("/api/v1/taps/veth-b", "");
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json()["state"], json!("attached"));
    assert_eq!(r.json()["attached"], json!(["ingress", "egress"]));
    let r = e.put("/api/v1/taps/veth-b", r#"{"directions": ["ingress"]}"#);
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["attached"], json!(["ingress"]));
    assert!(e.dir.join("taps.json").exists());
    let l = e.get("/api/v1/taps").json();
    assert!(
        l["taps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "veth-b" && t["explicit"] == true)
    );
    assert_eq!(e.get("/api/v1/taps/veth-b").status, StatusCode::OK);
    // A missing interface is recorded and reported as missing.
    let r = e.put("/api/v1/taps/nosuch0", "");
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["state"], json!("missing"));
    // Bad input.
    let r = e.put("/api/v1/taps/veth-b", r#"{"directions": ["sideways"]}"#);
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error()["details"][0]["field"], json!("directions[0]"));
    let r = e.put("/api/v1/taps/this-name-is-far-too-long", "");
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    r.error();
    // A tap selected by a policy cannot be detached over /taps.
    assert_eq!(
        e.put("/api/v1/policies/icmp", &policy("icmp", 100)).status,
        StatusCode::CREATED
    );
    let r = e.delete("/api/v1/taps/veth-a");
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    r.error();
    // Detach.
    let r = e.delete("/api/v1/taps/veth-b");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        e.delete("/api/v1/taps/veth-b").status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(e.get("/api/v1/taps/veth-b").status, StatusCode::NOT_FOUND);
}

#[test]
fn stats_and_metrics_in_both_formats() {
    let Some(e) = env(Auth::default()) else {
        return;
    };
    assert_eq!(
        e.put("/api/v1/policies/icmp", &policy("icmp", 100)).status,
        StatusCode::CREATED
    );
    let s = e.get("/api/v1/stats");
    assert_eq!(s.status, StatusCode::OK);
    let v = s.json();
    assert_eq!(v["policies"][0]["name"], json!("icmp"));
    for reason in [
        "clone_failed",
        "output_down",
        "sampled",
        "rate_limited",
        "ring_full",
    ] {
        assert!(
            v["policies"][0]["dropped"][reason].is_u64(),
            "{reason} missing: {}",
            s.text
        );
    }
    assert!(
        v["taps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "veth-a")
    );
    let m = e.get("/metrics");
    assert_eq!(m.status, StatusCode::OK);
    assert!(
        m.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(
        m.text
            .contains("vtap_policy_matched_packets_total{direction=\"ingress\",policy=\"icmp\"} 0")
    );
    let o = e.call(
        "GET",
        "/metrics",
        None,
        &[("accept", "application/openmetrics-text; version=1.0.0")],
    );
    assert_eq!(o.status, StatusCode::OK);
    assert!(
        o.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(o.text.trim_end().ends_with("# EOF"));
}

#[test]
fn a_change_that_cannot_be_persisted_is_503_and_changes_nothing() {
    let Some(e) = env(Auth::default()) else {
        return;
    };
    assert_eq!(
        e.put("/api/v1/policies/a", &policy("a", 1)).status,
        StatusCode::CREATED
    );
    let before = e.get("/api/v1/policies/a").json()["etag"].clone();
    // The policy directory becomes unusable (a file where the directory was).
    let dir = e.dir.join("policies");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let r = e.put("/api/v1/policies/a", &policy("a", 2));
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    let body = r.error();
    assert!(
        !body["error"].as_str().unwrap().contains("os error"),
        "internal detail leaked: {}",
        r.text
    );
    let r = e.put("/api/v1/policies/b", &policy("b", 3));
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    // The running set is unchanged.
    assert_eq!(e.get("/api/v1/policies/a").json()["etag"], before);
    assert_eq!(e.get("/api/v1/policies/b").status, StatusCode::NOT_FOUND);
    std::fs::remove_file(&dir).unwrap();
}
