//! The Node.js agent (`assets/agents/node/loopscope.js`) on a real Node process: a
//! plain `http` server (`tests/agents/node_server.js`) started with the agent
//! `--require`d, on free ports. Skipped (and passing) when `node` is absent, unless
//! `LOOPSCOPE_REQUIRE_AGENTS=1`, which makes a missing `node` a failure.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pty::Dashboard;
use common::{runtime, serial};
use loopscope::client::http;
use loopscope::protocol::{Model, ServerInfo};

const AGENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/agents/node/loopscope.js"
);
const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/agents/node_server.js");
const CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/agents/node_cluster.js");

/// True when `node` runs; otherwise says why the test is skipped, or fails when
/// `LOOPSCOPE_REQUIRE_AGENTS=1`.
fn node_present() -> bool {
    common::agent::runtime_present("node", &["--version"], "`node`")
}

/// A Node server with the agent, killed when dropped.
struct NodeServer {
    child: Child,
    app: String,
    telemetry: String,
    stderr: Arc<Mutex<String>>,
}

impl NodeServer {
    /// Starts `script` with the agent on `telemetry` and waits (≤ 20 s) for its
    /// address line: the agent's, with the telemetry address, when `announced`;
    /// otherwise the server's own.
    fn start(script: &str, telemetry: &str, announced: bool, env: &[(&str, &str)]) -> NodeServer {
        let mut cmd = Command::new("node");
        cmd.args(["--require", AGENT, script])
            .env("LOOPSCOPE_TELEMETRY", telemetry)
            .env("LOOPSCOPE_ANNOUNCE", "1")
            .env("UV_THREADPOOL_SIZE", "4")
            .envs(env.iter().copied());
        let a = common::agent::start_announced(&mut cmd, announced, Duration::from_secs(20));
        NodeServer {
            child: a.child,
            app: a.app,
            telemetry: a.telemetry,
            stderr: a.stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_json_parse_shows_as_a_live_stall_naming_its_request_then_as_lag() {
    if !node_present() {
        return;
    }
    let _serial = serial();
    let node = NodeServer::start(SERVER, "127.0.0.1:0", true, &[]);
    runtime().block_on(async {
        let mut stream = common::telemetry(&node.telemetry).await;
        let client = http::client();
        let app = node.app.clone();
        let request = tokio::spawn(async move { common::get(&client, &app, "/json?mb=20").await });
        let stall = common::until(&mut stream, Duration::from_secs(10), |s| {
            s.workers[0].stalled_for_ms >= 100.0
        })
        .await
        .expect("stalled_for_ms >= 100 while the parse runs");
        assert_eq!(
            stall.workers[0].stalled_in.as_deref(),
            Some("GET /json?mb=20"),
            "{stall:?}"
        );
        let answer = request.await.unwrap();
        assert_eq!(answer.status, 200);
        let parse_ms = answer.json().unwrap()["parse_ms"].as_f64().unwrap();
        assert!(parse_ms > 100.0, "a 20 MB parse takes a while: {parse_ms}");
        // A line after the stall carries the lateness of the tick it held up.
        let mut lag_max = 0.0f64;
        let end = Instant::now() + Duration::from_secs(1);
        while Instant::now() < end {
            let s = common::next(&mut stream).await;
            lag_max = lag_max.max(s.workers[0].lag_ms.max);
        }
        assert!(
            (lag_max - parse_ms).abs() <= parse_ms * 0.10,
            "lag max {lag_max} ms against the parse's own {parse_ms} ms"
        );
    });
}

#[test]
fn twelve_pbkdf2_calls_queue_eight_behind_four_pool_threads() {
    if !node_present() {
        return;
    }
    let _serial = serial();
    let node = NodeServer::start(
        SERVER,
        "127.0.0.1:0",
        true,
        &[("PBKDF2_ITERATIONS", "1000000")],
    );
    runtime().block_on(async {
        let mut stream = common::telemetry(&node.telemetry).await;
        let client = http::client();
        let app = node.app.clone();
        let request = tokio::spawn(async move { common::get(&client, &app, "/pbkdf2?n=12").await });
        // The agent derives busy and queued from one count of jobs in flight, so a
        // sample with a deep queue always reads the pool full.
        let queued = common::until(&mut stream, Duration::from_secs(10), |s| {
            s.workers[0].pool.queued >= 6
        })
        .await
        .expect("pool.queued >= 6 while 12 pbkdf2 calls are in flight");
        let pool = &queued.workers[0].pool;
        assert_eq!((pool.size, pool.busy), (4, 4), "{pool:?}");
        // The pool's threads are told apart: their CPU shows while they hash.
        let hashing = common::until(&mut stream, Duration::from_secs(5), |s| {
            let w = &s.workers[0];
            w.pool.threads == 4 && w.cpu.pool_threads >= 25.0
        })
        .await;
        assert!(hashing.is_some(), "the pool threads' CPU shows");
        assert_eq!(request.await.unwrap().status, 200);
        // Once all are done the gauge drains and counts them.
        let drained = common::until(&mut stream, Duration::from_secs(5), |s| {
            s.workers[0].pool.busy == 0 && s.workers[0].pool.completed >= 12
        })
        .await;
        assert!(drained.is_some(), "the pool gauge drains after the calls");
    });
}

#[test]
fn a_taken_telemetry_port_warns_once_and_the_app_serves_on() {
    if !node_present() {
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let node = NodeServer::start(SERVER, &addr, false, &[]);
    runtime().block_on(async {
        let r = common::get(&http::client(), &node.app, "/hello").await;
        assert_eq!(r.status, 200, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = common::get(&http::client(), &node.app, "/hello").await;
        assert_eq!(r.status, 200, "{}", r.text());
    });
    let stderr = node.stderr();
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("in use")).collect();
    assert_eq!(warnings.len(), 1, "stderr:\n{stderr}");
    assert!(warnings[0].contains(&addr), "{stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "nothing else on stderr:\n{stderr}"
    );
}

#[test]
fn loopscope_attach_reads_the_agent_headless() {
    if !node_present() {
        return;
    }
    let _serial = serial();
    let node = NodeServer::start(SERVER, "127.0.0.1:0", true, &[]);
    let log = std::env::temp_dir().join(format!("loopscope-node-agent-{}.log", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_loopscope"))
        .args([
            "attach",
            &node.telemetry,
            "--headless",
            "--duration",
            "3s",
            "--format",
            "table",
            "--no-load",
            "--log-file",
            log.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loopscope");
    let app = node.app.clone();
    let out = common::output_within(child, Duration::from_secs(30), "loopscope attach", || {
        std::thread::sleep(Duration::from_millis(800));
        runtime().block_on(async {
            let r = common::get(&http::client(), &app, "/json?mb=20").await;
            assert_eq!(r.status, 200);
        });
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let lag_max = common::table_lag_max(&stdout, &stderr);
    assert!(lag_max >= 100.0, "the parse shows in the table: {stdout}");
}

#[test]
fn every_agent_line_is_a_snapshot_and_info_a_server_info() {
    if !node_present() {
        return;
    }
    let _serial = serial();
    let node = NodeServer::start(SERVER, "127.0.0.1:0", true, &[]);
    runtime().block_on(common::agent::keeps_the_one_loop_contract(
        &common::agent::OneLoop {
            app: &node.app,
            telemetry: &node.telemetry,
            pid: node.child.id(),
            model: Model::Node,
            agent: "agent-node",
            six_pool_jobs: "/pbkdf2?n=6",
        },
    ));
}

#[test]
fn a_cluster_shows_every_worker_and_a_restarted_one() {
    if !node_present() {
        return;
    }
    let _serial = serial();
    let node = NodeServer::start(CLUSTER, "127.0.0.1:0", true, &[("WORKERS", "2")]);
    let primary = node.child.id();
    runtime().block_on(async {
        let mut stream = common::telemetry(&node.telemetry).await;
        let both = common::until(&mut stream, Duration::from_secs(10), |s| {
            s.workers.len() == 2 && s.workers.iter().all(|w| w.alive)
        })
        .await
        .expect("two live workers within 10 s");
        let pids: Vec<u32> = both.workers.iter().map(|w| w.pid).collect();
        assert!(pids[0] != pids[1] && !pids.contains(&primary), "{pids:?}");
        let info = common::get(&http::client(), &node.telemetry, "/info").await;
        let info: ServerInfo = serde_json::from_slice(&info.body).unwrap();
        assert_eq!(info.pid, primary);
        assert_eq!(info.app, node.app);
        let info_pids: Vec<(u32, u32)> = info.workers.iter().map(|w| (w.id, w.pid)).collect();
        assert_eq!(info_pids, vec![(0, pids[0]), (1, pids[1])]);

        // A stall in one worker process, seen while it lasts.
        let client = http::client();
        let app = node.app.clone();
        let request = tokio::spawn(async move { common::get(&client, &app, "/json?mb=20").await });
        let stall = common::until(&mut stream, Duration::from_secs(10), |s| {
            s.workers.iter().any(|w| w.stalled_for_ms >= 100.0)
        })
        .await
        .expect("a worker's stall shows while it lasts");
        let stalled = stall
            .workers
            .iter()
            .find(|w| w.stalled_for_ms >= 100.0)
            .unwrap();
        assert_eq!(stalled.stalled_in.as_deref(), Some("GET /json?mb=20"));
        assert_eq!(request.await.unwrap().status, 200);

        // A worker killed and replaced keeps its slot and counts the restart.
        let (_, back) = common::agent::kill_worker_one_and_see_it_replaced(
            &mut stream,
            pids[1],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(back.workers[0].pid, pids[0], "the other worker stays");
    });
}

#[test]
fn the_agent_never_keeps_a_finished_process_alive() {
    if !node_present() {
        return;
    }
    let child = Command::new("node")
        .args(["--require", AGENT, "-e", "setTimeout(() => {}, 200)"])
        .env("LOOPSCOPE_TELEMETRY", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let out = common::output_within(child, Duration::from_secs(10), "node with the agent", || {});
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fires `GET path` at `app` from a thread of its own; its status when answered.
fn get_in_background(app: &str, path: &'static str) -> std::thread::JoinHandle<u16> {
    let app = app.to_string();
    std::thread::spawn(move || {
        runtime().block_on(async move { common::get(&http::client(), &app, path).await.status })
    })
}

/// Waits (≤ 10 s) until the columns `stalled` (first column, width) of the dashboard
/// show `STALLED` while the columns `calm` do not at the same moment.
fn stall_shows_in(ui: &Dashboard, stalled: (u16, u16), calm: (u16, u16), what: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (hot, cold) = (ui.columns(stalled.0, stalled.1), ui.columns(calm.0, calm.1));
        if hot.contains("STALLED") {
            assert!(
                !cold.contains("STALLED"),
                "{what}: both columns stalled:\n{}",
                ui.text()
            );
            return;
        }
        assert!(
            Instant::now() < end,
            "{what}: no stall within 10 s:\n{}",
            ui.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `loopscope attach` with two servers, the Node agent's and a demo's, in one
/// 100×30 pseudo-terminal dashboard: a column each, labelled with its model, and a
/// stall in one shows in its column only.
#[test]
fn attach_to_many_shows_each_stall_under_its_own_server() {
    if !node_present() {
        return;
    }
    let _serial = serial();
    let node = NodeServer::start(SERVER, "127.0.0.1:0", true, &[]);
    let demo = common::Demo::start(&["--model", "fastapi", "--workers", "1"]);
    let mut ui = Dashboard::start(&[
        "attach",
        &node.telemetry,
        &demo.telemetry,
        "--app",
        &node.app,
        "--app",
        &demo.app,
        "--no-load",
    ]);
    ui.wait_for(Duration::from_secs(30), "both servers live", |s| {
        s.matches("● live").count() == 2
    });
    let (left, right) = (ui.columns(0, 50), ui.columns(50, 50));
    let node_header = format!("node agent · pid {}", node.child.id());
    assert!(left.contains(&node_header), "{}", ui.text());
    assert!(right.contains("fastapi · 1 worker ·"), "{}", ui.text());
    // A 20 MB parse on the Node loop: the left column stalls, the right does not.
    let parse = get_in_background(&node.app, "/json?mb=20");
    stall_shows_in(&ui, (0, 50), (50, 50), "the Node parse");
    assert_eq!(parse.join().unwrap(), 200);
    ui.wait_for(Duration::from_secs(5), "the parse over", |s| {
        !s.contains("STALLED")
    });
    // A block on the demo's worker: the right column stalls, the left does not.
    let block = get_in_background(&demo.app, "/block?ms=800");
    stall_shows_in(&ui, (50, 50), (0, 50), "the demo's block");
    assert_eq!(block.join().unwrap(), 200);
    ui.press("q");
    assert!(ui.wait_exit().success());
}
