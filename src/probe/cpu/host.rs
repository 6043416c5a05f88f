//! Host CPU, over the same periods as the process figures.

use std::time::Instant;

use super::round1;

/// Host CPU in percent of one core (up to 100 × cores), each sample over the time
/// since the previous one, so that it covers the same period as the process and
/// thread figures of the snapshot it goes in.
///
/// Either source is read at most every [`HostCpu::INTERVAL`]; a sample sooner repeats
/// the last figure. On Linux it reads the aggregate `cpu` line of `/proc/stat`: busy
/// (user+nice+system+irq+softirq+steal) against idle (idle+iowait) clock ticks over
/// the period, exact for that window to one tick (10 ms) per core. Elsewhere, or if
/// `/proc/stat` is unreadable, sysinfo, which needs 250 ms between refreshes and
/// repeats its last figure in between.
pub struct HostCpu {
    source: HostSource,
    cores: u32,
    last_percent: f64,
    /// When the source was last read (or opened).
    read_at: Instant,
}

enum HostSource {
    /// The last figures, `/proc/stat` kept open (opening it is most of the cost of
    /// a read) and a buffer for its text.
    ProcStat(CpuTimes, ProcStat),
    /// None where sysinfo cannot read this system: host CPU then reads 0.
    Sysinfo(Option<Box<sysinfo::System>>),
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

/// `/proc/stat`, open, read again from its start at each sample.
struct ProcStat {
    file: std::fs::File,
    text: String,
}

impl ProcStat {
    fn open() -> Option<Self> {
        if !cfg!(target_os = "linux") {
            return None;
        }
        Some(Self {
            file: std::fs::File::open("/proc/stat").ok()?,
            text: String::new(),
        })
    }

    fn read(&mut self) -> Option<(CpuTimes, u32)> {
        use std::io::{Read, Seek};
        self.file.rewind().ok()?;
        self.text.clear();
        self.file.read_to_string(&mut self.text).ok()?;
        CpuTimes::parse_proc_stat(&self.text)
    }
}

impl Default for HostCpu {
    fn default() -> Self {
        Self::new()
    }
}

impl HostCpu {
    /// The host's CPU is read again no more often than this: sysinfo needs an
    /// interval to measure over, and a read of `/proc/stat` costs tens of µs.
    pub const INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

    /// A host sampler; the first sample covers the time since this call.
    pub fn new() -> Self {
        if let Some(mut stat) = ProcStat::open()
            && let Some((times, cores)) = stat.read()
        {
            return Self {
                source: HostSource::ProcStat(times, stat),
                cores,
                last_percent: 0.0,
                read_at: Instant::now(),
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
            source: HostSource::Sysinfo(sys),
            cores,
            last_percent: 0.0,
            read_at: Instant::now(),
        }
    }

    /// Logical cores.
    pub fn cores(&self) -> u32 {
        self.cores
    }

    /// Host CPU since the previous reading, in percent of one core (up to 100 ×
    /// cores). A call less than [`HostCpu::INTERVAL`], or a tick per core, after the
    /// previous reading repeats its figure and leaves that time to a later call.
    pub fn sample(&mut self) -> f64 {
        if self.read_at.elapsed() < Self::INTERVAL {
            return self.last_percent;
        }
        self.read_at = Instant::now();
        match &mut self.source {
            HostSource::ProcStat(last, stat) => {
                if let Some((now, _)) = stat.read()
                    && let Some(p) = now.busy_percent_since(last, self.cores)
                {
                    *last = now;
                    self.last_percent = round1(p);
                }
            }
            HostSource::Sysinfo(Some(sys)) => {
                sys.refresh_cpu_usage();
                self.last_percent = round1(sys.global_cpu_usage() as f64 * self.cores as f64);
            }
            HostSource::Sysinfo(None) => {}
        }
        self.last_percent
    }
}

#[cfg(test)]
mod tests {
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
        assert!(matches!(host.source, HostSource::ProcStat(..)));
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
