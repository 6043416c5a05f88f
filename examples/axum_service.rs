//! A small axum service watched by loopscope: a multi-thread runtime with two
//! workers, the probe installed in three lines.
//!
//! ```text
//! cargo run --release --example axum_service          # app on :3000, telemetry on :9464
//! loopscope attach 127.0.0.1:9464                     # in another terminal
//! curl '127.0.0.1:3000/block?ms=500'                  # holds one worker: watch it stall
//! curl '127.0.0.1:3000/blocking?ms=500'               # the same work on the blocking pool
//! ```
//!
//! Arguments: `[APP_ADDR] [TELEMETRY_ADDR]` (port 0 picks a free one). The first
//! stdout line says where both listen, as JSON.

use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::routing::get;
use loopscope::probe::Probe;

#[derive(serde::Deserialize)]
struct Ms {
    ms: u64,
}

/// Most a request may block or sleep: the example stays harmless.
const MAX_MS: u64 = 10_000;

fn app() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello\n" }))
        // A blocking call inside an async handler: it holds its worker thread.
        .route(
            "/block",
            get(|Query(q): Query<Ms>| async move {
                std::thread::sleep(Duration::from_millis(q.ms.min(MAX_MS)));
                "blocked\n"
            }),
        )
        // The same call where it belongs: on tokio's blocking pool.
        .route(
            "/blocking",
            get(|Query(q): Query<Ms>| async move {
                let ms = q.ms.min(MAX_MS);
                let _ = tokio::task::spawn_blocking(move || {
                    std::thread::sleep(Duration::from_millis(ms))
                })
                .await;
                "done\n"
            }),
        )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let app_addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".into());
    let telemetry = args.next().unwrap_or_else(|| "127.0.0.1:9464".into());

    let mut rt = tokio::runtime::Builder::new_multi_thread();
    let probe = Probe::builder()
        .telemetry(telemetry)
        .install(rt.worker_threads(2).enable_all())?;
    rt.build()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&app_addr).await?;
        println!(
            r#"{{"app":"{}","telemetry":"{}","pid":{}}}"#,
            listener.local_addr()?,
            probe.telemetry_addr(),
            std::process::id()
        );
        axum::serve(listener, probe.make_service(app().with_state(()))).await
    })?;
    Ok(())
}
