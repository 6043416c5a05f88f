//! Starting Python servers under the agent, and the throw-away virtualenv with
//! uvicorn and FastAPI.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const AGENT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/agents/python");
pub const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/agents/py_server.py");
pub const AGENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/agents");

/// True when `python3` (≥ 3.9) runs; otherwise says why the test is skipped, or
/// fails when `LOOPSCOPE_REQUIRE_AGENTS=1`.
pub fn python_present() -> bool {
    crate::common::agent::runtime_present(
        "python3",
        &["-c", "import sys; assert sys.version_info >= (3, 9)"],
        "`python3` (>= 3.9)",
    )
}

/// The Python of a virtualenv under `target/` with uvicorn and FastAPI, built once
/// (pip needs its registry the first time). `None`, with the reason printed, when
/// it cannot be built: then the uvicorn tests are skipped, even under
/// `LOOPSCOPE_REQUIRE_AGENTS=1` (an offline machine cannot install uvicorn).
pub fn uvicorn_python() -> Option<PathBuf> {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let venv = VENV.get_or_init(build_venv);
    match venv {
        Ok(p) => Some(p.clone()),
        Err(why) => {
            eprintln!("skipped: no uvicorn: {why}");
            None
        }
    }
}

fn build_venv() -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/python-agent-venv");
    let python = dir.join("bin/python");
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", "import uvicorn, fastapi, anyio"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready(&python) {
        return Ok(python);
    }
    // Bounded: an offline pip gives up (or is killed) instead of hanging the test.
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let log = std::env::temp_dir().join(format!("loopscope-venv-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).map_err(|e| format!("{what}: {e}"))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| format!("{what}: {e}"))?;
        let end = Instant::now() + Duration::from_secs(300);
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| format!("{what}: {e}"))? {
                break Some(status);
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let err = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        match status {
            Some(s) if s.success() => Ok(()),
            Some(_) => {
                let tail: Vec<&str> = err.lines().rev().take(3).collect();
                Err(format!("{what} failed: {}", tail.join(" / ")))
            }
            None => Err(format!("{what} took more than 300 s")),
        }
    };
    run(
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&dir),
        "python3 -m venv",
    )?;
    run(
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            "--timeout",
            "20",
            "--retries",
            "2",
            "uvicorn",
            "fastapi",
        ]),
        "pip install uvicorn fastapi",
    )?;
    if ready(&python) {
        Ok(python)
    } else {
        Err("uvicorn, fastapi or anyio does not import after pip install".into())
    }
}

/// A Python server with the agent in a process group of its own (the agent's
/// telemetry process and uvicorn's workers with it), all killed when dropped.
pub struct PyServer {
    pub child: Child,
    pub app: String,
    pub telemetry: String,
    /// The pid in the agent's address line: the server's (uvicorn's supervisor).
    pub pid: u32,
    stderr: Arc<Mutex<String>>,
}

impl PyServer {
    /// `python3 tests/agents/py_server.py` with the agent on `telemetry`.
    pub fn plain(telemetry: &str, announced: bool, env: &[(&str, &str)]) -> PyServer {
        let mut cmd = Command::new("python3");
        cmd.arg(SERVER);
        PyServer::start(cmd, telemetry, announced, env)
    }

    /// `python -m uvicorn py_asgi:app --workers N` from the virtualenv.
    pub fn uvicorn(python: &Path, workers: u32, telemetry: &str) -> PyServer {
        let mut cmd = Command::new(python);
        cmd.args([
            "-m",
            "uvicorn",
            "py_asgi:app",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ])
        .args(["--workers", &workers.to_string(), "--log-level", "warning"])
        .current_dir(AGENTS);
        PyServer::start(cmd, telemetry, true, &[])
    }

    /// Starts `cmd` and waits (≤ 30 s) for its address line: the agent's, with the
    /// telemetry address, when `announced`; otherwise the server's own.
    fn start(mut cmd: Command, telemetry: &str, announced: bool, env: &[(&str, &str)]) -> PyServer {
        cmd.env("LOOPSCOPE_TELEMETRY", telemetry)
            .env("LOOPSCOPE_ANNOUNCE", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .envs(env.iter().copied())
            .process_group(0);
        let a = crate::common::agent::start_announced(&mut cmd, announced, Duration::from_secs(30));
        PyServer {
            child: a.child,
            app: a.app,
            telemetry: a.telemetry,
            pid: a.pid,
            stderr: a.stderr,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The agent's telemetry process: the child of the server's own process.
    pub fn hub_pid(&self) -> Option<u32> {
        children_of(self.child.id()).into_iter().next()
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test started (the server, its
        // workers and the agent's telemetry process).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use crate::common::agent::children_of;

/// Resident memory of `pid` in kB (`VmRSS`).
pub fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
