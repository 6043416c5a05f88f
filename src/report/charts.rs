//! The charts of a report, drawn with plotters into SVG strings. Every chart of a
//! server has the same size, margins and x range, so that one moment is the same
//! column in each. Events are added over the drawing as markers whose `<title>` a
//! viewer shows on hover (plotters draws no titles).
//!
//! Each chart sits in a `<figure>` whose `data-` attributes give what was drawn: the
//! series' names and colours (`data-series="w0=#1F77B4;…"`: the polylines, and dots
//! for lone points, in that colour) and the y axis' mapping (`data-y0-px`, `data-ytop-px`, `data-ytop`:
//! the pixel rows of 0 and of the axis' top value), so that a reader of the file can
//! read the values back.

use std::fmt::Write;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::html::escape;
use super::series::{Mark, Series, Stall};

/// Width of every chart, px.
pub const WIDTH: u32 = 1000;
/// Height of every chart, px.
pub const HEIGHT: u32 = 260;
/// Most stall spans labelled with their culprit per chart (the longest).
const MAX_LABELS: usize = 12;
/// A stall this long is labelled even when no request is known to have held the loop.
const LABEL_MS: f64 = 100.0;
/// Most event markers per chart.
const MAX_MARKERS: usize = 500;

/// Colours of the workers, in turn.
const WORKER_COLOURS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x17, 0xbe, 0xcf),
];
/// The host's line.
pub const HOST: RGBColor = RGBColor(0x70, 0x70, 0x70);
/// Latency p50, p99, max.
pub const LATENCY: [RGBColor; 3] = [
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0xd6, 0x27, 0x28),
];
const STALL: RGBColor = RGBColor(0xd6, 0x27, 0x28);

/// The colour of worker number `i` (its position, not its id); `shade` 1 is the
/// worker's colour, 2 a lighter one for a second line of the same worker.
pub fn worker_colour(i: usize, shade: u8) -> RGBColor {
    let RGBColor(r, g, b) = WORKER_COLOURS[i % WORKER_COLOURS.len()];
    // Beyond the palette's length the colours repeat darker, so that each line of a
    // chart keeps a colour of its own.
    let round = (i / WORKER_COLOURS.len()) as u32;
    let dim = |c: u8| (c as u32 * 4 / (4 + round.min(3))) as u8;
    let (r, g, b) = (dim(r), dim(g), dim(b));
    if shade <= 1 {
        return RGBColor(r, g, b);
    }
    let light = |c: u8| c + (255 - c) / 2;
    RGBColor(light(r), light(g), light(b))
}

/// `#rrggbb`.
pub fn hex(c: RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

/// One chart to draw.
pub struct Chart<'a> {
    /// What the figure is, for readers of the file: `lag`, `pool`, `cpu`, `latency`.
    pub id: &'static str,
    /// The caption above it.
    pub title: String,
    /// The y axis' unit.
    pub y_desc: &'static str,
    /// The lines, with their colours.
    pub series: Vec<(&'a Series, RGBColor)>,
    /// The y axis' top; at least the highest point.
    pub y_top: f64,
    /// The time axis' length, seconds.
    pub duration_s: f64,
    /// A longer gap between two points breaks the line, seconds.
    pub gap_s: f64,
    /// Shaded spans (the lag chart's stalls).
    pub stalls: &'a [Stall],
    /// Event markers.
    pub marks: &'a [Mark],
}

/// `12.3 s`, or `m:ss` on a long axis.
fn time_label(t: f64, long: bool) -> String {
    if long {
        let s = t.max(0.0).round() as u64;
        format!("{}:{:02}", s / 60, s % 60)
    } else {
        format!("{t:.1} s")
    }
}

/// `200`, `12.5`, `0.25`: no more digits than the tick needs.
fn y_label(v: f64) -> String {
    let text = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// The runs of `points` without a gap longer than `gap_s` between neighbours.
fn runs(points: &[(f64, f64)], gap_s: f64) -> impl Iterator<Item = &[(f64, f64)]> {
    points.chunk_by(move |a, b| b.0 - a.0 <= gap_s)
}

/// The chart as an HTML `<figure>` (inline SVG and a legend).
pub fn draw(c: &Chart) -> Result<String, String> {
    let mut svg = String::new();
    let duration = c.duration_s.max(0.1);
    let y_top = if c.y_top.is_finite() && c.y_top > 0.0 {
        c.y_top
    } else {
        1.0
    };
    let (zero, top, xs);
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .margin_top(10)
            .margin_right(20)
            .margin_left(8)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..duration, 0f64..y_top)
            .map_err(|e| e.to_string())?;
        let long = duration > 120.0;
        let x_fmt = |t: &f64| time_label(*t, long);
        let y_fmt = |v: &f64| y_label(*v);
        chart
            .configure_mesh()
            .x_labels(12)
            .y_labels(6)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .y_desc(c.y_desc)
            .light_line_style(RGBColor(0xee, 0xee, 0xee))
            .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 13))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(c.stalls.iter().map(|s| {
                Rectangle::new(
                    [(s.start_s, 0.0), (s.end_s.max(s.start_s), y_top)],
                    STALL.mix(0.12).filled(),
                )
            }))
            .map_err(|e| e.to_string())?;
        for (series, colour) in &c.series {
            // A line is broken where the series has no figure (no request answered,
            // a worker gone) rather than drawn across; a lone point is a dot.
            for run in runs(&series.points, c.gap_s) {
                if let [only] = run {
                    chart
                        .draw_series(std::iter::once(Circle::new(*only, 2, colour.filled())))
                        .map_err(|e| e.to_string())?;
                    continue;
                }
                chart
                    .draw_series(LineSeries::new(run.iter().copied(), colour.stroke_width(2)))
                    .map_err(|e| e.to_string())?;
            }
        }
        // Label the stalls that matter: a request held the loop, or it was long.
        let mut longest: Vec<&Stall> = c
            .stalls
            .iter()
            .filter(|s| s.culprit.is_some() || s.ms >= LABEL_MS)
            .collect();
        longest.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        longest.truncate(MAX_LABELS);
        longest.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
        let style = ("sans-serif", 13).into_font().color(&STALL);
        // Labels stacked down the chart so that neighbours do not overwrite each other.
        for (i, s) in longest.iter().enumerate() {
            let label = format!(
                "w{} {} · {:.0} ms",
                s.worker,
                crate::headless::printable(
                    s.culprit.as_deref().unwrap_or("no request poll was slow")
                ),
                s.ms
            );
            let row = (i % 4) as f64 * 0.09;
            let y = y_top * (0.97 - row);
            // Late in the chart the label ends at the stall's end, so that it stays on
            // the chart.
            let (x, anchor) = if s.start_s > duration * 0.6 {
                (s.end_s, Pos::new(HPos::Right, VPos::Top))
            } else {
                (s.start_s, Pos::new(HPos::Left, VPos::Top))
            };
            chart
                .draw_series(std::iter::once(Text::new(
                    label,
                    (x, y),
                    style.clone().pos(anchor),
                )))
                .map_err(|e| e.to_string())?;
        }
        zero = chart.backend_coord(&(0.0, 0.0)).1;
        top = chart.backend_coord(&(0.0, y_top)).1;
        xs = c
            .marks
            .iter()
            .take(MAX_MARKERS)
            .map(|m| (chart.backend_coord(&(m.t_s, 0.0)).0, m))
            .collect::<Vec<_>>();
        root.present().map_err(|e| e.to_string())?;
    }
    // Inline SVG in HTML needs no namespace: no address appears in the file.
    let svg = svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1);
    let Some(end) = svg.rfind("</svg>") else {
        return Err("the SVG backend wrote no closing tag".into());
    };
    let mut out = String::with_capacity(svg.len() + 4096);
    let series: Vec<String> = c
        .series
        .iter()
        .map(|(s, colour)| format!("{}={}", escape(&s.name), hex(*colour)))
        .collect();
    let _ = write!(
        out,
        "<figure class=\"chart\" data-chart=\"{}\" data-series=\"{}\" data-y0-px=\"{zero}\" data-ytop-px=\"{top}\" data-ytop=\"{y_top}\">\n<figcaption>{}</figcaption>\n",
        c.id,
        series.join(";"),
        escape(&c.title)
    );
    out.push_str(&svg[..end]);
    if !xs.is_empty() {
        out.push_str("<g class=\"events\">\n");
        for (x, m) in xs {
            let _ = writeln!(
                out,
                "<g><title>{} {}</title><line x1=\"{x}\" y1=\"{top}\" x2=\"{x}\" y2=\"{zero}\" class=\"ev\"/><line x1=\"{x}\" y1=\"{top}\" x2=\"{x}\" y2=\"{zero}\" class=\"hit\"/><path d=\"M{} {} l10 0 l-5 8 z\" class=\"ev\"/></g>",
                super::html::seconds(m.t_s),
                escape(&m.text),
                x - 5,
                top - 9,
            );
        }
        out.push_str("</g>\n");
    }
    out.push_str(&svg[end..]);
    out.push_str("<p class=\"legend\">");
    for (s, colour) in &c.series {
        let _ = write!(
            out,
            "<span><i style=\"background:{}\"></i>{}</span> ",
            hex(*colour),
            escape(&s.name)
        );
    }
    if !c.stalls.is_empty() {
        out.push_str("<span><i class=\"stall\"></i>live stall</span> ");
    }
    if !c.marks.is_empty() {
        out.push_str("<span><i class=\"mark\"></i>event (hover for its text)</span>");
    }
    out.push_str("</p>\n</figure>\n");
    Ok(out)
}
