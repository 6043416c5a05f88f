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
    /// A demo being started by a model switch or a restart, and since when.
    pub starting: Option<(DemoChild, Instant)>,
    /// Where load and workloads go: the address a demo child printed, or the one the
    /// user named for an attached server (never what a server's `/info` claims).
    pub app: Option<String>,
    /// When the running demo child started.
    pub started_at: Option<Instant>,
    /// Start times of demo children that died soon after starting, newest last.
    pub quick_deaths: Vec<Instant>,
    /// A restart planned after a death: when, and the model and workers to start.
    pub restart_at: Option<(Instant, Model, u32)>,
    /// The model and workers of the last demo started here (to start it again).
    pub last_demo: Option<(Model, u32)>,
    /// Workers in the newest telemetry line.
    workers_seen: usize,
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
    fn new(kind: Kind, app: Option<String>) -> Self {
        Self {
            kind,
            info: None,
            generation: 0,
            starting: None,
            app,
            started_at: None,
            quick_deaths: Vec::new(),
            restart_at: None,
            last_demo: None,
            workers_seen: 0,
            subscriber: None,
            load: None,
        }
    }

    pub fn demo(child: DemoChild) -> Self {
        let mut t = Self::new(Kind::Demo(None), None);
        t.set_child(child);
        t
    }

    pub fn attach(telemetry: String, app: Option<String>) -> Self {
        Self::new(Kind::Attach(telemetry), app)
    }

    pub fn replay() -> Self {
        Self::new(Kind::Replay, None)
    }

    /// The demo child's end, once it died (reaped, and the target left without one).
    pub fn reap(&mut self) -> Option<(Model, u32, u32, String)> {
        let Kind::Demo(slot) = &mut self.kind else {
            return None;
        };
        let how = slot.as_mut()?.try_wait()?;
        let child = slot.take()?;
        Some((child.model, child.workers, child.pid(), how))
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
            (None, None) => self
                .last_demo
                .map(|(m, _)| m)
                .or(self.info.as_ref().map(|i| i.model)),
        }
    }

    pub fn workers(&self) -> u32 {
        self.child()
            .map(|c| c.workers)
            .or(self.last_demo.map(|(_, w)| w))
            .unwrap_or(1)
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

    /// Starts the background load once connected, if the target has an app
    /// address to send it to.
    pub fn ensure_load(&mut self, client: &HttpClient, plan: LoadPlan) {
        let (Some(_), Some(app)) = (&self.info, &self.app) else {
            return;
        };
        if self.load.as_ref().is_some_and(|(_, a)| a == app) {
            return;
        }
        let plan = LoadPlan {
            workers: self.load_workers(),
            ..plan
        };
        let load = LoadGenerator::start(client.clone(), app.clone(), plan);
        self.load = Some((load, app.clone()));
    }

    pub fn set_plan(&self, plan: &LoadPlan) {
        if let Some((load, _)) = &self.load {
            load.set_plan(LoadPlan {
                workers: self.load_workers(),
                ..plan.clone()
            });
        }
    }

    /// The load goes to every worker the server has, so that a blocked worker's
    /// clients wait as real clients would and the others' do not.
    /// Lanes of load: one per worker process that accepts connections of its own
    /// (fastapi); one for a single process, whatever its threads (a connection is
    /// not pinned to a worker thread of a multi-thread runtime).
    fn load_workers(&self) -> u32 {
        if self
            .info
            .as_ref()
            .is_some_and(|i| i.model != Model::Fastapi)
        {
            return 1;
        }
        let described = self.info.as_ref().map_or(0, |i| i.workers.len());
        described.max(self.workers_seen).clamp(1, 64) as u32
    }

    /// Follows the number of workers in the telemetry (a server describes its
    /// workers before they all run): the load spreads over the ones there are.
    pub fn follow_workers(&mut self, workers: usize) {
        if workers == self.workers_seen {
            return;
        }
        self.workers_seen = workers;
        let n = self.load_workers();
        if let Some((load, _)) = &self.load {
            let plan = load.plan();
            if plan.workers != n {
                load.set_plan(LoadPlan { workers: n, ..plan });
            }
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
        self.workers_seen = 0;
        if let Kind::Demo(child) = &mut self.kind {
            *child = None;
            self.app = None;
        }
        self.generation += 1;
        self.generation
    }

    /// The new server of a switch or a restart.
    pub fn set_child(&mut self, child: DemoChild) {
        self.last_demo = Some((child.model, child.workers));
        self.app = Some(child.address.app.clone());
        self.started_at = Some(Instant::now());
        self.kind = Kind::Demo(Some(child));
    }
}
