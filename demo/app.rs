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
use loopscope::workload::{CATALOG, Reply, Workload};
use serde_json::{Value, json};

use super::params::{BadParam, Params};
use super::workloads::{self, JsonDocs, ScratchFile};

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

    /// The typed answer of every workload; `extra` names what it computed.
    fn reply(&self, workload: Workload, took: Duration, extra: Value) -> Response {
        self.pool_reply(workload, took, None, extra)
    }

    /// As [`App::reply`], for work that went through the pool.
    fn pool_reply(
        &self,
        workload: Workload,
        took: Duration,
        job: Option<(Duration, Duration)>,
        extra: Value,
    ) -> Response {
        let ran_on = match (job, workload.spec().runs_on) {
            (Some(_), _) => "pool",
            (None, loopscope::workload::RunsOn::Timer) => "timer",
            (None, _) => "loop",
        };
        let Value::Object(detail) = extra else {
            unreachable!("details are an object")
        };
        Json(Reply {
            workload: workload.spec().name.to_string(),
            model: self.model,
            worker: self.worker,
            pid: self.pid,
            ran_on: ran_on.to_string(),
            took_ms: ms(took),
            queued_ms: job.map(|(queued, _)| ms(queued)),
            ran_ms: job.map(|(_, ran)| ms(ran)),
            detail,
        })
        .into_response()
    }
}

/// The checked value of `workload`'s parameter in the query `q`.
fn param(workload: Workload, q: Option<&str>, also: &[&str]) -> Result<(Params, u64), BadParam> {
    let p = workload.spec().param.expect("a workload with a parameter");
    let mut accepted = vec![p.name];
    accepted.extend_from_slice(also);
    let params = Params::parse(q, &accepted)?;
    let value = params.int(p.name, p.range())?;
    Ok((params, value))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The routes.
pub fn router(app: Arc<App>) -> Router {
    let mut router = Router::new();
    for spec in &CATALOG {
        let handler = match spec.workload {
            Workload::Hello => get(hello),
            Workload::Json => get(json_on_loop),
            Workload::Offload => get(json_offloaded),
            Workload::Block => get(block),
            Workload::Spin => get(spin),
            Workload::Sync => get(sync),
            Workload::Hash => get(hash),
            Workload::Fs => get(fs),
            Workload::Sleep => get(sleep),
        };
        router = router.route(spec.path, handler);
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(loopscope::probe::server::method_not_allowed)
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
    let mb = match param(Workload::Json, q.as_deref(), &[]) {
        Ok((_, v)) => v,
        Err(e) => return e.into_response(),
    };
    let Ok(_memory) = app.memory.acquire_many(workloads::parse_cost_mb(mb)).await else {
        return server_error("memory budget closed");
    };
    let doc = app.docs.get(mb).await;
    // JSON.parse / json.loads: on the loop, holding it.
    let parsed = workloads::parse_json(&doc);
    app.reply(
        Workload::Json,
        parsed.took,
        json!({"mb": mb, "bytes": doc.len(), "items": parsed.items}),
    )
}

async fn json_offloaded(State(app): State<Arc<App>>, Query(q): Query) -> Response {
    let mb = match param(Workload::Offload, q.as_deref(), &[]) {
        Ok((_, v)) => v,
        Err(e) => return e.into_response(),
    };
    let Ok(_memory) = app.memory.acquire_many(workloads::parse_cost_mb(mb)).await else {
        return server_error("memory budget closed");
    };
    let doc = app.docs.get(mb).await;
    let bytes = doc.len();
    let start = Instant::now();
    match app.pool.run(move || workloads::parse_json(&doc)).await {
        Ok(job) => app.pool_reply(
            Workload::Offload,
            start.elapsed(),
            Some((job.queued, job.ran)),
            json!({"mb": mb, "bytes": bytes, "items": job.value.items}),
        ),
        Err(e) => server_error(e),
    }
}

async fn block(State(app): State<Arc<App>>, Query(q): Query) -> Response {
    let ms_ = match param(Workload::Block, q.as_deref(), &[]) {
        Ok((_, v)) => v,
        Err(e) => return e.into_response(),
    };
    let start = Instant::now();
    // time.sleep inside async def: the loop can do nothing else meanwhile.
    std::thread::sleep(Duration::from_millis(ms_));
    app.reply(Workload::Block, start.elapsed(), json!({"ms": ms_}))
}

async fn spin(State(app): State<Arc<App>>, Query(q): Query) -> Response {
    let ms_ = match param(Workload::Spin, q.as_deref(), &[]) {
        Ok((_, v)) => v,
        Err(e) => return e.into_response(),
    };
    let start = Instant::now();
    workloads::spin(Duration::from_millis(ms_));
    app.reply(Workload::Spin, start.elapsed(), json!({"ms": ms_}))
}

async fn sync(State(app): State<Arc<App>>, Query(q): Query) -> Response {
    let ms_ = match param(Workload::Sync, q.as_deref(), &[]) {
        Ok((_, v)) => v,
        Err(e) => return e.into_response(),
    };
    let start = Instant::now();
    // A `def` endpoint: a pool thread (a limiter token) is held for the whole call.
    match app
        .pool
        .run(move || std::thread::sleep(Duration::from_millis(ms_)))
        .await
    {
        Ok(job) => app.pool_reply(
            Workload::Sync,
            start.elapsed(),
            Some((job.queued, job.ran)),
            json!({"ms": ms_}),
        ),
        Err(e) => server_error(e),
    }
}

async fn hash(State(app): State<Arc<App>>, Query(q): Query) -> Response {
    let (iterations, on) = match param(Workload::Hash, q.as_deref(), &["on"])
        .and_then(|(p, iterations)| Ok((iterations, p.choice("on", &["pool", "loop"], "pool")?)))
    {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let iterations = iterations as u32;
    let start = Instant::now();
    if on == "loop" {
        // pbkdf2Sync: on the loop.
        let key = workloads::pbkdf2(iterations);
        return app.reply(
            Workload::Hash,
            start.elapsed(),
            json!({"iterations": iterations, "key": key}),
        );
    }
    match app.pool.run(move || workloads::pbkdf2(iterations)).await {
        Ok(job) => app.pool_reply(
            Workload::Hash,
            start.elapsed(),
            Some((job.queued, job.ran)),
            json!({"iterations": iterations, "key": job.value}),
        ),
        Err(e) => server_error(e),
    }
}

async fn fs(State(app): State<Arc<App>>, Query(q): Query) -> Response {
    let kb = match param(Workload::Fs, q.as_deref(), &[]) {
        Ok((_, v)) => v,
        Err(e) => return e.into_response(),
    };
    let Ok(_memory) = app.memory.acquire_many(workloads::read_cost_mb(kb)).await else {
        return server_error("memory budget closed");
    };
    let scratch = Arc::clone(&app.scratch);
    let start = Instant::now();
    match app.pool.run(move || scratch.read(kb * 1024)).await {
        Ok(job) => match job.value {
            Ok(sum) => app.pool_reply(
                Workload::Fs,
                start.elapsed(),
                Some((job.queued, job.ran)),
                json!({"kb": kb, "checksum": sum}),
            ),
            Err(e) => server_error(e),
        },
        Err(e) => server_error(e),
    }
}

async fn sleep(State(app): State<Arc<App>>, Query(q): Query) -> Response {
    let ms_ = match param(Workload::Sleep, q.as_deref(), &[]) {
        Ok((_, v)) => v,
        Err(e) => return e.into_response(),
    };
    let start = Instant::now();
    // setTimeout / asyncio.sleep: the loop stays free.
    tokio::time::sleep(Duration::from_millis(ms_)).await;
    app.reply(Workload::Sleep, start.elapsed(), json!({"ms": ms_}))
}

async fn not_found(req: Request) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({
            "error": "not found",
            "path": req.uri().path(),
            "endpoints": CATALOG
                .iter()
                .map(|s| match s.param {
                    Some(p) => format!("{}?{}={}..={}", s.path, p.name, p.min, p.max),
                    None => s.path.to_string(),
                })
                .collect::<Vec<_>>(),
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
