//! The demo application: the workload endpoints of README.md, on one event loop or
//! on the worker threads of a multi-thread runtime.
//!
//! Where work runs is the whole point: `/json`, `/block`, `/spin` and `/hash?on=loop`
//! run on the loop (or worker thread) and hold it; `/sync`, `/hash`, `/fs` and
//! `/offload` go through the pool and leave the loop free; `/sleep` waits without
//! holding anything. The pool is the demo's own (node, fastapi) or tokio's blocking
//! pool (tokio).

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, body::Bytes};
use loopscope::probe::pool::PoolClosed;
use loopscope::probe::telemetry::TelemetryHub;
use loopscope::probe::{Pool, PoolJob};
use loopscope::protocol::Model;
use loopscope::workload::{CATALOG, Reply, Workload};
use serde_json::{Value, json};

use super::params::{BadParam, Params};
use super::workloads::{self, JsonDocs, ScratchFile};

/// Where pool work runs.
pub enum Jobs {
    /// The demo's own instrumented pool.
    Pool(Pool),
    /// tokio's blocking pool, through `spawn_blocking`.
    Blocking,
}

impl Jobs {
    /// Runs `f` off the loop; resolves when it finished, with its queue wait and run
    /// time.
    pub async fn run<F, R>(&self, f: F) -> Result<PoolJob<R>, PoolClosed>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        match self {
            Jobs::Pool(pool) => pool.run(f).await,
            Jobs::Blocking => {
                let submitted = Instant::now();
                tokio::task::spawn_blocking(move || {
                    let start = Instant::now();
                    let value = f();
                    PoolJob {
                        value,
                        queued: start - submitted,
                        ran: start.elapsed(),
                    }
                })
                .await
                // The job panicked, or the runtime is shutting down.
                .map_err(|_| PoolClosed)
            }
        }
    }
}

/// Which worker a request is served by.
pub enum Worker {
    /// The one loop of this process.
    Loop(u32),
    /// A worker thread of a multi-thread runtime: its id in the probe's snapshots,
    /// found by kernel thread id in the newest one (0 before the thread appears
    /// there, and without telemetry).
    Thread(Option<Arc<TelemetryHub>>),
}

thread_local! {
    /// This thread's worker id in the probe's snapshots, once found.
    static THREAD_WORKER: Cell<Option<u32>> = const { Cell::new(None) };
}

impl Worker {
    /// The id of the worker running the caller.
    pub fn id(&self) -> u32 {
        let hub = match self {
            Worker::Loop(id) => return *id,
            Worker::Thread(None) => return 0,
            Worker::Thread(Some(hub)) => hub,
        };
        if let Some(id) = THREAD_WORKER.get() {
            return id;
        }
        let Some(tid) = loopscope::probe::threads::current_tid() else {
            return 0;
        };
        let found = hub.latest().and_then(|s| {
            s.workers
                .iter()
                .find(|w| w.runtime.as_ref().is_some_and(|r| r.tid == tid))
                .map(|w| w.id)
        });
        if let Some(id) = found {
            THREAD_WORKER.set(Some(id));
        }
        found.unwrap_or(0)
    }
}

/// Everything a handler needs; one per process (per worker process with fastapi).
pub struct App {
    pub model: Model,
    pub worker: Worker,
    pub pid: u32,
    pub pool: Jobs,
    pub docs: JsonDocs,
    pub scratch: Arc<ScratchFile>,
    /// Bounds the memory that concurrent big requests hold (see `MEMORY_BUDGET_MB`).
    pub memory: Arc<tokio::sync::Semaphore>,
    hello: Bytes,
}

impl App {
    pub fn new(model: Model, worker: Worker, pool: Jobs) -> Self {
        let pid = std::process::id();
        let hello = hello_body(worker.id(), pid);
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
            hello,
        }
    }

    /// `/hello`'s answer: built once for a loop, per request for a worker thread.
    fn hello(&self) -> Bytes {
        match self.worker {
            Worker::Loop(_) => self.hello.clone(),
            Worker::Thread(_) => hello_body(self.worker.id(), self.pid),
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
            worker: self.worker.id(),
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

fn hello_body(worker: u32, pid: u32) -> Bytes {
    let body = json!({"hello": "world", "worker": worker, "pid": pid});
    Bytes::from(serde_json::to_vec(&body).expect("static json"))
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
    ([(header::CONTENT_TYPE, "application/json")], app.hello()).into_response()
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
