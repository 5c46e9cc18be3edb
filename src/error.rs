//! Errors of a reconcile, each with a static category (for logs and metrics) and a verdict:
//! transient errors are retried with backoff, permanent ones wait for a change.

/// A reconcile error that escaped to `error_policy`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a request.
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    /// The object lacks something the API server always sets (name, namespace, uid).
    #[error("object is missing {0}")]
    MissingObjectKey(&'static str),
}

/// Every category of [`Error::category`] (metrics declare each at 0).
pub const CATEGORIES: [&str; 2] = ["kube", "object"];

impl Error {
    /// A short, fixed label for the error kind.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::MissingObjectKey(_) => "object",
        }
    }

    /// Whether retrying later may succeed without a change to the object.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Kube(_))
    }
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
