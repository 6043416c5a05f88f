//! Fake targets for the session's tests: an in-process telemetry and app server, and
//! helpers to read what the session hands out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::get;

use crate::client::subscriber::TelemetryMsg;
use crate::protocol::{Model, Snapshot};
use crate::session::{Msg, Session, SessionConfig, TargetSpec, Update};
use crate::test_support::{info, snapshot, worker};

/// A fake server: `/info`, an endless `/telemetry` (a line every 20 ms, for at most
/// 30 s), and the workloads `/hello` and `/block` (which only count their calls).
pub(super) struct Fake {
    pub addr: String,
    pub blocks: Arc<AtomicU32>,
    pub hellos: Arc<AtomicU32>,
}

#[derive(Clone)]
struct FakeState {
    model: Model,
    /// What `/info` says the app address is.
    claims: String,
    addr: String,
    blocks: Arc<AtomicU32>,
    hellos: Arc<AtomicU32>,
}

pub(super) async fn fake(model: Model) -> Fake {
    fake_claiming(model, None).await
}

/// A fake whose `/info` names `claims` as its app (itself by default).
pub(super) async fn fake_claiming(model: Model, claims: Option<String>) -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let blocks = Arc::new(AtomicU32::new(0));
    let hellos = Arc::new(AtomicU32::new(0));
    let state = FakeState {
        model,
        claims: claims.unwrap_or_else(|| addr.clone()),
        addr: addr.clone(),
        blocks: Arc::clone(&blocks),
        hellos: Arc::clone(&hellos),
    };
    let app = Router::new()
        .route(
            "/info",
            get(|State(s): State<FakeState>| async move {
                let mut i = info(s.model, 7);
                i.app = s.claims;
                i.telemetry = s.addr;
                axum::Json(i)
            }),
        )
        .route(
            "/telemetry",
            get(|State(s): State<FakeState>| async move {
                let lines = futures_util::stream::unfold(1u64, move |seq| async move {
                    if seq > 1500 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let mut snap: Snapshot = snapshot(seq, vec![worker(0, 1.0, 0.0, 0)], vec![]);
                    snap.model = s.model;
                    let mut line = serde_json::to_vec(&snap).unwrap();
                    line.push(b'\n');
                    Some((Ok::<_, std::io::Error>(line), seq + 1))
                });
                Body::from_stream(lines)
            }),
        )
        .route(
            "/hello",
            get(|State(s): State<FakeState>| async move {
                s.hellos.fetch_add(1, Ordering::Relaxed);
                "{\"worker\":0}"
            }),
        )
        .route(
            "/block",
            get(|State(s): State<FakeState>| async move {
                s.blocks.fetch_add(1, Ordering::Relaxed);
                r#"{"workload":"block","model":"node","worker":0,"pid":7,"ran_on":"loop","took_ms":1.0}"#
            }),
        )
        .with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Fake {
        addr,
        blocks,
        hellos,
    }
}

pub(super) fn config(targets: Vec<TargetSpec>) -> SessionConfig {
    SessionConfig {
        targets,
        rate: 10.0,
        load: false,
        log_file: std::env::temp_dir().join("loopscope-session-test.log"),
        record: None,
        scenario: None,
    }
}

pub(super) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Updates until `done` says so (at most 10 s), returning them all.
pub(super) async fn until(
    session: &mut Session,
    mut done: impl FnMut(&Update) -> bool,
) -> Vec<Update> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let u = tokio::time::timeout_at(deadline, session.next())
            .await
            .unwrap_or_else(|_| panic!("timed out; saw {seen:#?}"));
        let stop = done(&u);
        seen.push(u);
        if stop {
            return seen;
        }
    }
}

pub(super) fn snapshot_of(u: &Update) -> Option<(usize, Model)> {
    match u {
        Update::Target {
            target,
            msg: Msg::Telemetry(TelemetryMsg::Snapshot(s)),
        } => Some((*target, s.model)),
        _ => None,
    }
}

pub(super) fn log_of(u: &Update) -> Option<(usize, &str)> {
    match u {
        Update::Target {
            target,
            msg: Msg::Log(_, text),
        } => Some((*target, text.as_str())),
        _ => None,
    }
}
