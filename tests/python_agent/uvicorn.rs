//! uvicorn with FastAPI (`tests/agents/py_asgi.py`, wrapped with `asgi()`), from a
//! virtualenv under `target/`; skipped with a printed reason when it cannot be built.

use std::time::{Duration, Instant};

use crate::common::{self, runtime, serial};
use crate::support::{PyServer, python_present, uvicorn_python};
use loopscope::client::http;
use loopscope::protocol::{Model, ServerInfo};

#[test]
fn uvicorn_workers_are_one_server_a_blocked_one_leaves_the_other_alone_and_a_restart_shows() {
    if !python_present() {
        return;
    }
    let Some(python) = uvicorn_python() else {
        return;
    };
    let _serial = serial();
    let server = PyServer::uvicorn(&python, 2, "127.0.0.1:0");
    runtime().block_on(async {
        let mut stream = common::telemetry(&server.telemetry).await;
        let both = common::until(&mut stream, Duration::from_secs(20), |s| {
            s.workers.len() == 2 && s.workers.iter().all(|w| w.alive)
        })
        .await
        .expect("two live workers within 20 s");
        let pids: Vec<u32> = both.workers.iter().map(|w| w.pid).collect();
        assert!(
            pids[0] != pids[1] && !pids.contains(&server.pid),
            "{pids:?}"
        );
        assert!(both.workers.iter().all(|w| w.pool.size == 40), "{both:?}");
        let info = common::get(&http::client(), &server.telemetry, "/info").await;
        let info: ServerInfo = serde_json::from_slice(&info.body).unwrap();
        assert_eq!((info.model, info.pid), (Model::Fastapi, server.pid));
        assert_eq!(
            (info.app.as_str(), info.pool_size),
            (server.app.as_str(), 40)
        );
        let info_pids: Vec<(u32, u32)> = info.workers.iter().map(|w| (w.id, w.pid)).collect();
        assert_eq!(info_pids, vec![(0, pids[0]), (1, pids[1])]);

        // One worker's loop blocked for 3 s: the other's lag stays small and it
        // answers every new connection meanwhile.
        let app = server.app.clone();
        let block =
            tokio::spawn(async move { common::get(&http::client(), &app, "/sleep?ms=3000").await });
        let stall = common::until(&mut stream, Duration::from_secs(10), |s| {
            s.workers.iter().any(|w| w.stalled_for_ms >= 200.0)
        })
        .await
        .expect("the blocked worker's stall shows while it lasts");
        let b = stall
            .workers
            .iter()
            .position(|w| w.stalled_for_ms >= 200.0)
            .unwrap();
        let o = 1 - b;
        assert_eq!(
            stall.workers[b].stalled_in.as_deref(),
            Some("GET /sleep?ms=3000")
        );
        let (mut lines, mut answered) = (0, 0);
        while !block.is_finished() {
            let s = common::next(&mut stream).await;
            if s.workers[b].stalled_for_ms > 0.0 {
                let other = &s.workers[o];
                assert!(other.lag_ms.max < 50.0, "the other worker's lag: {other:?}");
                assert_eq!(other.stalled_for_ms, 0.0, "{other:?}");
                lines += 1;
            }
            let t = Instant::now();
            let r = common::get(&http::client(), &server.app, "/hello").await;
            if !block.is_finished() {
                assert_eq!(r.json().unwrap()["pid"].as_u64(), Some(pids[o] as u64));
                assert!(
                    t.elapsed() < Duration::from_millis(200),
                    "{:?}",
                    t.elapsed()
                );
                answered += 1;
            }
        }
        assert_eq!(block.await.unwrap().status, 200);
        assert!(
            lines >= 10 && answered >= 5,
            "{lines} lines, {answered} answers"
        );

        // A json.loads in an async endpoint: a live stall naming the request.
        let app = server.app.clone();
        let parse =
            tokio::spawn(async move { common::get(&http::client(), &app, "/json?mb=20").await });
        let stall = common::until(&mut stream, Duration::from_secs(10), |s| {
            s.workers.iter().any(|w| w.stalled_for_ms >= 200.0)
        })
        .await
        .expect("the parse shows as a stall while it lasts");
        assert!(!parse.is_finished());
        let w = stall
            .workers
            .iter()
            .find(|w| w.stalled_for_ms >= 200.0)
            .unwrap();
        assert_eq!(w.stalled_in.as_deref(), Some("GET /json?mb=20"));
        assert_eq!(parse.await.unwrap().status, 200);

        // A worker killed and replaced by uvicorn keeps its slot and counts a restart.
        let (exited, back) = common::agent::kill_worker_one_and_see_it_replaced(
            &mut stream,
            pids[1],
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(exited, "killed by signal 9");
        assert_eq!(back.workers[0].pid, pids[0], "the other worker stays");
        assert_eq!(back.workers[0].restarts, 0);
    });
}

#[test]
fn sync_endpoints_borrow_anyio_tokens_and_queue_beyond_forty() {
    if !python_present() {
        return;
    }
    let Some(python) = uvicorn_python() else {
        return;
    };
    let _serial = serial();
    let server = PyServer::uvicorn(&python, 1, "127.0.0.1:0");
    runtime().block_on(async {
        let mut stream = common::telemetry(&server.telemetry).await;
        let requests: Vec<_> = (0..50)
            .map(|_| {
                let app = server.app.clone();
                tokio::spawn(
                    async move { common::get(&http::client(), &app, "/sync?ms=2000").await },
                )
            })
            .collect();
        let full = common::until(&mut stream, Duration::from_secs(10), |s| {
            let p = &s.workers[0].pool;
            p.busy == 40 && p.queued == 10 && p.oldest_wait_ms >= 200.0
        })
        .await
        .expect("40 tokens borrowed and 10 sync requests waiting");
        let w = &full.workers[0];
        assert_eq!(w.pool.size, 40, "{:?}", w.pool);
        assert!(w.pool.threads >= 40, "{:?}", w.pool);
        assert_eq!(w.stalled_for_ms, 0.0, "sync endpoints leave the loop free");
        for r in requests {
            assert_eq!(r.await.unwrap().status, 200);
        }
        let mut wait_max = 0.0f64;
        let drained = common::until(&mut stream, Duration::from_secs(5), |s| {
            let p = &s.workers[0].pool;
            wait_max = wait_max.max(p.wait_ms_max);
            p.busy == 0 && p.queued == 0 && p.completed >= 50
        })
        .await;
        assert!(
            drained.is_some(),
            "the limiter drains and the 50 jobs are counted"
        );
        assert!(
            wait_max >= 1500.0,
            "the last ten waited for a token: {wait_max} ms"
        );
    });
}
