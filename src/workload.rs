//! The workload catalog: every endpoint of the demo server, defined once — its path,
//! its parameter and range, where it runs, the key that fires it and its caption —
//! and the typed reply it answers with. The demo's router, the dashboard's keys,
//! scenarios and the event log all read this one table.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::protocol::Model;

/// One workload of the demo server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Workload {
    /// A tiny JSON answer: the steady background traffic.
    Hello,
    /// Parse an N MB JSON document on the loop (the Node pitfall).
    Json,
    /// The same parse on the pool (the fix).
    Offload,
    /// A blocking sleep on the loop (`time.sleep` inside `async def`).
    Block,
    /// Busy CPU on the loop.
    Spin,
    /// A sync (`def`) endpoint holding a pool thread.
    Sync,
    /// pbkdf2 on the pool (`crypto.pbkdf2`), or on the loop with `on=loop`.
    Hash,
    /// A file read through the pool.
    Fs,
    /// A non-blocking wait: the loop stays free.
    Sleep,
}

/// Where a workload's work runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunsOn {
    /// On the event loop: it holds the loop while it runs.
    Loop,
    /// On the thread pool: the loop stays free.
    Pool,
    /// A timer: nothing is held.
    Timer,
}

/// The numeric parameter of a workload: its name, range and default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param {
    /// Query name, e.g. `mb`.
    pub name: &'static str,
    /// Smallest allowed value.
    pub min: u64,
    /// Largest allowed value: no request can exhaust memory or hold a worker for long.
    pub max: u64,
    /// The value a scenario step uses when it gives none.
    pub default: u64,
    /// Unit shown in labels, e.g. `MB`.
    pub unit: &'static str,
}

impl Param {
    /// The allowed values.
    pub fn range(&self) -> RangeInclusive<u64> {
        self.min..=self.max
    }
}

/// Everything known about one workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Which workload.
    pub workload: Workload,
    /// Its name in scenarios and labels, e.g. `json`.
    pub name: &'static str,
    /// Its path, e.g. `/json`.
    pub path: &'static str,
    /// Its numeric parameter, if any.
    pub param: Option<Param>,
    /// Where it runs.
    pub runs_on: RunsOn,
    /// The dashboard key that fires it, if any.
    pub key: Option<char>,
    /// How many requests a key (or a scenario step without `count`) sends at once.
    pub burst: usize,
    /// The footer's short label.
    pub short: &'static str,
    /// What it demonstrates, for the help.
    pub caption: &'static str,
}

/// Requests in a sync burst: more than FastAPI's 40 tokens.
pub const SYNC_BURST: usize = 60;
/// Requests in a hash burst: three turns of Node's 4 threads.
pub const HASH_BURST: usize = 12;
/// Requests in an fs burst.
pub const FS_BURST: usize = 16;
/// How long each request of a sync burst holds its pool thread, ms.
pub const SYNC_BURST_MS: u64 = 200;
/// Kilobytes each request of an fs burst reads.
pub const FS_BURST_KB: u64 = 4096;

const MB: Param = Param {
    name: "mb",
    min: 1,
    max: 64,
    default: 20,
    unit: "MB",
};
const HOLD_MS: Param = Param {
    name: "ms",
    min: 1,
    max: 10_000,
    default: 500,
    unit: "ms",
};

/// The catalog, in key order.
pub const CATALOG: [Spec; 9] = [
    Spec {
        workload: Workload::Hello,
        name: "hello",
        path: "/hello",
        param: None,
        runs_on: RunsOn::Loop,
        key: None,
        burst: 1,
        short: "hello",
        caption: "a tiny JSON answer (the background load)",
    },
    Spec {
        workload: Workload::Json,
        name: "json",
        path: "/json",
        param: Some(MB),
        runs_on: RunsOn::Loop,
        key: Some('j'),
        burst: 1,
        short: "json",
        caption: "JSON parse on the loop (the Node pitfall)",
    },
    Spec {
        workload: Workload::Offload,
        name: "offload",
        path: "/offload",
        param: Some(MB),
        runs_on: RunsOn::Pool,
        key: Some('o'),
        burst: 1,
        short: "offload",
        caption: "the same parse offloaded to the pool (the fix)",
    },
    Spec {
        workload: Workload::Block,
        name: "block",
        path: "/block",
        param: Some(HOLD_MS),
        runs_on: RunsOn::Loop,
        key: Some('b'),
        burst: 1,
        short: "block",
        caption: "block the loop (time.sleep in async def)",
    },
    Spec {
        workload: Workload::Spin,
        name: "spin",
        path: "/spin",
        param: Some(HOLD_MS),
        runs_on: RunsOn::Loop,
        key: Some('p'),
        burst: 1,
        short: "spin",
        caption: "spin the loop (busy CPU)",
    },
    Spec {
        workload: Workload::Sync,
        name: "sync",
        path: "/sync",
        param: Some(Param {
            default: SYNC_BURST_MS,
            ..HOLD_MS
        }),
        runs_on: RunsOn::Pool,
        key: Some('s'),
        burst: SYNC_BURST,
        short: "sync×60",
        caption: "60 sync endpoints at once (FastAPI pool: 40 tokens)",
    },
    Spec {
        workload: Workload::Hash,
        name: "hash",
        path: "/hash",
        param: Some(Param {
            name: "iterations",
            min: 1,
            max: 5_000_000,
            default: 100_000,
            unit: "iterations",
        }),
        runs_on: RunsOn::Pool,
        key: Some('h'),
        burst: HASH_BURST,
        short: "hash×12",
        caption: "12 pbkdf2 hashes at once (Node pool: 4 threads)",
    },
    Spec {
        workload: Workload::Fs,
        name: "fs",
        path: "/fs",
        param: Some(Param {
            name: "kb",
            min: 1,
            max: 64 * 1024,
            default: FS_BURST_KB,
            unit: "KB",
        }),
        runs_on: RunsOn::Pool,
        key: Some('f'),
        burst: FS_BURST,
        short: "fs",
        caption: "16 file reads through the pool",
    },
    Spec {
        workload: Workload::Sleep,
        name: "sleep",
        path: "/sleep",
        param: Some(Param {
            min: 0,
            max: 60_000,
            ..HOLD_MS
        }),
        runs_on: RunsOn::Timer,
        key: None,
        burst: 1,
        short: "sleep",
        caption: "a non-blocking wait (the loop stays free)",
    },
];

impl Workload {
    /// Its entry in the catalog.
    pub fn spec(self) -> &'static Spec {
        CATALOG
            .iter()
            .find(|s| s.workload == self)
            .expect("every workload is in the catalog")
    }

    /// The workload a scenario names, e.g. `json`.
    pub fn named(name: &str) -> Option<Workload> {
        CATALOG.iter().find(|s| s.name == name).map(|s| s.workload)
    }

    /// The workload a dashboard key fires.
    pub fn for_key(key: char) -> Option<Workload> {
        CATALOG
            .iter()
            .find(|s| s.key == Some(key))
            .map(|s| s.workload)
    }

    /// `METHOD /path` of its route, as the probe's latency table names it.
    pub fn endpoint(self) -> String {
        format!("GET {}", self.spec().path)
    }
}

/// Names of every workload, for error messages.
pub fn names() -> String {
    CATALOG
        .iter()
        .filter(|s| s.workload != Workload::Hello)
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `METHOD /path` of every route, for the probe's latency table.
pub fn endpoints() -> Vec<String> {
    CATALOG.iter().map(|s| s.workload.endpoint()).collect()
}

/// How big the work a key fires is: the operator steps through [`SIZES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Megabytes of JSON to parse.
    pub json_mb: u64,
    /// Milliseconds to block or spin.
    pub hold_ms: u64,
    /// pbkdf2 iterations per hash.
    pub iterations: u64,
}

/// The sizes the operator steps through.
pub const SIZES: [Size; 4] = [
    Size {
        json_mb: 5,
        hold_ms: 100,
        iterations: 50_000,
    },
    Size {
        json_mb: 10,
        hold_ms: 250,
        iterations: 100_000,
    },
    Size {
        json_mb: 20,
        hold_ms: 500,
        iterations: 200_000,
    },
    Size {
        json_mb: 40,
        hold_ms: 1000,
        iterations: 400_000,
    },
];

/// The size the dashboard starts with (20 MB, 500 ms: the story's figures).
pub const DEFAULT_SIZE: usize = 2;

/// One firing of a workload: `count` identical requests sent at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// What to run.
    pub workload: Workload,
    /// The value of its parameter (ignored by a workload that has none).
    pub value: u64,
    /// `hash` only: run on the loop (`pbkdf2Sync`) instead of the pool.
    pub on_loop: bool,
    /// How many requests at once.
    pub count: usize,
    /// Send them over connections that one worker accepted (fills one worker's pool).
    pub one_worker: bool,
}

impl Request {
    /// What a key fires at size `size`, against a server of `model`.
    pub fn for_key(workload: Workload, size: Size, model: Option<Model>) -> Request {
        let spec = workload.spec();
        let value = match workload {
            Workload::Json | Workload::Offload => size.json_mb,
            Workload::Block | Workload::Spin => size.hold_ms,
            Workload::Hash => size.iterations,
            _ => spec.param.map_or(0, |p| p.default),
        };
        let request = Request {
            workload,
            value,
            on_loop: false,
            count: spec.burst,
            one_worker: false,
        };
        match model {
            Some(model) => request.aimed_at(model),
            None => request,
        }
    }

    /// Aims a sync burst at one worker of a fastapi server: "sixty sync requests at
    /// one worker" go over connections that worker 0 accepted, so its 40 tokens fill
    /// (spread by the kernel they would split about 39/21 and nothing would queue).
    pub fn aimed_at(mut self, model: Model) -> Request {
        self.one_worker =
            self.workload == Workload::Sync && self.count > 1 && model == Model::Fastapi;
        self
    }

    /// A request with the workload's default value, checked against its range.
    pub fn new(workload: Workload, value: Option<u64>, count: usize) -> Result<Request, String> {
        let spec = workload.spec();
        let value = match (spec.param, value) {
            (Some(p), Some(v)) if !p.range().contains(&v) => {
                return Err(format!(
                    "{} = {v} is out of range for {}: {}..={}",
                    p.name, spec.name, p.min, p.max
                ));
            }
            (Some(_), Some(v)) => v,
            (Some(p), None) => p.default,
            (None, Some(_)) => return Err(format!("{} takes no parameter", spec.name)),
            (None, None) => 0,
        };
        if !(1..=500).contains(&count) {
            return Err(format!("count = {count} is out of range: 1..=500"));
        }
        Ok(Request {
            workload,
            value,
            on_loop: false,
            count,
            one_worker: false,
        })
    }

    /// The request target, e.g. `/json?mb=20`.
    pub fn path(&self) -> String {
        let spec = self.workload.spec();
        let mut path = match spec.param {
            Some(p) => format!("{}?{}={}", spec.path, p.name, self.value),
            None => spec.path.to_string(),
        };
        if self.on_loop && self.workload == Workload::Hash {
            path.push_str("&on=loop");
        }
        path
    }

    /// A short label for the event log: `json 20 MB`, `sync×60 (200 ms)`, `hash×12`.
    pub fn label(&self) -> String {
        let spec = self.workload.spec();
        let mut label = spec.name.to_string();
        if self.count > 1 {
            label.push_str(&format!("×{}", self.count));
        }
        match (self.workload, spec.param) {
            (Workload::Hash | Workload::Fs, _) | (_, None) => {}
            (Workload::Sync, Some(p)) => label.push_str(&format!(" ({} {})", self.value, p.unit)),
            (_, Some(p)) => label.push_str(&format!(" {} {}", self.value, p.unit)),
        }
        if self.on_loop && self.workload == Workload::Hash {
            label.push_str(" on the loop");
        }
        label
    }

    /// The targets to send, all at once.
    pub fn paths(&self) -> Vec<String> {
        vec![self.path(); self.count]
    }
}

/// What every workload answers with (`200`); the demo's router builds it and the
/// event log reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The workload's name, e.g. `json`.
    pub workload: String,
    /// The server's model.
    pub model: Model,
    /// The worker that served it.
    pub worker: u32,
    /// That worker's process.
    pub pid: u32,
    /// Where the work ran: `loop`, `pool` or `timer`.
    pub ran_on: String,
    /// From the handler's start to its answer, ms.
    pub took_ms: f64,
    /// Pool work: how long it waited for a thread, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_ms: Option<f64>,
    /// Pool work: how long it ran on its thread, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran_ms: Option<f64>,
    /// What the workload computed (sizes, checksums), by name.
    #[serde(flatten)]
    pub detail: serde_json::Map<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_names_find_their_workloads() {
        assert_eq!(Workload::for_key('j'), Some(Workload::Json));
        assert_eq!(Workload::for_key('s'), Some(Workload::Sync));
        assert_eq!(Workload::for_key('x'), None);
        assert_eq!(Workload::named("offload"), Some(Workload::Offload));
        assert_eq!(Workload::named("jsn"), None);
        for spec in &CATALOG {
            assert_eq!(spec.workload.spec(), spec);
        }
        assert_eq!(endpoints().len(), CATALOG.len());
        assert_eq!(Workload::Json.endpoint(), "GET /json");
    }

    #[test]
    fn keys_fire_what_the_story_needs() {
        let size = SIZES[DEFAULT_SIZE];
        let json = Request::for_key(Workload::Json, size, Some(Model::Node));
        assert_eq!(json.paths(), vec!["/json?mb=20"]);
        assert_eq!(json.label(), "json 20 MB");
        let block = Request::for_key(Workload::Block, size, None);
        assert_eq!(block.paths(), vec!["/block?ms=500"]);
        assert_eq!(block.label(), "block 500 ms");
        let sync = Request::for_key(Workload::Sync, size, Some(Model::Fastapi));
        assert_eq!((sync.paths().len(), sync.one_worker), (60, true));
        assert_eq!(sync.label(), "sync×60 (200 ms)");
        assert!(!Request::for_key(Workload::Sync, size, Some(Model::Node)).one_worker);
        let hash = Request::for_key(Workload::Hash, size, None);
        assert_eq!(hash.paths().len(), 12);
        assert_eq!(hash.path(), "/hash?iterations=200000");
        assert_eq!(hash.label(), "hash×12");
        assert_eq!(
            Request::for_key(Workload::Fs, size, None).path(),
            "/fs?kb=4096"
        );
    }

    #[test]
    fn requests_are_checked_against_the_catalog() {
        let r = Request::new(Workload::Json, None, 1).unwrap();
        assert_eq!(r.path(), "/json?mb=20");
        assert!(
            Request::new(Workload::Json, Some(65), 1)
                .unwrap_err()
                .contains("mb = 65 is out of range for json: 1..=64")
        );
        assert!(Request::new(Workload::Hello, Some(1), 1).is_err());
        assert!(Request::new(Workload::Sync, None, 0).is_err());
        let mut hash = Request::new(Workload::Hash, Some(5000), 3).unwrap();
        hash.on_loop = true;
        assert_eq!(hash.path(), "/hash?iterations=5000&on=loop");
        assert_eq!(hash.label(), "hash×3 on the loop");
        assert_eq!(
            Request::new(Workload::Sleep, Some(0), 1).unwrap().path(),
            "/sleep?ms=0"
        );
    }

    #[test]
    fn replies_round_trip_with_their_details() {
        let text = r#"{"workload":"offload","model":"node","worker":0,"pid":42,"ran_on":"pool","took_ms":12.5,"queued_ms":1.0,"ran_ms":11.0,"mb":20,"items":7}"#;
        let r: Reply = serde_json::from_str(text).unwrap();
        assert_eq!(
            (r.worker, r.queued_ms, r.ran_on.as_str()),
            (0, Some(1.0), "pool")
        );
        assert_eq!(r.detail["mb"], 20);
        let back: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(text).unwrap()
        );
    }
}
