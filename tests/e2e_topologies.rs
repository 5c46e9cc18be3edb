//! The same id-based run on Redis Cluster (3 masters, prefix `{bull}`) and through Redis
//! Sentinel (master + replica + sentinel): status rows and counts as on standalone, a real
//! Worker processes exactly the retried jobs, and the ledger shares the queue's hash slot.

mod support;

use std::{collections::BTreeSet, time::Duration};

use jobretry_operator::crd::{ConnectionMode, JobRetryStatus, MAX_JOB_IDS};
use serde_json::{Value, json};
use support::*;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: tests/run.sh starts Cluster and Sentinel (JOBRETRY_PLATFORM_TOPOLOGIES=1)"))
}

/// Seeds 3 failing and 1 completing job through `conn` (fixture flags), applies a JobRetry for
/// the failed ones plus a missing and the completed one, and checks what a user would.
fn run_case(
    ns: &TestNs,
    queue: &str,
    prefix: &str,
    conn: &[&str],
    connection_yaml: &str,
    url: &str,
) -> Vec<String> {
    let spec = json!({"jobs": [
        {"key": "a", "name": "charge", "data": {}, "opts": {"priority": 2}, "outcome": "fail"},
        {"key": "b", "name": "charge", "data": {}, "opts": {"attempts": 2}, "outcome": "fail"},
        {"key": "c", "name": "charge", "data": {}, "opts": {"lifo": true}, "outcome": "fail"},
        {"key": "d", "name": "receipt", "data": {}, "opts": {}, "outcome": "complete"},
    ]});
    let path = ns.dir.path().join("spec.json");
    std::fs::write(&path, spec.to_string()).unwrap();
    let mut args = vec![
        "--redis",
        url,
        "--queue",
        queue,
        "--prefix",
        prefix,
        "--spec",
        path.to_str().unwrap(),
    ];
    args.extend_from_slice(conn);
    let jobs = node("seed.mjs", &args)["jobs"].as_array().unwrap().clone();
    let (a, b, c, d) = (
        id_of(&jobs, "a"),
        id_of(&jobs, "b"),
        id_of(&jobs, "c"),
        id_of(&jobs, "d"),
    );
    let yaml = format!(
        "apiVersion: jobretry.io/v1alpha1\nkind: JobRetry\nmetadata:\n  name: topo\nspec:\n  queue:\n    name: {queue}\n    prefix: \"{prefix}\"\n  connection:\n{connection_yaml}  jobIds: [\"{a}\", \"{b}\", \"{c}\", \"missing\", \"{d}\"]\n  resetAttemptsMade: true\n"
    );
    let applied = ns.apply("topo.yaml", &yaml);
    assert!(applied.ok, "{}", applied.stderr);
    let _op = Operator::start(ns, &[]);
    let waited = ns.wait_condition("topo", "Complete", "90s");
    assert!(waited.ok, "{}\n{}", waited.stderr, _op.logs());
    let st = ns.status("topo");
    assert_eq!(
        st.counts,
        counts([("Retried", 3), ("NotFound", 1), ("NotInState", 1)]),
        "{st:?}"
    );
    let codes: Vec<(String, i64)> = st
        .jobs
        .iter()
        .map(|r| (r.id.clone(), r.code.unwrap()))
        .collect();
    assert_eq!(
        codes,
        vec![
            (a.clone(), 1),
            (b.clone(), 1),
            (c.clone(), 1),
            ("missing".into(), -1),
            (d, -3)
        ]
    );

    let mut pargs = vec![
        "--redis", url, "--queue", queue, "--prefix", prefix, "--expect", "3",
    ];
    pargs.extend_from_slice(conn);
    let processed = node("process.mjs", &pargs);
    let list: Vec<&Value> = processed["processed"].as_array().unwrap().iter().collect();
    let seen: BTreeSet<&str> = list.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(list.len(), 3, "each retried job processed once: {list:?}");
    assert_eq!(seen, BTreeSet::from([a.as_str(), b.as_str(), c.as_str()]));
    assert!(list.iter().all(|p| p["attemptsMade"] == 0), "{list:?}");
    vec![a, b, c]
}

#[test]
fn redis_cluster_with_a_hash_tagged_prefix() {
    let ns = TestNs::new("e2e-cluster");
    let url = env("JOBRETRY_TEST_CLUSTER_URL");
    ns.secret("redis", &url);
    let ids = run_case(
        &ns,
        &ns.name,
        "{bull}",
        &["--cluster"],
        "    secretRef:\n      name: redis\n    mode: cluster\n",
        &url,
    );
    // The ledger lives in the queue's slot: readable by a slot-routed client at the queue's key.
    let client = redis::cluster::ClusterClient::new(vec![url.as_str()]).unwrap();
    let mut con = client.get_connection().unwrap();
    let ledger: Vec<String> = redis::cmd("HKEYS")
        .arg(format!(
            "{{bull}}:{0}:jobretry:ledger:run:{0}/topo",
            ns.name
        ))
        .query(&mut con)
        .unwrap();
    assert_eq!(
        ledger.into_iter().collect::<BTreeSet<_>>(),
        ids.into_iter().collect::<BTreeSet<_>>()
    );
}

#[test]
fn redis_sentinel_master_and_replica() {
    let ns = TestNs::new("e2e-sentinel");
    let sentinel = env("JOBRETRY_TEST_SENTINEL_URL");
    let master = env("JOBRETRY_TEST_SENTINEL_MASTER");
    ns.secret("redis", &sentinel);
    let conn_yaml = format!(
        "    secretRef:\n      name: redis\n    mode: sentinel\n    sentinelMasterName: {master}\n"
    );
    run_case(
        &ns,
        &ns.name,
        "bull",
        &["--sentinel", &master],
        &conn_yaml,
        &sentinel,
    );
    // The retries were written to the master and replicated: the replica sees the ledger.
    let replica = redis::Client::open(env("JOBRETRY_TEST_SENTINEL_REPLICA_URL")).unwrap();
    let mut con = replica.get_connection().unwrap();
    let ok = (0..50).any(|_| {
        let n: i64 = redis::cmd("HLEN")
            .arg(format!("bull:{0}:jobretry:ledger:run:{0}/topo", ns.name))
            .query(&mut con)
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        n == 3
    });
    assert!(ok, "the replica never saw the 3 ledger entries");
}

#[test]
fn an_acl_user_limited_to_the_queue_keys_with_a_password_that_never_shows() {
    let ns = TestNs::new("e2e-acl");
    let queue = ns.name.as_str();
    let spec = json!({"jobs": [{"key": "a", "name": "charge", "data": {}, "opts": {}, "outcome": "fail"}]});
    let jobs = seed(ns.dir.path(), queue, &spec);
    let a = id_of(&jobs, "a");
    let password = "acl-pw-7f3e9c";
    let mut con = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    // Only the queue's keys, only what a BullMQ client needs; no KEYS, no FLUSHALL.
    let rules = [
        "SETUSER".to_string(),
        queue.to_string(),
        "on".into(),
        format!(">{password}"),
        format!("~bull:{queue}:*"),
        "+@all".into(),
        "-@dangerous".into(),
        "+info".into(),
    ];
    let _: () = redis::cmd("ACL").arg(&rules[..]).query(&mut con).unwrap();
    let url = redis_url().replacen("redis://", &format!("redis://{queue}:{password}@"), 1);
    ns.secret("redis", &url);
    let op = Operator::start(&ns, &[]);
    assert!(ns.apply_jr(&jobretry("acl", queue, &[a.as_str()])).ok);
    let waited = ns.wait_condition("acl", "Complete", "60s");
    assert!(waited.ok, "{}\n{}", waited.stderr, op.logs());
    let jr = ns.get("acl");
    assert_eq!(status_of(&jr).counts, counts([("Retried", 1)]));
    let events = ns.kubectl(&["get", "events", "-o", "json"]).stdout;
    for (what, text) in [
        ("status", jr.to_string()),
        ("events", events),
        ("logs", op.logs()),
    ] {
        assert!(
            !text.contains(password),
            "the Redis password leaked into {what}"
        );
    }
}

#[test]
fn tls_with_a_private_ca_from_the_secret() {
    let ns = TestNs::new("e2e-tls");
    let queue = ns.name.as_str();
    let server = start_tls_redis(ns.dir.path());
    let plain = format!("redis://127.0.0.1:{}", server.plain);
    let spec = json!({"jobs": [{"key": "a", "name": "charge", "data": {}, "opts": {}, "outcome": "fail"}]});
    let a = id_of(&seed_at(ns.dir.path(), &plain, queue, &spec), "a");
    let tls_url = format!("rediss://127.0.0.1:{}", server.tls);
    // A password in the URL, to check that no message quotes it (the handshake fails first).
    let password = "tls-hunter2-secret";
    ns.secret(
        "redis",
        &format!("rediss://:{password}@127.0.0.1:{}", server.tls),
    );
    let op = Operator::start(&ns, &[]);
    assert!(ns.apply_jr(&jobretry("tls", queue, &[a.as_str()])).ok);
    // Without the CA the certificate is not trusted: the run stalls saying so and what to
    // set (waiting would never fix it); nothing is retried.
    let jr = eventually(
        std::time::Duration::from_secs(60),
        "Stalled=True while the CA is unknown",
        || {
            let jr = ns.get("tls");
            (status_of(&jr).condition_status("Stalled") == "True").then_some(jr)
        },
    );
    let st = status_of(&jr);
    let message = st.condition_message("Stalled");
    assert_eq!(st.condition_reason("Stalled"), "RedisRefused", "{message}");
    assert!(
        message.contains("TLS certificate could not be verified")
            && message.contains("under the key ca.crt"),
        "{message}"
    );
    assert_eq!(st.phase_str(), "Pending");
    // The object as served (raw JSON text): no field may hold the password.
    assert!(!jr.to_string().contains(password), "the password leaked");
    assert!(waiting_ids(&plain, queue).is_empty(), "nothing retried");
    ns.kubectl(&["delete", "secret", "redis"]);
    let ca = format!("--from-file=ca.crt={}", server.ca.display());
    let created = ns.kubectl(&[
        "create",
        "secret",
        "generic",
        "redis",
        &format!("--from-literal=url={tls_url}"),
        &ca,
    ]);
    assert!(created.ok, "{}", created.stderr);
    let waited = ns.wait_condition("tls", "Complete", "90s");
    assert!(waited.ok, "{}\n{}", waited.stderr, op.logs());
    assert_eq!(ns.status("tls").counts, counts([("Retried", 1)]));
    let waiting = waiting_ids(&plain, queue);
    assert_eq!(waiting, vec![a]);
    assert!(
        !op.logs().contains(password),
        "the password leaked into the logs"
    );
}

/// `start_tls_redis`'s server as the master of a sentinel that speaks only TLS (its own
/// certificate is signed by the same private CA) and reaches the master over TLS, so it
/// reports the master's TLS port.
fn start_tls_sentinel(dir: &std::path::Path) -> (TlsRedis, u16) {
    let mut server = start_tls_redis(dir);
    let port = free_port();
    let conf = format!(
        "port 0\ntls-port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\n\
         tls-cert-file server.pem\ntls-key-file server.key\ntls-ca-cert-file ca.pem\n\
         tls-auth-clients no\ntls-replication yes\nsentinel resolve-hostnames no\n\
         sentinel monitor mymaster 127.0.0.1 {master} 1\nlogfile sentinel.log\n",
        dir = dir.display(),
        master = server.tls,
    );
    std::fs::write(dir.join("sentinel.conf"), conf).unwrap();
    let child = std::process::Command::new("redis-server")
        .current_dir(dir)
        .args(["sentinel.conf", "--sentinel"])
        .spawn()
        .expect("start redis-server --sentinel");
    server.children.push(child);
    let master = server.tls.to_string();
    eventually(
        std::time::Duration::from_secs(15),
        "the TLS sentinel to report the master's TLS port",
        || {
            let out = run(std::process::Command::new("redis-cli")
                .current_dir(dir)
                .args(["--tls", "--cacert", "ca.pem", "-h", "127.0.0.1"])
                .args(["-p", &port.to_string()])
                .args(["sentinel", "get-master-addr-by-name", "mymaster"]));
            out.stdout.lines().any(|l| l.trim() == master).then_some(())
        },
    );
    (server, port)
}

#[test]
fn sentinel_over_tls_with_a_private_ca_from_the_secret() {
    let ns = TestNs::new("e2e-sentinel-tls");
    let queue = ns.name.as_str();
    let (server, sentinel) = start_tls_sentinel(ns.dir.path());
    let plain = format!("redis://127.0.0.1:{}", server.plain);
    let spec = json!({"jobs": [{"key": "a", "name": "charge", "data": {}, "opts": {}, "outcome": "fail"}]});
    let a = id_of(&seed_at(ns.dir.path(), &plain, queue, &spec), "a");
    let ca = format!("--from-file=ca.crt={}", server.ca.display());
    let url = format!("--from-literal=url=rediss://127.0.0.1:{sentinel}");
    ns.kubectl(&["delete", "secret", "redis"]);
    let created = ns.kubectl(&["create", "secret", "generic", "redis", &url, &ca]);
    assert!(created.ok, "{}", created.stderr);
    let op = Operator::start(&ns, &[]);
    let mut stls = jobretry("stls", queue, &[a.as_str()]);
    stls.spec.connection.mode = ConnectionMode::Sentinel;
    stls.spec.connection.sentinel_master_name = Some("mymaster".to_string());
    assert!(ns.apply_jr(&stls).ok);
    let waited = ns.wait_condition("stls", "Complete", "60s");
    assert!(waited.ok, "{}\n{}", waited.stderr, op.logs());
    assert_eq!(ns.status("stls").counts, counts([("Retried", 1)]));
    let waiting = waiting_ids(&plain, queue);
    assert_eq!(
        waiting,
        vec![a],
        "the job was retried on the master the sentinel named"
    );
}

/// The commands Redis gained after 5.0 (BullMQ's own minimum) that a 7.0 server has; a
/// server with all of them disabled stands in for Redis 5.0, of which no binary is
/// installable here.
const AFTER_REDIS_5_0: [&str; 41] = [
    "ACL",
    "BITFIELD_RO",
    "BLMOVE",
    "BLMPOP",
    "BZMPOP",
    "COPY",
    "EVAL_RO",
    "EVALSHA_RO",
    "EXPIRETIME",
    "FAILOVER",
    "FCALL",
    "FCALL_RO",
    "FUNCTION",
    "GEOSEARCH",
    "GEOSEARCHSTORE",
    "GETDEL",
    "GETEX",
    "HELLO",
    "HRANDFIELD",
    "LCS",
    "LMOVE",
    "LMPOP",
    "LPOS",
    "PEXPIRETIME",
    "RESET",
    "SINTERCARD",
    "SMISMEMBER",
    "SORT_RO",
    "SPUBLISH",
    "SSUBSCRIBE",
    "SUNSUBSCRIBE",
    "XAUTOCLAIM",
    "ZDIFF",
    "ZDIFFSTORE",
    "ZINTER",
    "ZINTERCARD",
    "ZMPOP",
    "ZMSCORE",
    "ZRANDMEMBER",
    "ZRANGESTORE",
    "ZUNION",
];

struct OwnRedis(std::process::Child);

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_redis_with_only_the_commands_of_redis_5_0() {
    let ns = TestNs::new("e2e-redis5");
    let port = free_port();
    let mut conf = format!("port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\n");
    for c in AFTER_REDIS_5_0 {
        conf.push_str(&format!("rename-command {c} \"\"\n"));
    }
    let path = ns.dir.path().join("redis5.conf");
    std::fs::write(&path, conf).unwrap();
    let _server = OwnRedis(
        std::process::Command::new("redis-server")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("redis://127.0.0.1:{port}");
    let mut con = eventually(
        std::time::Duration::from_secs(10),
        "redis-server up",
        || {
            redis::Client::open(url.as_str())
                .ok()?
                .get_connection()
                .ok()
        },
    );
    // The stand-in refuses the newer commands, from scripts too.
    let refused = redis::cmd("EVAL")
        .arg("return redis.call('ZMSCORE', 'x', 'a')")
        .arg(0)
        .query::<redis::Value>(&mut con)
        .unwrap_err();
    assert!(
        refused.to_string().contains("Unknown Redis command"),
        "{refused}"
    );
    ns.secret("redis5", &url);
    run_case(
        &ns,
        ns.name.as_str(),
        "bull",
        &[],
        "    secretRef:\n      name: redis5\n",
        &url,
    );
    // A selector run on the same server: more failed jobs, one page script.
    let queue = format!("{}-sel", ns.name);
    let spec = json!({"jobs": (0..6).map(|i| json!({"key": format!("s{i}"), "name": if i % 2 == 0 { "charge" } else { "email" }, "data": {}, "opts": {}, "outcome": "fail"})).collect::<Vec<_>>()});
    let path = ns.dir.path().join("sel.json");
    std::fs::write(&path, spec.to_string()).unwrap();
    node(
        "seed.mjs",
        &[
            "--redis",
            &url,
            "--queue",
            &queue,
            "--spec",
            path.to_str().unwrap(),
        ],
    );
    let mut charges = selector(MAX_JOB_IDS as u64);
    charges.names = Some(vec!["charge".to_string()]);
    assert!(
        ns.apply_jr(&selector_jobretry("sel", &queue, charges).secret("redis5"))
            .ok
    );
    let _op = Operator::start(&ns, &[]);
    let waited = ns.wait_condition("sel", "Complete", "60s");
    assert!(waited.ok, "{}\n{}", waited.stderr, _op.logs());
    let st = ns.status("sel");
    assert_eq!(st.counts, counts([("Retried", 3)]), "{st:?}");
}

/// Waits (`what`) until `name` is Stalled; returns its status.
fn wait_stalled(ns: &TestNs, name: &str, what: &str) -> JobRetryStatus {
    eventually(Duration::from_secs(30), what, || {
        let st = ns.status(name);
        (st.condition_status("Stalled") == "True").then_some(st)
    })
}

/// A wrong password or a missing ACL permission is not Redis trouble that passes by itself:
/// the run stalls, saying why, and goes on by itself once the Secret or the ACL is fixed.
#[test]
fn a_wrong_password_or_a_missing_permission_stalls_until_fixed() {
    let ns = TestNs::new("e2e-denied");
    let queue = ns.name.as_str();
    let spec = json!({"jobs": [
        {"key": "a", "name": "charge", "data": {}, "opts": {}, "outcome": "fail"},
        {"key": "b", "name": "charge", "data": {}, "opts": {}, "outcome": "fail"},
    ]});
    let jobs = seed(ns.dir.path(), queue, &spec);
    let (a, b) = (id_of(&jobs, "a"), id_of(&jobs, "b"));
    let mut con = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut user = |name: &str, password: &str, keys: &str| {
        let rules = [
            "SETUSER",
            name,
            "on",
            &format!(">{password}"),
            keys,
            "+@all",
            "-@dangerous",
            "+info",
        ];
        let _: () = redis::cmd("ACL").arg(&rules[..]).query(&mut con).unwrap();
    };
    let url = |name: &str, password: &str| {
        redis_url().replacen("redis://", &format!("redis://{name}:{password}@"), 1)
    };
    let good = format!("{queue}-pw");
    user(queue, &good, &format!("~bull:{queue}:*"));
    // A wrong password in the Secret.
    ns.secret("redis", &url(queue, "not-the-password"));
    let op = Operator::start(&ns, &[]);
    assert!(ns.apply_jr(&jobretry("wrongpass", queue, &[a.as_str()])).ok);
    let st = wait_stalled(&ns, "wrongpass", "stalled on the password");
    assert_eq!(
        st.condition_reason("Stalled"),
        "RedisAccessDenied",
        "{st:?}"
    );
    assert_eq!(st.phase_str(), "Pending");
    ns.secret("redis", &url(queue, &good));
    let waited = ns.wait_condition("wrongpass", "Complete", "90s");
    assert!(waited.ok, "{}\n{}", waited.stderr, op.logs());
    // A user whose ACL does not cover the queue's keys.
    let other = format!("{queue}-other");
    user(&other, &good, "~somewhere-else:*");
    ns.secret("other", &url(&other, &good));
    assert!(
        ns.apply_jr(&jobretry("noperm", queue, &[b.as_str()]).secret("other"))
            .ok
    );
    let st = wait_stalled(&ns, "noperm", "stalled on the ACL");
    assert_eq!(
        st.condition_reason("Stalled"),
        "RedisAccessDenied",
        "{st:?}"
    );
    user(&other, &good, &format!("~bull:{queue}:*"));
    let waited = ns.wait_condition("noperm", "Complete", "90s");
    assert!(waited.ok, "{}\n{}", waited.stderr, op.logs());
    assert_eq!(ns.status("noperm").counts, counts([("Retried", 1)]));
}
