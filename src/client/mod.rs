//! Reading a server: plain HTTP requests, the telemetry subscriber (reconnecting),
//! and the open-loop load generator.

pub mod http;
pub mod lines;
pub mod load;
pub mod subscriber;
