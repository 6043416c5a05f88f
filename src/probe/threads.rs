//! Which threads are the loop's and which are the pool's, as the runtime and the pool
//! report them, so that per-thread CPU is classed without relying on thread names.
//!
//! A [`ThreadRegistry`] maps kernel thread ids to a [`ThreadClass`]. A thread adds
//! itself ([`ThreadRegistry::register_current_thread`]) and is removed when it exits,
//! before the kernel can hand its id to another thread. Who registers:
//! - the [`LoopProbe`](super::LoopProbe)'s runtime hooks: a thread that parks as a
//!   runtime worker (the loop thread of a `current_thread` runtime, or a worker of a
//!   multi-thread one) and the thread the lag task runs on are [`ThreadClass::Loop`];
//!   a thread the runtime starts ([`on_thread_start`]) is [`ThreadClass::Pool`] (a
//!   blocking thread) until it parks as a worker;
//! - a [`Pool`](super::Pool): each of its threads as it starts, [`ThreadClass::Pool`];
//! - an application, for threads of its own, through
//!   [`LoopProbe::thread_registry`](super::LoopProbe::thread_registry).
//!
//! [`on_thread_start`]: tokio::runtime::Builder::on_thread_start

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// What a thread's CPU counts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadClass {
    /// An event-loop thread: the thread running a `current_thread` runtime, or a
    /// worker of a multi-thread runtime (`cpu.loop_thread`).
    Loop,
    /// A thread that runs blocking work off the loop: an instrumented pool's thread or
    /// a runtime's blocking thread (`cpu.pool_threads`).
    Pool,
}

/// Kernel thread ids and their classes, registered by the threads themselves. Cheap
/// to clone; clones share one table. Registering takes a mutex that only
/// registrations and the sampler's reads take; a thread already registered with the
/// same class takes no lock, only a thread-local look-up (the loop's park hook asks
/// at every park, and only `try_lock`s).
#[derive(Clone, Debug, Default)]
pub struct ThreadRegistry {
    inner: Arc<Table>,
}

type Table = Mutex<HashMap<u32, ThreadClass>>;

/// One registration of the current thread, undone when the thread exits (its
/// thread-local list is dropped then) or the registry is gone.
struct Registration {
    table: Weak<Table>,
    tid: u32,
    class: ThreadClass,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(table) = self.table.upgrade() {
            let mut t = table.lock().unwrap_or_else(PoisonError::into_inner);
            // Only our own entry: ids are not reused while this thread lives.
            t.remove(&self.tid);
        }
    }
}

thread_local! {
    /// The registries this thread is in; dropping it at thread exit unregisters.
    static REGISTRATIONS: RefCell<Vec<Registration>> = const { RefCell::new(Vec::new()) };
}

impl ThreadRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the calling thread as `class` until it exits; a later call changes
    /// its class. Does nothing off Linux (no thread ids to class) or while the
    /// thread is being torn down.
    pub fn register_current_thread(&self, class: ThreadClass) {
        self.register(class, true);
    }

    /// As [`ThreadRegistry::register_current_thread`], but never waits: when the
    /// table is busy (the sampler is reading it) it does nothing and returns false,
    /// for the loop's hooks to try again at their next call.
    pub(crate) fn try_register_current_thread(&self, class: ThreadClass) -> bool {
        self.register(class, false)
    }

    fn register(&self, class: ThreadClass, wait: bool) -> bool {
        let Some(tid) = current_tid() else {
            return true;
        };
        let table = Arc::as_ptr(&self.inner);
        REGISTRATIONS
            .try_with(|regs| {
                let Ok(mut regs) = regs.try_borrow_mut() else {
                    return true;
                };
                let at = regs
                    .iter()
                    .position(|r| std::ptr::eq(r.table.as_ptr(), table));
                if at.is_some_and(|i| regs[i].class == class) {
                    return true;
                }
                let mut t = if wait {
                    self.lock()
                } else {
                    match self.inner.try_lock() {
                        Ok(t) => t,
                        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                        Err(std::sync::TryLockError::WouldBlock) => return false,
                    }
                };
                t.insert(tid, class);
                drop(t);
                match at {
                    Some(i) => regs[i].class = class,
                    None => {
                        // Forget registries dropped since (their entries went with them).
                        regs.retain(|r| r.table.strong_count() > 0);
                        regs.push(Registration {
                            table: Arc::downgrade(&self.inner),
                            tid,
                            class,
                        });
                    }
                }
                true
            })
            .unwrap_or(true)
    }

    /// The class the live thread `tid` registered with, if it did.
    pub fn class_of(&self, tid: u32) -> Option<ThreadClass> {
        self.lock().get(&tid).copied()
    }

    /// Every registered live thread and its class.
    pub fn snapshot(&self) -> HashMap<u32, ThreadClass> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, ThreadClass>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The kernel id of the calling thread (`gettid`), as listed in `/proc/self/task`;
/// None off Linux.
pub fn current_tid() -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions and cannot fail.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        u32::try_from(tid).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Runs `f` on a new thread that stays alive until the returned sender is
    /// dropped or sent to; gives back the thread's tid.
    fn parked_thread(
        f: impl FnOnce() + Send + 'static,
    ) -> (u32, mpsc::Sender<()>, std::thread::JoinHandle<()>) {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            f();
            tid_tx.send(current_tid().unwrap()).unwrap();
            let _ = stop_rx.recv();
        });
        let tid = tid_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the thread starts");
        (tid, stop_tx, handle)
    }

    #[test]
    fn a_thread_is_registered_until_it_exits() {
        let registry = ThreadRegistry::new();
        let r = registry.clone();
        let (tid, stop, handle) =
            parked_thread(move || r.register_current_thread(ThreadClass::Pool));
        assert_eq!(registry.class_of(tid), Some(ThreadClass::Pool));
        assert_eq!(registry.snapshot().get(&tid), Some(&ThreadClass::Pool));
        assert_eq!(registry.class_of(current_tid().unwrap()), None);
        drop(stop);
        handle.join().unwrap();
        // Gone before the kernel can reuse its id.
        assert_eq!(registry.class_of(tid), None);
        assert!(registry.snapshot().is_empty());
    }

    #[test]
    fn a_later_registration_changes_the_class_and_registries_are_separate() {
        let loops = ThreadRegistry::new();
        let pools = ThreadRegistry::new();
        let (l, p) = (loops.clone(), pools.clone());
        let (tid, stop, handle) = parked_thread(move || {
            // A runtime thread starts as a blocking thread, then parks as a worker.
            l.register_current_thread(ThreadClass::Pool);
            l.register_current_thread(ThreadClass::Loop);
            l.register_current_thread(ThreadClass::Loop);
            p.register_current_thread(ThreadClass::Pool);
        });
        assert_eq!(loops.class_of(tid), Some(ThreadClass::Loop));
        assert_eq!(pools.class_of(tid), Some(ThreadClass::Pool));
        assert_eq!(loops.snapshot().len(), 1);
        drop(stop);
        handle.join().unwrap();
        assert_eq!(loops.class_of(tid), None);
        assert_eq!(pools.class_of(tid), None);
    }

    #[test]
    fn a_registry_dropped_before_its_threads_is_no_trouble() {
        let registry = ThreadRegistry::new();
        let r = registry.clone();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            r.register_current_thread(ThreadClass::Loop);
            drop(r);
            go_rx.recv().unwrap();
            // A new registry after the old one is gone.
            let fresh = ThreadRegistry::new();
            fresh.register_current_thread(ThreadClass::Pool);
            fresh.class_of(current_tid().unwrap())
        });
        drop(registry);
        go_tx.send(()).unwrap();
        assert_eq!(handle.join().unwrap(), Some(ThreadClass::Pool));
    }

    /// The loop's hooks never wait for the sampler: they try again later.
    #[test]
    fn a_try_while_the_table_is_held_does_nothing_and_says_so() {
        let registry = ThreadRegistry::new();
        let held = registry.inner.lock().unwrap();
        let r = registry.clone();
        let (tid, first, again) = std::thread::spawn(move || {
            let first = r.try_register_current_thread(ThreadClass::Loop);
            (current_tid().unwrap(), first, r)
        })
        .join()
        .unwrap();
        assert!(!first);
        drop(held);
        assert_eq!(registry.class_of(tid), None);
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (out_tx, out_rx) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            assert!(again.try_register_current_thread(ThreadClass::Loop));
            out_tx.send(current_tid().unwrap()).unwrap();
            go_rx.recv().unwrap();
            // Already registered: no lock needed, so a held table is no obstacle.
            out_tx
                .send(again.try_register_current_thread(ThreadClass::Loop) as u32)
                .unwrap();
            // Exiting unregisters, which waits for the table: the test lets go first.
            let _ = go_rx.recv();
        });
        let bound = std::time::Duration::from_secs(10);
        let tid = out_rx.recv_timeout(bound).unwrap();
        assert_eq!(registry.class_of(tid), Some(ThreadClass::Loop));
        let held = registry.inner.lock().unwrap();
        go_tx.send(()).unwrap();
        let again = out_rx.recv_timeout(bound);
        drop(held);
        drop(go_tx);
        handle.join().unwrap();
        assert_eq!(again, Ok(1), "registered again without the lock");
        assert_eq!(registry.class_of(tid), None);
    }

    #[test]
    fn current_tid_is_listed_in_proc_self_task() {
        let tid = current_tid().unwrap();
        assert!(std::path::Path::new(&format!("/proc/self/task/{tid}")).exists());
        let other = std::thread::spawn(|| current_tid().unwrap())
            .join()
            .unwrap();
        assert_ne!(tid, other);
    }

    /// The probe's hooks register the thread running a `current_thread` runtime as
    /// the loop and the runtime's blocking threads as the pool, whatever their names.
    #[test]
    fn a_probed_runtime_registers_its_loop_and_blocking_threads() {
        use crate::probe::{LoopProbe, ProbeConfig};
        let probe = LoopProbe::new(0, ProbeConfig::default());
        let p = probe.clone();
        let (loop_tid, blocking) = std::thread::Builder::new()
            .name("my-own-loop".into())
            .spawn(move || {
                let mut b = tokio::runtime::Builder::new_current_thread();
                p.install_hooks(&mut b);
                let rt = b.enable_all().build().unwrap();
                rt.block_on(async {
                    let registry = p.thread_registry().clone();
                    let me = current_tid().unwrap();
                    p.spawn_lag_task();
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    assert_eq!(registry.class_of(me), Some(ThreadClass::Loop));
                    let r = registry.clone();
                    let blocking = tokio::task::spawn_blocking(move || {
                        let tid = current_tid().unwrap();
                        (tid, r.class_of(tid))
                    })
                    .await
                    .unwrap();
                    (me, blocking)
                })
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(blocking.1, Some(ThreadClass::Pool), "the blocking thread");
        // The loop thread has exited: unregistered.
        assert_eq!(probe.thread_registry().class_of(loop_tid), None);
        assert_ne!(loop_tid, blocking.0);
    }

    #[test]
    fn the_loop_thread_is_registered_while_it_runs() {
        use crate::probe::{LoopProbe, ProbeConfig};
        let probe = LoopProbe::new(0, ProbeConfig::default());
        let mut b = tokio::runtime::Builder::new_current_thread();
        probe.install_hooks(&mut b);
        let rt = b.enable_all().build().unwrap();
        let registry = probe.thread_registry().clone();
        let class = std::thread::spawn(move || {
            rt.block_on(async {
                // Parking alone registers it, before any lag task.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                registry.class_of(current_tid().unwrap())
            })
        })
        .join()
        .unwrap();
        assert_eq!(class, Some(ThreadClass::Loop));
    }

    #[test]
    fn pool_threads_register_themselves_until_they_exit() {
        use crate::probe::{Pool, PoolKind};
        let pool = Pool::new("t-registry", 2, PoolKind::Eager);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tid = rt
            .block_on(pool.run(|| current_tid().unwrap()))
            .unwrap()
            .value;
        let registry = pool.thread_registry().clone();
        assert_eq!(registry.class_of(tid), Some(ThreadClass::Pool));
        pool.shutdown();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !registry.snapshot().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(registry.snapshot().is_empty(), "{:?}", registry.snapshot());
    }
}
