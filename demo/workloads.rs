//! The real work behind the endpoints: JSON documents to parse, pbkdf2, CPU spinning
//! and file reads. The same work costs the same in both models.

use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

/// JSON documents built once per size and kept (the newest few). Concurrent first
/// requests for a size wait for one build.
#[derive(Default)]
pub struct JsonDocs {
    cache: Mutex<Vec<(u64, Arc<DocCell>)>>,
}

/// One size's document, built by the first request that needs it.
type DocCell = OnceCell<Arc<String>>;

/// Sizes kept; at 64 MB a size this bounds the cache to 192 MB.
const DOCS_KEPT: usize = 3;

impl JsonDocs {
    /// The document of `mb` megabytes, built off the loop on first use.
    pub async fn get(&self, mb: u64) -> Arc<String> {
        let cell = {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            match cache.iter().find(|(size, _)| *size == mb) {
                Some((_, cell)) => Arc::clone(cell),
                None => {
                    if cache.len() == DOCS_KEPT {
                        cache.remove(0);
                    }
                    let cell = Arc::new(OnceCell::new());
                    cache.push((mb, Arc::clone(&cell)));
                    cell
                }
            }
        };
        let doc = cell
            .get_or_init(|| async move {
                let (tx, rx) = tokio::sync::oneshot::channel();
                // Building is set-up, not the workload: it runs on a thread of its own
                // so it neither holds the loop nor occupies the measured pool.
                std::thread::Builder::new()
                    .name("json-builder".into())
                    .spawn(move || {
                        let _ = tx.send(Arc::new(build_json(mb as usize * 1024 * 1024)));
                    })
                    .expect("spawn a thread");
                rx.await.expect("the builder thread sends")
            })
            .await;
        Arc::clone(doc)
    }
}

/// Memory that request buffers may hold at once in one process, in MB: value trees
/// of parses and file read buffers. Requests beyond the budget wait (off the loop)
/// for memory to be returned. Outside it are the cached documents (at most
/// [`DOCS_KEPT`] × 64 MB), the process itself (~10 MB) and the allocator's slack:
/// peak RSS stays under the budget plus 256 MB (measured in BENCHMARKS.md, checked
/// by tests/supervisor.rs).
pub const MEMORY_BUDGET_MB: u32 = 1024;

/// Resident bytes a parse into a value tree takes per byte of JSON: measured 11.4 on
/// these documents (a 64 MB document's tree holds 730 MB: a map node per record and
/// a heap block per key and string), rounded up.
const TREE_BYTES_PER_JSON_BYTE: u64 = 12;

/// The budget's MB a JSON parse of `mb` needs: its value tree, and the document the
/// request holds (a document evicted from the cache lives until its requests end).
pub fn parse_cost_mb(mb: u64) -> u32 {
    (mb * (TREE_BYTES_PER_JSON_BYTE + 1)).min(MEMORY_BUDGET_MB as u64) as u32
}

/// The budget's MB a read of `kb` needs.
pub fn read_cost_mb(kb: u64) -> u32 {
    (kb.div_ceil(1024) as u32).clamp(1, MEMORY_BUDGET_MB)
}

/// A JSON array of user records of at least `bytes` bytes.
pub fn build_json(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes + 256);
    out.push('[');
    let mut i = 0u64;
    while out.len() < bytes {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            r#"{{"id":{i},"name":"user-{i}","email":"user-{i}@example.com","active":{},"score":{:.3},"tags":["alpha","beta","gamma"],"address":{{"city":"City {}","zip":"{:05}"}}}}"#,
            i % 3 != 0,
            (i % 1000) as f64 / 7.0,
            i % 97,
            i % 100_000,
        );
        i += 1;
    }
    out.push(']');
    out
}

/// What a parse found.
pub struct Parsed {
    pub items: usize,
    pub took: Duration,
}

/// Parses the whole document into a value tree, drops it and hands the freed memory
/// back to the system (as `JSON.parse`, then a GC that shrinks the heap). The time
/// covers all three: the caller's thread is held for all of it.
pub fn parse_json(doc: &str) -> Parsed {
    let start = Instant::now();
    let items = match serde_json::from_str::<serde_json::Value>(doc) {
        Ok(serde_json::Value::Array(items)) => items.len(),
        Ok(_) => 1,
        Err(_) => 0,
    };
    return_freed_memory();
    Parsed {
        items,
        took: start.elapsed(),
    }
}

/// Sets up the allocator so that the memory a big request frees can go back to the
/// system; call once at the start of a process that serves requests.
///
/// glibc's malloc keeps what is freed. A value tree is millions of small blocks, and
/// freed small blocks sit in "fastbins" uncoalesced, pinning the pages they are on;
/// each pool thread has an arena of its own, so each thread that ever parsed kept a
/// tree's worth (20 × `/offload?mb=64` left the node demo at 3 GB, 4 threads × 730 MB).
/// Without fastbins a freed tree coalesces as it is freed into a few large blocks,
/// which [`return_freed_memory`] hands back in ~50 ms (530 ms with fastbins). Blocks
/// of 1 MB and more (documents, read buffers, a tree's top array) get mappings of
/// their own, unmapped when freed (by default that threshold grows with use). One
/// arena (`M_ARENA_MAX`) was measured too: the peak fell to 1.5 GB, but all of it
/// stayed after the burst, and two threads parsing on one arena's lock took 3× as
/// long. Measurements in BENCHMARKS.md.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's parameters; it is thread-safe.
    unsafe {
        libc::mallopt(libc::M_MXFAST, 0);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Gives the free memory of every malloc arena back to the system (glibc keeps it
/// otherwise). Costs ~50 ms after a 64 MB parse, on the thread that parsed.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// pbkdf2-HMAC-SHA512, 64-byte key, as Node's `crypto.pbkdf2(..., 'sha512')`.
pub fn pbkdf2(iterations: u32) -> String {
    let mut key = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(
        b"correct horse battery staple",
        b"loopscope-salt",
        iterations,
        &mut key,
    );
    key[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Burns CPU on the calling thread for `d`.
pub fn spin(d: Duration) -> u64 {
    let end = Instant::now() + d;
    let mut x = 0u64;
    while Instant::now() < end {
        for _ in 0..1000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    x
}

/// A scratch file (unlinked: it disappears with the process) read by `/fs`.
#[derive(Default)]
pub struct ScratchFile {
    file: Mutex<Option<(File, u64)>>,
}

impl ScratchFile {
    /// Reads `bytes` from the file, growing it first if needed; returns a checksum.
    /// Runs on a pool thread.
    pub fn read(&self, bytes: u64) -> std::io::Result<u64> {
        let file = {
            let mut slot = self.file.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() {
                *slot = Some((tempfile::tempfile()?, 0));
            }
            let (file, len) = slot.as_mut().expect("set above");
            if *len < bytes {
                let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
                let mut written = *len;
                while written < bytes {
                    let n = chunk.len().min((bytes - written) as usize);
                    file.write_all_at(&chunk[..n], written)?;
                    written += n as u64;
                }
                *len = bytes;
            }
            file.try_clone()?
        };
        let mut buf = vec![0u8; bytes as usize];
        file.read_exact_at(&mut buf, 0)?;
        Ok(buf.iter().map(|&b| b as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_json_has_the_size_and_parses() {
        let doc = build_json(100_000);
        assert!(doc.len() >= 100_000 && doc.len() < 101_000);
        let parsed = parse_json(&doc);
        assert!(parsed.items > 500, "{}", parsed.items);
    }

    #[test]
    fn pbkdf2_matches_a_known_vector_length_and_is_deterministic() {
        assert_eq!(pbkdf2(10), pbkdf2(10));
        assert_ne!(pbkdf2(10), pbkdf2(11));
        assert_eq!(pbkdf2(1).len(), 16);
    }

    #[test]
    fn scratch_file_grows_and_reads_back() {
        let f = ScratchFile::default();
        let small = f.read(1000).unwrap();
        let big = f.read(200_000).unwrap();
        assert_eq!(f.read(1000).unwrap(), small);
        assert!(big > small);
    }
}
