//! `loopscope report` on real recordings: what the charts draw (read back from the
//! SVG through each chart's axis mapping), that the page fetches nothing, long and
//! damaged recordings, and bad input.

mod common;
#[path = "common/synthetic.rs"]
mod synthetic;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::serial;
use loopscope::record::Recording;

fn loopscope(args: &[&str], bound: Duration) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_loopscope"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loopscope");
    common::output_within(child, bound, &format!("loopscope {args:?}"), || {})
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn report(files: &[&Path], out: &Path) -> (String, String) {
    let mut args: Vec<&str> = vec!["report"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    args.extend(["-o", out.to_str().unwrap()]);
    let o = loopscope(&args, Duration::from_secs(60));
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    (std::fs::read_to_string(out).unwrap(), stderr)
}

/// The `n`th figure whose `data-chart` is `id`.
fn figure<'a>(html: &'a str, id: &str, n: usize) -> &'a str {
    let open = format!("<figure class=\"chart\" data-chart=\"{id}\"");
    let (at, _) = html
        .match_indices(&open)
        .nth(n)
        .unwrap_or_else(|| panic!("no chart {id} #{n}"));
    let end = html[at..].find("</figure>").expect("the figure ends") + at;
    &html[at..end]
}

fn attr<'a>(tag: &'a str, name: &str) -> &'a str {
    let key = format!(" {name}=\"");
    let at = tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {tag:.200}"))
        + key.len();
    &tag[at..at + tag[at..].find('"').unwrap()]
}

/// The values the chart drew for the series `name`, read back from the pixel rows of
/// its polyline (found by its colour) through the figure's y mapping.
fn drawn(fig: &str, name: &str) -> Vec<(f64, f64)> {
    let colour = attr(fig, "data-series")
        .split(';')
        .find_map(|s| s.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no series {name}"));
    let y0: f64 = attr(fig, "data-y0-px").parse().unwrap();
    let ytop_px: f64 = attr(fig, "data-ytop-px").parse().unwrap();
    let ytop: f64 = attr(fig, "data-ytop").parse().unwrap();
    let value = |y: f64| ytop * (y0 - y) / (y0 - ytop_px);
    let mut points: Vec<(f64, f64)> = fig
        .split("<polyline")
        .skip(1)
        .filter(|p| attr(p, "stroke") == colour)
        .flat_map(|line| {
            attr(line, "points").split_whitespace().map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), value(y.parse().unwrap()))
            })
        })
        .collect();
    // Lone points are dots.
    points.extend(
        fig.split("<circle")
            .skip(1)
            .filter(|c| attr(c, "fill") == colour)
            .map(|c| {
                let y: f64 = attr(c, "cy").parse().unwrap();
                (attr(c, "cx").parse().unwrap(), value(y))
            }),
    );
    assert!(!points.is_empty(), "nothing drawn of {name} ({colour})");
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

fn highest(points: &[(f64, f64)]) -> f64 {
    points.iter().map(|p| p.1).fold(0.0, f64::max)
}

/// Everything inside tags, with the text between them (and in `<title>`, `<style>`)
/// left out.
fn markup(html: &str) -> String {
    let mut out = String::new();
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>').expect("tags close") + open;
        out.push_str(&rest[open..=close]);
        rest = &rest[close + 1..];
    }
    out
}

#[test]
fn a_node_block_and_hash_burst_are_charted_as_recorded() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("block-hash.toml");
    std::fs::write(
        &scenario,
        "name = \"block then hashes\"\nmodel = \"node\"\n\
         [[step]]\nload = 50\n\
         [[step]]\nafter = \"2s\"\ntrigger = \"block\"\nms = 500\n\
         [[step]]\nafter = \"2s\"\ntrigger = \"hash\"\ncount = 12\n",
    )
    .unwrap();
    let rec_path = dir.path().join("node.ndjson");
    let log = dir.path().join("loopscope.log");
    let o = loopscope(
        &[
            "--headless",
            "--format",
            "table",
            "--scenario",
            scenario.to_str().unwrap(),
            "--record",
            rec_path.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let rec = Recording::load(&rec_path).unwrap();
    assert_eq!(rec.damage, None);
    let workers = rec.snapshots.iter().flat_map(|s| &s.workers);
    let max_lag = workers
        .clone()
        .map(|w| w.lag_ms.max.max(w.stalled_for_ms))
        .fold(0.0, f64::max);
    let max_queued = workers.map(|w| w.pool.queued).max().unwrap();
    assert!(max_lag >= 450.0, "the block was recorded: {max_lag}");
    assert!(max_queued >= 4, "the hashes queued: {max_queued}");

    let out = dir.path().join("report.html");
    let (html, _) = report(&[&rec_path], &out);
    assert!(html.contains("GET /block?ms=500"), "the culprit is named");
    // Labelled on its stall span in the lag chart.
    let lag = figure(&html, "lag", 0);
    assert!(
        lag.contains("w0 GET /block?ms=500 · "),
        "the stall's label: {lag:.3000}"
    );
    let drawn_lag = highest(&drawn(lag, "w0"));
    assert!(
        (drawn_lag - max_lag).abs() <= max_lag * 0.01,
        "the lag chart peaks at {drawn_lag}, the recording at {max_lag}"
    );
    let pool = figure(&html, "pool", 0);
    let drawn_queue = highest(&drawn(pool, "w0 queued"));
    assert!(
        (drawn_queue - max_queued as f64).abs() <= max_queued as f64 * 0.01,
        "the pool chart peaks at {drawn_queue}, the recording at {max_queued}"
    );
    // The events are listed with their times and marked with their text on hover.
    assert!(html.contains("<title>+"), "event markers have titles");
    assert!(html.contains("w0 loop held 50"), "the slow poll is listed");
    // The summary table and the diagnosis of the whole run.
    assert!(html.contains("longest stall"), "the summary table");
    assert!(html.contains("▶ w0: GET /block?ms=500 held the loop"));
    // Self-contained: no address, script, style sheet or font fetched.
    let tags = markup(&html).to_ascii_lowercase();
    assert!(!tags.contains("http"), "an address in the markup");
    for bad in ["<script", "<link", "<img", "<iframe", "src=", "href="] {
        assert!(!tags.contains(bad), "{bad} in the markup");
    }
    for bad in ["url(", "@import", "@font-face"] {
        assert!(!html.contains(bad), "{bad} in the page");
    }
}

#[test]
fn ten_minutes_stay_small_and_keep_a_one_sample_spike() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("long.ndjson");
    let spike_s = synthetic::write(&rec, 600);
    let out = dir.path().join("long.html");
    let (html, _) = report(&[&rec], &out);
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(size < 3 << 20, "{size} bytes");
    let lag = figure(&html, "lag", 0);
    let w1 = drawn(lag, "w1");
    assert!(w1.len() <= 1200, "{} points drawn", w1.len());
    let peak = highest(&w1);
    assert!(
        (peak - synthetic::SPIKE_MS).abs() <= synthetic::SPIKE_MS * 0.01,
        "the spike is drawn at {peak}"
    );
    // …in the middle of the axis: its x is halfway between the first and last points.
    let x = |p: &(f64, f64)| p.0;
    let at = w1.iter().find(|p| p.1 == peak).map(x).unwrap();
    let (first, last) = (x(&w1[0]), x(w1.last().unwrap()));
    let where_ = (at - first) / (last - first);
    assert!(
        (where_ - spike_s / 600.0).abs() < 0.01,
        "the spike is drawn at {where_} of the axis"
    );
    // w0 never spiked: its line stays low.
    assert!(highest(&drawn(lag, "w0")) < 5.0);
    assert!(figure(&html, "latency", 0).contains("p99"));
}

#[test]
fn a_truncated_recording_is_reported_up_to_its_damage() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("cut.ndjson");
    synthetic::write(&rec, 30);
    let full = std::fs::read_to_string(&rec).unwrap();
    // Keep the header, 150 snapshots and half of the next line.
    let keep: usize = full.lines().take(151).map(|l| l.len() + 1).sum();
    std::fs::write(&rec, &full[..keep + 200]).unwrap();
    let out = dir.path().join("cut.html");
    let (html, stderr) = report(&[&rec], &out);
    assert!(
        stderr.contains("cut.ndjson is damaged at line 152")
            && stderr.contains("the report covers the 150 snapshots before it"),
        "{stderr}"
    );
    assert!(html.contains("damaged at line 152"), "the page says so too");
    assert!(html.contains("150 snapshots (server time 1.0 s to 15.9 s)"));
}

#[test]
fn several_recordings_get_a_section_each() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.ndjson"), dir.path().join("b.ndjson"));
    synthetic::write(&a, 5);
    synthetic::write(&b, 8);
    let (html, stderr) = report(&[&a, &b], &dir.path().join("two.html"));
    assert!(
        stderr.contains("(2 servers)") || stderr.contains("2 servers"),
        "{stderr}"
    );
    assert_eq!(html.matches("<section class=\"server\">").count(), 2);
    assert!(html.contains("fastapi · a.ndjson") && html.contains("fastapi · b.ndjson"));
    assert!(figure(&html, "lag", 1).contains("8.0 s"), "b's own axis");
}

#[test]
fn bad_input_is_a_clear_error_and_status_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.html");
    let cases: [(&str, &[u8], &str); 3] = [
        ("empty.ndjson", b"", "holds no snapshot"),
        (
            "notes.txt",
            b"name = \"a scenario\"\n",
            "is not a loopscope recording: line 1 is not a snapshot",
        ),
        ("zeros.bin", &[0u8; 4096], "is not a loopscope recording"),
    ];
    for (name, content, says) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let o = loopscope(
            &[
                "report",
                path.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ],
            Duration::from_secs(20),
        );
        let stderr = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(says), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!out.exists(), "no page for {name}");
    }
    // The page is never written over a recording.
    let rec = dir.path().join("rec.ndjson");
    synthetic::write(&rec, 2);
    let before = std::fs::read(&rec).unwrap();
    let r = rec.to_str().unwrap();
    let o = loopscope(&["report", r, "-o", r], Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("is one of the recordings"));
    assert_eq!(std::fs::read(&rec).unwrap(), before);
    let o = loopscope(
        &[
            "report",
            "/nonexistent/rec.ndjson",
            "-o",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("cannot read /nonexistent/rec.ndjson"));
}
