//! Logging set-up: `RUST_LOG`-style filtering (default `info`), text or JSON lines on stdout.
//!
//! Guarantees: colour codes only in text written to a terminal (never in files, pipes or
//! JSON); in JSON every line carries the fields of the span it was written in, so each line
//! of a reconcile names its object and run key (see `controller::run_span`).

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Installs the global tracing subscriber.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = use_colour(
        format,
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
    );
    let builder = fmt().with_env_filter(filter).with_ansi(colour);
    match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}

/// Whether log lines may carry ANSI colour codes: only text, only on a terminal, and not
/// when `NO_COLOR` is set (no-color.org).
pub fn use_colour(format: LogFormat, terminal: bool, no_color: bool) -> bool {
    format == LogFormat::Text && terminal && !no_color
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_for_text_on_a_terminal() {
        assert!(use_colour(LogFormat::Text, true, false));
        assert!(!use_colour(LogFormat::Text, false, false), "file or pipe");
        assert!(!use_colour(LogFormat::Text, true, true), "NO_COLOR");
        assert!(!use_colour(LogFormat::Json, true, false), "JSON");
    }
}
