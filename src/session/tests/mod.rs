//! The session core on fake targets: small in-process telemetry servers and a demo
//! launcher that starts no process. No terminal, no child process.

mod fake;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fake::{config, fake, fake_claiming, log_of, runtime, snapshot_of, until};

use super::supervise::after_death;
use super::*;
use crate::record::Recording;
use crate::test_support::{info, snapshot, worker};
use crate::workload::Workload;

#[test]
fn several_targets_each_get_their_own_updates() {
    let rt = runtime();
    let _rt = rt.enter();
    rt.block_on(async {
        let (a, b) = (fake(Model::Node).await, fake(Model::Fastapi).await);
        let mut session = Session::new(config(vec![
            TargetSpec::Attach {
                telemetry: a.addr.clone(),
                app: Some(a.addr),
            },
            TargetSpec::Attach {
                telemetry: b.addr.clone(),
                app: Some(b.addr),
            },
        ]))
        .unwrap();
        assert_eq!(session.len(), 2);
        assert!(
            !session.can_switch(),
            "attached servers are not ours to switch"
        );
        let mut seen = [0u32; 2];
        until(&mut session, |u| {
            if let Some((target, model)) = snapshot_of(u) {
                // Target 0 is the node server, target 1 the fastapi one.
                assert_eq!(model, [Model::Node, Model::Fastapi][target]);
                seen[target] += 1;
            }
            seen.iter().all(|n| *n >= 5)
        })
        .await;
        // A workload fired goes to every target, and each says it was sent.
        session.perform(Command::Fire(Workload::Block, crate::workload::SIZES[0]));
        let mut sent = [false; 2];
        until(&mut session, |u| {
            if let Some((t, text)) = log_of(u) {
                if text == "block 100 ms → sent" {
                    sent[t] = true;
                }
            }
            sent == [true, true]
        })
        .await;
        let mut answered = [false; 2];
        until(&mut session, |u| {
            if let Some((t, text)) = log_of(u) {
                answered[t] |= text.starts_with("block 100 ms → w0 (pid 7)");
            }
            answered == [true, true]
        })
        .await;
    });
}

static FAKE_DEMO: OnceLock<Mutex<String>> = OnceLock::new();

/// Starts no process: after 1 s for fastapi (at once for node) it says the demo
/// listens at the fake server's address.
fn fake_launcher(
    model: Model,
    workers: u32,
    _log: &std::path::Path,
    on_line: Box<dyn FnOnce(String) + Send>,
) -> anyhow::Result<DemoChild> {
    let addr = FAKE_DEMO.get().unwrap().lock().unwrap().clone();
    std::thread::spawn(move || {
        if model == Model::Fastapi {
            std::thread::sleep(Duration::from_secs(1));
        }
        on_line(format!(
            r#"{{"app":"{addr}","telemetry":"{addr}","pid":4242}}"#
        ));
    });
    Ok(DemoChild::stand_in(model, workers))
}

#[test]
fn a_model_switch_never_blocks_the_session() {
    // It counts the runtime's ticks: not beside other timing tests.
    let _timing = crate::test_support::timing_lock();
    let rt = runtime();
    let _rt = rt.enter();
    rt.block_on(async {
        let server = fake(Model::Node).await;
        FAKE_DEMO.get_or_init(|| Mutex::new(server.addr.clone()));
        *FAKE_DEMO.get().unwrap().lock().unwrap() = server.addr.clone();
        // The launcher's thread needs the runtime's server running: start the session
        // from a blocking thread, as a driver does before its loop.
        let cfg = config(vec![TargetSpec::Demo {
            model: Model::Node,
            workers: 1,
        }]);
        let mut session =
            tokio::task::spawn_blocking(move || Session::with_launcher(cfg, fake_launcher))
                .await
                .unwrap()
                .unwrap();
        assert!(session.can_switch());
        until(&mut session, |u| snapshot_of(u).is_some()).await;

        // The runtime keeps running while the next server starts: count its ticks.
        let ticks = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&ticks);
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        let asked = Instant::now();
        session.perform(Command::SwitchModel);
        assert!(
            asked.elapsed() < Duration::from_millis(200),
            "{:?}",
            asked.elapsed()
        );
        let seen = until(&mut session, |u| matches!(u, Update::Restarted { .. })).await;
        ticker.abort();
        let took = match seen.last() {
            Some(Update::Restarted { took, .. }) => *took,
            _ => unreachable!(),
        };
        assert!(took >= Duration::from_millis(900), "{took:?}");
        assert!(
            ticks.load(Ordering::Relaxed) >= 30,
            "the runtime was blocked during the switch: {} ticks",
            ticks.load(Ordering::Relaxed)
        );
        assert!(
            seen.iter()
                .any(|u| log_of(u) == Some((0, "switching to the fastapi model…")))
        );
        assert!(seen.iter().any(|u| matches!(
            u,
            Update::Target {
                msg: Msg::Reset { keep_log: true, .. },
                ..
            }
        )));
        // The new server's lines flow again.
        until(&mut session, |u| snapshot_of(u).is_some()).await;
    });
}

#[test]
fn the_model_key_cycles_node_fastapi_tokio() {
    assert_eq!(next_model(Some(Model::Node)), Model::Fastapi);
    assert_eq!(next_model(Some(Model::Fastapi)), Model::Tokio);
    assert_eq!(next_model(Some(Model::Tokio)), Model::Node);
    assert_eq!(next_model(Some(Model::Custom)), Model::Node);
    assert_eq!(next_model(None), Model::Node);
}

#[test]
fn a_step_that_switches_the_model_fires_at_the_new_server() {
    let _timing = crate::test_support::timing_lock();
    let rt = runtime();
    let _rt = rt.enter();
    rt.block_on(async {
        let server = fake(Model::Node).await;
        FAKE_DEMO.get_or_init(|| Mutex::new(server.addr.clone()));
        *FAKE_DEMO.get().unwrap().lock().unwrap() = server.addr.clone();
        let scenario = crate::scenario::Scenario::parse(
            r#"
            name = "switch and fire"
            [[step]]
            model = "fastapi"
            trigger = "block"
            ms = 100
            caption = "switched"
            "#,
        )
        .unwrap();
        let mut cfg = config(vec![TargetSpec::Demo {
            model: Model::Node,
            workers: 1,
        }]);
        cfg.scenario = Some(scenario);
        let mut session =
            tokio::task::spawn_blocking(move || Session::with_launcher(cfg, fake_launcher))
                .await
                .unwrap()
                .unwrap();
        // The fastapi server takes 1 s to start: the block waits for it, then goes.
        let seen = until(&mut session, |u| {
            log_of(u).is_some_and(|(_, t)| t.starts_with("block 100 ms → w0"))
        })
        .await;
        let switched = seen
            .iter()
            .position(|u| matches!(u, Update::Restarted { .. }))
            .expect("the switch completed");
        let sent = seen
            .iter()
            .position(|u| log_of(u) == Some((0, "block 100 ms → sent")))
            .expect("the block was sent");
        assert!(
            sent > switched,
            "fired before the new server was up: {seen:#?}"
        );
        assert!(
            !seen
                .iter()
                .any(|u| log_of(u).is_some_and(|(_, t)| t.starts_with("not connected"))),
            "{seen:#?}"
        );
        assert_eq!(server.blocks.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn a_scenario_step_sets_the_load_captions_and_fires() {
    let rt = runtime();
    let _rt = rt.enter();
    rt.block_on(async {
        let server = fake(Model::Node).await;
        let scenario = crate::scenario::Scenario::parse(
            r#"
            name = "test"
            [[step]]
            caption = "quiet"
            load = 20
            [[step]]
            after = "200ms"
            trigger = "block"
            ms = 300
            caption = "blocked"
            "#,
        )
        .unwrap();
        let mut cfg = config(vec![TargetSpec::Attach {
            telemetry: server.addr.clone(),
            app: Some(server.addr.clone()),
        }]);
        cfg.scenario = Some(scenario);
        let mut session = Session::new(cfg).unwrap();
        let seen = until(
            &mut session,
            |u| matches!(u, Update::Caption(c) if c == "[2/2] blocked"),
        )
        .await;
        assert!(
            seen.iter()
                .any(|u| matches!(u, Update::Caption(c) if c == "[1/2] quiet"))
        );
        assert!(seen.iter().any(|u| matches!(
            u,
            Update::Target { msg: Msg::LoadPlan { on: true, rate }, .. } if *rate == 20.0
        )));
        assert!(
            seen.iter()
                .any(|u| log_of(u) == Some((0, "block 300 ms → sent")))
        );
        until(&mut session, |u| {
            log_of(u).is_some_and(|(_, t)| t.starts_with("block 300 ms → w0"))
        })
        .await;
        assert_eq!(server.blocks.load(Ordering::Relaxed), 1);
        assert_eq!(session.load(), (true, 20.0));
        // The background load reached the server and its figures come back.
        until(
            &mut session,
            |u| matches!(u, Update::Target { msg: Msg::Load(s), .. } if s.ok > 0),
        )
        .await;
    });
}

#[test]
fn an_attached_server_gets_no_load_or_workload_unless_its_app_is_named() {
    let rt = runtime();
    let _rt = rt.enter();
    rt.block_on(async {
        // A telemetry server that claims another server's address as its app.
        let victim = fake(Model::Node).await;
        let liar = fake_claiming(Model::Node, Some(victim.addr.clone())).await;
        let mut cfg = config(vec![TargetSpec::Attach {
            telemetry: liar.addr.clone(),
            app: None,
        }]);
        cfg.load = true;
        cfg.rate = 200.0;
        let mut session = Session::new(cfg).unwrap();
        let seen = until(&mut session, |u| snapshot_of(u).is_some()).await;
        let hint = format!(
            "telemetry only: pass --app HOST:PORT to send load and workloads (the server says its app is at {})",
            victim.addr
        );
        assert!(seen.iter().any(|u| log_of(u) == Some((0, hint.as_str()))), "{seen:#?}");
        session.perform(Command::Fire(Workload::Block, crate::workload::SIZES[0]));
        session.perform(Command::Fire(Workload::Sync, crate::workload::SIZES[0]));
        let mut n = 0;
        until(&mut session, |u| {
            n += snapshot_of(u).is_some() as u32;
            n == 25
        })
        .await;
        assert_eq!(victim.hellos.load(Ordering::Relaxed), 0, "load went to the claimed app");
        assert_eq!(victim.blocks.load(Ordering::Relaxed), 0, "a workload went to the claimed app");
        assert_eq!(liar.hellos.load(Ordering::Relaxed), 0);

        // Named by the user: load and workloads go to exactly that address.
        let mut cfg = config(vec![TargetSpec::Attach {
            telemetry: liar.addr.clone(),
            app: Some(liar.addr.clone()),
        }]);
        cfg.load = true;
        cfg.rate = 200.0;
        let mut session = Session::new(cfg).unwrap();
        until(&mut session, |u| snapshot_of(u).is_some()).await;
        session.perform(Command::Fire(Workload::Block, crate::workload::SIZES[0]));
        until(&mut session, |u| {
            log_of(u).is_some_and(|(_, t)| t.starts_with("block 100 ms → w0"))
        })
        .await;
        until(&mut session, |u| {
            matches!(u, Update::Target { msg: Msg::Load(s), .. } if s.ok > 0)
        })
        .await;
        assert_eq!(liar.blocks.load(Ordering::Relaxed), 1);
        assert!(liar.hellos.load(Ordering::Relaxed) > 0);
        assert_eq!(victim.hellos.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn restarts_back_off_and_stop_after_quick_deaths() {
    let t0 = Instant::now();
    let mut quick = Vec::new();
    // A death after a long life restarts after 0.5 s and forgets earlier deaths.
    assert_eq!(
        after_death(&mut quick, Some(t0), t0 + Duration::from_secs(60)),
        Some(Duration::from_millis(500))
    );
    // Quick deaths: 0.5 s, 1 s, then the session gives up.
    let s1 = t0 + Duration::from_secs(61);
    assert_eq!(
        after_death(&mut quick, Some(s1), s1 + Duration::from_secs(1)),
        Some(Duration::from_millis(500))
    );
    let s2 = s1 + Duration::from_secs(3);
    assert_eq!(
        after_death(&mut quick, Some(s2), s2 + Duration::from_secs(1)),
        Some(Duration::from_secs(1))
    );
    let s3 = s2 + Duration::from_secs(4);
    assert_eq!(
        after_death(&mut quick, Some(s3), s3 + Duration::from_secs(1)),
        None
    );
    assert!(quick.is_empty(), "m starts afresh");
    assert_eq!(restart_delay(0), Duration::from_millis(500));
    assert_eq!(restart_delay(1), Duration::from_secs(1));
    assert_eq!(restart_delay(2), Duration::from_secs(2));
    assert_eq!(restart_delay(3), Duration::from_secs(4));
    assert_eq!(restart_delay(60), Duration::from_secs(4));
}

#[test]
fn a_recording_holds_the_server_and_its_snapshots() {
    let rt = runtime();
    let _rt = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.ndjson");
    rt.block_on(async {
        let server = fake(Model::Node).await;
        let mut cfg = config(vec![TargetSpec::Attach {
            telemetry: server.addr.clone(),
            app: None,
        }]);
        cfg.record = Some(path.clone());
        let mut session = Session::new(cfg).unwrap();
        let mut n = 0;
        until(&mut session, |u| {
            n += snapshot_of(u).is_some() as u32;
            n == 10
        })
        .await;
    });
    let rec = Recording::load(&path).unwrap();
    assert_eq!(rec.damage, None);
    assert_eq!(rec.infos.len(), 1);
    assert_eq!(rec.infos[0].1.pid, 7);
    assert!(rec.snapshots.len() >= 10, "{}", rec.snapshots.len());
    // Several targets record a file each (`record::paths_for`; tested headless with
    // two servers in tests/headless.rs).
}

#[test]
fn a_replay_feeds_its_lines_and_seeks() {
    let rt = runtime();
    let _rt = rt.enter();
    rt.block_on(async {
        let rec = Recording {
            infos: vec![(0, info(Model::Node, 7))],
            snapshots: (1..=30)
                .map(|seq| snapshot(seq, vec![worker(0, 1.0, 0.0, 0)], vec![]))
                .collect(),
            damage: None,
        };
        let mut session = Session::new(config(vec![TargetSpec::Replay {
            file: "x.ndjson".into(),
            recording: Box::new(rec),
        }]))
        .unwrap();
        assert!(session.is_replay() && !session.can_switch());
        let seen = until(&mut session, |u| snapshot_of(u).is_some()).await;
        assert!(matches!(
            seen[0],
            Update::Target {
                msg: Msg::Reset {
                    keep_log: false,
                    info: Some(_)
                },
                ..
            }
        ));
        session.perform(Command::Seek(2000));
        let seen = until(
            &mut session,
            |u| matches!(u, Update::Replay(r) if r.at_s >= 2.0),
        )
        .await;
        // The seek starts over and feeds every line up to 2.1 s.
        let after_reset = seen
            .iter()
            .rposition(|u| {
                matches!(
                    u,
                    Update::Target {
                        msg: Msg::Reset { .. },
                        ..
                    }
                )
            })
            .unwrap();
        assert_eq!(
            seen[after_reset..].iter().filter_map(snapshot_of).count(),
            21
        );
        session.perform(Command::Speed(4));
        until(
            &mut session,
            |u| matches!(u, Update::Replay(r) if r.speed == 4),
        )
        .await;
        session.perform(Command::Fire(Workload::Json, crate::workload::SIZES[0]));
        until(&mut session, |u| {
            log_of(u) == Some((0, "a replay has no server to send workloads to"))
        })
        .await;
    });
}

/// Two recordings replayed side by side: each feeds its own target, from its own
/// start, on one clock; a seek moves both; the longer one's position is shown.
#[test]
fn two_recordings_replay_side_by_side() {
    let rt = runtime();
    let _rt = rt.enter();
    rt.block_on(async {
        let rec = |model, lines: u64| Recording {
            infos: vec![(0, info(model, 7))],
            snapshots: (1..=lines)
                .map(|seq| {
                    let mut s = snapshot(seq, vec![worker(0, 1.0, 0.0, 0)], vec![]);
                    s.model = model;
                    s
                })
                .collect(),
            damage: None,
        };
        let replay = |file: &str, model, lines| TargetSpec::Replay {
            file: file.into(),
            recording: Box::new(rec(model, lines)),
        };
        let mut session = Session::new(config(vec![
            replay("a.ndjson", Model::Node, 30),
            replay("b.ndjson", Model::Fastapi, 50),
        ]))
        .unwrap();
        session.perform(Command::Seek(2000));
        let seen = until(
            &mut session,
            |u| matches!(u, Update::Replay(r) if r.at_s >= 2.0),
        )
        .await;
        let fed = |target: usize, model| {
            seen.iter()
                .filter_map(snapshot_of)
                .filter(|s| *s == (target, model))
                .count()
        };
        // Up to 2 s of each (lines 100 ms apart), each to its own column.
        assert!(fed(0, Model::Node) >= 20, "{seen:?}");
        assert!(fed(1, Model::Fastapi) >= 20, "{seen:?}");
        assert_eq!(fed(0, Model::Fastapi) + fed(1, Model::Node), 0);
        let shown = seen.iter().rev().find_map(|u| match u {
            Update::Replay(r) => Some(r.total_s),
            _ => None,
        });
        assert_eq!(shown, Some(4.9), "the longer recording's length");
    });
}
