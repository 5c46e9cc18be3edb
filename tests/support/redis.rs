//! Redis for the tests: the shared test Redis and its databases, redis-servers of a test's own
//! (plain, or with TLS), copying and dumping keys, and what INFO and SLOWLOG say of a span of
//! work.

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{env, eventually, free_port, run};

pub fn redis_url() -> String {
    env("JOBRETRY_TEST_REDIS_URL")
}

/// The test Redis, database `db`.
pub fn db_url(db: u8) -> String {
    format!("{}/{db}", redis_url())
}

/// A connection to the Redis at `url`.
pub fn conn(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .unwrap()
        .get_connection()
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

/// A connection to the test Redis, database `db`.
pub fn db_conn(db: u8) -> redis::Connection {
    conn(&db_url(db))
}

/// The ids in `queue`'s wait list (prefix `bull`) on the Redis at `url`, head first.
pub fn waiting_ids(url: &str, queue: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(format!("bull:{queue}:wait"))
        .arg(0)
        .arg(-1)
        .query(&mut conn(url))
        .unwrap()
}

/// The keys of `queue` (prefix `bull`) in the test database `db`.
fn queue_keys(con: &mut redis::Connection, queue: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(format!("bull:{queue}:*"))
        .query(con)
        .unwrap()
}

/// Deletes every key of `queue` from the test database (the large tests' clean-up, so that the
/// tests after them do not wade through their jobs).
pub fn drop_queue(queue: &str) {
    let mut con = db_conn(0);
    for chunk in queue_keys(&mut con, queue).chunks(10_000) {
        let _: i64 = redis::cmd("UNLINK").arg(chunk).query(&mut con).unwrap();
    }
}

/// COPYs `keys` from the database of `from` into database `db` of the same server
/// (pipelined, 5,000 keys a round trip).
pub fn copy_keys(from: &mut redis::Connection, keys: &[String], db: u8) {
    for chunk in keys.chunks(5000) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("COPY").arg(k).arg(k).arg("DB").arg(db).ignore();
        }
        let _: () = p.query(from).unwrap();
    }
}

/// Copies `queue`'s BullMQ keys (not the operator's own, under `jobretry:`) from db 0 into
/// `db`, emptied first: another server with the same queue but none of a run's records.
pub fn copy_bullmq_keys(queue: &str, db: u8) {
    let mut con = db_conn(0);
    let _: () = redis::cmd("FLUSHDB").query(&mut db_conn(db)).unwrap();
    let keys: Vec<String> = queue_keys(&mut con, queue)
        .into_iter()
        .filter(|k| !k.contains(":jobretry:"))
        .collect();
    copy_keys(&mut con, &keys, db);
}

/// Every key of the database at `url` with its content, less the Worker's `stalled-check`
/// throttle keys (SET PX): they expire by themselves, so before/after comparisons leave them out.
pub fn stable_dump(url: &str) -> BTreeMap<String, String> {
    without_stalled_check(redis_dump_at(url, false))
}

fn without_stalled_check(dump: BTreeMap<String, String>) -> BTreeMap<String, String> {
    dump.into_iter()
        .filter(|(k, _)| !k.ends_with(":stalled-check"))
        .collect()
}

/// Every key of one queue (`bull:<queue>:*`) in the test database, as [`stable_dump`]
/// gives it; other tests share the database.
pub fn queue_dump(queue: &str) -> BTreeMap<String, String> {
    // Only the queue's keys are read: other tests leave hundreds of thousands of keys.
    let mut pattern = String::from("bull:");
    for c in queue.chars() {
        if matches!(c, '[' | ']' | '?' | '*' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push_str(":*");
    without_stalled_check(redis_dump_matching(&redis_url(), &pattern, false))
}

/// Every key of the database at `url` with its full content. With `fields_only`, stream
/// entries are rendered without their ids (which differ between two runs of the same steps).
pub fn redis_dump_at(url: &str, fields_only: bool) -> BTreeMap<String, String> {
    redis_dump_matching(url, "*", fields_only)
}

/// As [`redis_dump_at`], for the keys matching the glob `pattern` only: `<type>:<content>`
/// per key (sets sorted, hashes by field), read in pipelines of 2,000 keys.
pub fn redis_dump_matching(
    url: &str,
    pattern: &str,
    fields_only: bool,
) -> BTreeMap<String, String> {
    let mut con = conn(url);
    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut con).unwrap();
    let mut out = BTreeMap::new();
    for chunk in keys.chunks(2000) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("TYPE").arg(k);
        }
        let types: Vec<String> = p.query(&mut con).unwrap();
        let mut p = redis::pipe();
        for (k, t) in chunk.iter().zip(&types) {
            match t.as_str() {
                "string" => p.cmd("GET").arg(k),
                "list" => p.cmd("LRANGE").arg(k).arg(0).arg(-1),
                "set" => p.cmd("SMEMBERS").arg(k),
                "zset" => p.cmd("ZRANGE").arg(k).arg(0).arg(-1).arg("WITHSCORES"),
                "hash" => p.cmd("HGETALL").arg(k),
                "stream" => p.cmd("XRANGE").arg(k).arg("-").arg("+"),
                _ => p.cmd("TYPE").arg(k), // none (gone since) or a type not rendered
            };
        }
        let values: Vec<redis::Value> = p.query(&mut con).unwrap();
        for ((k, t), v) in chunk.iter().zip(&types).zip(values) {
            out.insert(k.clone(), format!("{t}:{}", render(t, v, fields_only)));
        }
    }
    out
}

/// The content of one key of type `t`, as [`redis_dump_matching`] renders it.
fn render(t: &str, v: redis::Value, fields_only: bool) -> String {
    fn list(v: redis::Value) -> Vec<String> {
        redis::from_redis_value(v).unwrap()
    }
    match t {
        "string" => redis::from_redis_value(v).unwrap(),
        "list" | "zset" => format!("{:?}", list(v)),
        "set" => {
            let mut m = list(v);
            m.sort();
            format!("{m:?}")
        }
        "hash" => {
            let m: BTreeMap<String, String> = redis::from_redis_value(v).unwrap();
            format!("{m:?}")
        }
        "stream" => {
            let entries: Vec<(String, Vec<String>)> = redis::from_redis_value(v).unwrap();
            let rendered: Vec<String> = entries
                .into_iter()
                .map(|(id, fields)| {
                    if fields_only {
                        fields.join(" ")
                    } else {
                        format!("{id} {}", fields.join(" "))
                    }
                })
                .collect();
            format!("{rendered:?}")
        }
        other => other.to_string(),
    }
}

/// Keys whose content differs between two dumps.
pub fn changed_keys<'a>(
    before: &'a BTreeMap<String, String>,
    after: &'a BTreeMap<String, String>,
) -> Vec<&'a String> {
    before
        .keys()
        .chain(after.keys().filter(|k| !before.contains_key(*k)))
        .filter(|k| before.get(*k) != after.get(*k))
        .collect()
}

/// `INFO <section>`.
pub fn info(con: &mut redis::Connection, section: &str) -> String {
    redis::cmd("INFO").arg(section).query(con).unwrap()
}

/// The server's CPU time so far (INFO cpu: used_cpu_user + used_cpu_sys), in seconds.
pub fn redis_cpu_s(con: &mut redis::Connection) -> f64 {
    let text = info(con, "cpu");
    let field = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("INFO cpu has no {name}"))
    };
    field("used_cpu_user") + field("used_cpu_sys")
}

/// INFO commandstats: command -> (calls, usec).
pub fn commandstats(con: &mut redis::Connection) -> BTreeMap<String, (u64, u64)> {
    let text = info(con, "commandstats");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|rest| rest.split_once(':'))
        else {
            continue;
        };
        let get = |k: &str| -> u64 {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        out.insert(name.to_string(), (get("calls"), get("usec")));
    }
    out
}

/// What SLOWLOG holds since its last reset, less a measuring connection's own SLOWLOG,
/// CONFIG and INFO calls.
#[derive(Clone, Debug, Default)]
pub struct SlowCalls {
    /// Entries of 10 ms or more.
    pub ten_ms: usize,
    /// The longest entry (usec) and its command.
    pub longest_us: u64,
    pub longest_cmd: String,
}

pub fn slowlog(con: &mut redis::Connection) -> SlowCalls {
    let entries: Vec<Vec<redis::Value>> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(1_000_000)
        .query(con)
        .unwrap();
    let mut out = SlowCalls::default();
    for e in entries {
        let args: Vec<String> = e
            .get(3)
            .and_then(|v| redis::from_redis_value_ref(v).ok())
            .unwrap_or_default();
        let cmd = args.first().cloned().unwrap_or_default().to_lowercase();
        if ["slowlog", "config", "info"].contains(&cmd.as_str()) {
            continue;
        }
        let us: u64 = e
            .get(2)
            .and_then(|v| redis::from_redis_value_ref(v).ok())
            .unwrap_or(0);
        if us >= 10_000 {
            out.ten_ms += 1;
        }
        if us > out.longest_us {
            (out.longest_us, out.longest_cmd) = (us, cmd);
        }
    }
    out
}

/// A redis-server of the test's own with a plain port (for seeding) and a TLS port whose
/// certificate is signed by a CA made here; killed when dropped.
pub struct TlsRedis {
    pub children: Vec<Child>,
    pub plain: u16,
    pub tls: u16,
    pub ca: std::path::PathBuf,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1 signed by it (`server.pem`,
/// `server.key`), written into `dir`.
pub fn make_certs(dir: &std::path::Path) {
    // Each call's arguments, space separated (none has a space of its own).
    let openssl = |args: &str| {
        let args: Vec<&str> = args.split(' ').collect();
        let out = run(Command::new("openssl").current_dir(dir).args(&args));
        assert!(out.ok, "openssl {args:?}: {}", out.stderr);
    };
    openssl(
        "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \
         -subj /CN=jobretry-test-ca",
    );
    openssl("req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1");
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
         -days 2 -extfile san.ext",
    );
}

pub fn start_tls_redis(dir: &std::path::Path) -> TlsRedis {
    make_certs(dir);
    let (plain, tls) = (free_port(), free_port());
    let child = Command::new("redis-server")
        .current_dir(dir)
        .args(["--port", &plain.to_string(), "--tls-port", &tls.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
        ])
        .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no", "--logfile", "redis.log"])
        .spawn()
        .expect("start redis-server");
    let server = TlsRedis {
        children: vec![child],
        plain,
        tls,
        ca: dir.join("ca.pem"),
    };
    eventually(
        Duration::from_secs(10),
        "the TLS redis-server to answer",
        || {
            let client = redis::Client::open(format!("redis://127.0.0.1:{plain}")).ok()?;
            let mut con = client.get_connection().ok()?;
            redis::cmd("PING").query::<String>(&mut con).ok()
        },
    );
    server
}

/// A redis-server of the test's own (so a fault or a hostile input never touches the shared
/// Redis, and tests can run beside each other), with the given extra arguments; can be
/// killed, stopped, continued and restarted on its port and data directory.
pub struct OwnRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl OwnRedis {
    pub fn start(extra: &[&str]) -> Self {
        let mut r = OwnRedis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.spawn();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection to it.
    pub fn conn(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url().as_str())?.get_connection()
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--protected-mode", "no", "--save", ""])
            .args(["--dir", self.dir.path().to_str().unwrap()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let url = self.url();
        eventually(Duration::from_secs(30), "redis-server up", || {
            let c = redis::Client::open(url.as_str()).ok()?;
            let mut con = c.get_connection_with_timeout(Duration::from_secs(1)).ok()?;
            let info: String = redis::cmd("INFO").arg("persistence").query(&mut con).ok()?;
            (!info.contains("loading:1")).then_some(())
        });
    }

    pub fn pid(&self) -> String {
        self.child.as_ref().unwrap().id().to_string()
    }

    pub fn signal(&self, sig: &str) {
        assert!(
            Command::new("kill")
                .args([sig, &self.pid()])
                .status()
                .unwrap()
                .success()
        );
    }

    /// SIGKILL, as a host crash of the process would, then a start on the same data.
    pub fn crash_and_restart(&mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        self.spawn();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a redis-server did over a span of work: wall clock, its CPU time, INFO
/// commandstats and SLOWLOG, reset when the span starts (CONFIG RESETSTAT, SLOWLOG RESET);
/// the measuring connection's own commands left out.
pub struct RedisSpan {
    admin: redis::Connection,
    cpu0: f64,
    pub t0: std::time::Instant,
}

/// The figures of a [`RedisSpan`].
pub struct SpanFigures {
    pub wall_s: f64,
    pub cpu_us: f64,
    /// command -> (calls, usec).
    pub stats: BTreeMap<String, (u64, u64)>,
    pub slow: SlowCalls,
}

impl RedisSpan {
    pub fn start(url: &str) -> Self {
        let mut admin = conn(url);
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut admin)
            .unwrap();
        let _: () = redis::cmd("SLOWLOG")
            .arg("RESET")
            .query(&mut admin)
            .unwrap();
        let cpu0 = redis_cpu_s(&mut admin);
        let t0 = std::time::Instant::now();
        Self { admin, cpu0, t0 }
    }

    pub fn stop(mut self) -> SpanFigures {
        let wall_s = self.t0.elapsed().as_secs_f64();
        let cpu1 = redis_cpu_s(&mut self.admin);
        let mut stats = commandstats(&mut self.admin);
        for c in [
            "info",
            "config|resetstat",
            "config",
            "slowlog|reset",
            "slowlog",
        ] {
            stats.remove(c);
        }
        SpanFigures {
            wall_s,
            cpu_us: (cpu1 - self.cpu0) * 1e6,
            stats,
            slow: slowlog(&mut self.admin),
        }
    }
}

/// The keys of the database of `con` that have no TTL, and those that have one (with their
/// PTTL, -2 for a key gone since it was listed): a self-expiring key (a Worker's
/// `stalled-check`) may vanish between listing and copying.
pub fn keys_by_ttl(con: &mut redis::Connection) -> (Vec<String>, Vec<(String, i64)>) {
    let all: Vec<String> = redis::cmd("KEYS").arg("*").query(con).unwrap();
    let (mut lasting, mut expiring) = (Vec::with_capacity(all.len()), Vec::new());
    for chunk in all.chunks(10_000) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("PTTL").arg(k);
        }
        let ttls: Vec<i64> = p.query(con).unwrap();
        for (k, ttl) in chunk.iter().cloned().zip(ttls) {
            if ttl == -1 {
                lasting.push(k);
            } else {
                expiring.push((k, ttl));
            }
        }
    }
    (lasting, expiring)
}
