//! The per-thread sampler on real threads: spinning, renamed, registered.

use super::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// A thread that spins from `go` until dropped.
struct Spinner {
    tid: u32,
    go: Option<mpsc::Sender<()>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    /// Starts a thread (named `name`, else with its creator's name) that runs
    /// `before_spin` then spins once [`Spinner::go`] is called.
    fn start(name: Option<&str>, before_spin: impl FnOnce() + Send + 'static) -> Spinner {
        let stop = Arc::new(AtomicBool::new(false));
        let (tid_tx, tid_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let s = Arc::clone(&stop);
        let body = move || {
            tid_tx
                .send(crate::probe::threads::current_tid().unwrap())
                .unwrap();
            if go_rx.recv().is_err() {
                return;
            }
            before_spin();
            let mut x = 0u64;
            while !s.load(Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        };
        let handle = match name {
            Some(n) => std::thread::Builder::new().name(n.into()).spawn(body),
            None => std::thread::Builder::new().spawn(body),
        }
        .unwrap();
        let tid = tid_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Spinner {
            tid,
            go: Some(go_tx),
            stop,
            handle: Some(handle),
        }
    }

    fn go(&mut self) {
        self.go.take().unwrap().send(()).unwrap();
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.go.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Samples 200 ms windows until thread `tid` got 20% of a core in one (a loaded
/// machine may starve it for a while), at most 10 windows.
fn window_where_it_ran(sampler: &mut CpuSampler, tid: u32) -> (CpuSnapshot, ThreadCpu) {
    sampler.sample();
    let mut last = None;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        let snap = sampler.sample();
        let t = sampler
            .threads()
            .iter()
            .find(|t| t.tid == tid)
            .expect("the spinner is listed")
            .clone();
        if t.percent >= 20.0 {
            return (snap, t);
        }
        last = Some((snap, t));
    }
    panic!("the spinner never got 20% of a core in 200 ms: {last:?}");
}

fn test_names(tag: &str) -> ThreadNames {
    ThreadNames {
        loop_thread: format!("cpu-{tag}-loop"),
        pool_prefix: format!("cpu-{tag}-pool-"),
    }
}

#[test]
fn a_spinning_named_thread_is_counted_as_the_loop() {
    let _serial = crate::test_support::timing_lock();
    let mut sampler = CpuSampler::new(test_names("n"));
    let mut spinner = Spinner::start(Some("cpu-n-loop"), || {});
    spinner.go();
    let (snap, t) = window_where_it_ran(&mut sampler, spinner.tid);
    assert_eq!(t.class, Some(ThreadClass::Loop), "{t:?}");
    // The loop figure is the spinner's share, whatever the load left it.
    assert_eq!(snap.loop_thread, round1(t.percent), "{snap:?} {t:?}");
    assert_eq!(snap.pool_threads, 0.0, "{snap:?}");
    assert!(snap.process + 1.0 >= snap.loop_thread, "{snap:?}");
    // CPU seconds: all of its run time (it started after the sampler), which stay
    // counted once the thread is gone.
    let totals = sampler.totals();
    assert!(
        (totals.loop_thread - t.run_s).abs() < 0.002,
        "{totals:?} {t:?}"
    );
    assert!(totals.process + 0.002 >= totals.loop_thread, "{totals:?}");
    drop(spinner);
    sampler.sample();
    assert!(
        sampler.totals().loop_thread >= totals.loop_thread,
        "{totals:?}"
    );
}

/// The bug this guards against: the sampler read the name of a thread that had
/// not named itself yet and kept it, so the thread's CPU went unclassed for good.
#[test]
fn a_thread_read_before_it_named_itself_is_classed_by_its_new_name() {
    let _serial = crate::test_support::timing_lock();
    let mut sampler = CpuSampler::new(test_names("late"));
    // Unnamed: it carries its creator's name until it renames itself.
    let mut spinner = Spinner::start(None, || {
        let name = std::ffi::CString::new("cpu-late-pool-0").unwrap();
        // SAFETY: PR_SET_NAME reads a NUL-terminated string we own.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    });
    sampler.sample();
    let before = sampler
        .threads()
        .iter()
        .find(|t| t.tid == spinner.tid)
        .cloned();
    assert_eq!(before.and_then(|t| t.class), None, "read before the rename");
    spinner.go();
    let (snap, t) = window_where_it_ran(&mut sampler, spinner.tid);
    assert_eq!(t.name, "cpu-late-pool-0");
    assert_eq!(t.class, Some(ThreadClass::Pool), "{t:?}");
    assert_eq!(snap.pool_threads, round1(t.percent), "{snap:?} {t:?}");
    assert_eq!(snap.loop_thread, 0.0, "{snap:?}");
}

/// Threads named anything are classed by the registry they registered in.
#[test]
fn registered_threads_are_classed_by_registration_whatever_their_names() {
    let _serial = crate::test_support::timing_lock();
    let mut sampler = CpuSampler::new(test_names("reg"));
    let registry = ThreadRegistry::new();
    sampler.watch(registry.clone());
    let r = registry.clone();
    // Named as the loop, registered as a blocking thread.
    let mut blocking = Spinner::start(Some("cpu-reg-loop"), move || {
        r.register_current_thread(ThreadClass::Pool)
    });
    let r = registry.clone();
    let mut worker = Spinner::start(Some("tokio-runtime-w"), move || {
        r.register_current_thread(ThreadClass::Loop)
    });
    blocking.go();
    let (snap, t) = window_where_it_ran(&mut sampler, blocking.tid);
    assert_eq!(t.class, Some(ThreadClass::Pool), "{t:?}");
    assert_eq!(snap.pool_threads, round1(t.percent), "{snap:?} {t:?}");
    assert_eq!(snap.loop_thread, 0.0, "{snap:?}");
    drop(blocking);
    worker.go();
    let (snap, t) = window_where_it_ran(&mut sampler, worker.tid);
    assert_eq!(t.class, Some(ThreadClass::Loop), "{t:?}");
    assert_eq!(snap.loop_thread, round1(t.percent), "{snap:?} {t:?}");
    assert_eq!(snap.pool_threads, 0.0, "{snap:?}");
}
