//! Why `kubectl jobretry` stopped, as one readable line (pure): API answers become what
//! they mean for the object ("jobretry foo not found in namespace bar"), transport failures
//! "cannot reach the API server: ...", never a debug dump; every command it suggests names
//! the object's namespace (`-n`).

/// Why the plugin stopped, each with a static category (its exit code).
#[derive(Debug, thiserror::Error, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum PluginError {
    /// A flag's value cannot make a valid JobRetry.
    #[error("{0}")]
    InvalidFlag(String),
    /// The JobRetry does not exist.
    #[error("jobretry {name} not found in namespace {namespace}")]
    NotFound { name: String, namespace: String },
    /// A JobRetry of that name exists already.
    #[error(
        "jobretry {name} already exists in namespace {namespace}: give the new run another name, or see it with `{}`",
        status_command(namespace, name)
    )]
    AlreadyExists { name: String, namespace: String },
    /// The API server refused the request; its own message (one line) says why.
    #[error("{0}")]
    Refused(String),
    /// The API server could not be reached.
    #[error("cannot reach the API server: {0}")]
    Unreachable(String),
    /// Another failure of a request to the API server.
    #[error("Kubernetes API request failed: {0}")]
    Kube(String),
    /// The kubeconfig could not be read.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// The run did not end within `--timeout`.
    #[error(
        "timed out after {after}; the run goes on: follow it with `{}`",
        status_command(namespace, name)
    )]
    Timeout {
        after: String,
        name: String,
        namespace: String,
    },
    /// The run ended Failed or is stalled until something outside it is fixed.
    #[error("{0}")]
    RunFailed(String),
    /// The object could not be printed.
    #[error("cannot print the manifest: {0}")]
    Output(String),
}

impl PluginError {
    /// A short, fixed label for the error kind.
    pub fn category(&self) -> &'static str {
        self.into()
    }

    /// The process exit code: 1 when the run itself failed, 2 for usage and API problems.
    pub fn exit_code(&self) -> i32 {
        match self {
            PluginError::RunFailed(_) | PluginError::Timeout { .. } => 1,
            _ => 2,
        }
    }
}

/// The command that prints a run's status, as the plugin suggests it.
pub fn status_command(namespace: &str, name: &str) -> String {
    format!("kubectl jobretry status -n {namespace} {name}")
}

/// What a failed request about JobRetry `name` (None: no object yet) in `namespace` means.
pub fn api_error(e: kube::Error, namespace: &str, name: Option<&str>) -> PluginError {
    match e {
        kube::Error::Api(s) if s.code == 404 => not_found(&s, namespace, name),
        kube::Error::Api(s) => match name {
            Some(n) if s.code == 409 && s.reason == "AlreadyExists" => PluginError::AlreadyExists {
                name: n.to_string(),
                namespace: namespace.to_string(),
            },
            _ if s.message.is_empty() => {
                PluginError::Refused(format!("the API server answered {} {}", s.code, s.reason))
            }
            _ => PluginError::Refused(one_line(&s.message)),
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            PluginError::Unreachable(causes(&e))
        }
        other => PluginError::Kube(causes(&other)),
    }
}

/// What a 404 means: the object, its namespace, or the resource type (the CRD) is missing.
fn not_found(s: &kube::core::Status, namespace: &str, name: Option<&str>) -> PluginError {
    let details = s.details.as_ref().filter(|d| !d.name.is_empty());
    match (details, name) {
        (Some(d), _) if d.kind == "namespaces" => {
            PluginError::Refused(format!("namespace {namespace} not found"))
        }
        (Some(d), Some(n)) if d.name == n => PluginError::NotFound {
            name: n.to_string(),
            namespace: namespace.to_string(),
        },
        (Some(_), _) => PluginError::Refused(one_line(&s.message)),
        (None, _) => PluginError::Refused(format!(
            "the API server does not serve JobRetries (jobretry.io/v1alpha1): install the CRD, crds/jobretries.jobretry.io.yaml ({})",
            one_line(&s.message)
        )),
    }
}

/// The causes of `e` (not its own wrapper's words), each once, on one line.
fn causes(e: &kube::Error) -> String {
    let mut text = String::new();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        let line = one_line(&cause.to_string());
        if !text.contains(&line) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&line);
        }
        next = cause.source();
    }
    if text.is_empty() {
        one_line(&e.to_string())
    } else {
        text
    }
}

/// `text` with every run of whitespace (line breaks included) as one space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
