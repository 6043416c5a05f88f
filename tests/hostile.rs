//! A hostile client against the demo server, on real processes over loopback: idle
//! and half-sent connections, floods past the connection cap, half-closed clients,
//! malformed heads, other methods, HTTP/2 prefaces, lax numbers. Every socket read
//! has a deadline; every flood is bounded in count.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::{Demo, runtime, serial, telemetry, until};
use loopscope::client::http::{self, client_without_keepalive};

/// How long any raw exchange may take.
const BOUND: Duration = Duration::from_secs(10);

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// Reads until the server closes, or `BOUND`; also returns how long that took.
fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, Duration, bool) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while start.elapsed() < BOUND {
        match s.read(&mut buf) {
            Ok(0) => return (out, start.elapsed(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                return (out, start.elapsed(), true);
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    (out, start.elapsed(), false)
}

/// Sends `request` on a new connection (then half-closes it when `half_close`) and
/// reads until the server closes.
fn exchange(addr: &str, request: &[u8], half_close: bool) -> Vec<u8> {
    try_exchange(addr, request, half_close, false)
}

/// As [`exchange`], for a request that must be answered. A server that answers an
/// error and closes while part of the request is still unread sends a reset, which
/// can beat the answer to the client (or make the half-close fail): the exchange is
/// tried again, a bounded number of times.
fn exchange_answered(addr: &str, request: &[u8], half_close: bool) -> Vec<u8> {
    try_exchange(addr, request, half_close, true)
}

fn try_exchange(addr: &str, request: &[u8], half_close: bool, answered: bool) -> Vec<u8> {
    for _ in 0..5 {
        let mut s = connect(addr);
        if s.write_all(request).is_err() {
            continue;
        }
        if half_close && s.shutdown(Shutdown::Write).is_err() {
            continue;
        }
        let (out, _, closed) = read_to_close(&mut s);
        assert!(closed, "the server closed within {BOUND:?}");
        if !(answered && out.is_empty()) {
            return out;
        }
    }
    panic!("no answer from {addr} in 5 tries");
}

struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {}: not JSON ({e}): {:?}",
                self.status,
                self.head,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// The first answer in `bytes`.
fn parse(bytes: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(bytes);
    let (head, _) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer head in {text:?}"));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 answer: {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    let start = head.len() + 4;
    let body = bytes[start..(start + length).min(bytes.len())].to_vec();
    assert_eq!(body.len(), length, "a whole body");
    Answer {
        status,
        head: head.to_ascii_lowercase(),
        body,
    }
}

/// Reads one answer on a keep-alive connection.
fn read_answer(s: &mut TcpStream) -> Answer {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < BOUND {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if out.len() >= end + 4 + length {
                return parse(&out);
            }
        }
        match s.read(&mut buf) {
            Ok(0) => panic!("closed before a whole answer: {out:?}"),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    panic!("no whole answer within {BOUND:?}: {out:?}");
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: loopscope\r\n\r\n").into_bytes()
}

/// True once the server closed `s` (nothing to read but the end).
fn closed_by_server(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let mut reader = s;
    let closed = match reader.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

async fn status_of(addr: &str, path: &str) -> u16 {
    let client = client_without_keepalive();
    common::get(&client, addr, path).await.status
}

#[test]
fn idle_connections_past_the_cap_close_the_longest_idle_and_both_ports_keep_answering() {
    let _serial = serial();
    const CAP: usize = 64;
    const FLOOD: usize = 200;
    for (model, workers) in [("node", 1), ("fastapi", 2)] {
        let demo = Demo::start(&[
            "--model",
            model,
            "--workers",
            &workers.to_string(),
            "--max-connections",
            &CAP.to_string(),
            "--telemetry-max-connections",
            "16",
        ]);
        let rt = runtime();
        assert_eq!(rt.block_on(status_of(&demo.app, "/hello")), 200);
        let before = open_descriptors(demo.pid);

        let idle: Vec<TcpStream> = (0..FLOOD).map(|_| connect(&demo.app)).collect();
        // Each worker keeps at most CAP of them; the rest are closed, oldest first.
        let most_open = CAP * workers;
        let deadline = Instant::now() + BOUND;
        let mut closed = 0;
        while Instant::now() < deadline {
            closed = idle.iter().filter(|s| closed_by_server(s)).count();
            if closed >= FLOOD - most_open {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            closed >= FLOOD - most_open,
            "{model}: only {closed} of {FLOOD} idle connections closed (cap {CAP} per worker)"
        );
        if model == "node" {
            let now = open_descriptors(demo.pid);
            assert!(
                now <= before + CAP + 16,
                "{model}: {now} descriptors open, {before} before the flood"
            );
        }
        // A newcomer still gets served (it displaces an idle one), and so does telemetry.
        assert_eq!(rt.block_on(status_of(&demo.app, "/hello")), 200, "{model}");
        assert_eq!(rt.block_on(status_of(&demo.telemetry, "/info")), 200);

        // The telemetry port has a cap of its own, and answers past it too.
        let tel_idle: Vec<TcpStream> = (0..60).map(|_| connect(&demo.telemetry)).collect();
        assert_eq!(rt.block_on(status_of(&demo.telemetry, "/info")), 200);
        assert_eq!(rt.block_on(status_of(&demo.app, "/hello")), 200);
        drop((idle, tel_idle));
    }
}

#[test]
fn when_every_connection_is_busy_a_newcomer_gets_503_with_a_json_body() {
    let _serial = serial();
    const CAP: usize = 8;
    let demo = Demo::start(&["--model", "node", "--max-connections", &CAP.to_string()]);
    runtime().block_on(async {
        let mut tel = telemetry(&demo.telemetry).await;
        let busy: Vec<TcpStream> = (0..CAP)
            .map(|_| {
                let mut s = connect(&demo.app);
                s.write_all(&get("/sleep?ms=8000")).unwrap();
                s
            })
            .collect();
        until(&mut tel, BOUND, |s| {
            s.workers[0].requests.in_flight >= CAP as u64
        })
        .await
        .expect("every slot holds a request in progress");

        let refused = parse(&exchange(&demo.app, &get("/hello"), false));
        assert_eq!(refused.status, 503);
        assert!(refused.head.contains("retry-after: 1"), "{}", refused.head);
        let body = refused.json();
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("too many connections")),
            "{body}"
        );
        assert_eq!(body["max_connections"], CAP);
        // Telemetry is not counted against the app's cap.
        assert_eq!(status_of(&demo.telemetry, "/info").await, 200);

        // Once the requests end, newcomers are served again.
        drop(busy);
        let deadline = Instant::now() + Duration::from_secs(20);
        while status_of(&demo.app, "/hello").await != 200 {
            assert!(
                Instant::now() < deadline,
                "served again once the sleeps end"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn a_silent_or_half_sent_head_is_closed_after_the_header_timeout() {
    let _serial = serial();
    let demo = Demo::start(&[
        "--model",
        "node",
        "--header-timeout-ms",
        "1000",
        "--keep-alive-ms",
        "600000",
    ]);
    for addr in [&demo.app, &demo.telemetry] {
        for (what, sent) in [
            ("silent", &b""[..]),
            (
                "half-sent",
                b"GET /hello HTTP/1.1\r\nHost: loopscope\r\nX-Slow: ",
            ),
        ] {
            let mut s = connect(addr);
            s.write_all(sent).unwrap();
            let (out, took, closed) = read_to_close(&mut s);
            assert!(closed, "{addr}: a {what} connection is closed");
            assert!(
                took >= Duration::from_millis(700) && took < Duration::from_secs(8),
                "{addr}: a {what} connection closed after {took:?}"
            );
            // hyper answers nothing to a head that timed out.
            assert!(out.is_empty(), "{what}: {out:?}");
        }
    }
}

#[test]
fn an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not() {
    let _serial = serial();
    let demo = Demo::start(&[
        "--model",
        "node",
        "--keep-alive-ms",
        "2000",
        "--header-timeout-ms",
        "600000",
    ]);
    let mut s = connect(&demo.app);
    // Requests closer together than the keep-alive, for longer than it, all served.
    let start = Instant::now();
    let mut served = 0;
    let mut answered = Instant::now();
    while start.elapsed() < Duration::from_millis(3000) {
        s.write_all(&get("/hello")).unwrap();
        assert_eq!(read_answer(&mut s).status, 200);
        answered = Instant::now();
        served += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(served >= 5, "{served}");
    // Then idle: closed after the keep-alive (2 s after the last answer was sent,
    // which is a little before it was read here).
    let (out, _, closed) = read_to_close(&mut s);
    let idle = answered.elapsed();
    assert!(closed && out.is_empty(), "{out:?}");
    assert!(
        idle >= Duration::from_millis(1000) && idle < Duration::from_secs(9),
        "closed {idle:?} after the last answer"
    );
}

#[test]
fn a_half_closed_client_gets_its_answer() {
    let _serial = serial();
    for model in ["node", "fastapi"] {
        let demo = Demo::start(&["--model", model, "--workers", "1"]);
        let answer = parse(&exchange(&demo.app, &get("/sleep?ms=300"), true));
        assert_eq!(answer.status, 200, "{model}");
        assert_eq!(answer.json()["workload"], "sleep");
        let answer = parse(&exchange(&demo.telemetry, &get("/info"), true));
        assert_eq!(answer.status, 200, "{model}");
        assert_eq!(answer.json()["model"], model);
    }
}

#[test]
fn errors_of_the_http_layer_have_json_bodies() {
    let demo = Demo::start(&["--model", "node"]);
    let long_target = format!("/hello?{}", "a".repeat(9000));
    let big_header = format!(
        "GET /hello HTTP/1.1\r\nHost: loopscope\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let many_headers = format!(
        "GET /hello HTTP/1.1\r\nHost: loopscope\r\n{}\r\n",
        (0..120)
            .map(|i| format!("X-{i}: 1\r\n"))
            .collect::<String>()
    );
    for (addr, path) in [(&demo.app, "/hello"), (&demo.telemetry, "/info")] {
        let cases: [(&str, Vec<u8>, u16); 7] = [
            ("garbage request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
            (
                "bad header line",
                format!("GET {path} HTTP/1.1\r\nno colon here\r\n\r\n").into_bytes(),
                400,
            ),
            (
                "POST",
                format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                    .into_bytes(),
                405,
            ),
            (
                "DELETE",
                format!("DELETE {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
                405,
            ),
            ("long target", get(&long_target), 414),
            ("20 KiB header", big_header.clone().into_bytes(), 431),
            ("120 headers", many_headers.clone().into_bytes(), 431),
        ];
        for (what, request, status) in cases {
            // Half-closed, so that the server closes once it has answered.
            let answer = parse(&exchange_answered(addr, &request, true));
            assert_eq!(answer.status, status, "{addr} {what}");
            assert!(
                answer.head.contains("content-type: application/json"),
                "{addr} {what}: {}",
                answer.head
            );
            let body = answer.json();
            assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{addr} {what}: {body}"
            );
            if status == 405 {
                assert!(answer.head.contains("allow: get,head"), "{}", answer.head);
                assert_eq!(body["path"], path);
            }
        }
    }
}

#[test]
fn http2_is_not_spoken_on_either_port() {
    let demo = Demo::start(&["--model", "node"]);
    // The client preface and an empty SETTINGS frame (h2c with prior knowledge).
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let upgrade = b"GET /PATH HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                    Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
    for (addr, path) in [(&demo.app, "/hello"), (&demo.telemetry, "/info")] {
        let out = exchange(addr, &preface, false);
        // An HTTP/2 server answers with its own SETTINGS frame (type 4).
        assert!(
            out.len() < 9 || out[3] != 4,
            "{addr}: an HTTP/2 answer: {out:?}"
        );
        assert!(
            out.is_empty() || out.starts_with(b"HTTP/1.1 "),
            "{addr}: {out:?}"
        );
        // An upgrade request is answered in HTTP/1.1, not switched.
        let request = String::from_utf8_lossy(upgrade).replace("/PATH", path);
        let mut s = connect(addr);
        s.write_all(request.as_bytes()).unwrap();
        assert_eq!(read_answer(&mut s).status, 200, "{addr}");
    }
}

#[test]
fn numbers_with_a_sign_spaces_or_tabs_are_refused() {
    let demo = Demo::start(&["--model", "node"]);
    runtime().block_on(async {
        let client = http::client();
        for path in [
            "/json?mb=+5",
            "/json?mb=%2B5",
            "/json?mb=%205%20",
            "/json?mb=%095",
            "/json?mb=5%09",
            "/sleep?ms=%0A5",
            "/fs?kb=1.0",
        ] {
            let r = common::get(&client, &demo.app, path).await;
            assert_eq!(r.status, 400, "{path}: {}", r.text());
            let body = r.json().unwrap();
            let name = path.split(['?', '=']).nth(1).unwrap();
            assert_eq!(body["parameter"], name, "{path}: {body}");
            assert!(body["allowed"].as_str().is_some_and(|a| a.contains("..=")));
        }
        let r = common::get(&client, &demo.app, "/sleep?ms=007").await;
        assert_eq!(r.status, 200, "{}", r.text());
    });
}
