//! State updates: series, stalls, events, traffic, bounds.

use super::*;
use crate::protocol::Model;
use crate::test_support::{info, snapshot, worker};
use std::time::Duration;

fn snap_msg(s: Snapshot) -> Msg {
    Msg::Telemetry(TelemetryMsg::Snapshot(Box::new(s)))
}

#[test]
fn snapshots_build_series_and_prune_to_the_window() {
    let mut d = Dashboard::default();
    let now = Instant::now();
    for seq in 1..=700 {
        let lag = if seq == 650 { 412.0 } else { 0.5 };
        d.apply(
            snap_msg(snapshot(seq, vec![worker(0, lag, 0.0, 0)], vec![])),
            now,
            "12:00:00",
        );
    }
    let w = &d.workers[&0];
    // 60 s of 100 ms lines, both ends included.
    assert_eq!(w.lag.len(), 601);
    assert_eq!(w.lag.front().unwrap().0, 10.0);
    assert_eq!(d.lag_peak_ms(), 412.0);
    assert_eq!(d.missed_lines, 0);
    assert_eq!(d.connection, Connection::Live);
    // A server whose clock stands still cannot grow the history.
    for seq in 701..=5000 {
        let mut s = snapshot(seq, vec![worker(0, 0.5, 0.0, 0)], vec![]);
        s.t_ms = 70_000;
        d.apply(snap_msg(s), now, "12:00:00");
    }
    assert_eq!(d.workers[&0].lag.len(), 601);
    let mut v = VecDeque::new();
    for i in 0..10_000 {
        push(&mut v, i as f64 * 0.001, 1.0);
    }
    assert_eq!(v.len(), MAX_POINTS);
}

#[test]
fn a_stall_counts_up_between_lines_and_is_capped() {
    let mut d = Dashboard::default();
    let t0 = Instant::now();
    d.apply(
        snap_msg(snapshot(1, vec![worker(0, 0.4, 120.0, 0)], vec![])),
        t0,
        "x",
    );
    let w = &d.workers[&0];
    assert_eq!(w.stalled_for_ms(t0, 100), 120.0);
    assert_eq!(w.stalled_for_ms(t0 + Duration::from_millis(80), 100), 200.0);
    assert_eq!(w.stalled_for_ms(t0 + Duration::from_secs(5), 100), 270.0);
    // The chart shows the live stall, not the (empty) lag of the period.
    assert_eq!(w.lag.back().unwrap().1, 120.0);
}

#[test]
fn events_become_log_lines_and_gaps_are_counted() {
    let mut d = Dashboard::default();
    let now = Instant::now();
    d.apply(
        Msg::Telemetry(TelemetryMsg::Connected(Box::new(info(Model::Node, 1)))),
        now,
        "12:00:01",
    );
    d.apply(
        snap_msg(snapshot(1, vec![worker(0, 1.0, 0.0, 0)], vec![])),
        now,
        "12:00:02",
    );
    let slow = Event::SlowPoll {
        worker: 0,
        endpoint: "GET /json".into(),
        uri: "GET /json?mb=20".into(),
        ms: 412.4,
        t_ms: 0,
    };
    d.apply(
        snap_msg(snapshot(4, vec![worker(0, 412.0, 0.0, 0)], vec![slow])),
        now,
        "12:00:03",
    );
    assert_eq!(d.missed_lines, 2);
    let last = d.log.back().unwrap();
    assert_eq!(last.text, "w0 loop held 412 ms by GET /json?mb=20");
    assert_eq!((last.at.as_str(), last.kind), ("12:00:03", LogKind::Warn));
    assert!(
        d.log[0]
            .text
            .starts_with("attached to 127.0.0.1:9464 · node")
    );
}

#[test]
fn disconnect_is_logged_once_and_a_new_server_clears_history() {
    let mut d = Dashboard::default();
    let now = Instant::now();
    d.apply(
        Msg::Telemetry(TelemetryMsg::Connected(Box::new(info(Model::Node, 1)))),
        now,
        "a",
    );
    d.apply(
        snap_msg(snapshot(50, vec![worker(0, 1.0, 0.0, 0)], vec![])),
        now,
        "a",
    );
    for _ in 0..3 {
        d.apply(
            Msg::Telemetry(TelemetryMsg::Disconnected {
                reason: "connection refused".into(),
                retry_in: Duration::from_millis(400),
            }),
            now,
            "b",
        );
    }
    assert!(matches!(d.connection, Connection::Lost { .. }));
    assert_eq!(
        d.log
            .iter()
            .filter(|l| l.text.starts_with("telemetry lost"))
            .count(),
        1
    );
    d.apply(
        Msg::Telemetry(TelemetryMsg::Connected(Box::new(info(Model::Node, 2)))),
        now,
        "c",
    );
    assert!(
        d.workers.is_empty(),
        "a restarted server starts a new history"
    );
    assert!(d.log.back().unwrap().text.starts_with("reconnected to"));
    d.apply(
        snap_msg(snapshot(1, vec![worker(0, 1.0, 0.0, 0)], vec![])),
        now,
        "c",
    );
    assert_eq!(d.workers[&0].lag.len(), 1);
    assert_eq!(d.connection, Connection::Live);
}

#[test]
fn load_windows_accumulate_errors() {
    let mut d = Dashboard::default();
    let now = Instant::now();
    for _ in 0..3 {
        d.apply(
            Msg::Load(LoadStats {
                ok: 100,
                errors: 1,
                timeouts: 2,
                ..Default::default()
            }),
            now,
            "x",
        );
    }
    assert_eq!(
        (d.traffic.errors, d.traffic.timeouts, d.traffic.last.ok),
        (3, 6, 100)
    );
    assert_eq!(short_ms(412.3), "412 ms");
    assert_eq!(short_ms(1340.0), "1.3 s");
    assert_eq!(short_ms(0.44), "0.4 ms");
}
