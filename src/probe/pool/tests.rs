//! The pool's behaviour: waves, lazy start, the lock-free gauge, shutdown.
use super::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn eager_pool_runs_jobs_in_waves_of_its_size() {
    let pool = Pool::new("t-eager", 2, PoolKind::Eager);
    assert_eq!(pool.snapshot().threads, 2);
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let rt = rt();
    rt.block_on(async {
        let mut jobs = Vec::new();
        for _ in 0..5 {
            let rx = Arc::clone(&release_rx);
            let pool = pool.clone();
            jobs.push(tokio::spawn(async move {
                pool.run(move || rx.lock().unwrap().recv().unwrap()).await
            }));
        }
        // Wait (bounded) until both threads hold a job and three wait.
        let deadline = Instant::now() + Duration::from_secs(5);
        let snap = loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let s = pool.snapshot();
            if s.busy == 2 && s.queued == 3 || Instant::now() > deadline {
                break s;
            }
        };
        assert_eq!((snap.busy, snap.queued, snap.size), (2, 3, 2));
        assert!(snap.oldest_wait_ms > 0.0);
        for _ in 0..5 {
            release_tx.send(()).unwrap();
        }
        for j in jobs {
            j.await.unwrap().unwrap();
        }
    });
    let s = pool.snapshot();
    assert_eq!((s.busy, s.queued, s.completed), (0, 0, 5));
    pool.shutdown();
}

#[test]
fn lazy_pool_starts_threads_on_demand_up_to_its_size() {
    let pool = Pool::new("t-lazy", 3, PoolKind::Lazy);
    assert_eq!(pool.snapshot().threads, 0);
    let rt = rt();
    let out = rt.block_on(pool.run(|| 6 * 7)).unwrap();
    assert_eq!(out.value, 42);
    assert_eq!(pool.snapshot().threads, 1);
    rt.block_on(async {
        let jobs: Vec<_> = (0..10)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    pool.run(|| std::thread::sleep(Duration::from_millis(20)))
                        .await
                })
            })
            .collect();
        for j in jobs {
            j.await.unwrap().unwrap();
        }
    });
    let s = pool.snapshot();
    assert_eq!(s.threads, 3);
    assert_eq!(s.completed, 11);
    // 10 jobs on 3 threads: somebody waited at least one 20 ms turn.
    assert!(s.wait_ms_max >= 15.0, "{s:?}");
    pool.shutdown();
}

/// Waits (bounded) until `done` holds.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A job for `submit` that counts itself done.
fn counting(done: &Arc<AtomicU64>) -> Work {
    let done = Arc::clone(done);
    Box::new(move |_| {
        done.fetch_add(1, Ordering::SeqCst);
        Box::new(|| {})
    })
}

/// A thread between two jobs is busy: here held while it delivers one job's result,
/// with the next queued. A gauge that freed it at each job's end read 0 busy and 1
/// queued there, a free thread with work waiting.
#[test]
fn a_thread_between_two_jobs_is_busy() {
    let pool = Pool::new("t-between", 1, PoolKind::Eager);
    let (delivering_tx, delivering_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    pool.submit(Box::new(move |_| {
        Box::new(move || {
            delivering_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        })
    }));
    let done = Arc::new(AtomicU64::new(0));
    pool.submit(counting(&done));
    delivering_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the first job delivers");
    let s = pool.snapshot();
    assert_eq!((s.busy, s.queued), (1, 1), "{s:?}");
    release_tx.send(()).unwrap();
    wait_until("the second job", || done.load(Ordering::SeqCst) == 1);
    wait_until("the thread free", || pool.snapshot().busy == 0);
    assert_eq!(pool.snapshot().queued, 0);
    pool.shutdown();
}

#[test]
fn the_ring_tells_its_entries_apart_across_laps() {
    let ring = EnqueueRing::new();
    assert_eq!(ring.get(0), None, "a slot never written matches no job");
    ring.record(7, 1234);
    assert_eq!(ring.get(7), Some(1234));
    assert_eq!(ring.get(7 + EnqueueRing::LEN), None);
    ring.record(7 + EnqueueRing::LEN, 5678);
    assert_eq!(ring.get(7), None, "overwritten by the next lap");
    assert_eq!(ring.get(7 + EnqueueRing::LEN), Some(5678));
    // The oldest of 5..10 in the ring: 5 and 6 were never written.
    ring.record(8, 2000);
    assert_eq!(ring.oldest(5, 10), Some(2000));
    // Beyond the ring's length only the last LEN jobs are looked at.
    let n = 3 * EnqueueRing::LEN;
    for seq in 0..n {
        ring.record(seq, seq);
    }
    assert_eq!(ring.oldest(0, n), Some(n - EnqueueRing::LEN));
    assert_eq!(ring.oldest(n - 10, n), Some(n - 10));
    // Times wrap at 44 bits; one written after `now` was read counts as 0.
    assert_eq!(EnqueueRing::elapsed_us(EnqueueRing::TIME_MASK, 5), 6);
    assert_eq!(EnqueueRing::elapsed_us(100, 40), 0);
    assert_eq!(EnqueueRing::elapsed_us(40, 100), 60);
}

#[test]
fn queued_and_the_oldest_wait_with_thousands_of_jobs_queued() {
    let _serial = crate::test_support::timing_lock();
    let pool = Pool::new("t-deep", 1, PoolKind::Eager);
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    pool.submit(Box::new(move |_| {
        let _ = release_rx.recv_timeout(Duration::from_secs(20));
        Box::new(|| {})
    }));
    wait_until("the blocker to start", || pool.snapshot().busy == 1);
    let done = Arc::new(AtomicU64::new(0));
    let first = Instant::now();
    pool.submit(counting(&done));
    std::thread::sleep(Duration::from_millis(60));
    for _ in 0..3000 {
        pool.submit(counting(&done));
    }
    let s = pool.snapshot();
    // The pool's times are whole microseconds, each rounded down: a wait it reads
    // may pass the true one by up to 1 µs.
    let waited_ms = first.elapsed().as_secs_f64() * 1000.0 + 0.001;
    assert_eq!((s.busy, s.queued), (1, 3001), "{s:?}");
    // The oldest is the first job queued, 60 ms before the others.
    assert!(
        (60.0..=waited_ms).contains(&s.oldest_wait_ms),
        "{s:?} after {waited_ms} ms"
    );
    assert!(s.wait_ms_max >= s.oldest_wait_ms);
    // More queued than the ring holds: the count is exact, the oldest wait a
    // lower bound (that of the job LEN places from the back).
    for _ in 0..EnqueueRing::LEN {
        pool.submit(counting(&done));
    }
    let s = pool.snapshot();
    let waited_ms = first.elapsed().as_secs_f64() * 1000.0 + 0.001;
    assert_eq!(s.queued as u64, 3001 + EnqueueRing::LEN, "{s:?}");
    assert!(s.oldest_wait_ms <= waited_ms, "{s:?}");
    release_tx.send(()).unwrap();
    let total = 3001 + EnqueueRing::LEN;
    wait_until("every job", || done.load(Ordering::SeqCst) == total);
    wait_until("an idle pool", || pool.snapshot().busy == 0);
    let s = pool.snapshot();
    assert_eq!(
        (s.queued, s.oldest_wait_ms, s.completed),
        (0, 0.0, total + 1)
    );
    pool.shutdown();
}

/// Eight loops submit at once while a sampler reads the gauge: every job runs
/// once, the gauge stays within bounds, no thread past the size starts.
#[test]
fn many_submitters_at_once() {
    for kind in [PoolKind::Lazy, PoolKind::Eager] {
        let pool = Pool::new("t-many", 4, kind);
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (pool, stop) = (pool.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let s = pool.snapshot();
                    assert!(s.busy <= 4 && s.threads <= 4, "{s:?}");
                    assert!(s.queued <= 8 * 500, "{s:?}");
                    reads += 1;
                }
                reads
            })
        };
        let (tx, rx) = std::sync::mpsc::channel();
        for t in 0..8u64 {
            let (pool, tx) = (pool.clone(), tx.clone());
            std::thread::spawn(move || {
                let sum = rt().block_on(async {
                    let jobs: Vec<_> = (0..500u64)
                        .map(|i| {
                            let pool = pool.clone();
                            tokio::spawn(async move { pool.run(move || t * 1000 + i).await })
                        })
                        .collect();
                    let mut sum = 0;
                    for j in jobs {
                        sum += j.await.unwrap().unwrap().value;
                    }
                    sum
                });
                tx.send((t, sum)).unwrap();
            });
        }
        for _ in 0..8 {
            let (t, sum) = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("a submitter finished");
            assert_eq!(sum, (0..500).map(|i| t * 1000 + i).sum::<u64>());
        }
        stop.store(true, Ordering::SeqCst);
        assert!(sampler.join().unwrap() > 0);
        let s = pool.snapshot();
        assert_eq!((s.busy, s.queued, s.completed), (0, 0, 4000), "{s:?}");
        assert!((1..=4).contains(&s.threads), "{s:?}");
        pool.shutdown();
    }
}

/// One job at a time, each awaited: the threads fall asleep between jobs, so
/// every submit races a thread going to sleep. A lost wake-up would hang.
#[test]
fn no_wake_up_is_lost_when_threads_go_to_sleep() {
    for kind in [PoolKind::Eager, PoolKind::Lazy] {
        let pool = Pool::new("t-wake", 2, kind);
        let rt = rt();
        rt.block_on(async {
            for i in 0..20_000u32 {
                let out = tokio::time::timeout(Duration::from_secs(10), pool.run(move || i))
                    .await
                    .expect("the job ran")
                    .unwrap();
                assert_eq!(out.value, i);
            }
        });
        assert_eq!(pool.snapshot().completed, 20_000);
        pool.shutdown();
    }
}

#[test]
fn after_shutdown_threads_exit_and_jobs_report_closed() {
    let pool = Pool::new("t-shut", 2, PoolKind::Eager);
    let rt = rt();
    assert_eq!(rt.block_on(pool.run(|| 3)).unwrap().value, 3);
    pool.shutdown();
    wait_until("the threads to exit", || {
        pool.inner.live.load(Ordering::SeqCst) == 0
    });
    assert!(rt.block_on(pool.run(|| 4)).is_err());
    let lazy = Pool::new("t-shut-lazy", 2, PoolKind::Lazy);
    lazy.shutdown();
    assert!(rt.block_on(lazy.run(|| 5)).is_err());
    assert_eq!(lazy.snapshot().threads, 0);
}

#[test]
fn a_panicking_job_reports_closed_and_the_thread_survives() {
    let pool = Pool::new("t-panic", 1, PoolKind::Eager);
    let rt = rt();
    let r = rt.block_on(pool.run(|| -> u32 { panic!("job failed") }));
    assert!(r.is_err());
    assert_eq!(rt.block_on(pool.run(|| 1)).unwrap().value, 1);
    pool.shutdown();
}
