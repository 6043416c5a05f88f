//! `loopscope --headless` on real processes: the output, the diagnosis and the exit
//! status that scripts rely on.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Demo, runtime, serial};
use loopscope::client::http;
use loopscope::protocol::Snapshot;

/// Runs `loopscope <args>` to completion (≤ 30 s), while `during` runs.
/// `GET /block?ms=400` at `app`, 0.8 s into a run (once its telemetry flows).
fn block_400_ms_soon(app: &str) -> impl FnOnce() {
    let app = app.to_string();
    move || {
        std::thread::sleep(Duration::from_millis(800));
        runtime().block_on(async {
            let r = common::get(&http::client(), &app, "/block?ms=400").await;
            assert_eq!(r.status, 200);
        });
    }
}

fn run_while(args: &[&str], during: impl FnOnce()) -> Output {
    let log = std::env::temp_dir().join(format!("loopscope-headless-{}.log", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_loopscope"))
        .args(args)
        .args(["--log-file", log.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loopscope");
    common::output_within(
        child,
        Duration::from_secs(30),
        &format!("loopscope {args:?}"),
        during,
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_block_crosses_the_lag_threshold_and_is_diagnosed() {
    let _serial = serial();
    let demo = Demo::start(&["--model", "node"]);
    let args = [
        "attach",
        &demo.telemetry,
        "--headless",
        "--duration",
        "3s",
        "--format",
        "table",
        "--fail-on-lag",
        "100",
        "--no-load",
    ];
    let out = run_while(&args, block_400_ms_soon(&demo.app));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let lag_max = common::table_lag_max(&stdout, &stderr);
    assert!(
        (390.0..600.0).contains(&lag_max),
        "lag max {lag_max}:\n{stdout}"
    );
    assert!(
        stdout.contains("diagnosis: w0: GET /block?ms=400 held the loop 40")
            && stdout.contains("a blocking call inside an async handler"),
        "{stdout}"
    );
    assert!(
        stderr.contains("threshold crossed: w0: loop lag reached"),
        "{stderr}"
    );
}

#[test]
fn ndjson_prints_every_snapshot_and_a_quiet_run_exits_zero() {
    let _serial = serial();
    let out = run_while(
        &[
            "--headless",
            "--duration",
            "2s",
            "--fail-on-lag",
            "200",
            "--rate",
            "20",
        ],
        || {},
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<Snapshot> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // 2 s at 10 lines a second, less the start-up of the demo it started.
    assert!((8..=30).contains(&lines.len()), "{} lines", lines.len());
    assert!(lines.windows(2).all(|w| w[1].seq > w[0].seq));
    // The background load reached the server.
    assert!(
        lines.last().unwrap().workers[0].requests.completed >= 10,
        "{stdout}"
    );
}

#[test]
fn a_full_pool_crosses_the_queue_threshold_and_is_diagnosed() {
    let _serial = serial();
    let demo = Demo::start(&["--model", "fastapi", "--workers", "1"]);
    let args = [
        "attach",
        &demo.telemetry,
        "--headless",
        "--duration",
        "4s",
        "--format",
        "table",
        "--fail-on-queue",
        "10",
        "--no-load",
    ];
    // 70 sync calls of 1.5 s on 40 tokens: 30 wait a whole turn.
    let app = demo.app.clone();
    let out = run_while(&args, || {
        std::thread::sleep(Duration::from_millis(800));
        runtime().block_on(async {
            let client = http::client();
            let jobs: Vec<_> = (0..70)
                .map(|_| {
                    let (c, app) = (client.clone(), app.clone());
                    tokio::spawn(async move { common::get(&c, &app, "/sync?ms=1500").await })
                })
                .collect();
            for j in jobs {
                assert_eq!(j.await.unwrap().status, 200);
            }
        });
    });
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("diagnosis: w0: 40 of 40 pool threads busy, 30 queued for 1.")
            && stdout.contains("raise the pool size or make the endpoint async"),
        "{stdout}"
    );
    assert!(
        stderr.contains("threshold crossed: w0: pool queue reached 30"),
        "{stderr}"
    );
}

#[test]
fn a_recording_survives_a_crash_up_to_its_last_line() {
    let _serial = serial();
    let demo = Demo::start(&["--model", "node"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.ndjson");
    let mut child = Command::new(env!("CARGO_BIN_EXE_loopscope"))
        .args([
            "attach",
            &demo.telemetry,
            "--headless",
            "--duration",
            "60s",
            "--no-load",
        ])
        .args(["--record", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    runtime().block_on(async {
        assert_eq!(
            common::get(&http::client(), &demo.app, "/block?ms=300")
                .await
                .status,
            200
        );
    });
    std::thread::sleep(Duration::from_millis(700));
    // A crash: no chance to flush anything more.
    child.kill().unwrap();
    child.wait().unwrap();
    let rec = loopscope::record::Recording::load(&path).unwrap();
    // ~2.2 s at 10 lines a second; flushed line by line, so at most the last is lost.
    assert!(
        rec.snapshots.len() >= 15,
        "{} snapshots",
        rec.snapshots.len()
    );
    assert_eq!(rec.infos.len(), 1);
    let max = rec
        .snapshots
        .iter()
        .map(|s| s.workers[0].lag_ms.max)
        .fold(0.0, f64::max);
    assert!(max >= 290.0, "the block is in the recording: {max}");
}

/// Two servers in one headless run: a table per server under its address, lines
/// tagged with the server, and a block on one crossing the threshold for it alone.
#[test]
fn two_attached_servers_are_summed_up_apart() {
    let _serial = serial();
    let (blocked, calm) = (
        Demo::start(&["--model", "node"]),
        Demo::start(&["--model", "node"]),
    );
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("run.ndjson");
    let table = [
        "attach",
        &blocked.telemetry,
        &calm.telemetry,
        "--record",
        record.to_str().unwrap(),
        "--headless",
        "--duration",
        "3s",
        "--format",
        "table",
        "--fail-on-lag",
        "100",
        "--no-load",
    ];
    let out = run_while(&table, block_400_ms_soon(&blocked.app));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    // Each server's table under its address; the block in the first one's only.
    let lag_max = |server: &str| {
        let section = stdout.split("== ").find(|s| s.starts_with(server)).unwrap();
        common::table_lag_max(section, &stderr)
    };
    assert!(lag_max(&blocked.telemetry) >= 390.0, "{stdout}");
    assert!(lag_max(&calm.telemetry) < 100.0, "{stdout}");
    let crossed: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("threshold crossed"))
        .collect();
    assert!(
        !crossed.is_empty() && crossed.iter().all(|l| l.contains(&*blocked.telemetry)),
        "{stderr}"
    );
    // A recording each, in the order of the addresses, each of its own server.
    for (n, demo) in [(1, &blocked), (2, &calm)] {
        let path = dir.path().join(format!("run-{n}.ndjson"));
        let rec = loopscope::record::Recording::load(&path).unwrap();
        assert!(
            rec.snapshots.len() >= 10,
            "{n}: {} lines",
            rec.snapshots.len()
        );
        assert!(rec.damage.is_none());
        assert!(
            rec.infos.iter().all(|(_, i)| i.telemetry == demo.telemetry),
            "{n}"
        );
        let lag = rec.snapshots.iter().map(|s| s.workers[0].lag_ms.max);
        let lag = lag.fold(0.0f64, f64::max);
        assert_eq!(lag >= 390.0, n == 1, "{n}: lag max {lag}");
    }
    // NDJSON: every line names its server, and both servers speak.
    let ndjson = [
        "attach",
        &blocked.telemetry,
        &calm.telemetry,
        "--headless",
        "--duration",
        "1s",
        "--no-load",
    ];
    let out = run_while(&ndjson, || {});
    let mut servers = std::collections::BTreeSet::new();
    for line in text(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        servers.insert(v["server"].as_str().unwrap().to_string());
        let _: Snapshot = serde_json::from_value(v).unwrap();
    }
    let want: std::collections::BTreeSet<String> =
        [blocked.telemetry.clone(), calm.telemetry.clone()].into();
    assert_eq!(servers, want);
}
