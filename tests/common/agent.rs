//! What the agent tests share: whether a runtime is there (or must be), starting a
//! server under an agent and reading its address line, and raw `/telemetry` lines.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loopscope::protocol::AddressLine;

/// True when `program args` runs and succeeds; otherwise says why the test is
/// skipped (`what` names the runtime), or fails when `LOOPSCOPE_REQUIRE_AGENTS=1`.
pub fn runtime_present(program: &str, args: &[&str], what: &str) -> bool {
    let ok = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("LOOPSCOPE_REQUIRE_AGENTS").as_deref() != Ok("1"),
            "LOOPSCOPE_REQUIRE_AGENTS=1 but {what} does not run"
        );
        eprintln!(
            "skipped: {what} is not installed (set LOOPSCOPE_REQUIRE_AGENTS=1 to fail instead)"
        );
    }
    ok
}

/// A server started under an agent, once its address line came.
pub struct Announced {
    pub child: Child,
    pub app: String,
    pub telemetry: String,
    /// The pid in the address line.
    pub pid: u32,
    /// Everything the server wrote on stderr so far.
    pub stderr: Arc<Mutex<String>>,
}

/// Starts `cmd` (its stdio is piped here) and waits (≤ `within`) for its address
/// line: the agent's, with the telemetry address, when `announced`; otherwise the
/// server's own. Panics, with the server's stderr, when none comes.
pub fn start_announced(cmd: &mut Command, announced: bool, within: Duration) -> Announced {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut err = child.stderr.take().unwrap();
    let sink = stderr.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(a) = serde_json::from_str::<AddressLine>(line.trim()) {
                let _ = tx.send(a);
            }
        }
    });
    let deadline = Instant::now() + within;
    let mut server = Announced {
        child,
        app: String::new(),
        telemetry: String::new(),
        pid: 0,
        stderr,
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let a = rx.recv_timeout(left).unwrap_or_else(|_| {
            let pid = server.child.id();
            panic!(
                "no address line within {within:?} (pid {pid} gone: {}, children {:?}); stderr:\n{}",
                super::process_gone(pid),
                children_of(pid),
                server.stderr.lock().unwrap()
            )
        });
        server.app = a.app;
        server.pid = a.pid;
        if let Some(t) = a.telemetry {
            server.telemetry = t;
        }
        if !announced || !server.telemetry.is_empty() {
            return server;
        }
    }
}

/// The pids whose parent is `pid`, from `/proc/*/stat` (whichever of its threads
/// started them).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Reads raw `/telemetry` lines (not through the client) for `within`.
pub async fn raw_lines(addr: &str, within: Duration) -> Vec<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(format!("GET /telemetry HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut data = Vec::new();
    let end = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 65536];
    while let Ok(Ok(n)) = tokio::time::timeout_at(end, sock.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(data).unwrap();
    let (_, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let mut lines: Vec<String> = body.lines().map(str::to_string).collect();
    // The line cut short at the end of the read.
    if !body.ends_with('\n') {
        lines.pop();
    }
    lines
}

/// A one-loop server under an agent, and what it must say of itself.
pub struct OneLoop<'a> {
    pub app: &'a str,
    pub telemetry: &'a str,
    pub pid: u32,
    pub model: loopscope::protocol::Model,
    /// `versions.loopscope` in `/info`: `agent-node`, `agent-python`.
    pub agent: &'a str,
    /// A request of the server's that runs six pool jobs.
    pub six_pool_jobs: &'a str,
}

/// What every one-loop agent keeps to: `/info` describes the server (4 pool
/// threads, 100 ms periods, 1 ms lag, 50 ms slow polls); under a 5 MB parse, six pool
/// jobs and 20 `/hello`, every line read for 2.5 s is a snapshot of its one live
/// worker, `seq` going up by one, with one `slow_poll` for the parse, and the last one
/// counts the 22 requests answered, none in flight, and ≥ 6 pool jobs done. Returns
/// the snapshots, for the agent's own checks.
pub async fn keeps_the_one_loop_contract(t: &OneLoop<'_>) -> Vec<loopscope::protocol::Snapshot> {
    use loopscope::client::http;
    use loopscope::protocol::{Event, ServerInfo, Snapshot};
    let client = http::client();
    let info = super::get(&client, t.telemetry, "/info").await;
    let info: ServerInfo =
        serde_json::from_slice(&info.body).unwrap_or_else(|e| panic!("/info {}: {e}", info.text()));
    assert_eq!((info.v, info.model), (2, t.model));
    assert_eq!(info.app, t.app);
    assert_eq!(info.telemetry, t.telemetry);
    assert_eq!(info.pid, t.pid);
    assert_eq!(info.workers.len(), 1);
    assert_eq!(info.workers[0].pid, t.pid);
    assert_eq!((info.pool_size, info.period_ms), (4, 100));
    assert_eq!((info.lag_resolution_ms, info.slow_poll_ms), (1.0, 50.0));
    assert_eq!(info.versions.loopscope, t.agent);
    assert_eq!(info.versions.protocol, 2);

    let (app, pool) = (t.app.to_string(), t.six_pool_jobs.to_string());
    let load = tokio::spawn(async move {
        let c = http::client();
        tokio::time::sleep(Duration::from_millis(300)).await;
        super::get(&c, &app, "/json?mb=5").await;
        super::get(&c, &app, &pool).await;
        for _ in 0..20 {
            super::get(&c, &app, "/hello").await;
        }
    });
    let lines = raw_lines(t.telemetry, Duration::from_millis(2500)).await;
    load.await.unwrap();
    assert!(lines.len() >= 15, "{} lines in 2.5 s", lines.len());
    let mut prev: Option<u64> = None;
    let mut slow_polls = 0;
    let mut snapshots = Vec::new();
    for line in &lines {
        let s: Snapshot = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!((s.v, s.model, s.period_ms), (2, t.model, 100), "{line}");
        if let Some(p) = prev {
            assert_eq!(s.seq, p + 1, "seq goes up by one");
        }
        prev = Some(s.seq);
        assert_eq!(s.workers.len(), 1, "{line}");
        let w = &s.workers[0];
        assert_eq!((w.id, w.pid, w.alive), (0, t.pid, true), "{line}");
        assert!(s.host.cores >= 1, "{line}");
        for e in &s.events {
            assert!(!matches!(e, Event::Unknown), "{line}");
            if let Event::SlowPoll { endpoint, uri, .. } = e
                && endpoint == "GET /json"
            {
                assert_eq!(uri, "GET /json?mb=5", "{line}");
                slow_polls += 1;
            }
        }
        snapshots.push(s);
    }
    assert_eq!(slow_polls, 1, "one slow_poll event for the 5 MB parse");
    let last = &snapshots.last().unwrap().workers[0];
    // Every request answered counted once, none left in flight.
    let requests = &last.requests;
    assert_eq!(
        (requests.completed, requests.in_flight),
        (22, 0),
        "{requests:?}"
    );
    assert!(last.pool.completed >= 6, "{:?}", last.pool);
    snapshots
}

/// Kills worker 1 (pid `old`) of the server `stream` reads, then waits (≤ `within`)
/// for its `worker_exited`, its `worker_restarted` and a snapshot in which slot 1 is
/// the new pid, alive and restarted once. Returns the exit status and that snapshot;
/// panics, saying what came, when not all of it came.
pub async fn kill_worker_one_and_see_it_replaced(
    stream: &mut loopscope::client::http::TelemetryStream,
    old: u32,
    within: Duration,
) -> (String, loopscope::protocol::Snapshot) {
    use loopscope::protocol::Event;
    // SAFETY: kill(2) on a worker process of a server the test started.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let (mut exited, mut restarted) = (None, None);
    let back = super::until(stream, within, |s| {
        for e in &s.events {
            match e {
                Event::WorkerExited {
                    worker: 1,
                    pid,
                    status,
                } if *pid == old => exited = Some(status.clone()),
                Event::WorkerRestarted {
                    worker: 1,
                    old_pid,
                    new_pid,
                } if *old_pid == old => restarted = Some(*new_pid),
                _ => {}
            }
        }
        let w = &s.workers[1];
        exited.is_some() && restarted == Some(w.pid) && w.alive && w.restarts == 1
    })
    .await;
    let back = back.unwrap_or_else(|| {
        panic!("worker_exited {exited:?}, worker_restarted {restarted:?}, then the new pid reports")
    });
    (exited.unwrap(), back)
}
