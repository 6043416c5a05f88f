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
/// A multi-thread runtime has one pool (tokio's blocking pool, on the first
/// worker's entry): its strips only, named `blk`.
fn pool_strips(d: &Dashboard, theme: &Theme, rows: usize) -> Vec<Strip> {
    let runtime = d.runtime.is_some();
    let pools = d
        .workers
        .iter()
        .filter(|(_, w)| !runtime || w.latest.pool.size > 0);
    let both = rows >= pools.clone().count() * 2;
    let mut strips = Vec::new();
    for (id, w) in pools {
        let name = if runtime {
            "blk".to_string()
        } else {
            format!("w{id}")
        };
        let size = w.latest.pool.size.max(1) as f64;
        let peak = w.queued.iter().map(|(_, q)| *q).fold(0.0, f64::max);
        strips.push(Strip {
            label: if runtime {
                "blk q".into()
            } else {
                format!("{name} queue")
            },
            series: points(&w.queued),
            // Bars of the queue are on the scale of its own peak (at least the pool).
            top: peak.max(size),
            style: theme.worker(*id),
        });
        if both {
            strips.push(Strip {
                label: format!("{name} busy"),
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
    let runtime = d.runtime.is_some();
    for (id, w) in &d.workers {
        strips.push(Strip {
            label: format!("w{id} {}", if runtime { "thrd" } else { "loop" }),
            series: points(&w.cpu_loop),
            top: 100.0,
            style: theme.worker(*id),
        });
        // A multi-thread runtime's blocking threads are on the first entry.
        if both && (!runtime || w.latest.pool.size > 0) {
            strips.push(Strip {
                label: if runtime {
                    "blk cpu".into()
                } else {
                    format!("w{id} pool")
                },
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
    // The lag chart keeps at least 8 rows (7 with several workers, so that each
    // keeps its queue and busy rows at 100×30); the strips share the rest, up to two
    // rows per strip and two strips per worker.
    let spare = main.height.saturating_sub(if workers > 1 { 7 } else { 8 });
    let strip_rows = (spare / 2).saturating_sub(2).min(workers * 4);
    let [lag, pool, cpu] = Layout::vertical([
        Constraint::Fill(1),
        Constraint::Length(strip_rows + 2),
        Constraint::Length(strip_rows + 2),
    ])
    .areas(charts);
    let [now_area, pool_area, cpu_area] = Layout::vertical([
        Constraint::Fill(1),
        // The runtime panel of a multi-thread runtime has two lines.
        Constraint::Length(workers.max(1 + u16::from(d.runtime.is_some())) + 2),
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
        // The runtime panel of a multi-thread runtime has two lines.
        Constraint::Length(workers.max(1 + u16::from(d.runtime.is_some())) + 2),
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

/// A count, short: `18`, `12k`, `4M`, `>1G`.
fn count(n: u64) -> String {
    match n {
        0..10_000 => n.to_string(),
        10_000..10_000_000 => format!("{}k", n / 1000),
        10_000_000..1_000_000_000 => format!("{}M", n / 1_000_000),
        _ => ">1G".to_string(),
    }
}

/// The top line. `compact` (a column of compare mode) keeps what tells two servers
/// apart and their state: model (and `agent` for a real Node or Python process),
/// the pid of a one-process server or the workers, pool, connection, PAUSED.
fn header_line<'a>(
    d: &'a Dashboard,
    opts: &ViewOptions,
    theme: &Theme,
    compact: bool,
) -> Paragraph<'a> {
    let mut parts: Vec<Span> = Vec::new();
    if let Some(info) = &d.info {
        let workers = d.workers.len().max(info.workers.len());
        if compact {
            // A column among several servers: which server it is. An agent in a
            // real Node or Python process says so; one process goes by its pid.
            let agent = info.versions.loopscope.starts_with("agent-");
            let name = format!(
                "{}{}",
                info.model.as_str(),
                if agent { " agent" } else { "" }
            );
            parts.push(Span::styled(name, theme.bold()));
            parts.push(Span::raw(match info.model {
                Model::Fastapi => {
                    format!("{workers} worker{}", if workers == 1 { "" } else { "s" })
                }
                Model::Tokio => format!("pid {} · {workers} threads", info.pid),
                _ => format!("pid {}", info.pid),
            }));
        } else {
            parts.push(Span::styled(info.model.as_str(), theme.bold()));
            parts.push(Span::raw(match info.model {
                Model::Fastapi => {
                    format!("{workers} worker{}", if workers == 1 { "" } else { "s" })
                }
                Model::Tokio => format!("1 process, {workers} worker threads"),
                _ => "1 process".to_string(),
            }));
        }
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
    let lost = d
        .missed_lines
        .saturating_add(opts.dropped_msgs)
        .saturating_add(d.skipped_lines);
    if !compact && lost > 0 {
        parts.push(Span::styled(
            format!("lost {} lines", count(lost)),
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
mod tests;
