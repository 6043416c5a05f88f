use super::*;
use crate::protocol::Model;
use crate::test_support::{info, snapshot, worker};

fn source(infos: Vec<(usize, ServerInfo)>, snapshots: Vec<Snapshot>) -> Source {
    Source {
        name: "rec.ndjson".into(),
        recording: Recording {
            infos,
            snapshots,
            damage: None,
        },
        modified: None,
    }
}

#[test]
fn each_server_of_a_recording_gets_a_section() {
    let mut snaps: Vec<Snapshot> = (1..=30)
        .map(|seq| snapshot(seq, vec![worker(0, 1.0, 0.0, 0)], vec![]))
        .collect();
    for s in &mut snaps[20..] {
        s.model = Model::Fastapi;
    }
    let mut fastapi = info(Model::Fastapi, 9);
    fastapi.pool_size = 40;
    // A reconnection to the same server at 10 does not start a section; the model
    // switch at 20 does.
    let src = source(
        vec![
            (0, info(Model::Node, 7)),
            (10, info(Model::Node, 7)),
            (20, fastapi),
        ],
        snaps,
    );
    let parts = split(&src);
    let got: Vec<(Option<usize>, Range<usize>, Option<u32>)> = parts
        .iter()
        .map(|s| (s.part, s.range.clone(), s.info.map(|i| i.pid)))
        .collect();
    assert_eq!(
        got,
        vec![(Some(1), 0..20, Some(7)), (Some(2), 20..30, Some(9))]
    );
    let report = render(std::slice::from_ref(&src)).unwrap();
    assert_eq!(report.sections, 2);
    assert!(
        report
            .html
            .contains("<h2>node · rec.ndjson · server 1</h2>")
    );
    assert!(
        report
            .html
            .contains("<h2>fastapi · rec.ndjson · server 2</h2>")
    );
    assert!(
        report
            .html
            .contains("<tr><th>pool size</th><td>40 per worker</td></tr>")
    );
    assert!(report.warnings.is_empty());
}

#[test]
fn a_stall_is_shaded_labelled_and_marked() {
    let snaps: Vec<Snapshot> = (1..=40)
        .map(|seq| {
            let stalled = if (10..15).contains(&seq) {
                (seq - 9) as f64 * 100.0
            } else {
                0.0
            };
            let events = if seq == 15 {
                vec![crate::protocol::Event::SlowPoll {
                    worker: 0,
                    endpoint: "GET /block".into(),
                    uri: "GET /block?ms=500&x=<b>".into(),
                    ms: 512.0,
                    t_ms: 0,
                }]
            } else {
                vec![]
            };
            snapshot(seq, vec![worker(0, 1.0, stalled, 0)], events)
        })
        .collect();
    let report = render(&[source(vec![(0, info(Model::Node, 7))], snaps)]).unwrap();
    let html = &report.html;
    // Labelled by the request seen holding the loop, as long as the poll that ended
    // it; the event's text escaped once.
    assert!(html.contains("\nw0 GET /block?ms=500 · 512 ms\n"), "{html}");
    assert!(html.contains(
        "<title>+1.4 s w0 loop held 512 ms by GET /block?ms=500&amp;x=&lt;b&gt;</title>"
    ));
    assert!(html.contains("<td>+1.4 s</td><td>w0 loop held 512 ms"));
    assert!(!html.contains("<b>"));
    // One shaded span on the lag chart, as wide as the stall: 0.5 s of 3.9 s.
    let lag =
        &html[html.find("data-chart=\"lag\"").unwrap()..html.find("data-chart=\"pool\"").unwrap()];
    let rects: Vec<&str> = lag
        .split("<rect")
        .skip(1)
        .filter(|r| r.contains("fill=\"#D62728\""))
        .collect();
    assert_eq!(rects.len(), 1, "{lag}");
    let width: f64 = rects[0]
        .split("width=\"")
        .nth(1)
        .and_then(|w| w.split('"').next())
        .unwrap()
        .parse()
        .unwrap();
    let plot = (charts::WIDTH - 20 - 8 - 64) as f64;
    assert!(
        (width - plot * 0.512 / 3.9).abs() <= 2.0,
        "span {width} px of {plot}"
    );
    assert!(html.contains("▶ w0: GET /block?ms=500&amp;x=&lt;b&gt; held the loop 512 ms"));
}
