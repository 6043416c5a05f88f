//! The real dashboard binary in a 100×30 pseudo-terminal, read back through a vt100
//! parser. Every wait is bounded.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portable_pty::{Child, CommandBuilder, MasterPty, PtySize, native_pty_system};

/// The dashboard running in a 100×30 pseudo-terminal.
pub struct Dashboard {
    child: Box<dyn Child + Send + Sync>,
    writer: Box<dyn Write + Send>,
    pub screen: Arc<Mutex<vt100::Parser>>,
    _master: Box<dyn MasterPty + Send>,
}

impl Dashboard {
    pub fn start(args: &[&str]) -> Dashboard {
        let pty = native_pty_system()
            .openpty(PtySize {
                rows: 30,
                cols: 100,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("open a pty");
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_loopscope"));
        cmd.args(args);
        let log = std::env::temp_dir().join(format!("loopscope-test-{}.log", std::process::id()));
        cmd.args(["--log-file", log.to_str().unwrap()]);
        cmd.env("TERM", "xterm-256color");
        let child = pty.slave.spawn_command(cmd).expect("start the dashboard");
        drop(pty.slave);
        let mut reader = pty.master.try_clone_reader().unwrap();
        let writer = pty.master.take_writer().unwrap();
        let screen = Arc::new(Mutex::new(vt100::Parser::new(30, 100, 0)));
        let feed = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                feed.lock().unwrap().process(&buf[..n]);
            }
        });
        Dashboard {
            child,
            writer,
            screen,
            _master: pty.master,
        }
    }

    pub fn text(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    /// The screen's columns `from..from + width`, row by row.
    pub fn columns(&self, from: u16, width: u16) -> String {
        let parser = self.screen.lock().unwrap();
        let rows: Vec<String> = parser.screen().rows(from, width).collect();
        rows.join("\n")
    }

    /// Waits (≤ `within`) until `pred` holds on the screen text; returns that text.
    pub fn wait_for(&self, within: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + within;
        loop {
            let text = self.text();
            if pred(&text) {
                return text;
            }
            assert!(
                Instant::now() < end,
                "no {what} within {within:?}; screen:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn press(&mut self, key: &str) {
        self.writer.write_all(key.as_bytes()).unwrap();
        self.writer.flush().unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.process_id().expect("a pid")
    }

    /// Waits (≤ 10 s) for the dashboard to exit; its exit status.
    pub fn wait_exit(&mut self) -> portable_pty::ExitStatus {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < end,
                "the dashboard did not exit; screen:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// The children of `pid` (its main thread's).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The largest `STALLED N ms` figure on a screen.
pub fn stalled_ms(text: &str) -> Option<u64> {
    text.split("STALLED ")
        .skip(1)
        .filter_map(|rest| rest.split(" ms").next()?.trim().parse().ok())
        .max()
}
