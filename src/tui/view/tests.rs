//! Renders of the dashboard at fixed sizes, asserted on their text.
use super::*;
use crate::client::subscriber::TelemetryMsg;
use crate::protocol::Model;
use crate::test_support::{info, snapshot, worker};
use crate::tui::state::Msg;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

fn opts() -> ViewOptions {
    ViewOptions {
        paused: false,
        help: false,
        size: 2,
        owns_server: true,
        color: false,
        dropped_msgs: 0,
        replay: None,
        caption: None,
    }
}

fn screen(d: &Dashboard, opts: &ViewOptions, w: u16, h: u16, now: Instant) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| render(f, d, opts, now)).unwrap();
    let buf = term.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..h {
        for x in 0..w {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

fn dashboard(
    model: Model,
    workers: Vec<crate::protocol::WorkerSnapshot>,
    now: Instant,
) -> Dashboard {
    let mut d = Dashboard::default();
    let mut i = info(model, 4242);
    i.pool_size = if model == Model::Fastapi { 40 } else { 4 };
    d.apply(
        Msg::Telemetry(TelemetryMsg::Connected(Box::new(i))),
        now,
        "12:00:00",
    );
    for seq in 1..=20 {
        let ws = workers
            .iter()
            .cloned()
            .map(|mut w| {
                if seq < 20 {
                    w.stalled_for_ms = 0.0;
                    w.lag_ms.max = 0.8;
                }
                w
            })
            .collect();
        d.apply(
            Msg::Telemetry(TelemetryMsg::Snapshot(Box::new(snapshot(seq, ws, vec![])))),
            now,
            "12:00:03",
        );
    }
    d.apply(
        Msg::LoadPlan {
            on: true,
            rate: 100.0,
        },
        now,
        "12:00:03",
    );
    d
}

#[test]
fn node_dashboard_at_100x30_shows_every_panel_and_the_stall() {
    let now = Instant::now();
    let d = dashboard(Model::Node, vec![worker(0, 412.0, 312.0, 8)], now);
    let s = screen(&d, &opts(), 100, 30, now);
    for needle in [
        "loopscope · node · 1 process · pool 4 · app 127.0.0.1:8000 · ● live · load 100 req/s",
        "Loop tick lag",
        "w0",
        "412",
        "■ w0 STALLED 312 ms",
        "  in GET /block?ms=500",
        // While the stall lasts, the diagnosis names the request holding the loop.
        "▶ w0: GET /block?ms=500 is holding the",
        "busy  4/4  queued   8 longest  310 ms",
        "m model",
        "CPU, % of one core",
        "host",
        "Traffic",
        "100 req/s sent",
        "Events",
        "attached to 127.0.0.1:9464 · node · pool 4",
        "j json",
        "q quit",
    ] {
        assert!(s.contains(needle), "missing {needle:?} in\n{s}");
    }
}

#[test]
fn fastapi_has_a_row_per_worker_and_the_stall_counts_up() {
    let now = Instant::now();
    let d = dashboard(
        Model::Fastapi,
        vec![worker(0, 480.0, 250.0, 0), worker(1, 0.9, 0.0, 20)],
        now,
    );
    let s = screen(
        &d,
        &opts(),
        100,
        30,
        now + std::time::Duration::from_millis(100),
    );
    assert!(s.contains("fastapi · 2 workers · pool 40"), "{s}");
    assert!(s.contains("■ w0 STALLED 350 ms"), "{s}");
    assert!(!s.contains("w1 STALLED"), "{s}");
    assert!(s.contains("w1 busy  4/4  queued  20"), "{s}");
    let rows = s.lines().filter(|l| l.contains("% pool ")).count();
    assert_eq!(rows, 2, "{s}");
}

#[test]
fn too_small_help_paused_and_disconnected() {
    let now = Instant::now();
    let mut d = dashboard(Model::Node, vec![worker(0, 1.0, 0.0, 0)], now);
    let s = screen(&d, &opts(), 60, 20, now);
    assert!(s.contains("terminal too small: 60×20"), "{s}");
    let s = screen(
        &d,
        &ViewOptions {
            help: true,
            paused: true,
            ..opts()
        },
        100,
        30,
        now,
    );
    assert!(s.contains("PAUSED"));
    let with_caption = ViewOptions {
        caption: Some("[2/4] JSON.parse of 20 MB runs ON the loop".into()),
        ..opts()
    };
    let c = screen(&d, &with_caption, 100, 30, now);
    assert!(
        c.contains(" [2/4] JSON.parse of 20 MB runs ON the loop"),
        "{c}"
    );
    assert!(c.contains("j json"), "{c}");
    for (k, _) in keys() {
        assert!(s.contains(&k), "help lacks {k}\n{s}");
    }
    d.apply(
        Msg::Telemetry(TelemetryMsg::Disconnected {
            reason: "connection refused".into(),
            retry_in: std::time::Duration::from_secs(1),
        }),
        now,
        "12:00:09",
    );
    let s = screen(&d, &opts(), 100, 30, now);
    assert!(s.contains("○ reconnecting"), "{s}");
    assert!(s.contains("DISCONNECTED"), "{s}");
    assert!(s.contains("telemetry lost: connection refused"), "{s}");
}

/// The rows of `s` between the border columns of the panel titled `title`.
fn panel_rows<'a>(s: &'a str, title: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = s.lines().collect();
    let top = lines
        .iter()
        .position(|l| l.contains(title))
        .unwrap_or_else(|| panic!("no panel {title:?} in\n{s}"));
    lines[top + 1..]
        .iter()
        .take_while(|l| !l.starts_with('└'))
        .copied()
        .collect()
}

#[test]
fn the_pool_queue_shows_its_newest_sample_at_the_right_edge() {
    let now = Instant::now();
    // 19 lines with nothing queued, then 20 jobs queued in the newest one.
    let d = dashboard(
        Model::Fastapi,
        vec![worker(0, 0.8, 0.0, 20), worker(1, 0.8, 0.0, 0)],
        now,
    );
    for seq in 1..20 {
        assert_eq!(d.workers[&0].queued[seq - 1].1, 20.0, "fixture");
    }
    let mut d = d;
    // The same worker, quiet for 50 s of lines, then queued.
    let mut quiet = worker(0, 0.8, 0.0, 0);
    quiet.pool.busy = 0;
    for seq in 21..=520 {
        let ws = vec![quiet.clone(), worker(1, 0.8, 0.0, 0)];
        d.apply(
            Msg::Telemetry(TelemetryMsg::Snapshot(Box::new(snapshot(seq, ws, vec![])))),
            now,
            "12:00:04",
        );
    }
    let ws = vec![worker(0, 0.8, 0.0, 20), worker(1, 0.8, 0.0, 0)];
    d.apply(
        Msg::Telemetry(TelemetryMsg::Snapshot(Box::new(snapshot(521, ws, vec![])))),
        now,
        "12:00:05",
    );
    let s = screen(&d, &opts(), 100, 30, now);
    let rows = panel_rows(&s, " Pool: jobs queued, threads busy ");
    // The strip panel ends at its title line's corner.
    let title_line = s
        .lines()
        .find(|l| l.contains(" Pool: jobs queued"))
        .unwrap();
    let right = title_line.chars().position(|c| c == '┐').unwrap();
    let strip = |name: &str| -> String {
        rows.iter()
            .find(|r| r.contains(name))
            .unwrap_or_else(|| panic!("no {name} strip in\n{s}"))
            .chars()
            .take(right + 1)
            .collect()
    };
    let queue = strip("w0 queue");
    let cells: Vec<char> = queue.chars().collect();
    // The last column before the border is the newest moment: the queue of 20.
    assert_eq!(cells[cells.len() - 2], '█', "{queue}\n{s}");
    assert_eq!(cells[cells.len() - 3], '·', "{queue}\n{s}");
    // Older samples (the first 2 s, before the quiet minute) have left the window
    // or sit far left; the row is never stale at its right end.
    let w1 = strip("w1 queue");
    assert!(!w1.contains('█'), "{w1}");
    // The lag chart's plot starts in the same column as the strips, after the
    // gutter, and ends at the same border.
    let lag_axis = s.lines().find(|l| l.contains("│        └")).unwrap();
    let axis_col = lag_axis.chars().position(|c| c == '└').unwrap();
    assert_eq!(axis_col + 1, 1 + charts::GUTTER as usize, "\n{s}");
    let lag_title = s.lines().find(|l| l.contains(" Loop tick lag")).unwrap();
    assert_eq!(lag_title.chars().position(|c| c == '┐'), Some(right));
}

#[test]
fn no_title_is_cut_at_100x30() {
    let now = Instant::now();
    for model in [Model::Node, Model::Fastapi] {
        let workers = match model {
            Model::Node => vec![worker(0, 412.0, 312.0, 8)],
            _ => vec![worker(0, 412.0, 312.0, 8), worker(1, 0.8, 0.0, 0)],
        };
        let d = dashboard(model, workers, now);
        let s = screen(&d, &opts(), 100, 30, now);
        for title in [
            " Loop tick lag, ms (max per 100 ms) ",
            " Now ",
            " Pool: jobs queued, threads busy ",
            " CPU: loop (of 1 core), pool (of all) ",
            " Thread pool now ",
            " CPU, % of one core ",
            " Traffic: latency from intended send ",
            " Events ",
        ] {
            // Whole, and followed by the border, never by the corner.
            assert!(s.contains(&format!("{title}─")), "{title:?} cut in\n{s}");
        }
    }
}

#[test]
fn the_traffic_panel_has_a_row_per_worker() {
    use crate::client::load::{LoadStats, WorkerLoadStats};
    let now = Instant::now();
    let mut d = dashboard(
        Model::Fastapi,
        vec![worker(0, 480.0, 0.0, 0), worker(1, 0.9, 0.0, 0)],
        now,
    );
    let per = |worker: u32, max_ms: f64| WorkerLoadStats {
        worker,
        ok: 25,
        p50_ms: if worker == 0 { 250.0 } else { 0.8 },
        p99_ms: max_ms,
        max_ms,
        ..Default::default()
    };
    d.apply(
        Msg::Load(LoadStats {
            ok: 50,
            p50_ms: 1.2,
            p99_ms: 503.0,
            max_ms: 507.0,
            workers: vec![per(0, 507.0), per(1, 2.1)],
            ..Default::default()
        }),
        now,
        "12:00:04",
    );
    let s = screen(&d, &opts(), 100, 30, now);
    let rows = panel_rows(&s, " Traffic: latency from intended send ");
    let row = |name: &str| {
        rows.iter()
            .find(|r| r.starts_with(&format!("│{name} ")))
            .unwrap_or_else(|| panic!("no {name} row in\n{s}"))
            .split('│')
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(row("all"), vec!["all", "1.2", "503", "507", "507"]);
    assert_eq!(row("w0"), vec!["w0", "250", "507", "507", "507"]);
    assert_eq!(row("w1"), vec!["w1", "0.8", "2.1", "2.1", "2.1"]);
}

#[test]
fn extreme_figures_print_bounded() {
    let now = Instant::now();
    let mut w = worker(0, 1e308, 0.0, 0);
    w.lag_ms.p50 = f64::NAN;
    w.lag_ms.p99 = f64::INFINITY;
    w.loop_utilization = 1e300;
    w.cpu.loop_thread = -5.0;
    w.cpu.process = 1e308;
    w.requests.per_s = -0.0;
    let mut d = dashboard(Model::Node, vec![w.clone()], now);
    // A sequence that jumps by almost 2^64 is another stream, not lost lines…
    let mut jump = snapshot(u64::MAX, vec![w.clone()], vec![]);
    jump.t_ms = 9_000;
    d.apply(
        Msg::Telemetry(TelemetryMsg::Snapshot(Box::new(jump))),
        now,
        "12:00:04",
    );
    // …and a real gap is counted without overflowing.
    d.apply(
        Msg::Telemetry(TelemetryMsg::Snapshot(Box::new(snapshot(
            3,
            vec![w],
            vec![],
        )))),
        now,
        "12:00:04",
    );
    d.skipped_lines = u64::MAX;
    let s = screen(&d, &opts(), 100, 30, now);
    assert!(s.contains("lost >1G"), "{s}");
    assert!(s.contains(">1e6"), "{s}");
    assert!(s.contains(">9999%"), "{s}");
    assert!(s.contains("server: 0 req/s"), "{s}");
    assert!(
        !s.contains("-0 req/s") && !s.contains("NaN") && !s.contains("inf"),
        "{s}"
    );
    // No figure runs longer than a few characters.
    let longest = s
        .split(|c: char| !c.is_ascii_digit())
        .map(str::len)
        .max()
        .unwrap();
    assert!(longest <= 8, "a {longest}-digit number on screen:\n{s}");
}

#[test]
fn a_large_terminal_uses_the_space() {
    let now = Instant::now();
    let d = dashboard(Model::Node, vec![worker(0, 1.0, 0.0, 0)], now);
    let s = screen(&d, &opts(), 160, 45, now);
    assert!(s.lines().count() == 45 && s.contains("m model") && s.contains("? help"));
}

/// A multi-thread runtime: the lag chart is the workers' poll time, one blocking
/// pool (not a pool per worker), the runtime panel, each worker thread's CPU.
#[test]
fn a_multi_thread_runtime_shows_its_workers_and_one_blocking_pool() {
    let now = Instant::now();
    let mut d = Dashboard::default();
    let mut i = info(Model::Tokio, 4242);
    i.pool_size = 8;
    d.apply(
        Msg::Telemetry(TelemetryMsg::Connected(Box::new(i))),
        now,
        "12:00:00",
    );
    for seq in 1..=20 {
        let mut held = worker(0, 3.0, if seq == 20 { 312.0 } else { 0.0 }, 120);
        held.pool.size = 8;
        held.pool.busy = 8;
        held.cpu.loop_thread = 99.0;
        held.runtime = Some(crate::protocol::WorkerThreadSnapshot::default());
        let mut free = worker(1, 0.4, 0.0, 0);
        free.pool = Default::default();
        free.cpu.loop_thread = 7.0;
        free.runtime = Some(crate::protocol::WorkerThreadSnapshot::default());
        let mut s = snapshot(seq, vec![held, free], vec![]);
        s.model = Model::Tokio;
        s.runtime = Some(crate::protocol::RuntimeSnapshot {
            workers: 2,
            blocking_threads: 8,
            blocking_queue: 120,
            global_queue: 3,
            ..Default::default()
        });
        d.apply(
            Msg::Telemetry(TelemetryMsg::Snapshot(Box::new(s))),
            now,
            "12:00:03",
        );
    }
    let s = screen(&d, &opts(), 100, 30, now);
    for want in [
        " Worker poll time, ms",
        "poll     p50",
        " Runtime now ",
        "blocking busy 8/8 queued 120",
        "global queue 3",
        "blk q ",
        "sched delay max",
        "w0 thread   99%",
        "w1 thread    7%",
        "w1 thrd",
        "■ w0 STALLED 312 ms",
    ] {
        assert!(s.contains(want), "{want:?} missing:\n{s}");
    }
    assert!(
        !s.contains("w1 queue"),
        "one pool, not one per worker:\n{s}"
    );
}
