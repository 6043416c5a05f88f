//! Recordings: the telemetry of a session as NDJSON, for replay and for sharing.
//!
//! A recording's first line describes the server (`{"recording":1,"info":{…}}`), and so
//! does a line after each reconnection or model switch; every other line is a snapshot
//! exactly as `/telemetry` sends it (events included). Each line is flushed as it is
//! written: a crash loses at most the line being written.
//!
//! Each server counts `t_ms` from its own start; [`Recording::load`] joins them into one
//! rising timeline, so that a replay moves through a recording of several servers in
//! order.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::protocol::{ServerInfo, Snapshot};

/// The longest line a recording may hold.
pub const MAX_LINE: usize = 4 << 20;

/// The first line of a recording.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Recording format version.
    pub recording: u32,
    /// The server recorded.
    pub info: ServerInfo,
}

/// Writes a recording.
pub struct Recorder {
    out: BufWriter<File>,
}

impl Recorder {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            out: BufWriter::new(File::create(path)?),
        })
    }

    /// Writes the server description (again after a reconnection or model switch).
    pub fn info(&mut self, info: &ServerInfo) -> std::io::Result<()> {
        let header = Header {
            recording: 1,
            info: info.clone(),
        };
        self.line(&header)
    }

    /// Writes one snapshot.
    pub fn snapshot(&mut self, snap: &Snapshot) -> std::io::Result<()> {
        self.line(snap)
    }

    fn line(&mut self, value: &impl Serialize) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}

/// The files a session of `servers` servers records to when asked for `path`: `path`
/// itself for one server; for several, one file each, numbered in the order of the
/// servers before the extension (`run.ndjson` → `run-1.ndjson`, `run-2.ndjson`).
pub fn paths_for(path: &Path, servers: usize) -> Vec<std::path::PathBuf> {
    if servers <= 1 {
        return vec![path.to_path_buf()];
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (1..=servers)
        .map(|n| path.with_file_name(format!("{stem}-{n}{ext}")))
        .collect()
}

/// Where a recording stops being readable.
#[derive(Clone, Debug, PartialEq)]
pub struct Damage {
    /// 1-based line number of the first bad line.
    pub line: usize,
    /// What is wrong with it.
    pub error: String,
}

/// A recording read back.
#[derive(Clone, Debug, Default)]
pub struct Recording {
    /// The newest server description before each snapshot, by snapshot index.
    pub infos: Vec<(usize, ServerInfo)>,
    /// The snapshots, in order.
    pub snapshots: Vec<Snapshot>,
    /// Set when the file is truncated or corrupt: the snapshots before it are kept.
    pub damage: Option<Damage>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Header(Header),
    Snapshot(Box<Snapshot>),
}

impl Recording {
    /// Reads `path` up to the first damaged line (or the first longer than
    /// [`MAX_LINE`]: a recording is never read whole into one buffer).
    pub fn load(path: &Path) -> std::io::Result<Self> {
        let mut file = BufReader::new(File::open(path)?);
        let mut rec = Recording::default();
        let mut offset = 0u64;
        let mut line = Vec::new();
        for i in 0.. {
            line.clear();
            let n = (&mut file)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            } else if line.len() > MAX_LINE {
                rec.damage = Some(Damage {
                    line: i + 1,
                    error: format!("the line is longer than {} MiB", MAX_LINE >> 20),
                });
                break;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Line>(&line) {
                Ok(Line::Header(h)) => rec.infos.push((rec.snapshots.len(), h.info)),
                Ok(Line::Snapshot(mut s)) => {
                    // What a hostile server sent is bounded here as on the wire.
                    s.bound();
                    // A server's clock restarting: continue the timeline after the
                    // previous line, one period on.
                    let prev = rec.snapshots.last().map(|p| p.t_ms);
                    if let Some(prev) = prev {
                        let shifted = s.t_ms.saturating_add(offset);
                        if shifted <= prev {
                            offset = prev
                                .saturating_add(s.period_ms.max(1))
                                .saturating_sub(s.t_ms);
                        }
                    }
                    // Never backwards, even where the arithmetic saturated.
                    s.t_ms = s.t_ms.saturating_add(offset).max(prev.unwrap_or(0));
                    rec.snapshots.push(*s);
                }
                Err(e) => {
                    rec.damage = Some(Damage {
                        line: i + 1,
                        error: if e.is_eof() {
                            "the line is cut short (the recording was truncated)".into()
                        } else {
                            e.to_string()
                        },
                    });
                    break;
                }
            }
        }
        Ok(rec)
    }

    /// Length in seconds of server time.
    pub fn duration_s(&self) -> f64 {
        match (self.snapshots.first(), self.snapshots.last()) {
            (Some(a), Some(b)) => b.t_ms.saturating_sub(a.t_ms) as f64 / 1000.0,
            _ => 0.0,
        }
    }

    /// The server description in force at snapshot `index`.
    pub fn info_at(&self, index: usize) -> Option<&ServerInfo> {
        self.infos
            .iter()
            .rev()
            .find(|(at, _)| *at <= index)
            .or(self.infos.first())
            .map(|(_, i)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{info, snapshot, worker};

    #[test]
    fn several_servers_record_to_a_file_each() {
        let one = paths_for(Path::new("/tmp/run.ndjson"), 1);
        assert_eq!(one, [Path::new("/tmp/run.ndjson")]);
        let two = paths_for(Path::new("/tmp/run.ndjson"), 2);
        assert_eq!(
            two,
            [
                Path::new("/tmp/run-1.ndjson"),
                Path::new("/tmp/run-2.ndjson")
            ]
        );
        let bare = paths_for(Path::new("rec"), 2);
        assert_eq!(bare, [Path::new("rec-1"), Path::new("rec-2")]);
    }

    #[test]
    fn round_trip_and_damage_is_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.ndjson");
        let mut r = Recorder::create(&path).unwrap();
        r.info(&info(crate::protocol::Model::Node, 7)).unwrap();
        for seq in 1..=30 {
            r.snapshot(&snapshot(seq, vec![worker(0, 1.0, 0.0, 0)], vec![]))
                .unwrap();
        }
        drop(r);
        let rec = Recording::load(&path).unwrap();
        assert_eq!(rec.snapshots.len(), 30);
        assert_eq!(rec.damage, None);
        assert_eq!(rec.info_at(5).unwrap().pid, 7);
        assert!((rec.duration_s() - 2.9).abs() < 1e-9);

        // Cut the file in the middle of line 21 (the header is line 1).
        let text = std::fs::read_to_string(&path).unwrap();
        let keep: usize = text.lines().take(20).map(|l| l.len() + 1).sum::<usize>() + 40;
        std::fs::write(&path, &text[..keep]).unwrap();
        let rec = Recording::load(&path).unwrap();
        assert_eq!(rec.snapshots.len(), 19);
        let damage = rec.damage.unwrap();
        assert_eq!(damage.line, 21);
        assert!(damage.error.contains("truncated"), "{damage:?}");

        // A second server whose clock starts again: the timeline keeps rising.
        let mut r = Recorder::create(&path).unwrap();
        for seq in [50, 51, 1, 2] {
            r.snapshot(&snapshot(seq, vec![worker(0, 1.0, 0.0, 0)], vec![]))
                .unwrap();
        }
        drop(r);
        let t: Vec<u64> = Recording::load(&path)
            .unwrap()
            .snapshots
            .iter()
            .map(|s| s.t_ms)
            .collect();
        assert_eq!(t, vec![5000, 5100, 5200, 5300]);

        // An endless line (e.g. /dev/zero) stops at the limit, naming its line.
        let first = snapshot(1, vec![worker(0, 1.0, 0.0, 0)], vec![]);
        let mut endless = serde_json::to_string(&first).unwrap() + "\n";
        endless.push_str(&"0".repeat(MAX_LINE + 10));
        std::fs::write(&path, &endless).unwrap();
        let rec = Recording::load(&path).unwrap();
        let damage = rec.damage.unwrap();
        assert_eq!(damage.line, 2);
        assert_eq!(damage.error, "the line is longer than 4 MiB");

        // A clock at the end of u64 then back to 0: the timeline still rises.
        let mut r = Recorder::create(&path).unwrap();
        for t in [u64::MAX - 10, 0, 100] {
            let mut snap = snapshot(1, vec![worker(0, 1.0, 0.0, 0)], vec![]);
            snap.t_ms = t;
            r.snapshot(&snap).unwrap();
        }
        drop(r);
        let t: Vec<u64> = Recording::load(&path)
            .unwrap()
            .snapshots
            .iter()
            .map(|s| s.t_ms)
            .collect();
        assert!(t.windows(2).all(|w| w[0] <= w[1]), "{t:?}");

        // Garbage in the middle: replayed up to it.
        let mut lines: Vec<&str> = text.lines().collect();
        lines[10] = "{\"v\":1,\"seq\":\"ten\"}";
        std::fs::write(&path, lines.join("\n")).unwrap();
        let rec = Recording::load(&path).unwrap();
        assert_eq!((rec.snapshots.len(), rec.damage.unwrap().line), (9, 11));
    }
}
