//! How long `loopscope report` takes on a long recording, and how big the page is.
//!
//! `cargo bench --bench report` (`-- ROUNDS`, default 5). Results go in
//! BENCHMARKS.md.
//!
//! The recording is synthetic: 10 minutes of 100 ms lines from a two-worker server
//! (6,001 snapshots with three endpoints' latency per worker, a slow poll a minute
//! and one sample's lag spike in the middle), written once. Each round times what the
//! command does: read the recording, draw the page, write it.

#[path = "../tests/common/synthetic.rs"]
mod synthetic;

use std::time::Instant;

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let rec = dir.path().join("ten-minutes.ndjson");
    synthetic::write(&rec, 600);
    let rec_size = std::fs::metadata(&rec).map_or(0, |m| m.len());
    let out = dir.path().join("ten-minutes.html");
    println!(
        "recording: 10 min, 6001 snapshots, 2 workers, {:.1} MB",
        rec_size as f64 / 1e6
    );
    let mut times = Vec::new();
    for round in 1..=rounds {
        let t = Instant::now();
        let report = loopscope::report::run(std::slice::from_ref(&rec), &out)
            .expect("the report is written");
        let took = t.elapsed().as_secs_f64();
        // The same steps apart: reading, and drawing the page.
        let t = Instant::now();
        let source = loopscope::report::load(&rec).expect("the recording reads");
        let read = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let page = loopscope::report::render(std::slice::from_ref(&source)).expect("renders");
        let draw = t.elapsed().as_secs_f64();
        assert_eq!(page.html.len(), report.html.len());
        println!(
            "round {round}: {:.0} ms (read {:.0} ms, draw {:.0} ms), page {:.0} KB",
            took * 1000.0,
            read * 1000.0,
            draw * 1000.0,
            report.html.len() as f64 / 1024.0
        );
        times.push(took);
    }
    times.sort_by(f64::total_cmp);
    let size = std::fs::metadata(&out).map_or(0, |m| m.len());
    println!(
        "report of 10 minutes: median {:.0} ms, max {:.0} ms over {rounds} rounds; page {:.2} MB",
        times[times.len() / 2] * 1000.0,
        times[times.len() - 1] * 1000.0,
        size as f64 / (1 << 20) as f64
    );
}
