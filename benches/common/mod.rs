//! Helpers the benchmarks share: CPU pinning, clocks of CPU time, memory of a
//! process, a runtime, the cheapest service.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::http::Request;

/// Pins the calling thread (and what it starts later) to one CPU.
pub fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`): other processes
/// on the machine taking the CPU do not count, as they would on a wall clock.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Resident memory of a process, in MB.
pub fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A runtime builder with I/O and timers: `current_thread` without `workers`, else
/// `multi_thread` with that many workers.
pub fn builder(workers: Option<usize>) -> tokio::runtime::Builder {
    let mut b = match workers {
        None => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    b.enable_all();
    b
}

/// A `current_thread` runtime with I/O and timers.
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The cheapest service there is: answers every request at once.
#[derive(Clone, Copy)]
pub struct Hello;

impl tower_service::Service<Request<()>> for Hello {
    type Response = &'static str;
    type Error = Infallible;
    type Future = Ready<Result<&'static str, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        black_box(&req);
        ready(Ok("hello\n"))
    }
}

/// Reads one HTTP/1.1 response (head and `content-length` body) off `s`, into
/// `buf`; true if its status is 200.
pub async fn read_response(s: &mut tokio::net::TcpStream, buf: &mut [u8]) -> bool {
    let mut have = 0;
    loop {
        let r = tokio::io::AsyncReadExt::read(s, &mut buf[have..])
            .await
            .unwrap();
        assert!(r > 0, "server closed");
        have += r;
        if let Some(h) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..h]).unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if have >= h + 4 + len {
                return head.starts_with("HTTP/1.1 200");
            }
        }
    }
}
