//! The panels of figures: the Now table (lag, stall badges, diagnosis), the pool and
//! CPU now, client traffic, and the event log. Pure functions of the state.

use std::time::Instant;

use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Wrap};

use super::Theme;
use crate::protocol::{CpuSnapshot, RuntimeSnapshot};
use crate::tui::state::{Connection, Dashboard, LogKind, WorkerView, seconds_since, short_ms};

pub(super) fn now_panel<'a>(d: &'a Dashboard, theme: &Theme, now: Instant) -> Paragraph<'a> {
    // A multi-thread runtime's workers: their figures are task-poll durations.
    let first = if d.runtime.is_some() { "poll" } else { "loop" };
    let mut lines = vec![Line::styled(
        format!(
            "{:<5}{:>7}{:>7}{:>8}{:>7}",
            first, "p50", "p99", "max", "util"
        ),
        theme.bold(),
    )];
    // A server that stopped reporting: its last figures are not news any more.
    if let Connection::Lost { since, .. } = &d.connection {
        lines.push(Line::styled(
            format!("■ NOT REPORTING for {} s", seconds_since(*since, now)),
            theme.alarm(),
        ));
        for id in d.workers.keys() {
            lines.push(Line::from(vec![
                Span::styled(format!("w{id:<4}"), theme.worker(*id)),
                Span::styled("  – no figures –", theme.dim()),
            ]));
        }
        return Paragraph::new(lines)
            .block(Block::bordered().title(" Now "))
            .wrap(Wrap { trim: false });
    }
    for (id, w) in &d.workers {
        let l = &w.latest;
        if !l.alive {
            lines.push(Line::from(vec![
                Span::styled(format!("w{id:<4}"), theme.worker(*id)),
                Span::styled(" DOWN (respawning)", theme.alarm()),
            ]));
            continue;
        }
        if let Some(silent) = l.silent_for_ms {
            lines.push(Line::from(vec![
                Span::styled(format!("w{id:<4}"), theme.worker(*id)),
                Span::styled(
                    format!(" NOT REPORTING {}", short_ms(silent)),
                    theme.alarm(),
                ),
            ]));
            continue;
        }
        // While a loop is stuck its timer cannot tick: show the stall as the max.
        let stalled = w.stalled_for_ms(now, d.period_ms);
        let (p50, p99) = if l.lag_ms.samples == 0 {
            ("–".to_string(), "–".to_string())
        } else {
            (fmt_max(l.lag_ms.p50), fmt_max(l.lag_ms.p99))
        };
        lines.push(Line::from(vec![
            Span::styled(format!("w{id:<4}"), theme.worker(*id)),
            Span::raw(format!(
                "{p50:>7}{p99:>7}{:>8}{:>6}%",
                fmt_max(l.lag_ms.max.max(stalled)),
                percent(l.loop_utilization * 100.0)
            )),
        ]));
    }
    for (id, w) in &d.workers {
        if w.latest.silent_for_ms.is_none() {
            lines.extend(stall_badge(*id, w, d.period_ms, theme, now));
        }
    }
    for diag in &d.diagnosis {
        lines.push(Line::styled(format!("▶ {}", diag.text), theme.warn()));
    }
    Paragraph::new(lines)
        .block(Block::bordered().title(" Now "))
        .wrap(Wrap { trim: false })
}

fn fmt_max(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        "–".to_string()
    } else if ms >= 1_000_000.0 {
        ">1e6".to_string()
    } else if ms >= 100.0 {
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

/// The pool's figures now, one row per worker (the strips show their history).
pub(super) fn pool_now<'a>(d: &'a Dashboard, theme: &Theme) -> Paragraph<'a> {
    if let Some(rt) = &d.runtime {
        return runtime_now(d, rt, theme);
    }
    let mut lines = Vec::new();
    for (id, w) in &d.workers {
        let p = &w.latest.pool;
        let longest = p.oldest_wait_ms.max(p.wait_ms_max);
        let full = p.busy >= p.size && p.size > 0;
        lines.push(Line::from(vec![
            Span::styled(format!("w{id} "), theme.worker(*id)),
            Span::styled(
                format!("busy {:>2}/{:<2}", p.busy, p.size),
                if full { theme.warn() } else { Style::new() },
            ),
            Span::raw(format!(" queued {:>3}", p.queued)),
            Span::raw(format!(" longest {:>7}", short_ms(longest))),
        ]));
    }
    Paragraph::new(lines).block(Block::bordered().title(" Thread pool now "))
}

/// A multi-thread runtime's pool (tokio's blocking pool, on the first worker's
/// entry) and its scheduler: how late a ready task runs, the global queue.
fn runtime_now<'a>(d: &'a Dashboard, rt: &RuntimeSnapshot, theme: &Theme) -> Paragraph<'a> {
    let pool = d
        .workers
        .values()
        .map(|w| &w.latest.pool)
        .find(|p| p.size > 0)
        .cloned()
        .unwrap_or_default();
    let full = pool.busy >= pool.size && pool.size > 0;
    let delay = &rt.scheduling_delay_ms;
    let lines = vec![
        Line::from(vec![
            Span::styled("blocking ", theme.bold()),
            Span::styled(
                format!("busy {}/{}", pool.busy, pool.size),
                if full { theme.warn() } else { Style::new() },
            ),
            Span::raw(format!(" queued {}", rt.blocking_queue)),
        ]),
        Line::raw(format!(
            "sched delay max {} · global queue {}",
            short_ms(delay.max),
            rt.global_queue
        )),
    ];
    Paragraph::new(lines).block(Block::bordered().title(" Runtime now "))
}

/// CPU now, per worker: the loop thread, the pool threads and the whole process,
/// in % of one core; and the host. For a multi-thread runtime: each worker
/// thread, then the process and its blocking threads.
pub(super) fn cpu_now<'a>(d: &'a Dashboard, theme: &Theme) -> Paragraph<'a> {
    let mut lines = Vec::new();
    if d.runtime.is_some() {
        let mut process = CpuSnapshot::default();
        for (id, w) in &d.workers {
            let c = &w.latest.cpu;
            process.process += c.process;
            process.pool_threads += c.pool_threads;
            lines.push(Line::from(vec![
                Span::styled(format!("w{id} "), theme.worker(*id)),
                Span::raw(format!("thread {:>4}%", percent(c.loop_thread))),
            ]));
        }
        lines.push(Line::raw(format!(
            "proc {:>4}% blocking {:>4}%",
            percent(process.process),
            percent(process.pool_threads)
        )));
    }
    for (id, w) in d.workers.iter().filter(|_| d.runtime.is_none()) {
        let c = &w.latest.cpu;
        lines.push(Line::from(vec![
            Span::styled(format!("w{id} "), theme.worker(*id)),
            Span::raw(format!(
                "loop {:>4}% pool {:>4}% proc {:>4}%",
                percent(c.loop_thread),
                percent(c.pool_threads),
                percent(c.process)
            )),
        ]));
    }
    let cores = d.host.cores.max(1);
    lines.push(Line::raw(format!(
        "host {:>4}% of {cores} cores",
        percent(d.host.cpu / cores as f64)
    )));
    Paragraph::new(lines).block(Block::bordered().title(" CPU, % of one core "))
}

/// A percentage as a short whole number; out-of-range figures say so instead of
/// printing hundreds of digits.
pub(super) fn percent(v: f64) -> String {
    if v == 0.0 {
        // Also -0.0, which would print as "-0".
        "0".to_string()
    } else if !v.is_finite() || v < 0.0 {
        "–".to_string()
    } else if v >= 10_000.0 {
        ">9999".to_string()
    } else {
        format!("{v:.0}")
    }
}

/// Client latency, from each request's intended send time: all requests, then one
/// row per worker they were sent to, so a blocked worker's clients stand out.
pub(super) fn traffic_panel<'a>(d: &'a Dashboard, theme: &Theme, rows: u16) -> Paragraph<'a> {
    let t = &d.traffic;
    let l = &t.last;
    let server_in_flight = d
        .workers
        .values()
        .fold(0u64, |n, w| n.saturating_add(w.latest.requests.in_flight));
    let server_rate: f64 = d.workers.values().map(|w| w.latest.requests.per_s).sum();
    let figures = |name: String, style: Style, p50: f64, p99: f64, max: f64, worst: f64| {
        Line::from(vec![
            Span::styled(format!("{name:<4}"), style),
            Span::styled(format!("{:>7}", ms_figure(p50)), theme.bold()),
            Span::styled(format!("{:>7}", ms_figure(p99)), theme.bold()),
            Span::styled(format!("{:>7}", ms_figure(max)), theme.bold()),
            Span::raw(format!("{:>8}", ms_figure(worst))),
        ])
    };
    let mut lines = vec![
        Line::from(vec![
            Span::styled(
                if t.on {
                    format!("{:.0} req/s sent", t.rate)
                } else {
                    "load off (l)".to_string()
                },
                theme.bold(),
            ),
            Span::raw(format!("  ok {}/s  in flight {}", l.ok, l.in_flight)),
        ]),
        Line::styled(
            format!(
                "{:<4}{:>7}{:>7}{:>7}{:>8}",
                "ms", "p50", "p99", "max", "60s max"
            ),
            theme.dim(),
        ),
        figures(
            "all".into(),
            Style::new(),
            l.p50_ms,
            l.p99_ms,
            l.max_ms,
            t.worst_max_ms,
        ),
    ];
    // Per worker, when the load is spread over more than one.
    let fixed = 2;
    let room = rows.saturating_sub(2 + 3 + fixed) as usize;
    if l.workers.len() > 1 {
        for w in l.workers.iter().take(room) {
            let worst = t.worst_max_by_worker.get(&w.worker).copied().unwrap_or(0.0);
            lines.push(figures(
                format!("w{}", w.worker),
                theme.worker(w.worker),
                w.p50_ms,
                w.p99_ms,
                w.max_ms,
                worst,
            ));
        }
    }
    lines.push(Line::styled(
        format!("errors {}  timeouts {}", t.errors, t.timeouts),
        if t.errors + t.timeouts > 0 {
            theme.warn()
        } else {
            Style::new()
        },
    ));
    lines.push(Line::raw(format!(
        "server: {} req/s, {server_in_flight} in flight",
        percent(server_rate)
    )));
    Paragraph::new(lines).block(Block::bordered().title(" Traffic: latency from intended send "))
}

/// A latency figure for a table column: `0.8`, `412`, `1.3 s`.
fn ms_figure(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        "–".to_string()
    } else if ms >= 10_000.0 {
        format!("{:.0}s", ms / 1000.0)
    } else if ms >= 100.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.1}")
    }
}

pub(super) fn events_panel<'a>(
    d: &'a Dashboard,
    theme: &Theme,
    area: Rect,
    now: Instant,
) -> Paragraph<'a> {
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
