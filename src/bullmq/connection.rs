//! Redis connections for the three deployment kinds (standalone, Cluster, Sentinel), built
//! from the URL kept in a Kubernetes Secret.
//!
//! Guarantees: the URL (and so the password) is held as a [`SecretString`], never appears in
//! a `Debug` output, and every error of a connection made here is scrubbed of it by the
//! target's [`Redactor`], which the connection keeps for the errors of later calls.

use std::{fmt, sync::Arc, time::Duration};

use redis::{
    Cmd, Pipeline, RedisFuture, Value,
    aio::{ConnectionLike, MultiplexedConnection},
    cluster_async::ClusterConnection,
};
use secrecy::{ExposeSecret, SecretString};

use super::{
    error::{Error, UrlError},
    redact::Redactor,
};
use crate::crd::ConnectionMode;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to connect; the URL is secret.
#[derive(Clone)]
pub struct RedisTarget {
    url: SecretString,
    mode: ConnectionMode,
    sentinel_master: Option<String>,
    redactor: Arc<Redactor>,
    /// A CA certificate (PEM) to trust for rediss://, besides the public roots.
    ca: Option<Vec<u8>>,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTarget")
            .field("url", &"<redacted>")
            .field("mode", &self.mode)
            .finish()
    }
}

impl RedisTarget {
    /// Validates the URL's shape; the error never quotes the URL.
    pub fn new(
        url: &str,
        mode: ConnectionMode,
        sentinel_master: Option<String>,
    ) -> Result<Self, Error> {
        let url = url.trim();
        let parsed = url::Url::parse(url).map_err(UrlError::Parse)?;
        if !matches!(parsed.scheme(), "redis" | "rediss") {
            return Err(UrlError::Scheme(parsed.scheme().to_string()).into());
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(UrlError::NoHost.into());
        }
        Ok(Self {
            redactor: Arc::new(Redactor::of(url, &parsed)),
            url: url.into(),
            mode,
            sentinel_master,
            ca: None,
        })
    }

    /// Trusts `ca_pem` (a PEM CA certificate) for TLS connections.
    pub fn with_ca(mut self, ca_pem: Option<Vec<u8>>) -> Self {
        self.ca = ca_pem;
        self
    }

    fn certificates(&self) -> Option<redis::TlsCertificates> {
        self.ca.clone().map(|root| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root),
        })
    }

    /// Replaces every occurrence of the URL or password in `text` with `***`.
    pub fn redact(&self, text: &str) -> String {
        self.redactor.redact(text)
    }

    /// What scrubs this target's secret from a text.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    fn url(&self) -> &str {
        self.url.expose_secret()
    }

    /// A key identifying everything that shapes a connection (URL, mode, master, CA) for a
    /// connection cache; the URL itself is not kept in it.
    pub fn cache_key(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.url(), self.mode as u8, &self.sentinel_master, &self.ca).hash(&mut h);
        h.finish()
    }

    /// Opens a connection of the configured kind; it keeps this target's [`Redactor`].
    pub async fn connect(&self) -> Result<RedisConn, Error> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connect_inner()).await {
            Ok(Ok(kind)) => Ok(RedisConn {
                kind,
                redactor: self.redactor.clone(),
            }),
            Ok(Err(e)) => Err(Error::connect(e, &self.redactor)),
            Err(_) => Err(Error::ConnectTimeout(CONNECT_TIMEOUT)),
        }
    }

    async fn connect_inner(&self) -> redis::RedisResult<ConnKind> {
        match self.mode {
            ConnectionMode::Standalone => {
                let client = match self.certificates() {
                    Some(certs) => redis::Client::build_with_tls(self.url(), certs)?,
                    None => redis::Client::open(self.url())?,
                };
                Ok(ConnKind::Single(
                    client.get_multiplexed_async_connection().await?,
                ))
            }
            ConnectionMode::Cluster => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(vec![self.url()]);
                if let Some(certs) = self.certificates() {
                    builder = builder.certs(certs);
                }
                let client = builder.build()?;
                Ok(ConnKind::Cluster(client.get_async_connection().await?))
            }
            ConnectionMode::Sentinel => {
                // The master's address as the sentinel says it now, kept with the connection:
                // a later answer that differs means the master moved (see `master_moved`).
                let mut sentinel = self.sentinel_connection().await?;
                let master = ask_master(&mut sentinel, self.master_name()).await?;
                let conn = self.master_connection(&master).await?;
                Ok(ConnKind::Sentinel(Box::new(SentinelConn {
                    conn,
                    sentinel,
                    name: self.master_name().to_string(),
                    master,
                })))
            }
        }
    }

    fn master_name(&self) -> &str {
        self.sentinel_master.as_deref().unwrap_or_default()
    }

    /// A connection to the sentinel itself (no credentials; TLS and the Secret's CA as the
    /// URL says).
    async fn sentinel_connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let url = self.sentinel_url()?;
        let client = match self.certificates().filter(|_| url.starts_with("rediss://")) {
            Some(certs) => redis::Client::build_with_tls(url.as_str(), certs)?,
            None => redis::Client::open(url.as_str())?,
        };
        client.get_multiplexed_async_connection().await
    }

    /// A connection to the master at `addr` ("host:port", as the sentinel named it) with the
    /// URL's credentials, db and scheme (rediss:// trusts the Secret's CA besides the public
    /// roots), checked to be a master: a node the sentinel still names while it is already a
    /// replica is refused rather than written to.
    async fn master_connection(&self, addr: &str) -> redis::RedisResult<MultiplexedConnection> {
        let invalid = |what: &'static str| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, what))
        };
        let mut url = url::Url::parse(self.url()).map_err(|_| invalid("invalid URL"))?;
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| invalid("bad master address"))?;
        url.set_host(Some(host))
            .map_err(|_| invalid("bad master host"))?;
        url.set_port(port.parse().ok())
            .map_err(|_| invalid("bad master port"))?;
        let client = match self.certificates().filter(|_| url.scheme() == "rediss") {
            Some(certs) => redis::Client::build_with_tls(url.as_str(), certs)?,
            None => redis::Client::open(url.as_str())?,
        };
        let mut conn = client.get_multiplexed_async_connection().await?;
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
        let first = role
            .first()
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
        match first.as_deref() {
            Some("master") => Ok(conn),
            _ => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "the node the sentinel names as master is not a master (a failover is under way)",
            ))),
        }
    }

    /// The sentinel's own address: the URL's host and port, without credentials or db.
    fn sentinel_url(&self) -> redis::RedisResult<String> {
        let parsed = url::Url::parse(self.url()).map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "invalid URL"))
        })?;
        Ok(format!(
            "{}://{}:{}",
            parsed.scheme(),
            parsed.host_str().unwrap_or_default(),
            parsed.port().unwrap_or(26379)
        ))
    }
}

/// The master's address ("host:port") the sentinel gives for `name`.
async fn ask_master(
    sentinel: &mut MultiplexedConnection,
    name: &str,
) -> redis::RedisResult<String> {
    let addr: Vec<String> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(name)
        .query_async(sentinel)
        .await?;
    Ok(addr.join(":"))
}

/// A connection to the master a sentinel named, with the sentinel and that master's address.
#[derive(Clone)]
struct SentinelConn {
    conn: MultiplexedConnection,
    sentinel: MultiplexedConnection,
    name: String,
    master: String,
}

/// An open connection of one of the three kinds.
#[derive(Clone)]
enum ConnKind {
    Single(MultiplexedConnection),
    Sentinel(Box<SentinelConn>),
    Cluster(ClusterConnection),
}

/// An open connection to a standalone server, a Sentinel's master, or a Cluster, with the
/// [`Redactor`] of the target it was opened for.
#[derive(Clone)]
pub struct RedisConn {
    kind: ConnKind,
    redactor: Arc<Redactor>,
}

impl RedisConn {
    /// Whether this connection's server is no longer the master its sentinel names (a
    /// failover): a connection kept open to a demoted master may still accept writes for
    /// seconds, writes the new master never sees, so a run asks before each batch. Always
    /// false for a standalone server or a Cluster (which redirects by itself).
    pub async fn master_moved(&mut self) -> Result<Option<(String, String)>, Error> {
        let ConnKind::Sentinel(s) = &mut self.kind else {
            return Ok(None);
        };
        let now = ask_master(&mut s.sentinel, &s.name)
            .await
            .map_err(|e| Error::redis(e, &self.redactor))?;
        Ok((now != s.master).then(|| (s.master.clone(), now)))
    }
}

/// A connection the scripts and probes run on: it names the [`Redactor`] that scrubs the
/// errors of its calls. Connections opened outside this module (tests, benches) redact
/// nothing: they know no secret.
pub trait Connection: ConnectionLike {
    fn redactor(&self) -> &Redactor;
}

static NO_SECRET: std::sync::LazyLock<Redactor> = std::sync::LazyLock::new(Redactor::default);

impl Connection for RedisConn {
    fn redactor(&self) -> &Redactor {
        &self.redactor
    }
}

impl Connection for MultiplexedConnection {
    fn redactor(&self) -> &Redactor {
        &NO_SECRET
    }
}

impl Connection for ClusterConnection {
    fn redactor(&self) -> &Redactor {
        &NO_SECRET
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.kind {
            ConnKind::Single(c) => c.req_packed_command(cmd),
            ConnKind::Sentinel(s) => s.conn.req_packed_command(cmd),
            ConnKind::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.kind {
            ConnKind::Single(c) => c.req_packed_commands(pipeline, offset, count),
            ConnKind::Sentinel(s) => s.conn.req_packed_commands(pipeline, offset, count),
            ConnKind::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.kind {
            ConnKind::Single(c) => c.get_db(),
            ConnKind::Sentinel(s) => s.conn.get_db(),
            ConnKind::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_and_url_and_hides_them_from_debug() {
        let t = RedisTarget::new(
            "redis://app:s3cr%21t@redis.example:6379/0",
            ConnectionMode::Standalone,
            None,
        )
        .unwrap();
        let text =
            "failed for redis://app:s3cr%21t@redis.example:6379/0 (app:s3cr!t@redis.example)";
        let out = t.redact(text);
        assert!(!out.contains("s3cr"), "{out}");
        assert!(!format!("{t:?}").contains("s3cr"));
    }

    #[test]
    fn a_one_character_password_is_neither_shown_nor_revealed_by_masking() {
        let t =
            RedisTarget::new("redis://:e@127.0.0.1:1/0", ConnectionMode::Standalone, None).unwrap();
        let text = "cannot connect to Redis: Connection refused (os error 111)";
        assert_eq!(t.redact(text), text, "no letter of a message is masked");
        let echoed = t.redact("bad URL redis://:e@127.0.0.1:1/0 for user :e@127.0.0.1");
        assert!(!echoed.contains(":e@"), "{echoed}");
    }

    #[test]
    fn connections_differing_in_any_setting_are_cached_apart() {
        let url = "rediss://h:6380";
        let plain = RedisTarget::new(url, ConnectionMode::Standalone, None).unwrap();
        let with_ca = plain
            .clone()
            .with_ca(Some(b"-----BEGIN CERTIFICATE-----".to_vec()));
        let cluster = RedisTarget::new(url, ConnectionMode::Cluster, None).unwrap();
        assert_ne!(plain.cache_key(), with_ca.cache_key());
        assert_ne!(plain.cache_key(), cluster.cache_key());
        assert_eq!(plain.cache_key(), plain.clone().cache_key());
    }

    #[test]
    fn refuses_bad_urls_without_quoting_them() {
        let err = RedisTarget::new("http://u:hunter2@h", ConnectionMode::Standalone, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("redis://") && !err.contains("hunter2"),
            "{err}"
        );
        let err = RedisTarget::new("not a url hunter2", ConnectionMode::Standalone, None)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    proptest::proptest! {
        /// Any password (percent-encoded in the URL as a user would) is scrubbed from any
        /// text that carries it in the URL's form, and never shows in Debug; any other text
        /// as a URL is refused without quoting it, and never panics.
        #[test]
        fn no_password_survives_redaction_and_no_url_panics(
            password in "[a-zA-Z0-9!#$%&*+=?^_~-]{4,24}",
            junk in ".{0,40}",
        ) {
            let encoded: String = password
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
                .collect();
            let url = format!("redis://app:{encoded}@redis.example:6379/0");
            let t = RedisTarget::new(&url, ConnectionMode::Standalone, None).unwrap();
            let text = format!("error talking to {url} as app:{password}@redis.example");
            let out = t.redact(&text);
            proptest::prop_assert!(!out.contains(&format!(":{password}@")), "{}", out);
            proptest::prop_assert!(!out.contains(&encoded) || encoded.len() < 4, "{}", out);
            let shown = format!("{t:?}");
            proptest::prop_assert!(!shown.contains(&encoded));
            if let Err(e) = RedisTarget::new(&junk, ConnectionMode::Standalone, None) {
                let e = e.to_string();
                proptest::prop_assert!(junk.len() < 6 || !e.contains(junk.trim()), "{}", e);
            }
        }
    }
}
