//! A request future wrapper: times every poll, names the request that holds the loop,
//! and counts requests in flight and completed with their latency.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use super::{LoopProbe, Shared};
use crate::protocol::Event;

/// What a request is, for attribution: `GET /json` and `/json?mb=20`.
#[derive(Clone, Debug)]
pub struct RequestTag {
    /// `METHOD /path`, the key of latency statistics.
    pub endpoint: Arc<str>,
    /// `METHOD /path?query`, shown when this request holds the loop.
    pub target: Arc<str>,
}

impl RequestTag {
    /// A tag from a method and a request target (`/path?query`).
    pub fn new(method: &str, path: &str, query: Option<&str>) -> Self {
        let endpoint: Arc<str> = Arc::from(format!("{method} {path}"));
        let target = match query {
            Some(q) if !q.is_empty() => Arc::from(format!("{method} {path}?{q}")),
            _ => Arc::clone(&endpoint),
        };
        Self { endpoint, target }
    }
}

struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A future measured by a [`LoopProbe`]; see [`LoopProbe::instrument`].
    pub struct Instrumented<F> {
        #[pin]
        inner: F,
        in_flight: InFlight,
        tag: RequestTag,
        started: Instant,
        done: bool,
    }
}

impl<F> Instrumented<F> {
    pub(crate) fn new(shared: Arc<Shared>, tag: RequestTag, inner: F) -> Self {
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            inner,
            in_flight: InFlight(shared),
            tag,
            started: Instant::now(),
            done: false,
        }
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let shared = &this.in_flight.0;

        let id = shared.request_poll_seq.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut slot) = shared.current_request.try_lock() {
            *slot = (id, Some(Arc::clone(&this.tag.target)));
        }
        shared.request_poll.store(id, Ordering::Release);

        let poll_start = Instant::now();
        let out = this.inner.poll(cx);
        let held = poll_start.elapsed();

        shared.request_poll.store(0, Ordering::Release);
        if held >= shared.config.slow_poll {
            LoopProbe::emit(
                shared,
                Event::SlowPoll {
                    worker: shared.worker_id,
                    endpoint: this.tag.endpoint.to_string(),
                    uri: this.tag.target.to_string(),
                    ms: super::histogram::round3(held.as_secs_f64() * 1000.0),
                    t_ms: shared.epoch.elapsed().as_millis() as u64,
                },
            );
        }
        if out.is_ready() && !*this.done {
            *this.done = true;
            shared.completed.fetch_add(1, Ordering::Relaxed);
            LoopProbe::record_latency(shared, &this.tag.endpoint, this.started.elapsed());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ProbeConfig;
    use std::time::Duration;

    #[test]
    fn a_blocking_poll_is_reported_with_its_request() {
        let probe = LoopProbe::new(3, ProbeConfig::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tag = RequestTag::new("GET", "/block", Some("ms=80"));
        rt.block_on(probe.instrument(tag, async {
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
        assert!(req.endpoints[0].max_ms >= 80.0);
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
        rt.block_on(probe.instrument(RequestTag::new("GET", "/hello", None), async {}));
        assert!(probe.take_events().is_empty());
    }
}
