//! The request wrapper: times every poll, names the request that holds the loop,
//! counts requests in flight and completed, with their latency per endpoint.
//!
//! A request belongs to the worker thread it arrived on (its *home* slot): its
//! in-flight, completed and latency counts go there. Its culprit record goes to the
//! slot of whichever worker polls it.
//!
//! It runs on every request of the measured server, so it is built to cost little
//! (measured in BENCHMARKS.md): no allocation (the target is copied once, into the
//! arrival thread's ring of recent targets; strings are made only for events), no
//! lock, the slot found through a thread-local, and inside a task poll timed by the
//! runtime's poll hooks no clock read at all: the hooks time and report its polls, its
//! start is the first poll's start and its end the end of the poll that answered it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::http::Request;

use super::slots::{RequestId, WorkerSlot};
use super::target::TargetBuf;
use super::{LoopProbe, Shared};
use crate::protocol::Event;

/// What a request is, for attribution and per-endpoint latency: `METHOD /path?query`.
#[derive(Clone, Copy)]
pub struct RequestTag {
    target: TargetBuf,
}

impl RequestTag {
    /// A tag from a method and a request target (`/path?query`); long targets are cut.
    pub fn new(method: &str, path_and_query: &str) -> Self {
        Self {
            target: TargetBuf::new(method, path_and_query),
        }
    }

    /// `METHOD /path?query`.
    pub fn target(&self) -> &str {
        self.target.as_str()
    }

    /// `METHOD /path`: the key of latency statistics.
    pub fn endpoint(&self) -> &str {
        let t = self.target.as_str();
        t.split_once('?').map_or(t, |(e, _)| e)
    }

    /// The method, the target, its path and its query (empty if none).
    pub(crate) fn parts(&self) -> (&str, &str, &str, &str) {
        let (method, target) = self.target.as_str().split_once(' ').unwrap_or(("", ""));
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        (method, target, path, query)
    }
}

impl std::fmt::Debug for RequestTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RequestTag").field(&self.target()).finish()
    }
}

/// The probe and the request's id, which names its home slot, whose in-flight count
/// it holds.
struct InFlight(Arc<Shared>, RequestId);

impl InFlight {
    fn home(&self) -> Option<&WorkerSlot> {
        self.0.slots.home_of(self.1)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(home) = self.home() {
            self.0.slots.finish(home);
        }
    }
}

/// [`Instrumented::started_ns`] of a request answered.
const DONE: u64 = u64::MAX;

pin_project_lite::pin_project! {
    /// A future measured by a [`LoopProbe`]; see [`LoopProbe::instrument`]. It adds
    /// 24 bytes to the future it wraps: what a request's future is moved with.
    pub struct Instrumented<F> {
        #[pin]
        inner: F,
        in_flight: InFlight,
        // When the request was first polled, in the probe's ns; 0 before, DONE once
        // answered.
        started_ns: u64,
    }
}

/// A request counted on arrival, before its future is made.
pub(crate) struct Arrival {
    in_flight: InFlight,
}

impl Arrival {
    /// Counts a request `METHOD target` arriving on the calling thread and keeps its
    /// target for the culprit of a stall; `path` and `query` are the target's parts
    /// (the query empty if none): the path names its endpoint.
    #[inline]
    pub(crate) fn new(
        shared: Arc<Shared>,
        method: &str,
        target: &str,
        path: &str,
        query: &str,
    ) -> Self {
        let id = match shared.slots.current() {
            Some(slot) => {
                let endpoint = slot.endpoints.index_of(method, path);
                let id = slot.arrive(endpoint);
                let named = slot.endpoints.is_named(endpoint).then_some(endpoint);
                slot.recent.write(id.0, named, method, target, query);
                id
            }
            // No slot left for this thread: ids from the shared counter.
            None => RequestId::new(
                None,
                0,
                shared.request_seq.fetch_add(1, Ordering::Relaxed) + 1,
            ),
        };
        Self {
            in_flight: InFlight(shared, id),
        }
    }

    /// [`new`](Self::new) for a request's method and URI, whatever the service's
    /// types: one function for every service the layer wraps.
    #[inline(never)]
    fn of(shared: &Arc<Shared>, method: &hyper::http::Method, uri: &hyper::http::Uri) -> Self {
        // The path and the query as the URI keeps them apart: no scan for '?'.
        let (path, query) = (uri.path(), uri.query().unwrap_or(""));
        let target = uri.path_and_query().map_or(path, |pq| pq.as_str());
        Self::new(Arc::clone(shared), method.as_str(), target, path, query)
    }
}

impl<F> Instrumented<F> {
    pub(crate) fn new(arrival: Arrival, inner: F) -> Self {
        Self {
            inner,
            in_flight: arrival.in_flight,
            started_ns: 0,
        }
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let shared = &*this.in_flight.0;
        let id = this.in_flight.1;
        let slot = shared.slots.current();
        // Inside a task poll timed by the runtime's poll hooks, they time this poll
        // too, report it if slow and clear the culprit when it ends; otherwise (a
        // future run by `block_on`, or a build without `tokio_unstable`) the
        // request times its own polls, out of line.
        let (Some(slot), Some(hooked_ns)) = (slot, slot.and_then(|s| s.polling_since_ns())) else {
            return self_timed(this.inner, this.started_ns, shared, slot, id, cx);
        };
        let start = hooked_poll_begins(shared, slot, id, hooked_ns);
        if *this.started_ns == 0 {
            *this.started_ns = start;
        }
        let out = this.inner.poll(cx);
        if out.is_ready() && *this.started_ns != DONE {
            let started_ns = std::mem::replace(this.started_ns, DONE);
            answered_in_hooked_poll(shared, slot, id, started_ns);
        }
        out
    }
}

/// Request `id` is about to hold `slot`'s worker, in a task poll the hooks time
/// from `hooked_ns`: it is the culprit a sampler names if the worker stalls. When
/// the task poll's start is the request's: `hooked_ns`; else (another request was
/// polled before it in the same task poll: pipelined requests) the clock now, and
/// the requests the task poll answered so far are timed now.
#[inline]
fn hooked_poll_begins(shared: &Shared, slot: &WorkerSlot, id: RequestId, hooked_ns: u64) -> u64 {
    let before = slot.request_in_poll.load(Ordering::Relaxed);
    slot.request_in_poll.store(id.0, Ordering::Relaxed);
    if before != 0 && before != id.0 {
        return after_another_request(shared, slot);
    }
    hooked_ns
}

/// [`hooked_poll_begins`] after another request in the same task poll: the clock
/// now, with the requests answered so far timed.
#[cold]
#[inline(never)]
fn after_another_request(shared: &Shared, slot: &WorkerSlot) -> u64 {
    let now = shared.now_ns();
    shared.slots.time_deferred(slot, now);
    now
}

/// Request `id`, first polled at `started_ns`, was answered in a task poll on
/// `slot`'s worker that the hooks time: its end times the request (no clock read)
/// unless too many wait for it already.
#[inline]
fn answered_in_hooked_poll(shared: &Shared, slot: &WorkerSlot, id: RequestId, started_ns: u64) {
    let Some(home) = shared.slots.home_of(id) else {
        return;
    };
    if !slot.defer_completion(started_ns, home.index, id.endpoint()) {
        let took = shared.now_ns().saturating_sub(started_ns);
        home.endpoints.record_ns(id.endpoint(), took);
    }
}

/// A poll of request `id` that times itself: outside a task poll the hooks time.
#[inline(never)]
fn self_timed<F: Future>(
    inner: Pin<&mut F>,
    started_ns: &mut u64,
    shared: &Shared,
    slot: Option<&WorkerSlot>,
    id: RequestId,
    cx: &mut Context<'_>,
) -> Poll<F::Output> {
    let poll_start = shared.now_ns();
    if let Some(slot) = slot {
        // Who is about to hold this thread, for a sampler that sees a stall.
        slot.request_in_poll.store(id.0, Ordering::Relaxed);
        slot.poll_started(poll_start);
    }
    if *started_ns == 0 {
        *started_ns = poll_start;
    }
    let out = inner.poll(cx);
    let poll_end = shared.now_ns();
    if let Some(slot) = slot {
        slot.poll_ended(poll_end, shared.config.stall_threshold.as_nanos() as u64);
        slot.request_in_poll.store(0, Ordering::Relaxed);
    }
    report_slow_poll(
        shared,
        slot,
        id,
        poll_end.saturating_sub(poll_start),
        poll_end,
    );
    if out.is_ready() && *started_ns != DONE {
        let started = std::mem::replace(started_ns, DONE);
        if let Some(home) = shared.slots.home_of(id) {
            home.endpoints
                .record_ns(id.endpoint(), poll_end.saturating_sub(started));
        }
    }
    out
}

/// Emits a slow-poll event if request `id`'s poll on `slot`'s thread held it for
/// `held_ns`, as long as [`ProbeConfig::slow_poll`](super::ProbeConfig) or longer.
/// The comparison inline at every poll's end, in nanoseconds; the event out of
/// line.
#[inline]
pub(crate) fn report_slow_poll(
    shared: &Shared,
    slot: Option<&WorkerSlot>,
    id: RequestId,
    held_ns: u64,
    end_ns: u64,
) {
    if u128::from(held_ns) >= shared.config.slow_poll.as_nanos() {
        emit_slow_poll(shared, slot, id, Duration::from_nanos(held_ns), end_ns);
    }
}

#[cold]
#[inline(never)]
fn emit_slow_poll(
    shared: &Shared,
    slot: Option<&WorkerSlot>,
    id: RequestId,
    held: Duration,
    end_ns: u64,
) {
    let uri = shared
        .slots
        .target_of(id)
        .unwrap_or_else(|| "?".to_string());
    LoopProbe::emit(
        shared,
        Event::SlowPoll {
            // A multi-thread runtime's worker is its slot; a loop is the probe's
            // worker.
            worker: match (slot, shared.runtime.get().map(|h| h.runtime_flavor())) {
                (Some(slot), Some(tokio::runtime::RuntimeFlavor::MultiThread)) => slot.index,
                _ => shared.worker_id,
            },
            endpoint: uri.split_once('?').map_or(&*uri, |(e, _)| e).to_string(),
            ms: ms(held),
            t_ms: end_ns / 1_000_000,
            uri,
        },
    );
}

/// A tower layer that instruments every request of a service with a [`LoopProbe`].
#[derive(Clone)]
pub struct ProbeLayer {
    probe: LoopProbe,
}

impl ProbeLayer {
    /// A layer measuring with `probe`.
    pub fn new(probe: LoopProbe) -> Self {
        Self { probe }
    }

    /// `service` wrapped by this layer, as a make-service for a server to take whole
    /// (see [`Probe::make_service`](super::Probe::make_service)).
    pub fn make_service<S>(&self, service: S) -> MakeProbeService<S> {
        MakeProbeService {
            service: tower_layer::Layer::layer(self, service),
        }
    }
}

impl<S> tower_layer::Layer<S> for ProbeLayer {
    type Service = ProbeService<S>;

    fn layer(&self, inner: S) -> ProbeService<S> {
        ProbeService {
            inner,
            probe: self.probe.clone(),
        }
    }
}

/// A service whose requests are instrumented; made by [`ProbeLayer`].
#[derive(Clone)]
pub struct ProbeService<S> {
    inner: S,
    probe: LoopProbe,
}

impl<S, B> tower_service::Service<Request<B>> for ProbeService<S>
where
    S: tower_service::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let arrival = Arrival::of(&self.probe.shared, req.method(), req.uri());
        Instrumented::new(arrival, self.inner.call(req))
    }
}

/// A make-service whose every connection gets a [`ProbeService`] around the same
/// service: what a server that makes a service per connection takes whole
/// (`axum::serve`, hyper-util's auto server with `TowerToHyperService`). Made by
/// [`Probe::make_service`](super::Probe::make_service) or
/// [`ProbeLayer::make_service`].
#[derive(Clone)]
pub struct MakeProbeService<S> {
    service: ProbeService<S>,
}

impl<S: Clone, T> tower_service::Service<T> for MakeProbeService<S> {
    type Response = ProbeService<S>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<ProbeService<S>, std::convert::Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: T) -> Self::Future {
        std::future::ready(Ok(self.service.clone()))
    }
}

/// Converts a poll duration for events.
pub(crate) fn ms(d: Duration) -> f64 {
    super::histogram::round3(d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ProbeConfig;

    fn tag(target: &str) -> RequestTag {
        RequestTag::new("GET", target)
    }

    #[test]
    fn a_blocking_poll_is_reported_with_its_request() {
        let probe = LoopProbe::new(3, ProbeConfig::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(probe.instrument(tag("/block?ms=80"), async {
            std::thread::sleep(Duration::from_millis(80));
            tokio::task::yield_now().await;
        }));
        let events = probe.take_events();
        assert_eq!(events.len(), 1, "{events:?}");
        match &events[0] {
            Event::SlowPoll {
                worker,
                endpoint,
                uri,
                ms,
                ..
            } => {
                assert_eq!(*worker, 3);
                assert_eq!(endpoint, "GET /block");
                assert_eq!(uri, "GET /block?ms=80");
                assert!(*ms >= 80.0 && *ms < 1000.0, "{ms}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let req = probe.take_requests();
        assert_eq!(req.completed, 1);
        assert_eq!(req.in_flight, 0);
        assert_eq!(req.endpoints[0].endpoint, "GET /block");
        // Latency buckets are ~6% wide.
        assert!(req.endpoints[0].max_ms >= 80.0 * 0.94, "{req:?}");
    }

    /// Six requests answered one after the other in one task poll of a runtime whose
    /// poll hooks time polls (a multi-thread one): each is timed on its own, not
    /// from the task poll's start to its end, including the two past what the
    /// poll's end times.
    #[cfg(tokio_unstable)]
    #[test]
    fn requests_answered_in_one_hooked_task_poll_are_timed_apart() {
        let probe = LoopProbe::new(0, ProbeConfig::default());
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(1);
        probe.install_hooks(&mut b);
        let rt = b.build().unwrap();
        let p = probe.clone();
        rt.block_on(async move {
            tokio::spawn(async move {
                for _ in 0..6 {
                    let work = async { std::thread::sleep(Duration::from_millis(20)) };
                    p.instrument(tag("/hello"), work).await;
                }
            })
            .await
            .unwrap();
        });
        let req = probe.take_requests();
        assert_eq!((req.completed, req.in_flight), (6, 0));
        let hello = &req.endpoints[0];
        assert_eq!((hello.endpoint.as_str(), hello.count), ("GET /hello", 6));
        // 20 ms each (buckets ~6% wide); a request timed from the task poll's start
        // would read 40 – 120 ms.
        assert!(hello.p50_ms >= 18.0 && hello.max_ms < 38.0, "{hello:?}");
    }

    #[test]
    fn fast_polls_emit_nothing_and_drops_are_counted() {
        let probe = LoopProbe::new(0, ProbeConfig::default());
        for _ in 0..super::super::EVENT_CAPACITY + 5 {
            LoopProbe::emit(
                &probe.shared,
                Event::WorkerExited {
                    worker: 0,
                    pid: 1,
                    status: String::new(),
                },
            );
        }
        let events = probe.take_events();
        assert_eq!(events.len(), super::super::EVENT_CAPACITY + 1);
        assert_eq!(
            events.last(),
            Some(&Event::EventsDropped {
                worker: 0,
                count: 5
            })
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(probe.instrument(tag("/hello"), async {}));
        assert!(probe.take_events().is_empty());
        assert_eq!(ms(Duration::from_micros(1500)), 1.5);
    }
}
