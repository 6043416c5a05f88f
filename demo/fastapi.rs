//! The FastAPI/uvicorn-style model: a supervisor and N worker processes.
//!
//! The supervisor binds ONE listening socket, clears close-on-exec on it in each
//! child and passes its fd number; every worker accepts on the same socket (as
//! uvicorn's workers do), so a blocked worker simply stops accepting and the others
//! take the new connections. Not SO_REUSEPORT, which would hash connections onto a
//! blocked worker. Workers die with the supervisor (`PR_SET_PDEATHSIG`), and the
//! supervisor respawns a worker that dies.
//!
//! Each worker's sampler writes one [`WorkerReport`] line per period to its stdout
//! pipe; the supervisor merges them into the telemetry stream.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use loopscope::probe::aggregate::{Aggregator, Feed};
use loopscope::probe::cpu::ThreadNames;
use loopscope::probe::sampler::Sampler;
use loopscope::probe::telemetry::TelemetryHub;
use loopscope::probe::{LoopProbe, Pool, PoolKind};
use loopscope::protocol::{Model, WorkerInfo, WorkerReport};

use super::DemoArgs;
use super::app::{App, Jobs, Worker};
use super::loop_thread::{self, LoopSetup};

/// A worker that dies sooner than this after its start is respawned after a pause,
/// so that a worker that cannot start does not spin the supervisor.
const QUICK_DEATH: Duration = Duration::from_secs(1);
const RESPAWN_PAUSE: Duration = Duration::from_millis(500);
const POLL_CHILDREN: Duration = Duration::from_millis(20);

struct Slot {
    id: u32,
    child: Child,
    started: Instant,
}

/// Runs the supervisor: binds, starts the workers, serves telemetry, respawns.
pub fn supervise(args: &DemoArgs) -> anyhow::Result<()> {
    let epoch = Instant::now();
    let pool_size = args.pool_size()?;
    let (listener, telemetry_listener) = super::listen(args)?;

    let feed: Option<(SyncSender<Feed>, Arc<TelemetryHub>)> = match telemetry_listener {
        None => None,
        Some(tl) => {
            // Worker pids are added as the workers start.
            let hub = super::serve_telemetry(
                args,
                Model::Fastapi,
                &listener,
                tl,
                Vec::new(),
                pool_size,
                epoch,
            )?;
            let (tx, rx) = std::sync::mpsc::sync_channel(256);
            Aggregator::new(Model::Fastapi, Duration::from_millis(args.period_ms))
                .spawn(rx, Arc::clone(&hub))?;
            Some((tx, hub))
        }
    };

    let fd = listener.as_raw_fd();
    let mut slots = Vec::new();
    for id in 0..args.workers {
        slots.push(start_worker(args, id, fd, pool_size, feed.as_ref())?);
    }
    loop {
        std::thread::sleep(POLL_CHILDREN);
        for slot in &mut slots {
            let Some(status) = slot.child.try_wait().context("cannot wait for a worker")? else {
                continue;
            };
            let pid = slot.child.id();
            let how = describe(status);
            eprintln!(
                "loopscope: worker {} (pid {pid}) {how}; respawning",
                slot.id
            );
            if let Some((tx, _)) = &feed {
                let _ = tx.send(Feed::WorkerExited {
                    id: slot.id,
                    pid,
                    status: how,
                });
            }
            if slot.started.elapsed() < QUICK_DEATH {
                std::thread::sleep(RESPAWN_PAUSE);
            }
            *slot = start_worker(args, slot.id, fd, pool_size, feed.as_ref())?;
        }
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended".into(),
    }
}

fn start_worker(
    args: &DemoArgs,
    id: u32,
    fd: RawFd,
    pool_size: u32,
    feed: Option<&(SyncSender<Feed>, Arc<TelemetryHub>)>,
) -> anyhow::Result<Slot> {
    let exe = std::env::current_exe().context("cannot find this executable to start a worker")?;
    let mut cmd = Command::new(exe);
    cmd.args(["demo", "--model", "fastapi"])
        .args(["--worker-id", &id.to_string()])
        .args(["--listen-fd", &fd.to_string()])
        .args(["--pool", &pool_size.to_string()])
        .args(["--period-ms", &args.period_ms.to_string()])
        .args(["--lag-resolution-ms", &args.lag_resolution_ms.to_string()])
        .args(["--slow-poll-ms", &args.slow_poll_ms.to_string()])
        .args(args.limit_flags())
        .stdin(Stdio::null())
        .stdout(if args.no_telemetry {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stderr(Stdio::inherit());
    if args.no_telemetry {
        cmd.arg("--no-telemetry");
    }
    if args.console {
        cmd.arg("--console");
    }
    let supervisor = std::process::id();
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid, fcntl); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            #[cfg(target_os = "linux")]
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The supervisor died between fork and prctl: do not outlive it.
            if libc::getppid() as u32 != supervisor {
                return Err(std::io::Error::other("the supervisor is gone"));
            }
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start a worker process")?;
    let pid = child.id();
    if let Some((tx, hub)) = feed {
        let _ = tx.send(Feed::WorkerStarted { id, pid });
        hub.update_info(|info| {
            info.workers.retain(|w| w.id != id);
            info.workers.push(WorkerInfo { id, pid });
            info.workers.sort_by_key(|w| w.id);
        });
        if let Some(stdout) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::Builder::new()
                .name(format!("worker-{id}-reader"))
                .spawn(move || read_reports(stdout, tx))
                .context("cannot start a report reader")?;
        }
    }
    Ok(Slot {
        id,
        child,
        started: Instant::now(),
    })
}

fn read_reports(stdout: std::process::ChildStdout, feed: SyncSender<Feed>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { return };
        match serde_json::from_str::<WorkerReport>(&line) {
            Ok(report) => {
                if feed.send(Feed::Report(Box::new(report))).is_err() {
                    return;
                }
            }
            Err(e) => eprintln!("loopscope: unreadable worker report ({e}): {line:.200}"),
        }
    }
}

/// Runs one worker: its own loop and pool on the inherited socket.
pub fn work(args: &DemoArgs, id: u32, fd: RawFd) -> anyhow::Result<()> {
    super::workloads::tune_allocator();
    // SAFETY: fcntl on any integer is safe; it only reports whether the fd is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        bail!("--listen-fd {fd} is not an open descriptor (workers are started by the supervisor)");
    }
    // SAFETY: the supervisor handed this fd to us for this purpose, and nothing
    // else in this process owns it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    let pool_size = args.pool_size()?;
    // anyio: a 40-token limiter in front of threads started on demand.
    let pool = Pool::new("pool", pool_size, PoolKind::Lazy);
    let probe = if args.no_telemetry {
        None
    } else {
        let probe = LoopProbe::new(id, args.probe_config());
        let mut out = std::io::stdout();
        Sampler::new(probe.clone(), Some(pool.clone()), ThreadNames::default()).spawn(
            move |report| {
                // The supervisor reads every line; if it is gone, so is the reader.
                serde_json::to_writer(&mut out, &report).is_ok()
                    && out.write_all(b"\n").is_ok()
                    && out.flush().is_ok()
            },
        )?;
        Some(probe)
    };
    loop_thread::run(LoopSetup {
        listener,
        app: App::new(Model::Fastapi, Worker::Loop(id), Jobs::Pool(pool)),
        probe,
        console: args.console,
        limits: args.app_limits(),
    })
}
