//! Reading a server: plain HTTP requests and the telemetry stream.

pub mod http;
