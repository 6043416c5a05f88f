//! The request wrapper: times every poll, names the request that holds the loop,
//! counts requests in flight and completed, with their latency per endpoint.
//!
//! A request belongs to the worker thread it arrived on (its *home* slot): its
//! in-flight, completed and latency counts go there. Its culprit record goes to the
//! slot of whichever worker polls it.
//!
//! It runs on every request of the measured server, so it is built to cost little
//! (measured in BENCHMARKS.md): clock reads from the TSC (`quanta`, ~9 ns instead of
//! ~26 ns), no allocation (the target is copied inline; strings are made only for
//! events), no lock; the slot is found through a thread-local.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::http::Request;

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
}

impl std::fmt::Debug for RequestTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RequestTag").field(&self.target()).finish()
    }
}

/// The probe and the request's home slot, whose in-flight count it holds.
struct InFlight(Arc<Shared>, Option<u32>);

impl InFlight {
    fn home(&self) -> Option<&super::slots::WorkerSlot> {
        self.0.slots.get(self.1? as usize)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(home) = self.home() {
            home.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

pin_project_lite::pin_project! {
    /// A future measured by a [`LoopProbe`]; see [`LoopProbe::instrument`].
    pub struct Instrumented<F> {
        #[pin]
        inner: F,
        in_flight: InFlight,
        tag: RequestTag,
        id: u64,
        endpoint: usize,
        started: Option<quanta::Instant>,
        done: bool,
    }
}

impl<F> Instrumented<F> {
    pub(crate) fn new(shared: Arc<Shared>, tag: RequestTag, inner: F) -> Self {
        let (id, home, endpoint) = match shared.slots.current() {
            Some(slot) => (
                slot.arrive(),
                Some(slot.index),
                slot.endpoints.index(tag.endpoint()),
            ),
            // No slot left for this thread: ids from the shared counter.
            None => (
                shared.request_seq.fetch_add(1, Ordering::Relaxed) + 1,
                None,
                0,
            ),
        };
        Self {
            inner,
            in_flight: InFlight(shared, home),
            tag,
            id,
            endpoint,
            started: None,
            done: false,
        }
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let shared = &this.in_flight.0;
        let id = *this.id;

        // Publish who is about to hold this worker, for a sampler that sees a stall.
        let slot = shared.slots.current();
        if let Some(slot) = slot {
            if slot.target.holder() != id {
                slot.target.write(id, &this.tag.target);
            }
            slot.request_in_poll.store(id, Ordering::Relaxed);
        }

        let poll_start = quanta::Instant::now();
        // Without the runtime's poll hooks, the request's own polls are what a
        // worker is seen holding.
        #[cfg(not(tokio_unstable))]
        if let Some(slot) = slot {
            slot.poll_started(shared.ns_at(poll_start));
        }
        let out = this.inner.poll(cx);
        let poll_end = quanta::Instant::now();
        #[cfg(not(tokio_unstable))]
        if let Some(slot) = slot {
            slot.poll_ended(shared.ns_at(poll_end));
        }

        if let Some(slot) = slot {
            slot.request_in_poll.store(0, Ordering::Relaxed);
        }
        let started = *this.started.get_or_insert(poll_start);
        let held = poll_end.duration_since(poll_start);
        if held >= shared.config.slow_poll {
            LoopProbe::emit(
                shared,
                Event::SlowPoll {
                    worker: shared.worker_id,
                    endpoint: this.tag.endpoint().to_string(),
                    uri: this.tag.target().to_string(),
                    ms: ms(held),
                    t_ms: poll_end.saturating_duration_since(shared.epoch).as_millis() as u64,
                },
            );
        }
        if out.is_ready() && !*this.done {
            *this.done = true;
            if let Some(home) = this.in_flight.home() {
                home.completed.fetch_add(1, Ordering::Relaxed);
                home.endpoints
                    .record(*this.endpoint, poll_end.duration_since(started));
            }
        }
        out
    }
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
        let uri = req.uri();
        let target = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
        let tag = RequestTag::new(req.method().as_str(), target);
        self.probe.instrument(tag, self.inner.call(req))
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
