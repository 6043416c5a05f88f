//! loopscope: a live profiler for event-loop concurrency.
//!
//! - [`protocol`]: the telemetry contract (snapshots, events, server info);
//! - [`probe`]: instrumentation for any tokio event loop, and the telemetry server;
//! - [`client`]: HTTP helpers, the telemetry subscriber and the load generator;
//! - [`tui`]: the terminal dashboard;
//! - [`diagnosis`]: why a server stalls, in one line;
//! - [`headless`]: runs without a terminal, for scripts and CI;
//! - [`record`]: recordings of a session, for replay;
//! - [`scenario`]: timed steps for workshops and scripts.

pub mod client;
pub mod diagnosis;
pub mod headless;
pub mod probe;
pub mod protocol;
pub mod record;
pub mod scenario;
pub mod tui;

#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::{Mutex, MutexGuard, PoisonError};

    static TIMING: Mutex<()> = Mutex::new(());

    /// Serializes tests that measure time, so that they do not share two cores.
    pub(crate) fn timing_lock() -> MutexGuard<'static, ()> {
        TIMING.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
