//! CPU per process and per thread, in percent of one core.
//!
//! On Linux the threads are listed from `/proc/self/task` (kept open); each thread's run time
//! comes from its CPU clock (`clock_gettime`: nanoseconds, the figure of
//! `/proc/self/task/<tid>/schedstat`, in one system call instead of three), falling
//! back to `schedstat` and then to `stat`'s utime+stime (clock ticks of 10 ms, too
//! coarse for a 100 ms period). A thread's name is read again only if it ran since. Threads are classed by what registered them
//! (a [`ThreadRegistry`]: the probe's runtime hooks, the pool); a thread nobody
//! registered is classed by name ([`ThreadNames`]), read again at every sample until
//! it has held still long enough to be the name the thread gave itself. Elsewhere
//! sysinfo gives the process figure only.

mod classes;
mod host;

pub use classes::{NameSeen, ThreadNames, classify};
pub use host::{CpuTimes, HostCpu};

use std::collections::HashMap;
use std::time::Instant;

use super::threads::{ThreadClass, ThreadRegistry};
use crate::protocol::{CpuSeconds, CpuSnapshot};

/// CPU of one thread over the last period.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreadCpu {
    /// Kernel thread id.
    pub tid: u32,
    /// Thread name (`comm`).
    pub name: String,
    /// What its CPU counted as in this period.
    pub class: Option<ThreadClass>,
    /// Percent of one core.
    pub percent: f64,
    /// Its run time since it started, in seconds.
    pub run_s: f64,
}

/// What the sampler keeps of a thread between samples.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct Seen {
    name: Option<NameSeen>,
    run_ns: u64,
}

/// Samples this process's CPU; each call covers the time since the previous one.
pub struct CpuSampler {
    names: ThreadNames,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    registries: Vec<ThreadRegistry>,
    last_at: Instant,
    last: HashMap<u32, Seen>,
    threads: Vec<ThreadCpu>,
    last_process_ns: Option<u64>,
    /// `/proc/self/task`, kept open and read again from its start at each sample.
    #[cfg(target_os = "linux")]
    tasks: Option<linux::TaskDir>,
    /// The thread ids listed last (kept to reuse its allocation).
    #[cfg(target_os = "linux")]
    tids: Vec<u32>,
    /// CPU time counted so far, by class (the loop's and the pool's in ns, added
    /// period by period so that threads that ended still count).
    totals: Totals,
    #[cfg(not(target_os = "linux"))]
    fallback: Fallback,
}

#[derive(Default)]
struct Totals {
    process_ns: u64,
    loop_ns: u64,
    pool_ns: u64,
}

impl CpuSampler {
    /// A sampler for the current process; the first sample covers its whole life.
    /// Threads are classed by name until [`CpuSampler::watch`] adds registries.
    pub fn new(names: ThreadNames) -> Self {
        let mut s = Self {
            names,
            registries: Vec::new(),
            last_at: Instant::now(),
            last: HashMap::new(),
            threads: Vec::new(),
            last_process_ns: None,
            #[cfg(target_os = "linux")]
            tasks: None,
            #[cfg(target_os = "linux")]
            tids: Vec::new(),
            totals: Totals::default(),
            #[cfg(not(target_os = "linux"))]
            fallback: Fallback::new(),
        };
        // Prime the baseline so the first period is a real period.
        let _ = s.sample();
        s
    }

    /// Classes the threads registered in `registry` by their registration (from the
    /// next sample on); with several registries, the first one added wins.
    pub fn watch(&mut self, registry: ThreadRegistry) {
        self.registries.push(registry);
    }

    /// CPU time up to the last sample, since the process started (the loop's and
    /// the pool's: since this sampler started, and the whole life of the threads
    /// that ran then).
    pub fn totals(&self) -> CpuSeconds {
        let s = |ns: u64| (ns as f64 / 1e6).round() / 1e3;
        CpuSeconds {
            process: s(self.totals.process_ns),
            loop_thread: s(self.totals.loop_ns),
            pool_threads: s(self.totals.pool_ns),
        }
    }

    /// Per-thread figures of the last sample.
    pub fn threads(&self) -> &[ThreadCpu] {
        &self.threads
    }

    /// CPU since the previous call.
    #[cfg(target_os = "linux")]
    pub fn sample(&mut self) -> CpuSnapshot {
        let now = Instant::now();
        let elapsed_ns = now.duration_since(self.last_at).as_nanos().max(1) as f64;
        self.last_at = now;
        let mut current = HashMap::with_capacity(self.last.len());
        self.threads.clear();
        let mut snap = CpuSnapshot::default();
        if self.tasks.is_none() {
            self.tasks = linux::TaskDir::open();
        }
        let Some(tasks) = &mut self.tasks else {
            return snap;
        };
        let mut tids = std::mem::take(&mut self.tids);
        tasks.list(&mut tids);
        // Who is registered now; a thread registering while the list is read is
        // classed by name this once.
        let mut registered = HashMap::new();
        for r in self.registries.iter().rev() {
            registered.extend(r.snapshot());
        }
        for &tid in &tids {
            let Some(run_ns) = linux::thread_run_ns(tid) else {
                continue;
            };
            let (prev_name, prev_ns) = match self.last.remove(&tid) {
                Some(seen) if seen.run_ns <= run_ns => (seen.name, seen.run_ns),
                // A thread new since the last sample (or a reused id, whose run time
                // starts again): all its time is in this period.
                _ => (None, 0),
            };
            // A thread names itself: one that has not run since its name was read
            // cannot have renamed itself, and is not read again (most threads of an
            // idle server do not run between two samples).
            let name = match prev_name {
                Some(seen) if run_ns == prev_ns => Some(seen),
                prev => NameSeen::observe(prev, run_ns, now, || linux::thread_name(tid)),
            };
            let name_str = name.as_ref().map(|n| n.name.as_str());
            let class = classify(tid, &registered, name_str, &self.names);
            let percent = (run_ns - prev_ns) as f64 / elapsed_ns * 100.0;
            snap.process += percent;
            match class {
                Some(ThreadClass::Loop) => {
                    snap.loop_thread += percent;
                    self.totals.loop_ns += run_ns - prev_ns;
                }
                Some(ThreadClass::Pool) => {
                    snap.pool_threads += percent;
                    self.totals.pool_ns += run_ns - prev_ns;
                }
                None => {}
            }
            self.threads.push(ThreadCpu {
                tid,
                name: name_str.unwrap_or_default().to_string(),
                class,
                percent,
                run_s: run_ns as f64 / 1e9,
            });
            current.insert(tid, Seen { name, run_ns });
        }
        self.tids = tids;
        self.last = current;
        // The process figure from the kernel's process clock, which also counts
        // threads that ended during the period.
        let process_ns = linux::process_cpu_ns();
        if let (Some(now_ns), Some(prev_ns)) = (process_ns, self.last_process_ns) {
            snap.process = now_ns.saturating_sub(prev_ns) as f64 / elapsed_ns * 100.0;
        }
        self.last_process_ns = process_ns;
        if let Some(ns) = process_ns {
            self.totals.process_ns = self.totals.process_ns.max(ns);
        }
        snap.process = round1(snap.process);
        snap.loop_thread = round1(snap.loop_thread);
        snap.pool_threads = round1(snap.pool_threads);
        snap
    }

    /// CPU since the previous call (process only off Linux).
    #[cfg(not(target_os = "linux"))]
    pub fn sample(&mut self) -> CpuSnapshot {
        self.last_at = Instant::now();
        let (percent, total_ms) = self.fallback.process();
        self.totals.process_ns = self.totals.process_ns.max(total_ms * 1_000_000);
        CpuSnapshot {
            process: round1(percent),
            ..Default::default()
        }
    }
}

fn round1(p: f64) -> f64 {
    (p * 10.0).round() / 10.0
}

#[cfg(target_os = "linux")]
mod linux {
    use std::sync::OnceLock;

    /// Cumulative run time of a thread of this process, in nanoseconds: its CPU
    /// clock (one system call), else its `schedstat`, else its `stat`.
    pub(super) fn thread_run_ns(tid: u32) -> Option<u64> {
        if let Some(ns) = clock_ns(thread_cpu_clock(tid)) {
            return Some(ns);
        }
        if let Ok(s) = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")) {
            if let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse().ok()) {
                return Some(ns);
            }
        }
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
        let ticks = stat_cpu_ticks(&stat)?;
        Some(ticks * 1_000_000_000 / clock_ticks_per_s())
    }

    /// CPU time of the whole process, exited threads included.
    pub(super) fn process_cpu_ns() -> Option<u64> {
        clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
    }

    /// The CPU clock of thread `tid` of this process: the kernel's encoding of a
    /// per-thread scheduler clock (`MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`, what
    /// `pthread_getcpuclockid` returns), which the kernel lets a process read for
    /// its own threads only. Its value is `schedstat`'s run time.
    fn thread_cpu_clock(tid: u32) -> libc::clockid_t {
        const CPUCLOCK_SCHED: libc::clockid_t = 2;
        const CPUCLOCK_PERTHREAD: libc::clockid_t = 4;
        ((!tid << 3) as libc::clockid_t) | CPUCLOCK_SCHED | CPUCLOCK_PERTHREAD
    }

    fn clock_ns(clock: libc::clockid_t) -> Option<u64> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own; an invalid clock
        // (a thread that ended) is an error return, not undefined behaviour.
        if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
            return None;
        }
        Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }

    /// `/proc/self/task` held open: each listing rewinds it and reads it again
    /// (the kernel lists the threads alive at that moment), so that a sample costs
    /// no path lookup and no open.
    pub(super) struct TaskDir(std::ptr::NonNull<libc::DIR>);

    // SAFETY: the stream is used by one thread at a time (its owner's `&mut self`).
    unsafe impl Send for TaskDir {}

    impl TaskDir {
        pub(super) fn open() -> Option<Self> {
            // SAFETY: a NUL-terminated path; a null return is an error.
            let dir = unsafe { libc::opendir(c"/proc/self/task".as_ptr()) };
            std::ptr::NonNull::new(dir).map(Self)
        }

        /// The ids of this process's threads, into `tids` (cleared first).
        pub(super) fn list(&mut self, tids: &mut Vec<u32>) {
            tids.clear();
            // SAFETY: the stream is open until drop; readdir's entry is read before
            // the next call on the same stream.
            unsafe {
                libc::rewinddir(self.0.as_ptr());
                loop {
                    let entry = libc::readdir(self.0.as_ptr());
                    if entry.is_null() {
                        break;
                    }
                    let name = std::ffi::CStr::from_ptr((*entry).d_name.as_ptr());
                    if let Some(tid) = name.to_str().ok().and_then(|s| s.parse().ok()) {
                        tids.push(tid);
                    }
                }
            }
        }
    }

    impl Drop for TaskDir {
        fn drop(&mut self) {
            // SAFETY: opened by opendir, closed once.
            unsafe { libc::closedir(self.0.as_ptr()) };
        }
    }

    pub(super) fn thread_name(tid: u32) -> Option<String> {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
            .ok()
            .map(|s| s.trim_end().to_string())
    }

    /// utime + stime from a `stat` line; the name field may hold spaces and parens.
    pub(super) fn stat_cpu_ticks(stat: &str) -> Option<u64> {
        let after_name = &stat[stat.rfind(')')? + 1..];
        let mut fields = after_name.split_whitespace();
        // After the name: state is field 3; utime and stime are fields 14 and 15.
        let utime: u64 = fields.nth(11)?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some(utime + stime)
    }

    fn clock_ticks_per_s() -> u64 {
        static TICKS: OnceLock<u64> = OnceLock::new();
        *TICKS.get_or_init(|| {
            // SAFETY: sysconf has no preconditions.
            let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
            if t > 0 { t as u64 } else { 100 }
        })
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn a_thread_clock_reads_the_run_time_schedstat_gives() {
            let (tx, rx) = std::sync::mpsc::channel();
            let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
            let spinner = std::thread::spawn(move || {
                tx.send(crate::probe::threads::current_tid().unwrap())
                    .unwrap();
                let start = std::time::Instant::now();
                while start.elapsed() < std::time::Duration::from_millis(30) {
                    std::hint::black_box(0u64);
                }
                done_rx.recv().unwrap();
            });
            let tid = rx.recv().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(60));
            let clock = super::clock_ns(super::thread_cpu_clock(tid)).unwrap();
            let path = format!("/proc/self/task/{tid}/schedstat");
            let sched: u64 = std::fs::read_to_string(path)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            done_tx.send(()).unwrap();
            spinner.join().unwrap();
            assert!(clock >= 25_000_000, "it spun 30 ms: {clock} ns");
            assert!(
                clock.abs_diff(sched) < 2_000_000,
                "clock {clock} vs schedstat {sched}"
            );
            // A thread that ended: no figure, no crash.
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert_eq!(super::clock_ns(super::thread_cpu_clock(tid)), None);
            assert_eq!(
                super::clock_ns(super::thread_cpu_clock(1)),
                None,
                "not ours"
            );
        }

        #[test]
        fn stat_fields_after_a_name_with_spaces() {
            let line = "4242 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 120 30 0 0 20 0 9 0";
            assert_eq!(super::stat_cpu_ticks(line), Some(150));
        }
    }
}

#[cfg(not(target_os = "linux"))]
struct Fallback {
    sys: Option<sysinfo::System>,
    pid: sysinfo::Pid,
}

#[cfg(not(target_os = "linux"))]
impl Fallback {
    fn new() -> Self {
        Self {
            sys: sysinfo::System::new().ok(),
            pid: sysinfo::Pid::from_u32(std::process::id()),
        }
    }

    /// CPU percent since the previous call and CPU time since start, in ms.
    fn process(&mut self) -> (f64, u64) {
        let Some(sys) = &mut self.sys else {
            return (0.0, 0);
        };
        sys.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[self.pid]), true);
        sys.process(self.pid).map_or((0.0, 0), |p| {
            (p.cpu_usage() as f64, p.accumulated_cpu_time())
        })
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests;
