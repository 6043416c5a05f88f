//! The time charts, all on one 60 s axis with the newest moment at the right edge:
//! loop lag (a line chart), and pool and CPU strips (one row of bars per worker and
//! series). Every chart keeps a gutter of [`GUTTER`] columns on its left, so that a
//! column is the same moment in every chart and a workshop can point at one instant
//! across all of them.

use std::collections::VecDeque;

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::Style;
use ratatui::symbols;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Chart, Dataset, GraphType, Paragraph};

use super::Theme;
use crate::tui::state::{Dashboard, WINDOW_S};

/// Columns left of the plot in every time chart: labels, then the axis column.
pub const GUTTER: u16 = 9;

/// A round upper bound for the lag axis.
pub(super) fn nice_ceiling(v: f64) -> f64 {
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

/// A y label padded to the gutter, so the plot starts where the strips' do.
fn y_label(v: f64) -> String {
    let text = match v {
        v if v >= 1e9 => format!("{}G", v / 1e9),
        v if v >= 1e6 => format!("{}M", v / 1e6),
        v if v >= 1e4 => format!("{}k", v / 1e3),
        v => format!("{v}"),
    };
    format!("{text:>w$.w$}", w = GUTTER as usize - 1)
}

pub(super) fn render_lag_chart(frame: &mut Frame, area: Rect, d: &Dashboard, theme: &Theme) {
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
    let x0 = d.t_s - WINDOW_S;
    let chart = Chart::new(datasets)
        .block(Block::bordered().title(if d.runtime.is_some() {
            // A multi-thread runtime's workers: how long task polls held each.
            format!(" Worker poll time, ms (max per {} ms) ", d.period_ms)
        } else {
            format!(" Loop tick lag, ms (max per {} ms) ", d.period_ms)
        }))
        .x_axis(
            Axis::default()
                .bounds([x0, d.t_s.max(x0 + 1.0)])
                .labels(["-60 s", "-30 s", "now"]),
        )
        .y_axis(Axis::default().bounds([0.0, top]).labels([
            y_label(0.0),
            y_label(top / 2.0),
            y_label(top),
        ]))
        .hidden_legend_constraints((Constraint::Ratio(1, 3), Constraint::Ratio(1, 2)));
    frame.render_widget(chart, area);
}

/// One row (or more) of bars in a strip chart.
pub(super) struct Strip {
    /// The gutter label, e.g. `w0 queue`.
    pub label: String,
    /// (seconds, value) samples.
    pub series: Vec<(f64, f64)>,
    /// The value a full bar stands for.
    pub top: f64,
    /// Its colour.
    pub style: Style,
}

/// The largest value of each of `width` columns covering the last [`WINDOW_S`]
/// seconds up to `t_end`, the newest at the right; `None` where no sample fell.
pub(super) fn buckets(series: &[(f64, f64)], t_end: f64, width: usize) -> Vec<Option<f64>> {
    let mut out = vec![None; width];
    if width == 0 {
        return out;
    }
    let t0 = t_end - WINDOW_S;
    for &(t, v) in series {
        if t < t0 || t > t_end {
            continue;
        }
        let col = (((t - t0) / WINDOW_S) * width as f64).floor() as usize;
        let slot = &mut out[col.min(width - 1)];
        *slot = Some(slot.map_or(v, |old: f64| old.max(v)));
    }
    out
}

/// Eighths of a cell, bottom up.
const EIGHTHS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The rows of one strip, top row first: each column a bar of `value / top` of the
/// strip's height (at least an eighth when above zero; a dot where it is zero).
pub(super) fn strip_rows(values: &[Option<f64>], top: f64, rows: usize) -> Vec<String> {
    let levels = rows * 8;
    let heights: Vec<Option<usize>> = values
        .iter()
        .map(|v| {
            v.map(|v| {
                if v <= 0.0 || top <= 0.0 {
                    0
                } else {
                    ((v / top) * levels as f64)
                        .round()
                        .clamp(1.0, levels as f64) as usize
                }
            })
        })
        .collect();
    (0..rows)
        .map(|r| {
            // Row r from the top covers eighths [below, below + 8).
            let below = (rows - 1 - r) * 8;
            heights
                .iter()
                .map(|h| match h {
                    None => ' ',
                    Some(0) if r == rows - 1 => '·',
                    Some(h) => EIGHTHS[h.saturating_sub(below).min(8)],
                })
                .collect()
        })
        .collect()
}

/// A bordered strip chart: per strip, its label in the gutter and its bars.
pub(super) fn render_strips(
    frame: &mut Frame,
    area: Rect,
    title: String,
    strips: &[Strip],
    t_end: f64,
    theme: &Theme,
) {
    let inner_w = area.width.saturating_sub(2);
    let inner_h = area.height.saturating_sub(2) as usize;
    let plot_w = inner_w.saturating_sub(GUTTER) as usize;
    let shown = strips.len().min(inner_h);
    let rows_each = inner_h.checked_div(shown).map_or(0, |r| r.clamp(1, 3));
    let mut lines = Vec::new();
    for strip in &strips[..shown] {
        let values = buckets(&strip.series, t_end, plot_w);
        for (i, row) in strip_rows(&values, strip.top, rows_each)
            .into_iter()
            .enumerate()
        {
            let label = if i + 1 == rows_each {
                format!("{:<w$.w$} ", strip.label, w = GUTTER as usize - 1)
            } else {
                " ".repeat(GUTTER as usize)
            };
            lines.push(Line::from(vec![
                Span::styled(label, theme.dim_label()),
                Span::styled(row, strip.style),
            ]));
        }
    }
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        area,
    );
}

/// Converts a history into owned points for a strip.
pub(super) fn points(series: &VecDeque<(f64, f64)>) -> Vec<(f64, f64)> {
    series.iter().copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_put_the_newest_sample_in_the_last_column() {
        let series: Vec<(f64, f64)> = (0..=600).map(|i| (i as f64 / 10.0, 0.0)).collect();
        let mut with_spike = series.clone();
        with_spike.push((60.0, 20.0));
        let b = buckets(&with_spike, 60.0, 50);
        assert_eq!(b.len(), 50);
        assert_eq!(b[49], Some(20.0));
        assert_eq!(b[48], Some(0.0));
        // Older than the window: not shown; no samples yet: blank.
        let b = buckets(&[(1.0, 5.0), (59.0, 1.0)], 70.0, 10);
        assert_eq!(b[0], None);
        assert_eq!(b[8], Some(1.0));
    }

    #[test]
    fn strips_scale_bars_to_their_top_in_eighths() {
        let rows = strip_rows(
            &[None, Some(0.0), Some(1.0), Some(20.0), Some(40.0)],
            40.0,
            2,
        );
        assert_eq!(rows, vec!["    █", " ·▁██"]);
        assert_eq!(strip_rows(&[Some(10.0)], 40.0, 1), vec!["▂"]);
        assert_eq!(nice_ceiling(412.0), 500.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(5.0), 5.0);
        assert_eq!(y_label(500.0), "     500");
        assert_eq!(y_label(2.5), "     2.5");
        assert_eq!(y_label(50_000.0), "     50k");
        assert_eq!(y_label(1e9), "      1G");
    }
}
