//! Drawing: pure functions of the dashboard state into a frame. No I/O, no mutation.
//!
//! Readable at 100×30 on a projector: big figures, one row per worker, contrast over
//! decoration. Colour tells workers apart but never carries meaning alone: every
//! row is labelled `w0`, `w1`…, and a stall says STALLED in words (NO_COLOR works).

use std::time::Instant;

mod charts;
mod panels;

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};

use super::input::{SIZES, keys};
use super::state::{Connection, Dashboard};
use crate::protocol::Model;
pub use crate::session::ReplayStatus;
use charts::{Strip, points, render_lag_chart, render_strips};
use panels::{cpu_now, events_panel, now_panel, pool_now, traffic_panel};

/// The smallest screen the dashboard draws on.
pub const MIN_WIDTH: u16 = 80;
/// The smallest screen the dashboard draws on.
pub const MIN_HEIGHT: u16 = 24;

/// What the view needs besides the data.
#[derive(Clone, Debug)]
pub struct ViewOptions {
    /// The display is frozen.
    pub paused: bool,
    /// The key list is open.
    pub help: bool,
    /// Index into [`SIZES`].
    pub size: usize,
    /// The demo server is ours (the model can be switched).
    pub owns_server: bool,
    /// Colours allowed (NO_COLOR unset).
    pub color: bool,
    /// Messages the UI could not take from the subscriber.
    pub dropped_msgs: u64,
    /// Set when replaying a recording.
    pub replay: Option<ReplayStatus>,
    /// A scenario's caption, with its progress, e.g. `[2/4] …`.
    pub caption: Option<String>,
}

const WORKER_COLORS: [Color; 8] = [
    Color::Cyan,
    Color::Yellow,
    Color::Magenta,
    Color::Green,
    Color::LightBlue,
    Color::LightRed,
    Color::LightCyan,
    Color::LightYellow,
];

struct Theme {
    color: bool,
}

impl Theme {
    fn worker(&self, id: u32) -> Style {
        if self.color {
            Style::new().fg(WORKER_COLORS[id as usize % WORKER_COLORS.len()])
        } else {
            Style::new()
        }
    }

    fn alarm(&self) -> Style {
        let s = Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED);
        if self.color { s.fg(Color::Red) } else { s }
    }

    fn warn(&self) -> Style {
        if self.color {
            Style::new().fg(Color::LightRed)
        } else {
            Style::new().add_modifier(Modifier::BOLD)
        }
    }

    fn dim(&self) -> Style {
        if self.color {
            Style::new().fg(Color::DarkGray)
        } else {
            Style::new()
        }
    }

    fn ok(&self) -> Style {
        if self.color {
            Style::new().fg(Color::Green)
        } else {
            Style::new()
        }
    }

    fn bold(&self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }

    /// Labels in a chart's gutter.
    fn dim_label(&self) -> Style {
        Style::new()
    }
}

/// Columns of the right-hand column of figures (Now, pool now, CPU now).
const FIGURES_WIDTH: u16 = 43;

/// Rows of the traffic panel: the totals, a row per worker the load reaches (up to
/// four), borders.
fn traffic_rows(d: &Dashboard) -> u16 {
    let per_worker = match d.traffic.last.workers.len() {
        0 | 1 => 0,
        n => n.min(4) as u16,
    };
    5 + per_worker + 2
}

/// The pool strips: per worker, queued jobs and busy threads, as rows allow.
fn pool_strips(d: &Dashboard, theme: &Theme, rows: usize) -> Vec<Strip> {
    let both = rows >= d.workers.len() * 2;
    let mut strips = Vec::new();
    for (id, w) in &d.workers {
        let size = w.latest.pool.size.max(1) as f64;
        let peak = w.queued.iter().map(|(_, q)| *q).fold(0.0, f64::max);
        strips.push(Strip {
            label: format!("w{id} queue"),
            series: points(&w.queued),
            // Bars of the queue are on the scale of its own peak (at least the pool).
            top: peak.max(size),
            style: theme.worker(*id),
        });
        if both {
            strips.push(Strip {
                label: format!("w{id} busy"),
                series: points(&w.busy),
                top: size,
                style: theme.worker(*id),
            });
        }
    }
    strips
}

/// The CPU strips: per worker, the loop thread (of one core) and the pool threads
/// (of all cores), as rows allow.
fn cpu_strips(d: &Dashboard, theme: &Theme, rows: usize) -> Vec<Strip> {
    let both = rows >= d.workers.len() * 2;
    let cores = d.host.cores.max(1) as f64;
    let mut strips = Vec::new();
    for (id, w) in &d.workers {
        strips.push(Strip {
            label: format!("w{id} loop"),
            series: points(&w.cpu_loop),
            top: 100.0,
            style: theme.worker(*id),
        });
        if both {
            strips.push(Strip {
                label: format!("w{id} pool"),
                series: points(&w.cpu_pool),
                top: 100.0 * cores,
                style: theme.worker(*id),
            });
        }
    }
    strips
}

/// Every panel of one server in `area` (at least 80×20): on the left the time
/// charts on one axis (lag, pool, CPU), on the right the figures now, below the
/// traffic and the event log.
fn render_full(
    frame: &mut Frame,
    area: Rect,
    d: &Dashboard,
    opts: &ViewOptions,
    theme: &Theme,
    now: Instant,
) {
    let workers = d.workers.len().max(1) as u16;
    let [header, main, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(traffic_rows(d)),
    ])
    .areas(area);
    let [charts, figures] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(FIGURES_WIDTH)]).areas(main);
    // The lag chart keeps at least 8 rows; the strips share the rest, up to two
    // rows per strip and two strips per worker.
    let spare = main.height.saturating_sub(8);
    let strip_rows = (spare / 2).saturating_sub(2).min(workers * 4);
    let [lag, pool, cpu] = Layout::vertical([
        Constraint::Fill(1),
        Constraint::Length(strip_rows + 2),
        Constraint::Length(strip_rows + 2),
    ])
    .areas(charts);
    let [now_area, pool_area, cpu_area] = Layout::vertical([
        Constraint::Fill(1),
        Constraint::Length(workers + 2),
        Constraint::Length(workers + 3),
    ])
    .areas(figures);
    let [traffic, events] =
        Layout::horizontal([Constraint::Length(40), Constraint::Fill(1)]).areas(bottom);
    frame.render_widget(header_line(d, opts, theme, false), header);
    render_lag_chart(frame, lag, d, theme);
    let rows = strip_rows as usize;
    render_strips(
        frame,
        pool,
        " Pool: jobs queued, threads busy ".into(),
        &pool_strips(d, theme, rows),
        d.t_s,
        theme,
    );
    render_strips(
        frame,
        cpu,
        " CPU: loop (of 1 core), pool (of all) ".into(),
        &cpu_strips(d, theme, rows),
        d.t_s,
        theme,
    );
    frame.render_widget(now_panel(d, theme, now), now_area);
    frame.render_widget(pool_now(d, theme), pool_area);
    frame.render_widget(cpu_now(d, theme), cpu_area);
    frame.render_widget(traffic_panel(d, theme, traffic.height), traffic);
    frame.render_widget(events_panel(d, theme, events, now), events);
}

/// One server's panels in `area`, for side-by-side comparison: every panel when the
/// area is big enough, otherwise a compact stack (lag, now, pool, CPU, traffic).
pub fn render_pane(frame: &mut Frame, area: Rect, d: &Dashboard, opts: &ViewOptions, now: Instant) {
    let theme = Theme { color: opts.color };
    if area.width >= MIN_WIDTH && area.height >= 20 {
        render_full(frame, area, d, opts, &theme, now);
        return;
    }
    let workers = d.workers.len().max(1) as u16;
    let [header, lag, now_area, pool, cpu, traffic] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(5),
        Constraint::Length(workers + 4),
        Constraint::Length(workers + 2),
        Constraint::Length(workers + 3),
        Constraint::Length(traffic_rows(d)),
    ])
    .areas(area);
    frame.render_widget(header_line(d, opts, &theme, true), header);
    render_lag_chart(frame, lag, d, &theme);
    frame.render_widget(now_panel(d, &theme, now), now_area);
    frame.render_widget(pool_now(d, &theme), pool);
    frame.render_widget(cpu_now(d, &theme), cpu);
    frame.render_widget(traffic_panel(d, &theme, traffic.height), traffic);
}

/// The key hints line (public for the comparison screen).
pub fn render_footer(frame: &mut Frame, area: Rect, opts: &ViewOptions) {
    let theme = Theme { color: opts.color };
    frame.render_widget(footer_line(opts, area.width, &theme), area);
}

/// The key list overlay (public for the comparison screen).
pub fn render_help_overlay(frame: &mut Frame, area: Rect, opts: &ViewOptions) {
    render_help(frame, area, &Theme { color: opts.color });
}

/// Draws the whole dashboard.
pub fn render(frame: &mut Frame, d: &Dashboard, opts: &ViewOptions, now: Instant) {
    let area = frame.area();
    let theme = Theme { color: opts.color };
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "terminal too small: {}×{}\nloopscope needs at least {MIN_WIDTH}×{MIN_HEIGHT}\n(q quits)",
            area.width, area.height
        );
        frame.render_widget(
            Paragraph::new(msg)
                .alignment(Alignment::Center)
                .wrap(Wrap { trim: true }),
            area,
        );
        return;
    }
    let footer_rows = if opts.caption.is_some() { 3 } else { 1 };
    let [body, footer] =
        Layout::vertical([Constraint::Fill(1), Constraint::Length(footer_rows)]).areas(area);
    render_full(frame, body, d, opts, &theme, now);
    let footer = match &opts.caption {
        Some(caption) => {
            let [bar, keys] =
                Layout::vertical([Constraint::Length(2), Constraint::Length(1)]).areas(footer);
            frame.render_widget(
                Paragraph::new(format!(" {caption}"))
                    .style(theme.bold().add_modifier(Modifier::REVERSED))
                    .wrap(Wrap { trim: false }),
                bar,
            );
            keys
        }
        None => footer,
    };
    frame.render_widget(footer_line(opts, footer.width, &theme), footer);
    if opts.help {
        render_help(frame, area, &theme);
    }
}

/// The top line. `compact` (a column of compare mode) keeps what tells two servers
/// apart and their state: model, processes, pool, connection, PAUSED.
fn header_line<'a>(
    d: &'a Dashboard,
    opts: &ViewOptions,
    theme: &Theme,
    compact: bool,
) -> Paragraph<'a> {
    let mut parts: Vec<Span> = Vec::new();
    if let Some(info) = &d.info {
        let workers = d.workers.len().max(info.workers.len());
        parts.push(Span::styled(info.model.as_str(), theme.bold()));
        parts.push(Span::raw(match info.model {
            Model::Fastapi => format!("{workers} workers"),
            _ => "1 process".to_string(),
        }));
        parts.push(Span::raw(format!("pool {}", info.pool_size)));
        if !compact {
            parts.push(Span::raw(format!("app {}", info.app)));
        }
    }
    parts.push(match (&opts.replay, &d.connection) {
        (Some(r), _) => Span::styled(
            format!(
                "{} replay {:.1}/{:.1} s ×{}",
                if r.paused { "‖" } else { "▶" },
                r.at_s,
                r.total_s,
                r.speed
            ),
            theme.warn(),
        ),
        (None, Connection::Connecting) => Span::styled("○ connecting", theme.warn()),
        (None, Connection::Live) => Span::styled("● live", theme.ok()),
        (None, Connection::Lost { .. }) => Span::styled("○ reconnecting", theme.alarm()),
    });
    if !compact {
        parts.push(Span::raw(if d.traffic.on {
            format!("load {:.0} req/s", d.traffic.rate)
        } else {
            "load off".to_string()
        }));
    }
    if opts.paused {
        parts.push(Span::styled("PAUSED", theme.alarm()));
    }
    if !compact && (d.missed_lines > 0 || opts.dropped_msgs > 0) {
        parts.push(Span::styled(
            format!("lost {} lines", d.missed_lines + opts.dropped_msgs),
            theme.warn(),
        ));
    }
    let mut spans = vec![if compact {
        Span::raw(" ")
    } else {
        Span::styled(" loopscope · ", theme.bold())
    }];
    for (i, part) in parts.into_iter().enumerate() {
        if i > 0 {
            spans.push(Span::raw(" · "));
        }
        spans.push(part);
    }
    if !compact {
        spans.push(Span::styled("  ? help", theme.dim()));
    }
    Paragraph::new(Line::from(spans))
}

fn footer_line(opts: &ViewOptions, width: u16, theme: &Theme) -> Paragraph<'static> {
    let size = SIZES[opts.size.min(SIZES.len() - 1)];
    // Most important first: what does not fit is still in the help (?).
    let mut items = vec![
        ("j", "json".to_string()),
        ("o", "offload".to_string()),
        ("b", "block".to_string()),
        ("s", "sync×60".to_string()),
        ("h", "hash×12".to_string()),
        ("l", "load".to_string()),
        ("+-", "rate".to_string()),
    ];
    if opts.owns_server {
        items.push(("m", "model".to_string()));
    }
    items.extend([
        ("q", "quit".to_string()),
        ("[]", format!("{}MB/{}ms", size.json_mb, size.hold_ms)),
        ("p", "spin".to_string()),
        ("f", "fs".to_string()),
        ("space", "pause".to_string()),
    ]);
    let mut spans = vec![Span::raw(" ")];
    let mut used = 1usize;
    let reserve = " ? help".len();
    for (k, what) in items {
        let len = k.chars().count() + what.chars().count() + 2;
        if used + len + reserve > width as usize {
            break;
        }
        used += len;
        spans.push(Span::styled(
            k,
            theme.bold().add_modifier(Modifier::REVERSED),
        ));
        spans.push(Span::raw(format!(" {what} ")));
    }
    spans.push(Span::styled(
        "?",
        theme.bold().add_modifier(Modifier::REVERSED),
    ));
    spans.push(Span::raw(" help"));
    Paragraph::new(Line::from(spans))
}

fn render_help(frame: &mut Frame, area: Rect, theme: &Theme) {
    let width = 64.min(area.width);
    let keys = keys();
    let height = (keys.len() as u16 + 4).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    let mut lines: Vec<Line> = keys
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!(" {k:<10}"), theme.bold()),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::styled(" any key closes this", theme.dim()));
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Keys ")),
        popup,
    );
}

#[cfg(test)]
mod tests {
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
    fn a_large_terminal_uses_the_space() {
        let now = Instant::now();
        let d = dashboard(Model::Node, vec![worker(0, 1.0, 0.0, 0)], now);
        let s = screen(&d, &opts(), 160, 45, now);
        assert!(s.lines().count() == 45 && s.contains("m model") && s.contains("? help"));
    }
}
