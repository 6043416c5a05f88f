//! Several servers side by side — compare mode is the two-demo case: a node and a
//! fastapi demo, and one key fires the same workload at both, so the difference
//! between the models shows at a glance. Full columns from 160×45 (two servers); a
//! compact stack per column down to 100×30. The session core runs them; this only
//! draws.

use std::time::Instant;

use ratatui::layout::{Constraint, Layout};

use super::state::Dashboard;
use super::view::{self, ViewOptions};

/// The smallest screen compare mode draws on.
pub const MIN_WIDTH: u16 = 100;
/// The smallest screen compare mode draws on.
pub const MIN_HEIGHT: u16 = 30;

/// Draws several servers side by side, one column each, with one footer.
pub fn render(frame: &mut ratatui::Frame, panes: &[Dashboard], opts: &ViewOptions, now: Instant) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "terminal too small for compare mode: {}×{}\nit needs at least {MIN_WIDTH}×{MIN_HEIGHT} (q quits)",
            area.width, area.height
        );
        frame.render_widget(ratatui::widgets::Paragraph::new(msg), area);
        return;
    }
    let [body, footer] = Layout::vertical([Constraint::Fill(1), Constraint::Length(1)]).areas(area);
    let columns = Layout::horizontal(vec![Constraint::Fill(1); panes.len().max(1)]).split(body);
    for (pane, area) in panes.iter().zip(columns.iter()) {
        view::render_pane(frame, *area, pane, opts, now);
    }
    view::render_footer(frame, footer, opts);
    if opts.help {
        view::render_help_overlay(frame, area, opts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::subscriber::TelemetryMsg;
    use crate::protocol::Model;
    use crate::test_support::{info, snapshot, worker};
    use crate::tui::state::Msg;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn dash(model: Model, workers: Vec<crate::protocol::WorkerSnapshot>) -> Dashboard {
        let mut d = Dashboard::default();
        let now = Instant::now();
        d.apply(
            Msg::Telemetry(TelemetryMsg::Connected(Box::new(info(model, 1)))),
            now,
            "x",
        );
        let s = snapshot(1, workers, vec![]);
        d.apply(
            Msg::Telemetry(TelemetryMsg::Snapshot(Box::new(s))),
            now,
            "x",
        );
        d
    }

    fn draw(w: u16, h: u16, left: &Dashboard, right: &Dashboard) -> String {
        let opts = ViewOptions {
            paused: false,
            help: false,
            size: 2,
            owns_server: false,
            color: false,
            dropped_msgs: 0,
            replay: None,
            caption: None,
        };
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        let now = Instant::now();
        term.draw(|f| {
            let area = f.area();
            let [body, footer] =
                Layout::vertical([Constraint::Fill(1), Constraint::Length(1)]).areas(area);
            let [l, r] =
                Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                    .areas(body);
            view::render_pane(f, l, left, &opts, now);
            view::render_pane(f, r, right, &opts, now);
            view::render_footer(f, footer, &opts);
        })
        .unwrap();
        let buf = term.backend().buffer().clone();
        (0..h)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol()).collect::<String>() + "\n")
            .collect()
    }

    #[test]
    fn both_models_side_by_side_at_160x45_and_100x30() {
        let node = dash(Model::Node, vec![worker(0, 412.0, 300.0, 0)]);
        let fastapi = dash(
            Model::Fastapi,
            vec![worker(0, 480.0, 250.0, 0), worker(1, 0.9, 0.0, 0)],
        );
        for (w, h) in [(160, 45), (100, 30)] {
            let s = draw(w, h, &node, &fastapi);
            let lines: Vec<&str> = s.lines().collect();
            assert!(
                // Full columns say "1 process"; compact ones the pid.
                (lines[0].contains("node · 1 process") || lines[0].contains("node · pid 1"))
                    && lines[0].contains("fastapi · 2 workers"),
                "{s}"
            );
            // Each side shows its own stall, and the fastapi side its healthy worker.
            let left: String = lines
                .iter()
                .map(|l| l.chars().take(w as usize / 2).collect::<String>() + "\n")
                .collect();
            let right: String = lines
                .iter()
                .map(|l| l.chars().skip(w as usize / 2).collect::<String>() + "\n")
                .collect();
            assert!(left.contains("■ w0 STALLED 30"), "{w}×{h}\n{s}");
            assert!(
                right.contains("■ w0 STALLED 25") && right.contains("w1"),
                "{w}×{h}\n{s}"
            );
            assert!(!right.contains("w1 STALLED"));
            assert!(s.contains("j json"), "{s}");
        }
    }
}
