//! "Which request is on the loop": each request's target, written once by the thread
//! it arrived on, and read by the sampler during a stall, without a lock.
//!
//! Each worker thread keeps the targets of its last [`RING`] arrivals
//! ([`TargetRing`]), each under a seqlock over atomic words: the thread (the only
//! writer) makes the sequence odd, stores the bytes, makes it even; a reader retries
//! while the sequence is odd or moved. Writing costs a dozen plain stores, so it runs
//! on every request; a request future carries only its id, never its target, so it
//! stays as small to move as the future it wraps. A request that stalls a worker
//! after [`RING`] later arrivals on its own thread is no longer named.

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
            let part = cut(part, TARGET_MAX - buf.len as usize);
            let at = buf.len as usize;
            buf.bytes[at..at + part.len()].copy_from_slice(part.as_bytes());
            buf.len += part.len() as u8;
        }
        buf
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("?")
    }
}

/// Arrivals whose targets a worker thread keeps.
pub(crate) const RING: usize = 128;

/// The targets of a thread's last [`RING`] requests, by request id.
///
/// A request of a named endpoint is kept as the endpoint's index in the thread's
/// endpoint table and its query (often none): a few stores. Other requests (those
/// counted as `(other)`) are kept whole.
pub(crate) struct TargetRing {
    entries: Box<[TargetSlot]>,
}

impl Default for TargetRing {
    fn default() -> Self {
        Self {
            entries: (0..RING).map(|_| TargetSlot::default()).collect(),
        }
    }
}

/// What a ring keeps of a request.
#[derive(Debug, PartialEq)]
pub(crate) enum Kept {
    /// The endpoint's index, and the query (without its `?`; empty if none).
    Endpoint(usize, String),
    /// `METHOD /path?query`.
    Whole(String),
}

impl TargetRing {
    fn entry(&self, id: u64) -> &TargetSlot {
        &self.entries[id as usize % RING]
    }

    /// Keeps request `id`, `METHOD target`, of endpoint `endpoint` if it has a name
    /// of its own; `query` is the target's (empty if none). The ring's own thread
    /// only.
    #[inline]
    pub(crate) fn write(
        &self,
        id: u64,
        endpoint: Option<usize>,
        method: &str,
        target: &str,
        query: &str,
    ) {
        match endpoint {
            Some(index) => {
                self.entry(id)
                    .write(id, index as u64 + 1, cut(query, TARGET_MAX).as_bytes());
            }
            None => self.write_whole(id, method, target),
        }
    }

    /// [`write`](Self::write) of a request kept whole (one counted as `(other)`).
    #[cold]
    #[inline(never)]
    fn write_whole(&self, id: u64, method: &str, target: &str) {
        let whole = TargetBuf::new(method, target);
        self.entry(id).write(id, 0, whole.as_str().as_bytes());
    }

    /// What the ring keeps of request `id`, if it still does.
    pub(crate) fn read(&self, id: u64) -> Option<Kept> {
        let (tag, text) = self.entry(id).read(id)?;
        Some(match tag {
            0 => Kept::Whole(text),
            index => Kept::Endpoint(index as usize - 1, text),
        })
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
#[inline]
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    cut_long(s, max)
}

/// [`cut`] of a string longer than `max`.
#[cold]
fn cut_long(s: &str, max: usize) -> &str {
    let mut take = max;
    while !s.is_char_boundary(take) {
        take -= 1;
    }
    &s[..take]
}

/// One request's kept bytes and a tag, under a seqlock.
pub(crate) struct TargetSlot {
    seq: AtomicU64,
    holder: AtomicU64,
    /// The bytes' length, and the tag in the high 32 bits.
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
    /// Stores `bytes` (at most [`TARGET_MAX`]) and `tag` for request `id`. One
    /// writer only.
    #[inline]
    pub(crate) fn write(&self, id: u64, tag: u64, bytes: &[u8]) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        let bytes = &bytes[..bytes.len().min(TARGET_MAX)];
        if !bytes.is_empty() {
            self.store_words(bytes);
        }
        self.len
            .store(bytes.len() as u64 | tag << 32, Ordering::Relaxed);
        self.holder.store(id, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// The bytes of [`write`](Self::write), out of line: most requests keep none
    /// (an endpoint without a query).
    #[inline(never)]
    fn store_words(&self, bytes: &[u8]) {
        for (word, chunk) in self.words.iter().zip(bytes.chunks(8)) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            word.store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
    }

    /// The tag and text of request `id`, if the slot holds it.
    pub(crate) fn read(&self, id: u64) -> Option<(u64, String)> {
        for _ in 0..8 {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let holder = self.holder.load(Ordering::Relaxed);
            let len_tag = self.len.load(Ordering::Relaxed);
            let len = (len_tag as u32 as usize).min(TARGET_MAX);
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
            return Some((
                len_tag >> 32,
                String::from_utf8_lossy(&bytes[..len]).into_owned(),
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_cuts_long_targets_at_a_char_boundary() {
        let ring = TargetRing::default();
        assert_eq!(ring.read(1), None);
        ring.write(1, Some(3), "GET", "/json?mb=20", "mb=20");
        assert_eq!(ring.read(1), Some(Kept::Endpoint(3, "mb=20".into())));
        ring.write(2, Some(0), "GET", "/hello", "");
        assert_eq!(ring.read(2), Some(Kept::Endpoint(0, String::new())));
        ring.write(3, None, "GET", "/json?mb=20", "mb=20");
        assert_eq!(ring.read(3), Some(Kept::Whole("GET /json?mb=20".into())));
        assert_eq!(ring.read(4), None);
        let long = format!("/{}é", "a".repeat(TARGET_MAX - 6));
        let buf = TargetBuf::new("GET", &long);
        assert!(buf.as_str().len() <= TARGET_MAX);
        assert!(buf.as_str().starts_with("GET /aaa"));
        ring.write(4, None, "GET", &long, "");
        assert_eq!(ring.read(4), Some(Kept::Whole(buf.as_str().into())));
        let query = format!("q={}é", "b".repeat(TARGET_MAX - 3));
        ring.write(5, Some(1), "GET", &format!("/s?{query}"), &query);
        match ring.read(5) {
            Some(Kept::Endpoint(1, q)) => {
                assert!(q.len() <= TARGET_MAX && query.starts_with(&q), "{q}");
                assert!(!q.ends_with('é'), "cut before the split character");
            }
            other => panic!("{other:?}"),
        }
        // The ring keeps the last RING arrivals: id 1 + RING takes id 1's entry.
        ring.write(1 + RING as u64, Some(2), "GET", "/x", "");
        assert_eq!(ring.read(1), None);
        assert_eq!(ring.read(2), Some(Kept::Endpoint(0, String::new())));
    }

    #[test]
    fn a_reader_never_sees_a_torn_target() {
        let slot = std::sync::Arc::new(TargetSlot::default());
        let a = TargetBuf::new("GET", &"/a".repeat(40));
        let b = TargetBuf::new("PUT", &"/b".repeat(20));
        let (sa, sb) = (a.as_str().to_string(), b.as_str().to_string());
        let writer = {
            let slot = slot.clone();
            let (sa, sb) = (sa.clone(), sb.clone());
            std::thread::spawn(move || {
                for i in 0..200_000u64 {
                    let (tag, text) = if i % 2 == 0 { (7, &sa) } else { (9, &sb) };
                    slot.write(i % 2 + 1, tag, text.as_bytes());
                }
            })
        };
        while !writer.is_finished() {
            for id in [1, 2] {
                if let Some((tag, t)) = slot.read(id) {
                    let want = if id == 1 { (7, &sa) } else { (9, &sb) };
                    assert_eq!((tag, &t), want, "torn");
                }
            }
        }
        writer.join().unwrap();
    }
}
