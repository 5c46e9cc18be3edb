//! Logging set-up: `RUST_LOG`-style filtering (default `info`), text or JSON lines.

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global tracing subscriber.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
