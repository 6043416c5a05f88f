//! "Which request is on the loop": a request target written by the loop before each
//! poll and read by the sampler during a stall, without a lock.
//!
//! A seqlock over atomic words: the loop (the only writer) makes the sequence odd,
//! stores the bytes, makes it even; a reader retries while the sequence is odd or
//! moved. Writing costs a dozen plain stores, so it can run on every request.

use std::sync::atomic::{AtomicU64, Ordering, fence};

/// Longest target kept, in bytes; longer ones are cut (at a character boundary).
pub(crate) const TARGET_MAX: usize = 96;
const WORDS: usize = TARGET_MAX / 8;

/// A request's `METHOD /path?query`, inline, cut to [`TARGET_MAX`] bytes.
#[derive(Clone, Copy)]
pub(crate) struct TargetBuf {
    len: u8,
    bytes: [u8; TARGET_MAX],
}

impl TargetBuf {
    pub(crate) fn new(method: &str, path_and_query: &str) -> Self {
        let mut buf = Self {
            len: 0,
            bytes: [0; TARGET_MAX],
        };
        for part in [method, " ", path_and_query] {
            let room = TARGET_MAX - buf.len as usize;
            let mut take = part.len().min(room);
            while !part.is_char_boundary(take) {
                take -= 1;
            }
            let at = buf.len as usize;
            buf.bytes[at..at + take].copy_from_slice(&part.as_bytes()[..take]);
            buf.len += take as u8;
        }
        buf
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("?")
    }
}

/// The shared slot.
pub(crate) struct TargetSlot {
    seq: AtomicU64,
    holder: AtomicU64,
    len: AtomicU64,
    words: [AtomicU64; WORDS],
}

impl Default for TargetSlot {
    fn default() -> Self {
        Self {
            seq: AtomicU64::new(0),
            holder: AtomicU64::new(0),
            len: AtomicU64::new(0),
            words: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl TargetSlot {
    /// The request id whose target the slot holds (read by the writer only).
    pub(crate) fn holder(&self) -> u64 {
        self.holder.load(Ordering::Relaxed)
    }

    /// Stores `target` for request `id`. One writer only: the loop thread.
    pub(crate) fn write(&self, id: u64, target: &TargetBuf) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        let len = target.len as usize;
        for (i, word) in self.words.iter().enumerate().take(len.div_ceil(8)) {
            let mut chunk = [0u8; 8];
            chunk.copy_from_slice(&target.bytes[i * 8..i * 8 + 8]);
            word.store(u64::from_le_bytes(chunk), Ordering::Relaxed);
        }
        self.len.store(len as u64, Ordering::Relaxed);
        self.holder.store(id, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// The target of request `id`, if the slot holds it.
    pub(crate) fn read(&self, id: u64) -> Option<String> {
        for _ in 0..8 {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let holder = self.holder.load(Ordering::Relaxed);
            let len = (self.len.load(Ordering::Relaxed) as usize).min(TARGET_MAX);
            let mut bytes = [0u8; TARGET_MAX];
            for (i, word) in self.words.iter().enumerate().take(len.div_ceil(8)) {
                bytes[i * 8..i * 8 + 8]
                    .copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
            }
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) != before {
                continue;
            }
            if holder != id {
                return None;
            }
            return Some(String::from_utf8_lossy(&bytes[..len]).into_owned());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_cuts_long_targets_at_a_char_boundary() {
        let slot = TargetSlot::default();
        assert_eq!(slot.read(1), None);
        slot.write(1, &TargetBuf::new("GET", "/json?mb=20"));
        assert_eq!(slot.read(1).as_deref(), Some("GET /json?mb=20"));
        assert_eq!(slot.read(2), None);
        let long = format!("/{}é", "a".repeat(TARGET_MAX - 6));
        let buf = TargetBuf::new("GET", &long);
        assert!(buf.as_str().len() <= TARGET_MAX);
        assert!(buf.as_str().starts_with("GET /aaa"));
        slot.write(2, &buf);
        assert_eq!(slot.read(2).as_deref(), Some(buf.as_str()));
    }

    #[test]
    fn a_reader_never_sees_a_torn_target() {
        let slot = std::sync::Arc::new(TargetSlot::default());
        let a = TargetBuf::new("GET", &"/a".repeat(40));
        let b = TargetBuf::new("PUT", &"/b".repeat(20));
        let writer = {
            let slot = slot.clone();
            std::thread::spawn(move || {
                for i in 0..200_000u64 {
                    slot.write(i % 2 + 1, if i % 2 == 0 { &a } else { &b });
                }
            })
        };
        let (sa, sb) = (a.as_str().to_string(), b.as_str().to_string());
        while !writer.is_finished() {
            for id in [1, 2] {
                if let Some(t) = slot.read(id) {
                    assert!(t == sa || t == sb, "torn: {t}");
                    assert_eq!(&t, if id == 1 { &sa } else { &sb });
                }
            }
        }
        writer.join().unwrap();
    }
}
