//! Drawing: pure functions of the dashboard state into a frame. No I/O, no mutation.
//!
//! Readable at 100×30 on a projector: big figures, one row per worker, contrast over
//! decoration. Colour tells workers apart but never carries meaning alone: every
//! row is labelled `w0`, `w1`…, and a stall says STALLED in words (NO_COLOR works).

use std::time::Instant;

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Chart, Clear, Dataset, GraphType, Paragraph, Wrap};

use super::input::{KEYS, SIZES};
use super::state::{Connection, Dashboard, LogKind, WorkerView, seconds_since, short_ms};
use crate::protocol::Model;

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

/// Where a replay is.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayStatus {
    /// Position, seconds from the recording's start.
    pub at_s: f64,
    /// Length of the recording, seconds.
    pub total_s: f64,
    /// Playback speed.
    pub speed: u8,
    /// Paused (or at the end).
    pub paused: bool,
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
}

/// Every panel of one server in `area` (at least 80×20).
fn render_full(
    frame: &mut Frame,
    area: Rect,
    d: &Dashboard,
    opts: &ViewOptions,
    theme: &Theme,
    now: Instant,
) {
    let workers = d.workers.len().max(1) as u16;
    // Pool and CPU rows: a line per worker, the host, borders. The rest is shared
    // 3:2 between the lag chart and the traffic/events row.
    let middle = (workers + 3).min(area.height / 3);
    let rest = area.height.saturating_sub(1 + middle);
    let lag_rows = rest * 3 / 5;
    let [header, lag, middle_row, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(lag_rows),
        Constraint::Length(middle),
        Constraint::Length(rest - lag_rows),
    ])
    .areas(area);
    // The Now table needs 36 columns; the chart takes the rest.
    let [lag_chart, lag_now] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(38)]).areas(lag);
    let [pool, cpu] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
        .areas(middle_row);
    let [traffic, events] =
        Layout::horizontal([Constraint::Length(40), Constraint::Fill(1)]).areas(bottom);
    frame.render_widget(header_line(d, opts, theme, false), header);
    render_lag_chart(frame, lag_chart, d, theme);
    frame.render_widget(now_panel(d, theme, now), lag_now);
    frame.render_widget(pool_panel(d, theme), pool);
    frame.render_widget(cpu_panel(d, theme, cpu.width), cpu);
    frame.render_widget(traffic_panel(d, theme), traffic);
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
        Constraint::Length(6),
    ])
    .areas(area);
    frame.render_widget(header_line(d, opts, &theme, true), header);
    render_lag_chart(frame, lag, d, &theme);
    frame.render_widget(now_panel(d, &theme, now), now_area);
    frame.render_widget(pool_panel(d, &theme), pool);
    frame.render_widget(cpu_panel(d, &theme, cpu.width), cpu);
    frame.render_widget(traffic_panel(d, &theme), traffic);
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

/// A round upper bound for the lag axis.
fn nice_ceiling(v: f64) -> f64 {
    const STEPS: [f64; 3] = [1.0, 2.0, 5.0];
    let mut scale = 1.0;
    loop {
        for s in STEPS {
            if s * scale >= v {
                return s * scale;
            }
        }
        scale *= 10.0;
    }
}

fn render_lag_chart(frame: &mut Frame, area: Rect, d: &Dashboard, theme: &Theme) {
    // At least 5 ms: a loop whose lag stays under a millisecond should look flat.
    let top = nice_ceiling(d.lag_peak_ms().max(5.0));
    let data: Vec<(u32, Vec<(f64, f64)>)> = d
        .workers
        .iter()
        .map(|(id, w)| (*id, w.lag.iter().copied().collect()))
        .collect();
    let datasets = data
        .iter()
        .map(|(id, points)| {
            Dataset::default()
                .name(format!("w{id}"))
                .marker(symbols::Marker::Braille)
                .graph_type(GraphType::Line)
                .style(theme.worker(*id))
                .data(points)
        })
        .collect();
    let x0 = d.t_s - super::state::WINDOW_S;
    let chart = Chart::new(datasets)
        .block(Block::bordered().title(format!(
            " Loop tick lag, ms (max per {} ms, last 60 s) ",
            d.period_ms
        )))
        .x_axis(
            Axis::default()
                .bounds([x0, d.t_s.max(x0 + 1.0)])
                .labels(["-60 s", "-30 s", "now"]),
        )
        .y_axis(Axis::default().bounds([0.0, top]).labels([
            "0".to_string(),
            format!("{}", top / 2.0),
            format!("{top}"),
        ]))
        .hidden_legend_constraints((Constraint::Ratio(1, 3), Constraint::Ratio(1, 2)));
    frame.render_widget(chart, area);
}

fn now_panel<'a>(d: &'a Dashboard, theme: &Theme, now: Instant) -> Paragraph<'a> {
    let mut lines = vec![Line::styled(
        format!(
            "{:<5}{:>7}{:>7}{:>8}{:>7}",
            "loop", "p50", "p99", "max", "util"
        ),
        theme.bold(),
    )];
    for (id, w) in &d.workers {
        let l = &w.latest;
        if !l.alive {
            lines.push(Line::from(vec![
                Span::styled(format!("w{id:<4}"), theme.worker(*id)),
                Span::styled(" DOWN (respawning)", theme.alarm()),
            ]));
            continue;
        }
        // While a loop is stuck its timer cannot tick: show the stall as the max.
        let stalled = w.stalled_for_ms(now, d.period_ms);
        let (p50, p99) = if l.lag_ms.samples == 0 {
            ("–".to_string(), "–".to_string())
        } else {
            (
                format!("{:.1}", l.lag_ms.p50),
                format!("{:.1}", l.lag_ms.p99),
            )
        };
        lines.push(Line::from(vec![
            Span::styled(format!("w{id:<4}"), theme.worker(*id)),
            Span::raw(format!(
                "{p50:>7}{p99:>7}{:>8}{:>6.0}%",
                fmt_max(l.lag_ms.max.max(stalled)),
                l.loop_utilization * 100.0
            )),
        ]));
    }
    for (id, w) in &d.workers {
        lines.extend(stall_badge(*id, w, d.period_ms, theme, now));
    }
    for diag in &d.diagnosis {
        lines.push(Line::styled(format!("▶ {}", diag.text), theme.warn()));
    }
    Paragraph::new(lines)
        .block(Block::bordered().title(" Now "))
        .wrap(Wrap { trim: false })
}

fn fmt_max(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.1}")
    }
}

/// "■ w0 STALLED 312 ms", and on the next line the request holding the loop.
fn stall_badge(
    id: u32,
    w: &WorkerView,
    period_ms: u64,
    theme: &Theme,
    now: Instant,
) -> Vec<Line<'static>> {
    let stalled = w.stalled_for_ms(now, period_ms);
    if stalled <= 0.0 || !w.latest.alive {
        return Vec::new();
    }
    let mut lines = vec![Line::from(Span::styled(
        format!("■ w{id} STALLED {stalled:.0} ms"),
        theme.alarm(),
    ))];
    if let Some(culprit) = &w.latest.stalled_in {
        lines.push(Line::styled(format!("  in {culprit}"), theme.warn()));
    }
    lines
}

/// Eight levels of a bar, for inline sparklines.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

fn sparkline(values: &[f64], width: usize) -> String {
    let values = &values[values.len().saturating_sub(width)..];
    let top = values.iter().copied().fold(0.0, f64::max);
    values
        .iter()
        .map(|v| {
            if top <= 0.0 {
                BARS[0]
            } else {
                BARS[((v / top) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

fn pool_panel<'a>(d: &'a Dashboard, theme: &Theme) -> Paragraph<'a> {
    let mut lines = Vec::new();
    for (id, w) in &d.workers {
        let p = &w.latest.pool;
        let queued: Vec<f64> = w.queued.iter().map(|(_, q)| *q).collect();
        let longest = p.oldest_wait_ms.max(p.wait_ms_max);
        let full = p.busy >= p.size && p.size > 0;
        lines.push(Line::from(vec![
            Span::styled(format!("w{id} "), theme.worker(*id)),
            Span::styled(
                format!("busy {:>2}/{:<2}", p.busy, p.size),
                if full { theme.warn() } else { Style::new() },
            ),
            Span::raw(format!(" queued {:>3}", p.queued)),
            Span::raw(format!(" longest {:>7} ", short_ms(longest))),
            Span::styled(sparkline(&queued, 30), theme.worker(*id)),
        ]));
    }
    Paragraph::new(lines)
        .block(Block::bordered().title(" Thread pool: busy, queued, longest wait "))
}

fn bar(percent: f64, width: usize) -> String {
    let filled = ((percent / 100.0) * width as f64)
        .round()
        .clamp(0.0, width as f64) as usize;
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

fn cpu_panel<'a>(d: &'a Dashboard, theme: &Theme, width: u16) -> Paragraph<'a> {
    // "w0 loop ███ 100% pool ███ 100% proc 100%": 36 columns besides the bars.
    let bar_w = (width.saturating_sub(2 + 36) / 2).clamp(3, 20) as usize;
    // One thread uses at most one core; the pool's threads together, all of them.
    let cores = d.host.cores.max(1) as f64;
    let mut lines = Vec::new();
    for (id, w) in &d.workers {
        let c = &w.latest.cpu;
        lines.push(Line::from(vec![
            Span::styled(format!("w{id} "), theme.worker(*id)),
            Span::raw("loop "),
            Span::styled(bar(c.loop_thread, bar_w), theme.worker(*id)),
            Span::raw(format!("{:>4.0}% pool ", c.loop_thread)),
            Span::styled(bar(c.pool_threads / cores, bar_w), theme.worker(*id)),
            Span::raw(format!("{:>4.0}% proc{:>4.0}%", c.pool_threads, c.process)),
        ]));
    }
    lines.push(Line::from(vec![
        Span::raw("host      "),
        Span::raw(bar(d.host.cpu / cores, bar_w)),
        Span::raw(format!(
            " {:>3.0}% of {} cores",
            d.host.cpu / cores,
            d.host.cores
        )),
    ]));
    Paragraph::new(lines).block(
        Block::bordered().title(" CPU, % of one core (bars: loop of 1, pool and host of all) "),
    )
}

fn traffic_panel<'a>(d: &'a Dashboard, theme: &Theme) -> Paragraph<'a> {
    let t = &d.traffic;
    let l = &t.last;
    let server_in_flight: u64 = d
        .workers
        .values()
        .map(|w| w.latest.requests.in_flight)
        .sum();
    let server_rate: f64 = d.workers.values().map(|w| w.latest.requests.per_s).sum();
    let lines = vec![
        Line::from(vec![
            Span::styled(
                if t.on {
                    format!("{:.0} req/s sent", t.rate)
                } else {
                    "load off (l)".to_string()
                },
                theme.bold(),
            ),
            Span::raw(format!("  ok {}/s", l.ok)),
        ]),
        Line::from(vec![
            Span::raw("p50 "),
            Span::styled(short_ms(l.p50_ms), theme.bold()),
            Span::raw("  p99 "),
            Span::styled(short_ms(l.p99_ms), theme.bold()),
            Span::raw("  max "),
            Span::styled(short_ms(l.max_ms), theme.bold()),
        ]),
        Line::from(vec![
            Span::styled(
                format!("errors {}  timeouts {}", t.errors, t.timeouts),
                if t.errors + t.timeouts > 0 {
                    theme.warn()
                } else {
                    Style::new()
                },
            ),
            Span::raw(format!("  in flight {}", l.in_flight)),
        ]),
        Line::from(vec![
            Span::raw("60 s worst: p99 "),
            Span::styled(short_ms(t.worst_p99_ms), theme.bold()),
            Span::raw(" max "),
            Span::styled(short_ms(t.worst_max_ms), theme.bold()),
        ]),
        Line::raw(format!(
            "server: {server_rate:.0} req/s, {server_in_flight} in flight"
        )),
    ];
    Paragraph::new(lines).block(Block::bordered().title(" Traffic (latency from intended send) "))
}

fn events_panel<'a>(d: &'a Dashboard, theme: &Theme, area: Rect, now: Instant) -> Paragraph<'a> {
    // Newest at the bottom; long lines wrap, so count rows, not entries.
    let rows = area.height.saturating_sub(2) as usize;
    let width = area.width.saturating_sub(2).max(1) as usize;
    let mut used = 0;
    let mut shown = Vec::new();
    for e in d.log.iter().rev() {
        let len = e.at.chars().count() + 1 + e.text.chars().count();
        let need = len.div_ceil(width).max(1);
        if used + need > rows {
            break;
        }
        used += need;
        shown.push(e);
    }
    let lines: Vec<Line> = shown
        .into_iter()
        .rev()
        .map(|e| {
            let style = match e.kind {
                LogKind::Warn => theme.warn(),
                LogKind::Trigger => theme.bold(),
                LogKind::Result | LogKind::Info => Style::new(),
            };
            Line::from(vec![
                Span::styled(format!("{} ", e.at), theme.dim()),
                Span::styled(e.text.clone(), style),
            ])
        })
        .collect();
    let title = match &d.connection {
        Connection::Lost { reason, since } => format!(
            " Events · DISCONNECTED {} s: {} ",
            seconds_since(*since, now),
            reason
        ),
        _ => " Events ".to_string(),
    };
    Paragraph::new(lines)
        .block(Block::bordered().title(title))
        .wrap(Wrap { trim: false })
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
    let height = (KEYS.len() as u16 + 4).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    let mut lines: Vec<Line> = KEYS
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
    use crate::tui::state::Msg;
    use crate::tui::state::tests::{info, snapshot, worker};
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
            "▶ w0: the loop was blocked 412 ms:",
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
        for (k, _) in KEYS {
            assert!(s.contains(k), "help lacks {k}\n{s}");
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

    #[test]
    fn a_large_terminal_uses_the_space() {
        let now = Instant::now();
        let d = dashboard(Model::Node, vec![worker(0, 1.0, 0.0, 0)], now);
        let s = screen(&d, &opts(), 160, 45, now);
        assert!(s.lines().count() == 45 && s.contains("m model") && s.contains("? help"));
        assert_eq!(nice_ceiling(412.0), 500.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(5.0), 5.0);
        assert_eq!(sparkline(&[0.0, 4.0, 8.0], 10), "▁▅█");
        assert_eq!(bar(50.0, 4), "██░░");
    }
}
