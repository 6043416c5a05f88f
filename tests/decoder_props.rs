//! Property tests of the telemetry decoder: whatever bytes a server sends, in whatever
//! chunks, the line splitter, the decoder and the bounds never panic and keep their
//! limits; and a valid stream comes back exactly as it was sent.

use loopscope::client::http::{MAX_LINE, decode_line};
use loopscope::client::lines::{LineSplitter, Piece};
use loopscope::protocol::{
    Event, HostSnapshot, LagSummary, MAX_EVENTS, MAX_STRING, MAX_WORKERS, Model, Snapshot,
    WorkerSnapshot,
};
use proptest::prelude::*;

/// Feeds `bytes` in chunks of the given sizes and returns every piece.
fn split(bytes: &[u8], chunks: &[usize], max: usize) -> Vec<Piece> {
    let mut s = LineSplitter::new(max);
    let mut out = Vec::new();
    let mut at = 0;
    let mut sizes = chunks.iter().cycle();
    while at < bytes.len() {
        let n = (*sizes.next().unwrap_or(&1)).max(1).min(bytes.len() - at);
        s.push(&bytes[at..at + n]);
        at += n;
        out.extend(std::iter::from_fn(|| s.next_piece()));
    }
    out
}

fn snapshot(seq: u64, workers: u32, text: String, events: usize) -> Snapshot {
    Snapshot {
        v: 1,
        seq,
        t_ms: seq.wrapping_mul(100),
        model: Model::Fastapi,
        period_ms: 100,
        workers: (0..workers)
            .map(|id| WorkerSnapshot {
                id,
                pid: 1000 + id,
                alive: true,
                lag_ms: LagSummary {
                    p50: 0.5,
                    p99: 1.5,
                    max: seq as f64,
                    samples: 50,
                },
                stalled_in: Some(text.clone()),
                ..Default::default()
            })
            .collect(),
        host: HostSnapshot {
            cpu: 12.5,
            cores: 2,
        },
        events: (0..events)
            .map(|i| Event::SlowPoll {
                worker: 0,
                endpoint: "GET /x".into(),
                uri: text.clone(),
                ms: i as f64,
                t_ms: seq,
            })
            .collect(),
        runtime: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic_and_lines_stay_bounded(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        chunks in proptest::collection::vec(1usize..300, 1..8),
        max in 1usize..512,
    ) {
        for piece in split(&bytes, &chunks, max) {
            if let Piece::Line(line) = piece {
                prop_assert!(line.len() <= max);
                prop_assert!(!line.contains(&b'\n'));
                if let Ok(mut snap) = decode_line(&line) {
                    snap.bound();
                }
            }
        }
    }

    #[test]
    fn arbitrary_json_never_panics_and_is_bounded(
        seq in any::<u64>(),
        workers in 0u32..300,
        text in "\\PC{0,300}",
        events in 0usize..80,
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let snap = snapshot(seq, workers, text, events);
        let mut json = serde_json::to_vec(&snap).unwrap();
        // A valid line decodes; bounded, it keeps the limits.
        let mut back = decode_line(&json).unwrap();
        back.bound();
        prop_assert!(back.workers.len() <= MAX_WORKERS);
        prop_assert!(back.events.len() <= MAX_EVENTS);
        for w in &back.workers {
            prop_assert!(w.stalled_in.as_ref().unwrap().chars().count() <= MAX_STRING);
        }
        // The same line damaged anywhere never panics.
        let at = (seq as usize) % (json.len() + 1);
        json.splice(at..at, garbage);
        let _ = decode_line(&json).map(|mut s| s.bound());
    }

    #[test]
    fn a_valid_stream_round_trips_whatever_its_chunks(
        n in 1u64..20,
        workers in 1u32..5,
        text in "[a-z /?=]{0,40}",
        chunks in proptest::collection::vec(1usize..700, 1..8),
    ) {
        let sent: Vec<Snapshot> = (1..=n).map(|seq| snapshot(seq, workers, text.clone(), 2)).collect();
        let mut bytes = Vec::new();
        for s in &sent {
            serde_json::to_writer(&mut bytes, s).unwrap();
            bytes.push(b'\n');
        }
        let got: Vec<Snapshot> = split(&bytes, &chunks, MAX_LINE)
            .into_iter()
            .map(|p| match p {
                Piece::Line(line) => decode_line(&line).unwrap(),
                Piece::TooLong(n) => panic!("a {n}-byte line was too long"),
            })
            .collect();
        prop_assert_eq!(got, sent);
    }
}
