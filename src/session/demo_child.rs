//! A demo server started by the session: `loopscope demo` re-executed from this very
//! executable (so `cargo run` needs no second binary), on free ports, dying with us.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::protocol::{AddressLine, Model};

/// How long a demo server may take to print its address line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts a demo server and hands its first stdout line to the callback, from
/// another thread: [`DemoChild::spawn`], or a stand-in in tests.
pub type Launcher =
    fn(Model, u32, &Path, Box<dyn FnOnce(String) + Send>) -> anyhow::Result<DemoChild>;

/// A demo server started by the session; killed (with its workers) when dropped.
pub struct DemoChild {
    /// The process; `None` for a stand-in made by tests.
    child: Option<Child>,
    /// Its model.
    pub model: Model,
    /// Its workers (fastapi processes, tokio threads).
    pub workers: u32,
    /// Its addresses (empty until its first line was read).
    pub address: AddressLine,
}

impl DemoChild {
    /// Starts `loopscope demo` on free ports and waits (≤ 20 s) for its address line.
    pub fn start(
        launch: Launcher,
        model: Model,
        workers: u32,
        log_file: &Path,
    ) -> anyhow::Result<DemoChild> {
        let (tx, rx) = std::sync::mpsc::channel();
        let on_line = Box::new(move |line| {
            let _ = tx.send(line);
        });
        let mut demo = launch(model, workers, log_file, on_line)?;
        let line = rx
            .recv_timeout(START_TIMEOUT)
            .context("the demo server did not start within 20 s")?;
        demo.address = parse_address(&line, log_file)?;
        Ok(demo)
    }

    /// Starts `loopscope demo` on free ports; `on_line` gets its first stdout line
    /// (empty if it exited first) from another thread. The child dies with this
    /// process even if it is killed (`PR_SET_PDEATHSIG`).
    pub fn spawn(
        model: Model,
        workers: u32,
        log_file: &Path,
        on_line: Box<dyn FnOnce(String) + Send>,
    ) -> anyhow::Result<DemoChild> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file)
            .with_context(|| format!("cannot open the log file {}", log_file.display()))?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "demo",
            "--model",
            model.as_str(),
            "--port",
            "0",
            "--telemetry-port",
            "0",
        ])
        .args(["--workers", &workers.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and allocates nothing.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().context("cannot start the demo server")?;
        let stdout = child.stdout.take().context("the demo's stdout")?;
        std::thread::Builder::new()
            .name("demo-stdout".into())
            .spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                on_line(line);
            })
            .context("cannot start a thread")?;
        Ok(Self::unannounced(Some(child), model, workers))
    }

    /// A stand-in with no process, for tests of the session.
    #[cfg(test)]
    pub(crate) fn stand_in(model: Model, workers: u32) -> DemoChild {
        Self::unannounced(None, model, workers)
    }

    /// A child whose address line has not been read yet.
    fn unannounced(child: Option<Child>, model: Model, workers: u32) -> DemoChild {
        DemoChild {
            child,
            model,
            workers,
            address: AddressLine {
                app: String::new(),
                telemetry: None,
                pid: 0,
            },
        }
    }

    /// How the child ended, once it has (it is reaped then): `None` while it runs.
    pub fn try_wait(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        Some(describe_exit(status))
    }

    /// The child's pid (0 for a stand-in).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

/// "killed by signal 9 (SIGKILL)", "exited with status 1".
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => {
            let name = match sig {
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGINT => " (SIGINT)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGBUS => " (SIGBUS)",
                _ => "",
            };
            format!("killed by signal {sig}{name}")
        }
        (None, None) => "ended".to_string(),
    }
}

/// The demo's first stdout line, `{"app":…,"telemetry":…,"pid":…}`.
pub fn parse_address(line: &str, log_file: &Path) -> anyhow::Result<AddressLine> {
    if line.trim().is_empty() {
        bail!(
            "the demo server exited at start; see {}",
            log_file.display()
        );
    }
    serde_json::from_str(line.trim())
        .with_context(|| format!("unexpected first line from the demo: {line:?}"))
}

impl Drop for DemoChild {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
