//! Per-worker-thread state of a probed runtime: one [`WorkerSlot`] per thread that
//! runs the runtime's tasks (the loop of a `current_thread` runtime, or each worker
//! of a `multi_thread` one).
//!
//! A slot is claimed by its own thread, the first time the thread parks, polls a task
//! or creates an instrumented request, and found again through a thread-local, so
//! the hot paths (the park and poll hooks, every request poll) cost a thread-local
//! read and a few atomic stores. Each slot knows:
//! - whether its thread is parked and how long it has been busy (park hooks);
//! - the task poll running now, since when, and the durations of past polls (the
//!   runtime's poll hooks, with `--cfg tokio_unstable`; without it, the polls of
//!   instrumented requests only), so a worker held by one task is seen while it is;
//! - the request being polled there (its culprit slot);
//! - the requests that arrived there: in flight, completed, latency per endpoint.
//!
//! At most [`MAX_SLOTS`] threads get a slot; more are not measured apart.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use super::endpoints::{Buckets, EndpointTable};
use super::lag::ParkLog;
use super::target::{Kept, TargetRing};

/// Worker threads measured apart.
pub(crate) const MAX_SLOTS: usize = 64;

/// Requests answered in one task poll that its end times; more read the clock.
const DEFERRED: usize = 4;

/// A request's id, unique in its probe, with what its wrapper needs of the request
/// packed in: its home slot + 1 (0 if none) in the top 16 bits, its endpoint's index
/// in that slot's table in the next 8, and the count of arrivals there in the low 40
/// (the count wraps after 10^12 requests of one thread; the ids of the ring of
/// recent targets are never that far apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RequestId(pub(crate) u64);

impl RequestId {
    const COUNT_BITS: u32 = 40;

    pub(crate) fn new(home: Option<u32>, endpoint: usize, count: u64) -> Self {
        const { assert!(super::endpoints::MAX_ENDPOINTS <= 1 << 8) };
        const { assert!(MAX_SLOTS < 1 << 16) };
        let home = home.map_or(0, |h| u64::from(h) + 1);
        Self(
            home << 48
                | (endpoint as u64 & 0xff) << Self::COUNT_BITS
                | count & ((1 << Self::COUNT_BITS) - 1),
        )
    }

    /// The slot the request arrived on.
    pub(crate) fn home(self) -> Option<u32> {
        ((self.0 >> 48) as u32).checked_sub(1)
    }

    /// Its endpoint's index in its home slot's table.
    pub(crate) fn endpoint(self) -> usize {
        (self.0 >> Self::COUNT_BITS) as usize & 0xff
    }
}

/// One worker thread's state.
pub(crate) struct WorkerSlot {
    /// The slot's index, its worker id in snapshots.
    pub(crate) index: u32,
    /// Kernel thread id (0 off Linux).
    pub(crate) tid: u32,
    pub(crate) thread: std::thread::ThreadId,
    pub(crate) parked: AtomicBool,
    /// When the thread last parked or woke, in ns since the probe's epoch.
    pub(crate) since_ns: AtomicU64,
    /// Time spent awake up to the last park, in ns.
    pub(crate) busy_ns: AtomicU64,
    /// Recent sleeps, for the lag timer's rounding correction.
    pub(crate) parks: ParkLog,
    /// Task polls started.
    pub(crate) polls: AtomicU64,
    /// When the poll running now started; 0 when none is.
    pub(crate) poll_started_ns: AtomicU64,
    /// Durations of finished polls.
    pub(crate) poll_durations: Buckets,
    /// Time held by finished polls that stalled the thread (longer than the stall
    /// threshold), in ns.
    pub(crate) stalled_ns: AtomicU64,
    /// The id of the instrumented request being polled now, 0 when none is.
    pub(crate) request_in_poll: AtomicU64,
    /// Requests answered in the task poll running now, which its end times (see
    /// [`WorkerSlot::defer_completion`]): (start ns, home slot << 32 | endpoint).
    deferred: [(AtomicU64, AtomicU64); DEFERRED],
    deferred_len: AtomicUsize,
    /// The targets of the requests that arrived here last.
    pub(crate) recent: TargetRing,
    /// Requests that arrived on this thread so far; written by it alone.
    pub(crate) arrived: AtomicU64,
    /// Requests that arrived on this thread and are gone (answered or dropped),
    /// counted by this thread ...
    finished_here: AtomicU64,
    /// ... and by others (a request whose task another worker stole).
    finished_elsewhere: AtomicU64,
    pub(crate) endpoints: EndpointTable,
}

impl WorkerSlot {
    /// The thread parked at `now_ns`. Its own thread only.
    pub(crate) fn park(&self, now_ns: u64) {
        let since = self.since_ns.swap(now_ns, Ordering::Relaxed);
        if !self.parked.swap(true, Ordering::Relaxed) && since != 0 {
            self.busy_ns
                .fetch_add(now_ns.saturating_sub(since), Ordering::Relaxed);
        }
        self.parks.parked(now_ns);
    }

    /// The thread woke at `now_ns`. Its own thread only.
    pub(crate) fn unpark(&self, now_ns: u64) {
        self.since_ns.store(now_ns, Ordering::Relaxed);
        self.parked.store(false, Ordering::Relaxed);
        self.parks.unparked(now_ns);
    }

    /// Time awake since the slot was claimed, up to `now_ns`.
    pub(crate) fn busy_total_ns(&self, now_ns: u64) -> u64 {
        let busy = self.busy_ns.load(Ordering::Relaxed);
        if self.parked.load(Ordering::Relaxed) {
            busy
        } else {
            let since = self.since_ns.load(Ordering::Relaxed);
            busy + now_ns.saturating_sub(since)
        }
    }

    /// A task poll starts at `now_ns`. Its own thread only: the counters it moves
    /// have one writer, so plain stores do (no read-modify-write on this path).
    pub(crate) fn poll_started(&self, now_ns: u64) {
        let polls = self.polls.load(Ordering::Relaxed);
        self.polls.store(polls + 1, Ordering::Relaxed);
        self.poll_started_ns.store(now_ns, Ordering::Relaxed);
    }

    /// When the poll running now started, if one is. Its own thread only.
    #[inline]
    pub(crate) fn polling_since_ns(&self) -> Option<u64> {
        match self.poll_started_ns.load(Ordering::Relaxed) {
            0 => None,
            start => Some(start),
        }
    }

    /// The poll that started last ends at `now_ns`; longer than `stall_ns`, it
    /// stalled the thread. How long it held the thread, if one was running. Its own
    /// thread only.
    pub(crate) fn poll_ended(&self, now_ns: u64, stall_ns: u64) -> Option<u64> {
        let start = self.poll_started_ns.load(Ordering::Relaxed);
        if start == 0 {
            return None;
        }
        self.poll_started_ns.store(0, Ordering::Release);
        let held = now_ns.saturating_sub(start);
        self.poll_durations.record_us_single_writer(held / 1000);
        // After the poll is seen as ended: a reader that sees this sum no longer
        // sees the poll running (see `stalled_total_ns`).
        if held > stall_ns {
            let total = self.stalled_ns.load(Ordering::Relaxed);
            self.stalled_ns.store(total + held, Ordering::Release);
        }
        Some(held)
    }

    /// A new request of endpoint `endpoint` arrives on this thread: its id, made
    /// without a read-modify-write (see [`RequestId`]). Its own thread only.
    pub(crate) fn arrive(&self, endpoint: usize) -> RequestId {
        let n = self.arrived.load(Ordering::Relaxed) + 1;
        self.arrived.store(n, Ordering::Relaxed);
        RequestId::new(Some(self.index), endpoint, n)
    }

    /// Leaves the latency of a request answered in the running task poll, which
    /// started at `start_ns`, to the poll's end, which reads the clock anyway
    /// ([`WorkerSlots::time_deferred`]); false when too many wait already. Its own
    /// thread only.
    pub(crate) fn defer_completion(&self, start_ns: u64, home: u32, endpoint: usize) -> bool {
        let n = self.deferred_len.load(Ordering::Relaxed);
        let Some((start, at)) = self.deferred.get(n) else {
            return false;
        };
        start.store(start_ns, Ordering::Relaxed);
        at.store(u64::from(home) << 32 | endpoint as u64, Ordering::Relaxed);
        self.deferred_len.store(n + 1, Ordering::Relaxed);
        true
    }

    /// Requests that arrived here and are not answered yet.
    pub(crate) fn in_flight(&self) -> u64 {
        // The finished first: whatever finished was counted as arrived before.
        let finished = self.finished_here.load(Ordering::Acquire)
            + self.finished_elsewhere.load(Ordering::Acquire);
        self.arrived
            .load(Ordering::Relaxed)
            .saturating_sub(finished)
    }

    /// Time stalled by finished polls, then the running poll's if it has lasted
    /// longer than `stall_ns`, at `now_ns`. Read in the order the poll's end writes
    /// them, so a poll that ends meanwhile is never counted twice (it may be missed
    /// once: a reader keeps the figure it reported last if larger).
    pub(crate) fn stalled_total_ns(&self, now_ns: u64, stall_ns: u64) -> u64 {
        let done = self.stalled_ns.load(Ordering::Acquire);
        let running = self
            .polling_for_ns(now_ns)
            .filter(|held| *held > stall_ns)
            .unwrap_or(0);
        done + running
    }

    /// How long the poll running now has run, at `now_ns`.
    pub(crate) fn polling_for_ns(&self, now_ns: u64) -> Option<u64> {
        match self.poll_started_ns.load(Ordering::Relaxed) {
            0 => None,
            start => Some(now_ns.saturating_sub(start)),
        }
    }
}

/// The slots of one probe.
pub(crate) struct WorkerSlots {
    /// Unique in the process (never an address that a later probe could reuse).
    id: usize,
    slots: Box<[OnceLock<Box<WorkerSlot>>]>,
    claimed: AtomicUsize,
    /// Endpoints registered before traffic; every new slot adds them first.
    registered: Mutex<Vec<String>>,
}

impl Default for WorkerSlots {
    fn default() -> Self {
        static IDS: AtomicUsize = AtomicUsize::new(1);
        Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            slots: (0..MAX_SLOTS).map(|_| OnceLock::new()).collect(),
            claimed: AtomicUsize::new(0),
            registered: Mutex::new(Vec::new()),
        }
    }
}

/// What [`WorkerSlots::lookup`] found for the calling thread.
enum Lookup<'a> {
    Found(&'a WorkerSlot),
    /// No slot yet for this thread.
    Missing(std::thread::ThreadId),
}

thread_local! {
    /// The probe (its slots' id) and the slot this thread found last there.
    static CURRENT: Cell<(usize, *const WorkerSlot)> = const { Cell::new((0, std::ptr::null())) };
}

impl WorkerSlots {
    /// The calling thread's slot, claimed if it has none; `None` when every slot is
    /// taken or the thread is being torn down.
    #[inline]
    pub(crate) fn current(&self) -> Option<&WorkerSlot> {
        match self.lookup()? {
            Lookup::Found(slot) => Some(slot),
            Lookup::Missing(thread) => self.claim(thread),
        }
    }

    /// The calling thread's slot if it has one; never claims.
    #[inline]
    pub(crate) fn current_if_claimed(&self) -> Option<&WorkerSlot> {
        match self.lookup()? {
            Lookup::Found(slot) => Some(slot),
            Lookup::Missing(_) => None,
        }
    }

    /// The calling thread's slot: the one it found last (a thread-local read, on
    /// every hook and request), else its own found by thread id; `None` while the
    /// thread is being torn down.
    #[inline]
    fn lookup(&self) -> Option<Lookup<'_>> {
        match self.found_last() {
            Some(slot) => Some(Lookup::Found(slot)),
            None => self.lookup_by_thread(),
        }
    }

    /// A request that arrived on `home` is gone (answered or dropped): a plain store
    /// on `home`'s own thread, an atomic add on any other.
    pub(crate) fn finish(&self, home: &WorkerSlot) {
        if self.found_last().is_some_and(|s| std::ptr::eq(s, home)) {
            let n = home.finished_here.load(Ordering::Relaxed);
            home.finished_here.store(n + 1, Ordering::Release);
        } else {
            home.finished_elsewhere.fetch_add(1, Ordering::Release);
        }
    }

    /// The slot the calling thread found last, if it is one of these.
    #[inline]
    fn found_last(&self) -> Option<&WorkerSlot> {
        let (probe, slot) = CURRENT.try_with(Cell::get).ok()?;
        // SAFETY: `CURRENT` holds a pointer into these slots only next to their id,
        // which no other `WorkerSlots` of the process ever has. A claimed slot is
        // boxed (its address never changes) and stays until the `WorkerSlots` that
        // `&self` borrows is dropped, so it outlives the reference returned.
        (probe == self.id && !slot.is_null()).then(|| unsafe { &*slot })
    }

    /// The calling thread's own slot found by thread id (it looked at another probe
    /// since it found it last); `None` while the thread is being torn down.
    #[cold]
    fn lookup_by_thread(&self) -> Option<Lookup<'_>> {
        CURRENT.try_with(|_| ()).ok()?;
        let thread = std::thread::current().id();
        Some(match self.iter().find(|s| s.thread == thread) {
            Some(at) => {
                let _ = CURRENT.try_with(|c| c.set((self.id, at as *const WorkerSlot)));
                Lookup::Found(at)
            }
            None => Lookup::Missing(thread),
        })
    }

    #[cold]
    fn claim(&self, thread: std::thread::ThreadId) -> Option<&WorkerSlot> {
        let index = self.claimed.fetch_add(1, Ordering::AcqRel);
        if index >= MAX_SLOTS {
            self.claimed.store(MAX_SLOTS, Ordering::Release);
            return None;
        }
        let slot = WorkerSlot {
            index: index as u32,
            tid: super::threads::current_tid().unwrap_or(0),
            thread,
            parked: AtomicBool::new(false),
            since_ns: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            parks: ParkLog::default(),
            polls: AtomicU64::new(0),
            poll_started_ns: AtomicU64::new(0),
            poll_durations: Buckets::new(),
            stalled_ns: AtomicU64::new(0),
            request_in_poll: AtomicU64::new(0),
            deferred: Default::default(),
            deferred_len: AtomicUsize::new(0),
            recent: TargetRing::default(),
            arrived: AtomicU64::new(0),
            finished_here: AtomicU64::new(0),
            finished_elsewhere: AtomicU64::new(0),
            endpoints: EndpointTable::default(),
        };
        for e in self
            .registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            slot.endpoints.index(e);
        }
        let _ = self.slots[index].set(Box::new(slot));
        let claimed = self.slots[index].get().map(|s| &**s)?;
        let _ = CURRENT.try_with(|c| c.set((self.id, claimed as *const WorkerSlot)));
        Some(claimed)
    }

    /// Every claimed slot, in claiming order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &WorkerSlot> {
        let n = self.claimed.load(Ordering::Acquire).min(MAX_SLOTS);
        self.slots[..n].iter().filter_map(|s| s.get().map(|s| &**s))
    }

    /// No poll is running on any slot any more, as far as the sampler is concerned.
    #[cfg(tokio_unstable)]
    pub(crate) fn forget_polls(&self) {
        for slot in self.iter() {
            slot.poll_started_ns.store(0, Ordering::Release);
        }
    }

    /// The slot `index`, if claimed.
    pub(crate) fn get(&self, index: usize) -> Option<&WorkerSlot> {
        self.slots.get(index)?.get().map(|s| &**s)
    }

    /// The slot request `id` arrived on, if it had one.
    #[inline]
    pub(crate) fn home_of(&self, id: RequestId) -> Option<&WorkerSlot> {
        self.get(id.home()? as usize)
    }

    /// Records the latencies [`WorkerSlot::defer_completion`] left to `slot`'s task
    /// poll, which ends at `now_ns`, on their home slots. `slot`'s own thread only.
    pub(crate) fn time_deferred(&self, slot: &WorkerSlot, now_ns: u64) {
        let n = slot.deferred_len.load(Ordering::Relaxed);
        if n == 0 {
            return;
        }
        for (start, at) in &slot.deferred[..n] {
            let at = at.load(Ordering::Relaxed);
            if let Some(home) = self.get((at >> 32) as usize) {
                let took = now_ns.saturating_sub(start.load(Ordering::Relaxed));
                home.endpoints.record_ns(at as u32 as usize, took);
            }
        }
        slot.deferred_len.store(0, Ordering::Relaxed);
    }

    /// The target of request `id`, if the thread it arrived on still keeps it.
    pub(crate) fn target_of(&self, id: RequestId) -> Option<String> {
        let home = self.home_of(id)?;
        Some(match home.recent.read(id.0)? {
            Kept::Whole(target) => target,
            Kept::Endpoint(index, query) => {
                let endpoint = home.endpoints.name(index)?;
                match query.as_str() {
                    "" => endpoint.to_string(),
                    q => format!("{endpoint}?{q}"),
                }
            }
        })
    }

    /// The request `slot`'s thread is polling now, if any.
    pub(crate) fn request_in(&self, slot: &WorkerSlot) -> Option<String> {
        match slot.request_in_poll.load(Ordering::Relaxed) {
            0 => None,
            id => self.target_of(RequestId(id)),
        }
    }

    /// Endpoints every slot lists from its start.
    pub(crate) fn register(&self, endpoint: &str) {
        self.registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(endpoint.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_gets_its_own_slot_and_finds_it_again() {
        let slots = std::sync::Arc::new(WorkerSlots::default());
        slots.register("GET /hello");
        let here = slots.current().unwrap().index;
        assert_eq!(slots.current().unwrap().index, here);
        let other = {
            let slots = slots.clone();
            std::thread::spawn(move || {
                let s = slots.current().unwrap();
                assert_eq!(s.endpoints.index("GET /hello"), 0, "registered first");
                s.index
            })
            .join()
            .unwrap()
        };
        assert_ne!(here, other);
        assert_eq!(slots.iter().count(), 2);
        // A second probe on this thread: separate slots, and the first is found again.
        let second = WorkerSlots::default();
        assert_eq!(second.current().unwrap().index, 0);
        assert_eq!(slots.current().unwrap().index, here);
        assert!(slots.current_if_claimed().is_some());
        assert!(WorkerSlots::default().current_if_claimed().is_none());
    }

    #[test]
    fn busy_time_counts_awake_intervals_and_polls_their_durations() {
        let slots = WorkerSlots::default();
        let s = slots.current().unwrap();
        s.unpark(1_000);
        s.park(5_000);
        assert_eq!(s.busy_total_ns(9_000), 4_000);
        s.unpark(10_000);
        assert_eq!(s.busy_total_ns(12_000), 6_000);
        s.poll_started(12_000);
        assert_eq!(s.polling_for_ns(20_000), Some(8_000));
        assert_eq!(s.stalled_total_ns(2_000_000, 1_000_000), 1_988_000);
        s.poll_ended(2_012_000, 1_000_000);
        assert_eq!(s.polling_for_ns(2_100_000), None);
        assert_eq!(s.stalled_total_ns(2_100_000, 1_000_000), 2_000_000);
        let mut seen = Vec::new();
        let p = s.poll_durations.take(&mut seen);
        assert_eq!(p.count, 1);
        assert!((p.max_ms - 2.0).abs() < 0.15, "{p:?}");
        assert_eq!(s.polls.load(Ordering::Relaxed), 1);
        s.poll_started(3_000_000);
        s.poll_ended(3_500_000, 1_000_000);
        assert_eq!(
            s.stalled_total_ns(4_000_000, 1_000_000),
            2_000_000,
            "short polls do not stall"
        );
    }

    #[test]
    fn slots_run_out_without_panicking() {
        let slots = std::sync::Arc::new(WorkerSlots::default());
        let handles: Vec<_> = (0..MAX_SLOTS + 3)
            .map(|_| {
                let slots = slots.clone();
                std::thread::spawn(move || slots.current().map(|s| s.index))
            })
            .collect();
        let got: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(got.iter().filter(|g| g.is_some()).count(), MAX_SLOTS);
        assert_eq!(slots.iter().count(), MAX_SLOTS);
    }
}
