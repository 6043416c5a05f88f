//! `loopscope report`: one self-contained HTML file of one or more recordings, to
//! read where no terminal runs. Inline SVG and CSS only: nothing is fetched, the file
//! reads offline and prints.
//!
//! Each server of a recording gets a section (a recording holds one server, and
//! another after each model switch): what was recorded and the diagnosis of the whole
//! run, then loop lag, pool, CPU and request latency on one shared time axis with the
//! live stalls shaded and the events marked, the events with their times, and the
//! summary table of a headless run.

pub mod charts;
pub mod html;
pub mod series;

use std::fmt::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};

use crate::diagnosis::RunDiagnosis;
use crate::protocol::{Model, ServerInfo, Snapshot};
use crate::record::Recording;
use crate::summary::Summary;
use charts::{Chart, HOST, LATENCY, worker_colour};
use html::escape;
use series::{SectionData, Series};

/// One recording to report on.
#[derive(Debug)]
pub struct Source {
    /// How the report names it (the file's name).
    pub name: String,
    /// What was read of it.
    pub recording: Recording,
    /// When the file was last written: the recording's end, as near as is known
    /// (a recording holds server time only).
    pub modified: Option<SystemTime>,
}

/// A finished report.
#[derive(Debug)]
pub struct Report {
    /// The page.
    pub html: String,
    /// What the reader should know about the input (damaged recordings).
    pub warnings: Vec<String>,
    /// Servers reported on, one section each.
    pub sections: usize,
}

/// Reads a recording, failing with a clear message when it holds no snapshot (an
/// empty file, or not a recording); a damaged one is kept up to its damage.
pub fn load(path: &Path) -> anyhow::Result<Source> {
    let recording =
        Recording::load(path).with_context(|| format!("cannot read {}", path.display()))?;
    if recording.snapshots.is_empty() {
        match &recording.damage {
            Some(d) => bail!(
                "{} is not a loopscope recording: line {} is not a snapshot ({})",
                path.display(),
                d.line,
                d.error
            ),
            None => bail!(
                "{} holds no snapshot: record one with `loopscope --record FILE`",
                path.display()
            ),
        }
    }
    Ok(Source {
        name: path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        ),
        recording,
        modified: std::fs::metadata(path).and_then(|m| m.modified()).ok(),
    })
}

/// Reads `files`, writes the report to `out` and returns it.
pub fn run(files: &[PathBuf], out: &Path) -> anyhow::Result<Report> {
    // Never write the page over a recording.
    if let Ok(target) = out.canonicalize() {
        if files
            .iter()
            .any(|f| f.canonicalize().is_ok_and(|f| f == target))
        {
            bail!(
                "{} is one of the recordings: give the page another name",
                out.display()
            );
        }
    }
    let sources = files
        .iter()
        .map(|f| load(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let report = render(&sources).map_err(anyhow::Error::msg)?;
    std::fs::write(out, &report.html).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(report)
}

/// One server's part of a recording.
struct Section<'a> {
    source: &'a Source,
    /// 1-based, when the recording holds several servers.
    part: Option<usize>,
    info: Option<&'a ServerInfo>,
    range: Range<usize>,
}

/// Cuts a recording where the server changes: another model, address or process.
fn split(source: &Source) -> Vec<Section<'_>> {
    let rec = &source.recording;
    let same = |a: &ServerInfo, b: &ServerInfo| {
        (a.model, &a.telemetry, a.pid) == (b.model, &b.telemetry, b.pid)
    };
    let mut out = Vec::new();
    let mut next_info = 0;
    let mut current: Option<&ServerInfo> = rec.infos.first().map(|(_, i)| i);
    let mut start = 0;
    for (i, snap) in rec.snapshots.iter().enumerate() {
        let mut info = current;
        while let Some((at, next)) = rec.infos.get(next_info) {
            if *at > i {
                break;
            }
            info = Some(next);
            next_info += 1;
        }
        let changed = match (current, info) {
            (Some(a), Some(b)) => !same(a, b),
            _ => false,
        } || (i > 0 && rec.snapshots[i - 1].model != snap.model);
        if changed && i > start {
            out.push(Section {
                source,
                part: None,
                info: current,
                range: start..i,
            });
            start = i;
        }
        current = info;
    }
    out.push(Section {
        source,
        part: None,
        info: current,
        range: start..rec.snapshots.len(),
    });
    if out.len() > 1 {
        for (i, s) in out.iter_mut().enumerate() {
            s.part = Some(i + 1);
        }
    }
    out
}

/// The page for `sources`.
pub fn render(sources: &[Source]) -> Result<Report, String> {
    let mut warnings = Vec::new();
    let mut body = String::new();
    let mut sections = 0;
    for source in sources {
        if let Some(d) = &source.recording.damage {
            warnings.push(format!(
                "{} is damaged at line {}: {}; the report covers the {} snapshots before it",
                source.name,
                d.line,
                d.error,
                source.recording.snapshots.len()
            ));
        }
        for section in split(source) {
            sections += 1;
            body.push_str(&render_section(&section)?);
        }
    }
    let mut page = String::with_capacity(body.len() + 8192);
    page.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    page.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
    let _ = writeln!(
        page,
        "<title>loopscope report: {}</title>\n<style>{}</style>\n</head>\n<body>",
        escape(&names.join(", ")),
        html::STYLE
    );
    let _ = writeln!(
        page,
        "<h1>loopscope report</h1>\n<p class=\"meta\">{} recording{} ({}), {} server{}; made by loopscope {}.</p>",
        sources.len(),
        if sources.len() == 1 { "" } else { "s" },
        escape(&names.join(", ")),
        sections,
        if sections == 1 { "" } else { "s" },
        env!("CARGO_PKG_VERSION")
    );
    for w in &warnings {
        let _ = writeln!(page, "<p class=\"warn\">{}</p>", escape(w));
    }
    page.push_str(&body);
    page.push_str("</body>\n</html>\n");
    Ok(Report {
        html: page,
        warnings,
        sections,
    })
}

fn render_section(section: &Section) -> Result<String, String> {
    let rec = &section.source.recording;
    let snaps: &[Snapshot] = &rec.snapshots[section.range.clone()];
    let data = SectionData::new(snaps);
    let mut out = String::new();
    let model = snaps.first().map_or(Model::Custom, |s| s.model);
    let mut title = format!("{model} · {}", escape(&section.source.name));
    if let Some(p) = section.part {
        let _ = write!(title, " · server {p}");
    }
    let _ = writeln!(
        out,
        "<section class=\"server\">\n<h2>{title}</h2>\n<table class=\"facts\">"
    );
    let mut fact = |k: &str, v: String| {
        let _ = writeln!(out, "<tr><th>{k}</th><td>{v}</td></tr>");
    };
    if let Some(i) = section.info {
        fact(
            "server",
            escape(&format!(
                "{} · app {} · telemetry {} · pid {}",
                i.model, i.app, i.telemetry, i.pid
            )),
        );
    }
    let pids: Vec<String> = match section.info {
        Some(i) if !i.workers.is_empty() => i
            .workers
            .iter()
            .map(|w| format!("w{} (pid {})", w.id, w.pid))
            .collect(),
        _ => data.workers.iter().map(|id| format!("w{id}")).collect(),
    };
    fact(
        "workers",
        escape(&format!("{}: {}", pids.len(), pids.join(", "))),
    );
    let pool = section.info.map_or(data.pool_size, |i| i.pool_size);
    fact("pool size", format!("{pool} per worker"));
    if let Some(i) = section.info {
        fact(
            "versions",
            escape(&format!(
                "loopscope {}, telemetry protocol {}",
                i.versions.loopscope, i.versions.protocol
            )),
        );
        fact("sample period", format!("{} ms", i.period_ms));
    }
    let first_t = rec.snapshots.first().map_or(0, |s| s.t_ms);
    let (a, b) = (
        snaps.first().map_or(0, |s| s.t_ms),
        snaps.last().map_or(0, |s| s.t_ms),
    );
    let start = section.source.modified.and_then(|m| {
        let since_first = Duration::from_millis(a.saturating_sub(first_t));
        m.checked_sub(Duration::from_secs_f64(rec.duration_s()))?
            .checked_add(since_first)
    });
    fact(
        "recorded",
        format!(
            "{}{}, {} snapshots (server time {:.1} s to {:.1} s)",
            match start {
                Some(t) => format!("from about {} for ", html::utc(t)),
                None => String::new(),
            },
            html::duration(data.duration_s),
            snaps.len(),
            a as f64 / 1000.0,
            b as f64 / 1000.0
        ),
    );
    out.push_str("</table>\n");
    if start.is_some() {
        out.push_str("<p class=\"note\">A recording keeps server time only: the start is the file's last write less the recording's length.</p>\n");
    }
    let mut summary = Summary::default();
    let mut diagnosis = RunDiagnosis::default();
    for s in snaps {
        summary.observe(s);
        diagnosis.observe(s);
    }
    summary.finish();
    let lines = diagnosis.lines();
    out.push_str("<h3>Diagnosis</h3>\n<div class=\"diagnosis\">\n");
    for d in &lines {
        let _ = writeln!(out, "<p>▶ {}</p>", escape(&d.text));
    }
    if lines.is_empty() {
        out.push_str("<p class=\"note\">Nothing crossed a threshold: no loop lag of 100 ms, no median of 10 ms, no pool queued for a second.</p>\n");
    }
    out.push_str("</div>\n");
    out.push_str(&section_charts(&data, model, snaps)?);
    out.push_str(&events_table(&data));
    out.push_str(&summary_table(&summary));
    out.push_str("</section>\n");
    Ok(out)
}

fn peak(series: &[&Series]) -> f64 {
    series.iter().map(|s| s.peak()).fold(0.0, f64::max)
}

fn section_charts<'a>(
    data: &'a SectionData,
    model: Model,
    snaps: &[Snapshot],
) -> Result<String, String> {
    let mut out = String::new();
    let period = snaps
        .iter()
        .map(|s| s.period_ms)
        .find(|p| *p > 0)
        .unwrap_or(100);
    let workers = data.lag.len();
    // Lines break where more than three periods (or three drawing buckets) pass
    // without a figure.
    let gap_s =
        (3.0 * period as f64 / 1000.0).max(3.0 * data.duration_s / series::MAX_POINTS as f64);
    let paint = |list: &'a [Series], shade: u8| {
        list.iter()
            .enumerate()
            .map(move |(i, s)| (s, worker_colour(i, shade)))
    };
    let lag: Vec<_> = paint(&data.lag, 1).collect();
    let lag_top = (peak(&data.lag.iter().collect::<Vec<_>>()) * 1.05).max(1.0);
    let (what, unit) = if model == Model::Tokio {
        ("Task poll time per worker thread", "poll time, ms")
    } else {
        ("Loop tick lag per worker", "lag, ms")
    };
    out.push_str(&charts::draw(&Chart {
        id: "lag",
        title: format!(
            "{what}, ms (max per {period} ms sample; shaded: live stalls, labelled with the request holding the loop)"
        ),
        y_desc: unit,
        series: lag,
        y_top: lag_top,
        duration_s: data.duration_s,
        gap_s,
        stalls: &data.stalls,
        marks: &data.events,
    })?);
    let pool: Vec<_> = paint(&data.queued, 1).chain(paint(&data.busy, 2)).collect();
    let pool_peak = peak(&data.queued.iter().chain(&data.busy).collect::<Vec<_>>());
    out.push_str(&charts::draw(&Chart {
        id: "pool",
        title: format!(
            "Thread pool per worker: jobs queued (dark) and threads busy (light); pool size {}",
            data.pool_size
        ),
        y_desc: "jobs",
        series: pool,
        y_top: (pool_peak.max(1.0) * 1.05).max(1.0),
        duration_s: data.duration_s,
        gap_s,
        stalls: &[],
        marks: &data.events,
    })?);
    // Loop then pool for each worker, the host last.
    let mut cpu: Vec<(&Series, _)> = data.cpu[..workers * 2]
        .chunks(2)
        .enumerate()
        .flat_map(|(i, pair)| {
            [
                (&pair[0], worker_colour(i, 1)),
                (&pair[1], worker_colour(i, 2)),
            ]
        })
        .collect();
    cpu.extend(data.cpu.last().map(|host| (host, HOST)));
    let cores = snaps.iter().map(|s| s.host.cores).max().unwrap_or(0);
    out.push_str(&charts::draw(&Chart {
        id: "cpu",
        title: format!(
            "CPU, % of one core: loop thread (dark) and pool threads (light) per worker; host{}",
            if cores > 0 {
                format!(" ({cores} cores)")
            } else {
                String::new()
            }
        ),
        y_desc: "% of one core",
        series: cpu,
        y_top: peak(&data.cpu.iter().collect::<Vec<_>>()).max(100.0) * 1.05,
        duration_s: data.duration_s,
        gap_s,
        stalls: &[],
        marks: &data.events,
    })?);
    if !data.latency.is_empty() {
        // The max under the p99 under the p50: where they meet, the lower one shows.
        let series: Vec<_> = data.latency.iter().zip(LATENCY).rev().collect();
        out.push_str(&charts::draw(&Chart {
            id: "latency",
            title: "Request latency, ms, as the server measured it: the busiest endpoint's p50, the worst endpoint's p99 and max".into(),
            y_desc: "latency, ms",
            y_top: (peak(&data.latency.iter().collect::<Vec<_>>()) * 1.05).max(1.0),
            series,
            duration_s: data.duration_s,
        gap_s,
            stalls: &[],
            marks: &data.events,
        })?);
    }
    Ok(out)
}

fn events_table(data: &SectionData) -> String {
    let mut out = String::from("<h3>Events</h3>\n");
    if data.events.is_empty() {
        out.push_str("<p class=\"note\">No event: no slow poll, no worker death.</p>\n");
        return out;
    }
    out.push_str("<table class=\"events\">\n<tr><th>time</th><th>event</th></tr>\n");
    for e in &data.events {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td></tr>",
            html::seconds(e.t_s),
            escape(&e.text)
        );
    }
    out.push_str("</table>\n");
    if data.events_left_off > 0 {
        let _ = writeln!(
            out,
            "<p class=\"note\">{} more events are left off.</p>",
            data.events_left_off
        );
    }
    out
}

/// The table a headless run prints at its end.
fn summary_table(summary: &Summary) -> String {
    format!(
        "<h3>Summary</h3>\n<pre class=\"summary\">{}</pre>\n",
        escape(&summary.table())
    )
}

#[cfg(test)]
mod tests;
