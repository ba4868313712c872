//! The HTTP application: the router, its handlers, and the wrapper that times, counts, limits
//! and logs every request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

use super::metrics::{Metrics, Route};
use crate::{SERVICE_NAME, VERSION};

/// What this worker is, as `GET /` and the metrics report it.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub profile: &'static str,
    pub instance: u32,
    pub pid: u32,
    pub workers: u32,
    pub threads: u32,
}

/// Request limits (see the settings catalogue for defaults).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub request_timeout: Duration,
    pub max_body_bytes: u64,
}

/// State shared by all requests of one worker.
#[derive(Debug)]
pub struct AppState {
    pub info: WorkerInfo,
    pub limits: Limits,
    pub diagnostics: bool,
    pub started: Instant,
    pub metrics: Metrics,
    pub draining: AtomicBool,
    next_request_id: AtomicU64,
}

impl AppState {
    pub fn new(info: WorkerInfo, limits: Limits, diagnostics: bool) -> Arc<AppState> {
        Arc::new(AppState {
            info,
            limits,
            diagnostics,
            started: Instant::now(),
            metrics: Metrics::default(),
            draining: AtomicBool::new(false),
            next_request_id: AtomicU64::new(1),
        })
    }

    fn request_id(&self, req: &Request) -> HeaderValue {
        let given = req
            .headers()
            .get("x-request-id")
            .filter(|v| v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic()));
        match given {
            Some(v) => v.clone(),
            None => {
                let n = self.next_request_id.fetch_add(1, Relaxed);
                HeaderValue::try_from(format!("{:x}-{n:x}", self.info.pid))
                    .expect("hex digits are a valid header value")
            }
        }
    }
}

/// The routes. Built in a function so tests can drive it with `oneshot`.
pub fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new()
        .route("/", get(root))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if state.diagnostics {
        router = router.route("/debug/delay", get(delay));
    }
    router.fallback(not_found).method_not_allowed_fallback(method_not_allowed).with_state(state)
}

/// Answers one request through `router`: enforces the body limit and request timeout, counts
/// it in the metrics and writes the access log.
pub async fn handle(state: Arc<AppState>, router: Router, req: Request) -> Response {
    let log = tracing::enabled!(target: "coreiix::access", tracing::Level::INFO);
    let mut record = Record {
        started: Instant::now(),
        route: Route::of(req.uri().path()),
        request_id: state.request_id(&req),
        method_path: log.then(|| (req.method().clone(), req.uri().path().to_owned())),
        status: None,
        state: state.clone(),
    };
    state.metrics.start();

    let too_large = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|len| len > state.limits.max_body_bytes);
    let mut response = if too_large {
        json_error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
    } else {
        match tokio::time::timeout(state.limits.request_timeout, router.oneshot(req)).await {
            Ok(Ok(response)) => response,
            Ok(Err(infallible)) => match infallible {},
            Err(_) => json_error(StatusCode::SERVICE_UNAVAILABLE, "request timed out"),
        }
    };
    record.status = Some(response.status().as_u16());
    response.headers_mut().insert("x-request-id", record.request_id.clone());
    response
}

/// Status recorded for a request whose client went away before the answer (as nginx does).
pub const CLIENT_CLOSED: u16 = 499;

/// One request's bookkeeping. It is settled on drop, so a request whose client disconnects
/// (and whose future hyper therefore drops) is still counted, logged and no longer in flight.
struct Record {
    state: Arc<AppState>,
    started: Instant,
    route: Route,
    request_id: HeaderValue,
    method_path: Option<(axum::http::Method, String)>,
    status: Option<u16>,
}

impl Drop for Record {
    fn drop(&mut self) {
        let latency = self.started.elapsed();
        let status = self.status.unwrap_or(CLIENT_CLOSED);
        self.state.metrics.finish(self.route, status, latency);
        if let Some((method, path)) = &self.method_path {
            tracing::info!(
                target: "coreiix::access",
                instance = self.state.info.instance,
                request_id = self.request_id.to_str().unwrap_or_default(),
                method = %method,
                path = %path,
                status,
                latency_ms = latency.as_secs_f64() * 1e3,
                "{method} {path} {status}"
            );
        }
    }
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.into())
        .into_response()
}

fn json_error(status: StatusCode, message: &str) -> Response {
    json_response(status, serde_json::json!({ "error": message }).to_string())
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, r#"{"status":"ok"}"#)
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Relaxed) {
        json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
    } else {
        json_response(StatusCode::OK, r#"{"status":"ready"}"#)
    }
}

/// The body of `GET /`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct About {
    pub name: String,
    pub version: String,
    pub profile: String,
    pub instance: u32,
    pub pid: u32,
    pub uptime_seconds: f64,
    pub workers: u32,
    pub threads: u32,
}

async fn root(State(state): State<Arc<AppState>>) -> Response {
    let i = &state.info;
    let about = About {
        name: SERVICE_NAME.to_owned(),
        version: VERSION.to_owned(),
        profile: i.profile.to_owned(),
        instance: i.instance,
        pid: i.pid,
        uptime_seconds: (state.started.elapsed().as_secs_f64() * 1e3).round() / 1e3,
        workers: i.workers,
        threads: i.threads,
    };
    json_response(StatusCode::OK, serde_json::to_vec(&about).expect("About serializes"))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let i = &state.info;
    let text = state.metrics.render(&[
        ("instance", i.instance.to_string()),
        ("pid", i.pid.to_string()),
        ("profile", i.profile.to_owned()),
        ("threads", i.threads.to_string()),
        ("version", VERSION.to_owned()),
    ]);
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], text).into_response()
}

#[derive(Deserialize)]
struct DelayQuery {
    ms: u64,
}

/// The longest `/debug/delay` sleeps; the request timeout may cut it shorter.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// A deliberately slow answer (diagnostics only).
async fn delay(State(state): State<Arc<AppState>>, Query(q): Query<DelayQuery>) -> Response {
    let wanted = Duration::from_millis(q.ms).min(MAX_DELAY);
    tokio::time::sleep(wanted).await;
    json_response(
        StatusCode::OK,
        serde_json::json!({ "slept_ms": wanted.as_millis() as u64, "pid": state.info.pid }).to_string(),
    )
}

async fn not_found(req: Request) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        serde_json::json!({ "error": "not found", "path": req.uri().path() }).to_string(),
    )
}

async fn method_not_allowed() -> Response {
    json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn state(diagnostics: bool) -> Arc<AppState> {
        AppState::new(
            WorkerInfo { profile: "small", instance: 2, pid: 42, workers: 2, threads: 1 },
            Limits { request_timeout: Duration::from_millis(200), max_body_bytes: 10 },
            diagnostics,
        )
    }

    async fn call(state: &Arc<AppState>, req: Request) -> (StatusCode, String, Response) {
        let response = handle(state.clone(), router(state.clone()), req).await;
        let status = response.status();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap(), Response::from_parts(parts, Body::empty()))
    }

    fn get(uri: &str) -> Request {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn healthz_and_readyz() {
        let s = state(false);
        assert_eq!(call(&s, get("/healthz")).await.1, r#"{"status":"ok"}"#);
        assert_eq!(call(&s, get("/readyz")).await.0, StatusCode::OK);
        s.draining.store(true, Relaxed);
        assert_eq!(call(&s, get("/readyz")).await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(call(&s, get("/healthz")).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn root_describes_the_worker() {
        let (status, body, _) = call(&state(false), get("/")).await;
        assert_eq!(status, StatusCode::OK);
        let about: About = serde_json::from_str(&body).unwrap();
        assert_eq!((about.name.as_str(), about.profile.as_str()), ("coreiix", "small"));
        assert_eq!((about.instance, about.pid, about.workers, about.threads), (2, 42, 2, 1));
        assert_eq!(about.version, VERSION);
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_get_json_errors() {
        let s = state(false);
        let (status, body, _) = call(&s, get("/nope")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, r#"{"error":"not found","path":"/nope"}"#);
        let post = Request::post("/healthz").body(Body::empty()).unwrap();
        assert_eq!(call(&s, post).await.0, StatusCode::METHOD_NOT_ALLOWED);
        // Diagnostics are off unless asked for.
        assert_eq!(call(&s, get("/debug/delay?ms=1")).await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn limits_body_size_and_request_time() {
        let s = state(true);
        let big = Request::post("/").header("content-length", "11").body(Body::from("x".repeat(11))).unwrap();
        assert_eq!(call(&s, big).await.0, StatusCode::PAYLOAD_TOO_LARGE);
        let (status, body, _) = call(&s, get("/debug/delay?ms=5000")).await;
        // The handler caps itself at the timeout, so either answer is a bounded one.
        assert!(
            status == StatusCode::SERVICE_UNAVAILABLE || body.contains("\"slept_ms\":200"),
            "{status} {body}"
        );
    }

    #[tokio::test]
    async fn a_request_whose_client_goes_away_is_settled() {
        let s = state(true);
        let call = handle(s.clone(), router(s.clone()), get("/debug/delay?ms=150"));
        // Dropping the future is what hyper does when the client disconnects.
        assert!(tokio::time::timeout(Duration::from_millis(20), call).await.is_err());
        assert_eq!(s.metrics.in_flight(), 0);
        let (_, text, _) = super::tests::call(&s, get("/metrics")).await;
        assert!(text.contains("route=\"/debug/delay\",status=\"499\"} 1"), "{text}");
    }

    #[tokio::test]
    async fn metrics_count_requests_and_request_ids_are_echoed() {
        let s = state(false);
        let req = Request::get("/healthz").header("x-request-id", "abc-1").body(Body::empty()).unwrap();
        let (_, _, resp) = call(&s, req).await;
        assert_eq!(resp.headers()["x-request-id"], "abc-1");
        let (_, _, resp) = call(&s, get("/healthz")).await;
        assert!(resp.headers()["x-request-id"].to_str().unwrap().starts_with("2a-"));
        let (_, text, _) = call(&s, get("/metrics")).await;
        assert!(text.contains("coreiix_http_requests_total{route=\"/healthz\",status=\"200\"} 2"), "{text}");
        assert!(text.contains("pid=\"42\""), "{text}");
    }
}
