//! The real dashboard binary in a pseudo-terminal, read back through a vt100 parser,
//! and the load generator against a server that stalls.

mod common;

use std::time::{Duration, Instant};

use common::pty::{Dashboard, children, stalled_ms};
use common::{Demo, runtime, serial};
use loopscope::client::http;
use loopscope::client::load::{LoadGenerator, LoadPlan};

#[test]
fn the_dashboard_shows_a_block_live_and_quits_cleanly() {
    let _serial = serial();
    let mut ui = Dashboard::start(&["--model", "node"]);
    ui.wait_for(Duration::from_secs(30), "live lag panel", |s| {
        s.contains("Loop tick lag") && s.contains("● live") && s.contains("w0")
    });
    let demo = children(ui.pid());
    assert_eq!(demo.len(), 1, "one demo child, got {demo:?}");

    ui.press("b");
    let pressed = Instant::now();
    let seen = ui.wait_for(Duration::from_secs(3), "a stall of 200 ms or more", |s| {
        stalled_ms(s).is_some_and(|ms| ms >= 200)
    });
    // Seen while the 500 ms block lasts (its end is logged as a slow poll).
    assert!(
        pressed.elapsed() < Duration::from_millis(500) || !seen.contains("loop held"),
        "the stall showed only after the block ended:\n{seen}"
    );
    assert!(seen.contains("in GET /block?ms=500"), "{seen}");
    ui.wait_for(Duration::from_secs(3), "the slow poll in the log", |s| {
        s.contains("w0 loop held 50") && s.contains("by GET /block?ms=500")
    });

    ui.press("q");
    let status = ui.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    let end = Instant::now() + Duration::from_secs(5);
    while !demo.iter().all(|p| common::process_gone(*p)) {
        assert!(
            Instant::now() < end,
            "the demo child {demo:?} outlived the dashboard"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_restores_the_terminal_and_stops_the_demo() {
    let _serial = serial();
    let mut ui = Dashboard::start(&["--model", "fastapi", "--workers", "2"]);
    ui.wait_for(Duration::from_secs(30), "live lag panel", |s| {
        s.contains("● live") && s.contains("w1")
    });
    assert!(ui.screen.lock().unwrap().screen().alternate_screen());
    let demo = children(ui.pid());
    assert_eq!(demo.len(), 1, "{demo:?}");
    // SAFETY: kill(2) on the pid of the child we started.
    assert_eq!(unsafe { libc::kill(ui.pid() as i32, libc::SIGTERM) }, 0);
    assert!(ui.wait_exit().success());
    // Give the reader a moment to take the last bytes.
    let end = Instant::now() + Duration::from_secs(2);
    while ui.screen.lock().unwrap().screen().alternate_screen() {
        assert!(
            Instant::now() < end,
            "the terminal was left in the alternate screen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let end = Instant::now() + Duration::from_secs(5);
    while !demo.iter().all(|p| common::process_gone(*p)) {
        assert!(
            Instant::now() < end,
            "the demo {demo:?} outlived the dashboard"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The traffic panel's rows per worker: (worker, max of the last window, ms).
fn traffic_maxes(screen: &str) -> Vec<(u32, f64)> {
    screen
        .lines()
        .filter_map(|l| {
            // The traffic panel is the bottom-left box, 40 columns wide.
            let cell: String = l.chars().take(40).collect();
            let inner = cell.strip_prefix('│')?.strip_suffix('│')?;
            let mut f = inner.split_whitespace();
            let worker = f.next()?.strip_prefix('w')?.parse().ok()?;
            let figures: Vec<f64> = f.map(|x| x.parse().ok()).collect::<Option<_>>()?;
            (figures.len() == 4).then(|| (worker, figures[2]))
        })
        .collect()
}

#[test]
fn the_blocked_workers_clients_wait_and_the_others_do_not() {
    let _serial = serial();
    let mut ui = Dashboard::start(&["--model", "fastapi", "--workers", "2", "--rate", "100"]);
    ui.wait_for(
        Duration::from_secs(30),
        "traffic rows for both workers",
        |s| traffic_maxes(s).len() == 2,
    );
    // Whichever worker the block lands on, in the window that covers it its clients
    // wait ≥ 300 ms while the other's stay under 50 ms. A loaded machine may slow
    // the other worker once: up to three blocks.
    let mut seen = Vec::new();
    for _ in 0..3 {
        ui.press("b");
        let screen = ui.wait_for(Duration::from_secs(10), "a blocked worker's clients", |s| {
            traffic_maxes(s).iter().any(|(_, max)| *max >= 300.0)
        });
        let rows = traffic_maxes(&screen);
        let other = rows
            .iter()
            .filter(|(_, max)| *max < 300.0)
            .map(|r| r.1)
            .fold(0.0, f64::max);
        assert_eq!(rows.len(), 2, "{screen}");
        if other < 50.0 {
            ui.press("q");
            assert!(ui.wait_exit().success());
            return;
        }
        seen.push(rows);
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!("the other worker's clients waited too: {seen:?}");
}

#[test]
fn an_external_sigint_or_sigquit_restores_the_terminal() {
    let _serial = serial();
    for sig in [libc::SIGINT, libc::SIGQUIT] {
        let mut ui = Dashboard::start(&["--model", "node", "--no-load"]);
        ui.wait_for(Duration::from_secs(30), "live lag panel", |s| {
            s.contains("● live")
        });
        // SAFETY: kill(2) on the pid of the child we started.
        assert_eq!(unsafe { libc::kill(ui.pid() as i32, sig) }, 0);
        assert!(ui.wait_exit().success(), "signal {sig}");
        let end = Instant::now() + Duration::from_secs(2);
        loop {
            let screen = ui.screen.lock().unwrap();
            let s = screen.screen();
            if !s.alternate_screen() && !s.hide_cursor() {
                break;
            }
            assert!(
                Instant::now() < end,
                "signal {sig} left the terminal in the alternate screen or the cursor hidden"
            );
            drop(screen);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_killed_demo_child_is_reaped_reported_and_restarted() {
    let _serial = serial();
    let mut ui = Dashboard::start(&["--model", "node", "--no-load"]);
    ui.wait_for(Duration::from_secs(30), "live lag panel", |s| {
        s.contains("● live") && s.contains("w0")
    });
    let demo = children(ui.pid());
    assert_eq!(demo.len(), 1, "{demo:?}");
    // SAFETY: kill(2) on the pid of the demo our dashboard started.
    assert_eq!(unsafe { libc::kill(demo[0] as i32, libc::SIGKILL) }, 0);
    ui.wait_for(Duration::from_secs(5), "the death, said at once", |s| {
        s.contains(&format!("(pid {}) killed by signal 9", demo[0])) && s.contains("NOT REPORTING")
    });
    // Reaped: no zombie left behind.
    let end = Instant::now() + Duration::from_secs(2);
    while std::path::Path::new(&format!("/proc/{}", demo[0])).exists() {
        assert!(Instant::now() < end, "the dead demo was not reaped");
        std::thread::sleep(Duration::from_millis(20));
    }
    ui.wait_for(Duration::from_secs(30), "a new demo, live", |s| {
        s.contains("restarting the node demo") && s.contains("● live")
    });
    let again = children(ui.pid());
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again, demo);
    ui.press("q");
    assert!(ui.wait_exit().success());
}

#[test]
fn the_dashboard_reconnects_when_the_server_comes_back() {
    let _serial = serial();
    let demo = Demo::start(&["--model", "node"]);
    let (app, tel) = (demo.app.clone(), demo.telemetry.clone());
    let mut ui = Dashboard::start(&["attach", &tel, "--no-load"]);
    ui.wait_for(Duration::from_secs(20), "live data", |s| {
        s.contains("● live") && s.contains("w0")
    });
    drop(demo);
    ui.wait_for(Duration::from_secs(10), "the disconnection", |s| {
        s.contains("○ reconnecting") && s.contains("telemetry lost")
    });

    let app_port = app.rsplit(':').next().unwrap();
    let tel_port = tel.rsplit(':').next().unwrap();
    let _again = Demo::start(&[
        "--model",
        "node",
        "--port",
        app_port,
        "--telemetry-port",
        tel_port,
    ]);
    let back = Instant::now();
    ui.wait_for(Duration::from_secs(10), "live data again", |s| {
        s.contains("● live") && s.contains("reconnected to")
    });
    // Backoff is capped at 2 s, plus a line period.
    assert!(
        back.elapsed() < Duration::from_secs(5),
        "reconnected after {:?}",
        back.elapsed()
    );
    ui.press("q");
    assert!(ui.wait_exit().success());
}

#[test]
fn the_load_generator_counts_a_stall_from_intended_send_times() {
    let _serial = serial();
    let demo = Demo::start(&["--model", "node"]);
    runtime().block_on(async {
        let load = LoadGenerator::start(
            http::client(),
            demo.app.clone(),
            LoadPlan {
                rate: 100.0,
                ..LoadPlan::default()
            },
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = common::get(&http::client(), &demo.app, "/block?ms=300").await;
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let stats = load.take();
        drop(load);
        // 2 s at 100 req/s; ~30 of them were due during the stall.
        assert!(stats.ok >= 150, "{stats:?}");
        assert_eq!(stats.errors + stats.timeouts, 0, "{stats:?}");
        assert!(stats.max_ms >= 250.0, "max {stats:?}");
        assert!(stats.p99_ms >= 200.0, "p99 {stats:?}");
        assert!(stats.p50_ms < 50.0, "p50 {stats:?}");
    });
}

#[test]
fn a_recording_replays_with_seek_and_a_damaged_one_says_where_it_stops() {
    let _serial = serial();
    // Record 2.5 s of a server with a block in it.
    let demo = Demo::start(&["--model", "node"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.ndjson");
    let recorder = std::process::Command::new(env!("CARGO_BIN_EXE_loopscope"))
        .args([
            "attach",
            &demo.telemetry,
            "--headless",
            "--duration",
            "2500ms",
            "--no-load",
        ])
        .args(["--record", path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    runtime().block_on(async {
        let r = common::get(&http::client(), &demo.app, "/block?ms=400").await;
        assert_eq!(r.status, 200);
    });
    assert!(recorder.wait_with_output().unwrap().status.success());

    let mut ui = Dashboard::start(&["replay", path.to_str().unwrap()]);
    ui.wait_for(Duration::from_secs(10), "the replay header", |s| {
        s.contains("replay") && s.contains("node · 1 process")
    });
    ui.press("4");
    ui.wait_for(Duration::from_secs(10), "the recorded slow poll", |s| {
        s.contains("w0 loop held 40") && s.contains("by GET /block?ms=400")
    });
    ui.wait_for(Duration::from_secs(10), "the end", |s| {
        s.contains("end of the recording")
    });
    // Back 5 s: the position returns to the start.
    ui.press("\x1b[D");
    ui.wait_for(Duration::from_secs(5), "the seek", |s| {
        s.contains("replay 0.0/")
    });
    ui.press("q");
    assert!(ui.wait_exit().success());

    // Cut the file in the middle of a line.
    let text = std::fs::read_to_string(&path).unwrap();
    let cut: usize = text.lines().take(8).map(|l| l.len() + 1).sum::<usize>() + 30;
    std::fs::write(&path, &text[..cut]).unwrap();
    let mut ui = Dashboard::start(&["replay", path.to_str().unwrap()]);
    ui.wait_for(Duration::from_secs(10), "the damage report", |s| {
        // The log wraps long lines.
        s.contains("damaged at line 9") && s.contains("replaying the 7") && s.contains("(7")
    });
    ui.press("q");
    assert!(ui.wait_exit().success());
}

#[test]
fn compare_mode_fires_one_key_at_both_models() {
    let _serial = serial();
    let mut ui = Dashboard::start(&["--compare", "--no-load"]);
    ui.wait_for(Duration::from_secs(30), "both servers live", |s| {
        s.contains("node · pid ")
            && s.contains("fastapi · 2 workers")
            && s.matches("● live").count() == 2
    });
    let demos = children(ui.pid());
    assert_eq!(demos.len(), 2, "{demos:?}");
    ui.press("b");
    ui.wait_for(Duration::from_secs(5), "a stall on each side", |s| {
        s.lines().any(|l| l.matches("STALLED").count() == 2) || s.matches("STALLED").count() >= 2
    });
    ui.wait_for(Duration::from_secs(5), "both blocks over", |s| {
        !s.contains("STALLED")
    });
    ui.press("q");
    assert!(ui.wait_exit().success());
    let end = Instant::now() + Duration::from_secs(5);
    while !demos.iter().all(|p| common::process_gone(*p)) {
        assert!(Instant::now() < end, "{demos:?} outlived compare mode");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_scenario_shows_its_captions_and_steps_on_demand() {
    let _serial = serial();
    let file = format!(
        "{}/assets/scenarios/node-pool-saturation.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut ui = Dashboard::start(&["--scenario", &file]);
    ui.wait_for(Duration::from_secs(30), "the first caption", |s| {
        s.contains("[1/3] crypto.pbkdf2 runs on libuv's pool")
    });
    // Manual: nothing runs by itself; n runs the next step at once.
    ui.press("a");
    ui.press("n");
    let s = ui.wait_for(Duration::from_secs(5), "the second step", |s| {
        s.contains("[2/3] 12 hashes at once") && s.contains("hash×12 → sent")
    });
    assert!(
        s.contains("load 50 req/s"),
        "the first step set the load:\n{s}"
    );
    ui.wait_for(Duration::from_secs(10), "the hashes done", |s| {
        s.contains("hash×12 done in")
    });
    ui.press("q");
    assert!(ui.wait_exit().success());
}
