//! jobretry-operator: a Kubernetes operator that retries BullMQ jobs in Redis exactly as
//! BullMQ's own `Job.retry()` would, once per run key, and reports each job's result.
#![forbid(unsafe_code)]

pub mod bullmq;
pub mod client;
pub mod config;
pub mod controller;
pub mod crd;
pub mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod plugin;
pub mod policy;
pub mod status;
pub mod telemetry;
