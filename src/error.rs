//! The error vocabulary every layer shares: the metrics categories of the controller's
//! errors (each layer's own error type lives with it: `bullmq::engine`, `controller::error`),
//! and how a value from Redis or a spec is quoted in a message.

/// The metrics label of a reconcile that failed (`controller::error::Error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, strum::EnumIter, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum ErrorCategory {
    Kube,
    Object,
}

/// The metrics label of a connection Secret that could not be used
/// (`controller::secret`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, strum::EnumIter, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum SecretCategory {
    NotFound,
    Unlabelled,
    MissingKey,
    #[strum(serialize = "not_utf8")]
    NotUtf8,
    InvalidUrl,
    Forbidden,
    Api,
}

/// `text` in double quotes for a message, escaped as a JSON string is (a value from Redis or
/// a spec may hold quotes or control characters); never Rust `Debug` output.
pub fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("\"{text}\""))
}

#[cfg(test)]
mod tests {
    #[test]
    fn quotes_and_escapes() {
        assert_eq!(super::quoted("bullmq:6.x"), "\"bullmq:6.x\"");
        assert_eq!(super::quoted("a\"b\nc"), r#""a\"b\nc""#);
    }
}
