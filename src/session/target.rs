//! One target of a session: what it is (a demo child, an attached address, a
//! recording), what is known of it, its telemetry subscription and its load.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use tokio::sync::mpsc;

use super::DemoChild;
use crate::client::http::HttpClient;
use crate::client::load::{LoadGenerator, LoadPlan, LoadStats};
use crate::client::subscriber::{self, TelemetryMsg};
use crate::protocol::{Model, ServerInfo};

enum Kind {
    /// A demo server the session started (none while a switch starts the next one).
    Demo(Option<DemoChild>),
    /// A server started by someone else, at this telemetry address.
    Attach(String),
    /// A recording: nothing to connect to.
    Replay,
}

pub(super) struct Target {
    kind: Kind,
    /// The server's description, once connected.
    pub info: Option<ServerInfo>,
    /// Bumped when the server is replaced: messages of an older one are ignored.
    pub generation: u64,
    /// A demo being started by a model switch, and since when.
    pub starting: Option<(DemoChild, Instant)>,
    subscriber: Option<tokio::task::JoinHandle<()>>,
    /// The background load and the app address it goes to.
    load: Option<(LoadGenerator, String)>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(task) = self.subscriber.take() {
            task.abort();
        }
    }
}

impl Target {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            info: None,
            generation: 0,
            starting: None,
            subscriber: None,
            load: None,
        }
    }

    pub fn demo(child: DemoChild) -> Self {
        Self::new(Kind::Demo(Some(child)))
    }

    pub fn attach(telemetry: String) -> Self {
        Self::new(Kind::Attach(telemetry))
    }

    pub fn replay() -> Self {
        Self::new(Kind::Replay)
    }

    pub fn is_demo(&self) -> bool {
        matches!(self.kind, Kind::Demo(_))
    }

    fn child(&self) -> Option<&DemoChild> {
        match &self.kind {
            Kind::Demo(child) => child.as_ref(),
            _ => None,
        }
    }

    /// The demo's model (the one starting, during a switch).
    pub fn model(&self) -> Option<Model> {
        match (&self.starting, self.child()) {
            (Some((c, _)), _) | (None, Some(c)) => Some(c.model),
            (None, None) => self.info.as_ref().map(|i| i.model),
        }
    }

    pub fn workers(&self) -> u32 {
        self.child().map_or(1, |c| c.workers)
    }

    /// "started the node demo, pid 4242, app 127.0.0.1:8000", for a demo.
    pub fn started_text(&self) -> Option<String> {
        self.child().map(|c| {
            format!(
                "started the {} demo, pid {}, app {}",
                c.model,
                c.pid(),
                c.address.app
            )
        })
    }

    fn telemetry_addr(&self) -> Option<String> {
        match &self.kind {
            Kind::Demo(child) => child.as_ref()?.address.telemetry.clone(),
            Kind::Attach(addr) => Some(addr.clone()),
            Kind::Replay => None,
        }
    }

    /// (Re)subscribes to the telemetry, tagging messages with `(index, generation)`.
    pub fn subscribe(
        &mut self,
        index: usize,
        tx: mpsc::Sender<(usize, u64, TelemetryMsg)>,
        dropped: Arc<AtomicU64>,
    ) {
        if let Some(task) = self.subscriber.take() {
            task.abort();
        }
        let generation = self.generation;
        if let Some(addr) = self.telemetry_addr() {
            self.subscriber = Some(subscriber::spawn_tagged(
                addr,
                tx,
                move |msg| (index, generation, msg),
                dropped,
            ));
        }
    }

    /// Starts the background load once the server said where its app listens.
    pub fn ensure_load(&mut self, client: &HttpClient, plan: LoadPlan) {
        let Some(info) = &self.info else { return };
        if self.load.as_ref().is_some_and(|(_, app)| *app == info.app) {
            return;
        }
        let load = LoadGenerator::start(client.clone(), info.app.clone(), plan);
        self.load = Some((load, info.app.clone()));
    }

    pub fn set_plan(&self, plan: &LoadPlan) {
        if let Some((load, _)) = &self.load {
            load.set_plan(plan.clone());
        }
    }

    pub fn has_load(&self) -> bool {
        self.load.is_some()
    }

    pub fn take_load(&self) -> Option<LoadStats> {
        self.load.as_ref().map(|(load, _)| load.take())
    }

    /// Stops the server, its subscription and its load before a switch; returns the
    /// generation the next server's messages will carry.
    pub fn stop(&mut self) -> u64 {
        if let Some(task) = self.subscriber.take() {
            task.abort();
        }
        self.load = None;
        self.info = None;
        if let Kind::Demo(child) = &mut self.kind {
            *child = None;
        }
        self.generation += 1;
        self.generation
    }

    /// The new server of a switch.
    pub fn set_child(&mut self, child: DemoChild) {
        self.kind = Kind::Demo(Some(child));
    }
}
