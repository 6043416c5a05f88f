//! The demo application: the workload endpoints of DESIGN.md, on one event loop.
//!
//! Where work runs is the whole point: `/json`, `/block`, `/spin` and `/hash?on=loop`
//! run on the loop and hold it; `/sync`, `/hash`, `/fs` and `/offload` go through the
//! pool and leave the loop free; `/sleep` waits without holding anything.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, body::Bytes};
use loopscope::probe::Pool;
use loopscope::protocol::Model;
use serde_json::{Value, json};

use super::params::Params;
use super::workloads::{self, JsonDocs, ScratchFile};

/// Upper bounds: no request can exhaust memory or hold a worker for long.
pub const MAX_JSON_MB: u64 = 64;
pub const MAX_HOLD_MS: u64 = 10_000;
pub const MAX_SLEEP_MS: u64 = 60_000;
pub const MAX_HASH_ITERATIONS: u64 = 5_000_000;
pub const MAX_FS_KB: u64 = 64 * 1024;

/// Everything a handler needs; one per worker process.
pub struct App {
    pub model: Model,
    pub worker: u32,
    pub pid: u32,
    pub pool: Pool,
    pub docs: JsonDocs,
    pub scratch: Arc<ScratchFile>,
    /// Bounds the memory that concurrent big requests hold (see `MEMORY_BUDGET_MB`).
    pub memory: Arc<tokio::sync::Semaphore>,
    hello: Bytes,
}

impl App {
    pub fn new(model: Model, worker: u32, pool: Pool) -> Self {
        let pid = std::process::id();
        let hello = serde_json::to_vec(&json!({"hello": "world", "worker": worker, "pid": pid}))
            .expect("static json");
        Self {
            model,
            worker,
            pid,
            pool,
            docs: JsonDocs::default(),
            scratch: Arc::default(),
            memory: Arc::new(tokio::sync::Semaphore::new(
                workloads::MEMORY_BUDGET_MB as usize,
            )),
            hello: Bytes::from(hello),
        }
    }

    fn reply(&self, workload: &str, ran_on: &str, took: Duration, mut extra: Value) -> Response {
        let mut body = json!({
            "workload": workload,
            "model": self.model,
            "worker": self.worker,
            "pid": self.pid,
            "ran_on": ran_on,
            "took_ms": ms(took),
        });
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, &mut extra) {
            body.append(extra);
        }
        Json(body).into_response()
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `METHOD /path` of every route, for the probe's latency table.
pub const ENDPOINTS: [&str; 9] = [
    "GET /hello",
    "GET /json",
    "GET /offload",
    "GET /block",
    "GET /spin",
    "GET /sync",
    "GET /hash",
    "GET /fs",
    "GET /sleep",
];

/// The routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/hello", get(hello))
        .route("/json", get(json_on_loop))
        .route("/offload", get(json_offloaded))
        .route("/block", get(block))
        .route("/spin", get(spin))
        .route("/sync", get(sync))
        .route("/hash", get(hash))
        .route("/fs", get(fs))
        .route("/sleep", get(sleep))
        .fallback(not_found)
        .with_state(app)
}

use axum::extract::RawQuery as Query;

async fn hello(State(app): State<Arc<App>>, Query(q): Query) -> Response {
    if let Err(e) = Params::parse(q.as_deref(), &[]) {
        return e.into_response();
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        app.hello.clone(),
    )
        .into_response()
}

async fn json_on_loop(State(app): State<Arc<App>>, Query(q): Query) -> Response {
    let mb = match Params::parse(q.as_deref(), &["mb"]).and_then(|p| p.int("mb", 1..=MAX_JSON_MB)) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let Ok(_memory) = app.memory.acquire_many(workloads::parse_cost_mb(mb)).await else {
        return server_error("memory budget closed");
    };
    let doc = app.docs.get(mb).await;
    // JSON.parse / json.loads: on the loop, holding it.
    let parsed = workloads::parse_json(&doc);
    app.reply(
        "json",
        "loop",
        parsed.took,
        json!({"mb": mb, "bytes": doc.len(), "items": parsed.items}),
    )
}

async fn json_offloaded(State(app): State<Arc<App>>, Query(q): Query) -> Response {
    let mb = match Params::parse(q.as_deref(), &["mb"]).and_then(|p| p.int("mb", 1..=MAX_JSON_MB)) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let Ok(_memory) = app.memory.acquire_many(workloads::parse_cost_mb(mb)).await else {
        return server_error("memory budget closed");
    };
    let doc = app.docs.get(mb).await;
    let bytes = doc.len();
    let start = Instant::now();
    match app.pool.run(move || workloads::parse_json(&doc)).await {
        Ok(job) => app.reply(
            "offload",
            "pool",
            start.elapsed(),
            json!({"mb": mb, "bytes": bytes, "items": job.value.items,
                   "queued_ms": ms(job.queued), "ran_ms": ms(job.ran)}),
        ),
        Err(e) => server_error(e),
    }
}

async fn block(State(app): State<Arc<App>>, Query(q): Query) -> Response {
    let ms_ = match Params::parse(q.as_deref(), &["ms"]).and_then(|p| p.int("ms", 1..=MAX_HOLD_MS))
    {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let start = Instant::now();
    // time.sleep inside async def: the loop can do nothing else meanwhile.
    std::thread::sleep(Duration::from_millis(ms_));
    app.reply("block", "loop", start.elapsed(), json!({"ms": ms_}))
}

async fn spin(State(app): State<Arc<App>>, Query(q): Query) -> Response {
    let ms_ = match Params::parse(q.as_deref(), &["ms"]).and_then(|p| p.int("ms", 1..=MAX_HOLD_MS))
    {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let start = Instant::now();
    workloads::spin(Duration::from_millis(ms_));
    app.reply("spin", "loop", start.elapsed(), json!({"ms": ms_}))
}

async fn sync(State(app): State<Arc<App>>, Query(q): Query) -> Response {
    let ms_ = match Params::parse(q.as_deref(), &["ms"]).and_then(|p| p.int("ms", 1..=MAX_HOLD_MS))
    {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let start = Instant::now();
    // A `def` endpoint: a pool thread (a limiter token) is held for the whole call.
    match app
        .pool
        .run(move || std::thread::sleep(Duration::from_millis(ms_)))
        .await
    {
        Ok(job) => app.reply(
            "sync",
            "pool",
            start.elapsed(),
            json!({"ms": ms_, "queued_ms": ms(job.queued), "ran_ms": ms(job.ran)}),
        ),
        Err(e) => server_error(e),
    }
}

async fn hash(State(app): State<Arc<App>>, Query(q): Query) -> Response {
    let (iterations, on) = match Params::parse(q.as_deref(), &["iterations", "on"]).and_then(|p| {
        Ok((
            p.int("iterations", 1..=MAX_HASH_ITERATIONS)?,
            p.choice("on", &["pool", "loop"], "pool")?,
        ))
    }) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let iterations = iterations as u32;
    let start = Instant::now();
    if on == "loop" {
        // pbkdf2Sync: on the loop.
        let key = workloads::pbkdf2(iterations);
        return app.reply(
            "hash",
            "loop",
            start.elapsed(),
            json!({"iterations": iterations, "key": key}),
        );
    }
    match app.pool.run(move || workloads::pbkdf2(iterations)).await {
        Ok(job) => app.reply(
            "hash",
            "pool",
            start.elapsed(),
            json!({"iterations": iterations, "key": job.value,
                   "queued_ms": ms(job.queued), "ran_ms": ms(job.ran)}),
        ),
        Err(e) => server_error(e),
    }
}

async fn fs(State(app): State<Arc<App>>, Query(q): Query) -> Response {
    let kb = match Params::parse(q.as_deref(), &["kb"]).and_then(|p| p.int("kb", 1..=MAX_FS_KB)) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let Ok(_memory) = app.memory.acquire_many(workloads::read_cost_mb(kb)).await else {
        return server_error("memory budget closed");
    };
    let scratch = Arc::clone(&app.scratch);
    let start = Instant::now();
    match app.pool.run(move || scratch.read(kb * 1024)).await {
        Ok(job) => match job.value {
            Ok(sum) => app.reply(
                "fs",
                "pool",
                start.elapsed(),
                json!({"kb": kb, "checksum": sum,
                       "queued_ms": ms(job.queued), "ran_ms": ms(job.ran)}),
            ),
            Err(e) => server_error(e),
        },
        Err(e) => server_error(e),
    }
}

async fn sleep(State(app): State<Arc<App>>, Query(q): Query) -> Response {
    let ms_ = match Params::parse(q.as_deref(), &["ms"]).and_then(|p| p.int("ms", 0..=MAX_SLEEP_MS))
    {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let start = Instant::now();
    // setTimeout / asyncio.sleep: the loop stays free.
    tokio::time::sleep(Duration::from_millis(ms_)).await;
    app.reply("sleep", "timer", start.elapsed(), json!({"ms": ms_}))
}

async fn not_found(req: Request) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({
            "error": "not found",
            "path": req.uri().path(),
            "endpoints": ["/hello", "/json?mb=N", "/offload?mb=N", "/block?ms=M", "/spin?ms=M",
                          "/sync?ms=M", "/hash?iterations=K[&on=loop]", "/fs?kb=N", "/sleep?ms=M"],
        })),
    )
        .into_response()
}

fn server_error(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": e.to_string()})),
    )
        .into_response()
}
