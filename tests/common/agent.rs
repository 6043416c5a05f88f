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
