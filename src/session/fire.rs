//! Firing a workload: all its requests at once (a sync burst over connections that
//! one worker accepted), and the event-log line that says who served it and how long
//! it took, read from the typed replies.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::LogKind;
use crate::client::http::{self, HttpClient};
pub use crate::units::short_ms;
use crate::workload::{Reply, Request};

/// How long a fired request may take.
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long finding connections to one worker may take (a stopped server never
/// answers).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One request's outcome: answered, failed, or timed out.
pub type Outcome =
    Result<Result<http::HttpResponse, http::ClientError>, tokio::time::error::Elapsed>;

/// Sends `request` to `app` and returns the log line that says how it went.
pub async fn fire(client: HttpClient, app: String, request: Request) -> (LogKind, String) {
    let mut label = request.label();
    let paths = request.paths();
    let started;
    let results: Vec<Outcome> = if request.one_worker {
        let connecting = http::connections_to_worker(&app, 0, paths.len(), paths.len() * 10);
        let connected = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(result) => result,
            Err(_) => {
                let text = format!(
                    "{label}: no connection to w0 within {} s; not sent",
                    CONNECT_TIMEOUT.as_secs()
                );
                return (LogKind::Warn, text);
            }
        };
        match connected {
            Ok(conns) if conns.len() == paths.len() => {
                label.push_str(" → w0");
                started = Instant::now();
                let requests = conns.into_iter().zip(paths).map(|(mut conn, path)| {
                    let app = app.clone();
                    async move {
                        tokio::time::timeout(TIMEOUT, http::get_on(&mut conn, &app, &path)).await
                    }
                });
                futures_util::future::join_all(requests).await
            }
            Ok(conns) => {
                let text = format!(
                    "{label}: only {} connections reached w0; not sent",
                    conns.len()
                );
                return (LogKind::Warn, text);
            }
            Err(e) => return (LogKind::Warn, format!("{label}: cannot connect: {e}")),
        }
    } else {
        started = Instant::now();
        let requests = paths.into_iter().map(|path| {
            let (client, app) = (client.clone(), app.clone());
            async move { tokio::time::timeout(TIMEOUT, http::get(&client, &app, &path)).await }
        });
        futures_util::future::join_all(requests).await
    };
    (
        LogKind::Result,
        summarize(&label, &results, started.elapsed()),
    )
}

/// One log line for a finished trigger: who served it and how long it took.
pub fn summarize(label: &str, results: &[Outcome], total: Duration) -> String {
    let mut per_worker = BTreeMap::<u32, u32>::new();
    let mut failures = Vec::new();
    let mut first: Option<Reply> = None;
    let mut queued_max = 0.0f64;
    for r in results {
        match r {
            Ok(Ok(resp)) if resp.status == 200 => {
                match serde_json::from_slice::<Reply>(&resp.body) {
                    Ok(reply) => {
                        *per_worker.entry(reply.worker).or_default() += 1;
                        queued_max = queued_max.max(reply.queued_ms.unwrap_or(0.0));
                        first.get_or_insert(reply);
                    }
                    Err(e) => failures.push(format!("unexpected answer: {e}")),
                }
            }
            Ok(Ok(resp)) => failures.push(format!("HTTP {}", resp.status)),
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(_) => failures.push("timed out".into()),
        }
    }
    let total_ms = total.as_secs_f64() * 1000.0;
    if results.len() == 1 {
        return match (first, failures.first()) {
            (Some(b), _) => format!(
                "{label} → w{} (pid {}) {}, {} on the {}",
                b.worker,
                b.pid,
                short_ms(total_ms),
                short_ms(b.took_ms),
                b.ran_on,
            ),
            (None, Some(f)) => format!("{label} → failed: {f}"),
            (None, None) => format!("{label} → no answer"),
        };
    }
    let spread: Vec<String> = per_worker
        .iter()
        .map(|(w, n)| format!("w{w}×{n}"))
        .collect();
    let mut line = format!(
        "{label} done in {} ({}), longest queue wait {}",
        short_ms(total_ms),
        spread.join(" "),
        short_ms(queued_max)
    );
    if !failures.is_empty() {
        line.push_str(&format!(", {} failed ({})", failures.len(), failures[0]));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ok(body: &str) -> Outcome {
        Ok(Ok(http::HttpResponse {
            status: 200,
            body: Bytes::from(body.to_string()),
        }))
    }

    #[test]
    fn a_single_trigger_names_its_worker_and_time() {
        let r = [ok(
            r#"{"workload":"json","model":"node","worker":1,"pid":4242,"took_ms":411.9,"ran_on":"loop"}"#,
        )];
        assert_eq!(
            summarize("json 20 MB", &r, Duration::from_millis(415)),
            "json 20 MB → w1 (pid 4242) 415 ms, 412 ms on the loop"
        );
    }

    #[test]
    fn a_burst_reports_its_spread_and_failures() {
        let mut r: Vec<Outcome> = (0..3)
            .map(|i| {
                ok(&format!(
                    r#"{{"workload":"sync","model":"fastapi","pid":1,"ran_on":"pool","took_ms":1,"worker":{},"queued_ms":{}}}"#,
                    i % 2,
                    i * 100
                ))
            })
            .collect();
        r.push(Ok(Ok(http::HttpResponse {
            status: 503,
            body: Bytes::new(),
        })));
        assert_eq!(
            summarize("sync×60 (200 ms)", &r, Duration::from_millis(420)),
            "sync×60 (200 ms) done in 420 ms (w0×2 w1×1), longest queue wait 200 ms, 1 failed (HTTP 503)"
        );
    }
}
