//! How a thread is classed: by its registration, else by a name read until it
//! settles.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::probe::threads::ThreadClass;

/// How threads nobody registered are recognised, by name (`comm`, 15 bytes at most).
#[derive(Clone, Debug)]
pub struct ThreadNames {
    /// Name of the event-loop thread; empty: no thread is the loop by name.
    pub loop_thread: String,
    /// Prefix of pool thread names; empty: no thread is a pool thread by name.
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

impl ThreadNames {
    /// No naming rule: only registered threads are classed.
    pub fn none() -> Self {
        Self {
            loop_thread: String::new(),
            pool_prefix: String::new(),
        }
    }

    /// The class a thread of this name gets when nobody registered it.
    pub fn class_of(&self, name: &str) -> Option<ThreadClass> {
        if !self.loop_thread.is_empty() && name == self.loop_thread {
            Some(ThreadClass::Loop)
        } else if !self.pool_prefix.is_empty() && name.starts_with(&self.pool_prefix) {
            Some(ThreadClass::Pool)
        } else {
            None
        }
    }
}

/// The class of thread `tid`: the one it registered with, else the one its name
/// gives (`None` when its name could not be read). A pure function: the sampler
/// calls it at every sample with a fresh view of the registries, so no class
/// outlives what it was derived from.
pub fn classify(
    tid: u32,
    registered: &HashMap<u32, ThreadClass>,
    name: Option<&str>,
    names: &ThreadNames,
) -> Option<ThreadClass> {
    registered
        .get(&tid)
        .copied()
        .or_else(|| names.class_of(name?))
}

/// A thread's name as the sampler last read it.
///
/// A new thread starts with its creator's name and names itself once it runs (std
/// does so first thing), so a name read early may be one the thread is about to
/// drop. The name is read again at every sample until it is *settled*: the same
/// for [`NameSeen::SETTLE`] and across reads between which the thread ran (so it
/// had its chance to rename itself). Only a settled name is kept without reading.
#[derive(Clone, Debug, PartialEq)]
pub struct NameSeen {
    /// The name read last.
    pub name: String,
    /// When this name was first read.
    pub since: Instant,
    /// The thread's run time as first read after this name was (at the next
    /// sample): it must grow past it before the name settles.
    pub run_ns_after: Option<u64>,
    /// True once the name is settled: it is not read again.
    pub settled: bool,
}

impl NameSeen {
    /// How long a name must hold before it is kept.
    pub const SETTLE: Duration = Duration::from_millis(500);

    /// The name after a sample at `now` that read the thread's run time, `run_ns`,
    /// before its name: `prev` unchanged if settled, else `read()` compared with it.
    pub fn observe(
        prev: Option<NameSeen>,
        run_ns: u64,
        now: Instant,
        read: impl FnOnce() -> Option<String>,
    ) -> Option<NameSeen> {
        if let Some(p) = &prev {
            if p.settled {
                return prev;
            }
        }
        let Some(name) = read() else {
            // Unreadable (the thread is exiting): keep what we had, unsettled.
            return prev;
        };
        Some(match prev {
            Some(p) if p.name == name => match p.run_ns_after {
                // The run time read now came after the first read of this name.
                None => NameSeen {
                    run_ns_after: Some(run_ns),
                    ..p
                },
                // It ran after that, and the name read since is still this one.
                Some(after) => NameSeen {
                    settled: now.saturating_duration_since(p.since) >= Self::SETTLE
                        && run_ns > after,
                    ..p
                },
            },
            _ => NameSeen {
                name,
                since: now,
                run_ns_after: None,
                settled: false,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> ThreadNames {
        ThreadNames {
            loop_thread: "loop".into(),
            pool_prefix: "pool-".into(),
        }
    }

    #[test]
    fn a_registration_wins_over_the_name() {
        let registered = HashMap::from([(10, ThreadClass::Loop), (11, ThreadClass::Pool)]);
        let n = names();
        // Registered threads: whatever they are called.
        assert_eq!(
            classify(10, &registered, Some("tokio-runtime-w"), &n),
            Some(ThreadClass::Loop)
        );
        assert_eq!(
            classify(10, &registered, Some("pool-3"), &n),
            Some(ThreadClass::Loop)
        );
        assert_eq!(
            classify(11, &registered, Some("loop"), &n),
            Some(ThreadClass::Pool)
        );
        assert_eq!(classify(11, &registered, None, &n), Some(ThreadClass::Pool));
        // The others by name, or not at all.
        assert_eq!(
            classify(12, &registered, Some("loop"), &n),
            Some(ThreadClass::Loop)
        );
        assert_eq!(
            classify(12, &registered, Some("pool-0"), &n),
            Some(ThreadClass::Pool)
        );
        assert_eq!(classify(12, &registered, Some("tokio-runtime-w"), &n), None);
        assert_eq!(classify(12, &registered, None, &n), None);
        assert_eq!(
            classify(12, &HashMap::new(), Some("pool-1"), &n),
            Some(ThreadClass::Pool)
        );
    }

    #[test]
    fn names_match_the_loop_exactly_and_the_pool_by_prefix() {
        let n = names();
        assert_eq!(n.class_of("loop"), Some(ThreadClass::Loop));
        assert_eq!(n.class_of("loopscope"), None);
        assert_eq!(n.class_of("loopscope-sampl"), None);
        assert_eq!(n.class_of("pool-12"), Some(ThreadClass::Pool));
        assert_eq!(n.class_of("pool"), None);
        assert_eq!(n.class_of(""), None);
        let no_pool = ThreadNames {
            loop_thread: "main".into(),
            pool_prefix: String::new(),
        };
        assert_eq!(no_pool.class_of("anything"), None);
        assert_eq!(no_pool.class_of("main"), Some(ThreadClass::Loop));
    }

    #[test]
    fn a_name_is_read_again_until_it_held_while_the_thread_ran() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let read = |name: &'static str| move || Some(name.to_string());
        // First read: the thread has not named itself yet.
        let seen = NameSeen::observe(None, 0, t0, read("loopscope")).unwrap();
        assert_eq!((seen.name.as_str(), seen.settled), ("loopscope", false));
        // It renamed itself: the new name is taken, its settling starts over.
        let seen = NameSeen::observe(Some(seen), 50, ms(100), read("pool-0")).unwrap();
        assert_eq!(
            (
                seen.name.as_str(),
                seen.since,
                seen.run_ns_after,
                seen.settled
            ),
            ("pool-0", ms(100), None, false)
        );
        // The next sample notes the run time after that read.
        let seen = NameSeen::observe(Some(seen), 60, ms(200), read("pool-0")).unwrap();
        assert_eq!((seen.run_ns_after, seen.settled), (Some(60), false));
        // Long enough, but it has not run since: still read.
        let seen = NameSeen::observe(Some(seen), 60, ms(900), read("pool-0")).unwrap();
        assert!(!seen.settled);
        // Not long enough, though it ran.
        let early = NameSeen::observe(Some(seen.clone()), 70, ms(500), read("pool-0"));
        assert!(!early.unwrap().settled);
        // Held for SETTLE and it ran: settled, and never read again.
        let seen = NameSeen::observe(Some(seen), 70, ms(1000), read("pool-0")).unwrap();
        assert!(seen.settled);
        let kept = NameSeen::observe(Some(seen.clone()), 90, ms(2000), || {
            panic!("a settled name is not read")
        });
        assert_eq!(kept, Some(seen));
        // Growth seen only with the first read of a name does not count: the thread
        // may have run just before it.
        let first = NameSeen::observe(None, 5, t0, read("x"));
        let second = NameSeen::observe(first, 5, ms(600), read("x"));
        assert!(!second.clone().unwrap().settled);
        let third = NameSeen::observe(second.clone(), 5, ms(700), read("x"));
        assert!(!third.unwrap().settled, "no run since the second read");
        // An unreadable name keeps the last one, unsettled.
        assert_eq!(
            NameSeen::observe(second.clone(), 9, ms(900), || None),
            second
        );
        assert_eq!(NameSeen::observe(None, 5, ms(900), || None), None);
    }
}
