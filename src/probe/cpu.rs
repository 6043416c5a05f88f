//! CPU per process and per thread, in percent of one core.
//!
//! On Linux each thread's run time comes from `/proc/self/task/<tid>/schedstat`
//! (nanoseconds; `stat`'s clock ticks are 10 ms, too coarse for a 100 ms period) and
//! falls back to `stat`'s utime+stime. Threads are classed by name: the loop thread
//! is named `loop`, pool threads start with the pool's name. Elsewhere sysinfo gives
//! the process figure only.

use std::collections::HashMap;
use std::time::Instant;

use crate::protocol::CpuSnapshot;

/// How threads are recognised.
#[derive(Clone, Debug)]
pub struct ThreadNames {
    /// Name of the event-loop thread.
    pub loop_thread: String,
    /// Prefix of pool thread names.
    pub pool_prefix: String,
}

impl Default for ThreadNames {
    fn default() -> Self {
        Self {
            loop_thread: "loop".into(),
            pool_prefix: "pool-".into(),
        }
    }
}

/// CPU of one thread over the last period.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreadCpu {
    /// Kernel thread id.
    pub tid: u32,
    /// Thread name (`comm`).
    pub name: String,
    /// Percent of one core.
    pub percent: f64,
}

/// Samples this process's CPU; each call covers the time since the previous one.
pub struct CpuSampler {
    names: ThreadNames,
    last_at: Instant,
    /// tid -> (name, cumulative run time in ns)
    last: HashMap<u32, (String, u64)>,
    threads: Vec<ThreadCpu>,
    last_process_ns: Option<u64>,
    #[cfg(not(target_os = "linux"))]
    fallback: Fallback,
}

impl CpuSampler {
    /// A sampler for the current process; the first sample covers its whole life.
    pub fn new(names: ThreadNames) -> Self {
        let mut s = Self {
            names,
            last_at: Instant::now(),
            last: HashMap::new(),
            threads: Vec::new(),
            last_process_ns: None,
            #[cfg(not(target_os = "linux"))]
            fallback: Fallback::new(),
        };
        // Prime the baseline so the first period is a real period.
        let _ = s.sample();
        s
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
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
            return snap;
        };
        for entry in dir.flatten() {
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(run_ns) = linux::thread_run_ns(tid) else {
                continue;
            };
            let (name, prev) = match self.last.get(&tid) {
                Some((name, prev)) => (name.clone(), *prev),
                // A thread new since the last sample: all its time is in this period.
                None => (linux::thread_name(tid).unwrap_or_default(), 0),
            };
            let percent = run_ns.saturating_sub(prev) as f64 / elapsed_ns * 100.0;
            snap.process += percent;
            if name == self.names.loop_thread {
                snap.loop_thread += percent;
            } else if name.starts_with(&self.names.pool_prefix) {
                snap.pool_threads += percent;
            }
            self.threads.push(ThreadCpu {
                tid,
                name: name.clone(),
                percent,
            });
            current.insert(tid, (name, run_ns));
        }
        self.last = current;
        // The process figure from the kernel's process clock, which also counts
        // threads that ended during the period.
        let process_ns = linux::process_cpu_ns();
        if let (Some(now_ns), Some(prev_ns)) = (process_ns, self.last_process_ns) {
            snap.process = now_ns.saturating_sub(prev_ns) as f64 / elapsed_ns * 100.0;
        }
        self.last_process_ns = process_ns;
        snap.process = round1(snap.process);
        snap.loop_thread = round1(snap.loop_thread);
        snap.pool_threads = round1(snap.pool_threads);
        snap
    }

    /// CPU since the previous call (process only off Linux).
    #[cfg(not(target_os = "linux"))]
    pub fn sample(&mut self) -> CpuSnapshot {
        self.last_at = Instant::now();
        CpuSnapshot {
            process: round1(self.fallback.process_percent()),
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

    /// Cumulative run time of a thread of this process, in nanoseconds.
    pub(super) fn thread_run_ns(tid: u32) -> Option<u64> {
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
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
            return None;
        }
        Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
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

    fn process_percent(&mut self) -> f64 {
        let Some(sys) = &mut self.sys else {
            return 0.0;
        };
        sys.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[self.pid]), true);
        sys.process(self.pid).map_or(0.0, |p| p.cpu_usage() as f64)
    }
}

/// Host CPU in percent of one core (up to 100 × cores), each sample over the time
/// since the previous one, so that it covers the same period as the process and
/// thread figures of the snapshot it goes in.
///
/// On Linux it reads the aggregate `cpu` line of `/proc/stat` at every sample: busy
/// (user+nice+system+irq+softirq+steal) against idle (idle+iowait) clock ticks over
/// the period, exact for that window to one tick (10 ms) per core. Elsewhere, or if
/// `/proc/stat` is unreadable, sysinfo, which needs 250 ms between refreshes and
/// repeats its last figure in between.
pub struct HostCpu {
    source: HostSource,
    cores: u32,
    last_percent: f64,
}

enum HostSource {
    ProcStat(CpuTimes),
    /// None where sysinfo cannot read this system: host CPU then reads 0.
    Sysinfo {
        sys: Option<Box<sysinfo::System>>,
        last_refresh: Instant,
    },
}

/// Cumulative clock ticks of all CPUs, from `/proc/stat`'s `cpu` line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq + steal (guest time is inside user/nice).
    pub busy: u64,
    /// idle + iowait.
    pub idle: u64,
}

impl CpuTimes {
    /// The aggregate `cpu` line of a `/proc/stat` text and the number of `cpuN`
    /// lines (logical cores). Fields a kernel does not have count as 0.
    pub fn parse_proc_stat(text: &str) -> Option<(CpuTimes, u32)> {
        let mut times = None;
        let mut cores = 0;
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("cpu") => {
                    let v: Vec<u64> = fields.map_while(|f| f.parse().ok()).collect();
                    let at = |i: usize| v.get(i).copied().unwrap_or(0);
                    if v.len() < 4 {
                        return None;
                    }
                    // user nice system idle iowait irq softirq steal guest guest_nice
                    times = Some(CpuTimes {
                        busy: at(0) + at(1) + at(2) + at(5) + at(6) + at(7),
                        idle: at(3) + at(4),
                    });
                }
                Some(name) if name.starts_with("cpu") => cores += 1,
                _ => {}
            }
        }
        Some((times?, cores.max(1)))
    }

    /// Busy share of `cores` cores from `prev` to `self`, in percent of one core;
    /// None when less than one tick per core went by (a window too short to tell).
    pub fn busy_percent_since(&self, prev: &CpuTimes, cores: u32) -> Option<f64> {
        let busy = self.busy.saturating_sub(prev.busy);
        // iowait may step backwards on some kernels.
        let idle = self.idle.saturating_sub(prev.idle);
        let total = busy + idle;
        if total < u64::from(cores.max(1)) {
            return None;
        }
        Some(busy as f64 / total as f64 * f64::from(cores.max(1)) * 100.0)
    }
}

fn read_proc_stat() -> Option<(CpuTimes, u32)> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    CpuTimes::parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

impl Default for HostCpu {
    fn default() -> Self {
        Self::new()
    }
}

impl HostCpu {
    /// sysinfo needs an interval to measure over: it refreshes no more often.
    const SYSINFO_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

    /// A host sampler; the first sample covers the time since this call.
    pub fn new() -> Self {
        if let Some((times, cores)) = read_proc_stat() {
            return Self {
                source: HostSource::ProcStat(times),
                cores,
                last_percent: 0.0,
            };
        }
        let mut sys = sysinfo::System::new().ok().map(Box::new);
        let cores = match &mut sys {
            Some(sys) => {
                sys.refresh_cpu_usage();
                sys.cpus().len().max(1) as u32
            }
            None => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        };
        Self {
            source: HostSource::Sysinfo {
                sys,
                last_refresh: Instant::now(),
            },
            cores,
            last_percent: 0.0,
        }
    }

    /// Logical cores.
    pub fn cores(&self) -> u32 {
        self.cores
    }

    /// Host CPU since the previous call, in percent of one core (up to 100 × cores).
    /// A call less than a tick per core after the previous one repeats its figure
    /// and leaves that period to the next call.
    pub fn sample(&mut self) -> f64 {
        match &mut self.source {
            HostSource::ProcStat(last) => {
                let Some((now, _)) = read_proc_stat() else {
                    return self.last_percent;
                };
                if let Some(p) = now.busy_percent_since(last, self.cores) {
                    *last = now;
                    self.last_percent = round1(p);
                }
            }
            HostSource::Sysinfo { sys, last_refresh } => {
                if let (true, Some(sys)) = (last_refresh.elapsed() >= Self::SYSINFO_INTERVAL, sys) {
                    sys.refresh_cpu_usage();
                    *last_refresh = Instant::now();
                    self.last_percent = round1(sys.global_cpu_usage() as f64 * self.cores as f64);
                }
            }
        }
        self.last_percent
    }
}

#[cfg(test)]
mod host_tests {
    use super::*;

    const STAT: &str = "cpu  100 5 40 1000 20 3 2 1 7 0\n\
                        cpu0 50 2 20 500 10 1 1 0 4 0\n\
                        cpu1 50 3 20 500 10 2 1 1 3 0\n\
                        intr 12345 0 0\nctxt 999\nbtime 1700000000\n\
                        processes 10\nprocs_running 2\n";

    #[test]
    fn proc_stat_busy_excludes_idle_iowait_and_guest() {
        let (t, cores) = CpuTimes::parse_proc_stat(STAT).unwrap();
        assert_eq!(cores, 2);
        // busy: user+nice+system+irq+softirq+steal; guest (7) is inside user already.
        assert_eq!(
            t,
            CpuTimes {
                busy: 100 + 5 + 40 + 3 + 2 + 1,
                idle: 1000 + 20
            }
        );
        // An old kernel's four fields.
        let (t, cores) = CpuTimes::parse_proc_stat("cpu 1 2 3 4\n").unwrap();
        assert_eq!((t, cores), (CpuTimes { busy: 6, idle: 4 }, 1));
        assert_eq!(CpuTimes::parse_proc_stat("intr 1 2\n"), None);
        assert_eq!(CpuTimes::parse_proc_stat("cpu 1 2\n"), None);
    }

    #[test]
    fn proc_stat_deltas_in_percent_of_one_core() {
        let prev = CpuTimes {
            busy: 1000,
            idle: 5000,
        };
        // 2 cores, 100 ms at 100 ticks/s = 20 ticks: 15 busy, 5 idle = 150% of a core.
        let now = CpuTimes {
            busy: 1015,
            idle: 5005,
        };
        assert_eq!(now.busy_percent_since(&prev, 2), Some(150.0));
        // All idle, all busy.
        let idle = CpuTimes {
            busy: 1000,
            idle: 5020,
        };
        assert_eq!(idle.busy_percent_since(&prev, 2), Some(0.0));
        let busy = CpuTimes {
            busy: 1020,
            idle: 5000,
        };
        assert_eq!(busy.busy_percent_since(&prev, 2), Some(200.0));
        // iowait stepping back counts as no idle time, not as a huge one.
        let back = CpuTimes {
            busy: 1010,
            idle: 4990,
        };
        assert_eq!(back.busy_percent_since(&prev, 2), Some(200.0));
        // Less than a tick per core: too short to tell.
        let short = CpuTimes {
            busy: 1001,
            idle: 5000,
        };
        assert_eq!(short.busy_percent_since(&prev, 2), None);
        assert_eq!(prev.busy_percent_since(&prev, 1), None);
    }

    /// A thread spins for 300 ms; the host sample over 250 ms of it shows at least
    /// half a core even when the other core is busy with something else.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_spinning_thread_shows_in_host_cpu_over_the_same_period() {
        let _serial = crate::test_support::timing_lock();
        let mut host = HostCpu::new();
        assert!(matches!(host.source, HostSource::ProcStat(_)));
        let spinner = std::thread::spawn(|| {
            let end = Instant::now() + std::time::Duration::from_millis(300);
            let mut x = 0u64;
            while Instant::now() < end {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            x
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        host.sample();
        std::thread::sleep(std::time::Duration::from_millis(250));
        let percent = host.sample();
        spinner.join().unwrap();
        assert!(percent >= 50.0, "host {percent}% of one core");
        assert!(percent <= 100.0 * host.cores() as f64 + 0.1, "{percent}");
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_spinning_named_thread_is_counted_as_the_loop() {
        let _serial = crate::test_support::timing_lock();
        let mut sampler = CpuSampler::new(ThreadNames {
            loop_thread: "cpu-test-loop".into(),
            pool_prefix: "cpu-test-pool-".into(),
        });
        let spinner = std::thread::Builder::new()
            .name("cpu-test-loop".into())
            .spawn(|| {
                let end = Instant::now() + Duration::from_millis(300);
                let mut x = 0u64;
                while Instant::now() < end {
                    x = x.wrapping_add(1);
                }
                x
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(250));
        let snap = sampler.sample();
        spinner.join().unwrap();
        // 250 ms of a 300 ms spin: a full core when idle, well above 30% when loaded.
        assert!(snap.loop_thread > 30.0, "{snap:?}");
        assert!(snap.process >= snap.loop_thread);
        assert_eq!(snap.pool_threads, 0.0);
    }
}
