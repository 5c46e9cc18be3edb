//! The same id-based run on Redis Cluster (3 masters, prefix `{bull}`) and through Redis
//! Sentinel (master + replica + sentinel): status rows and counts as on standalone, a real
//! Worker processes exactly the retried jobs, and the ledger shares the queue's hash slot.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{Value, json};

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
    let st = ns.get("topo")["status"].clone();
    assert_eq!(
        st["counts"],
        json!({"Retried": 3, "NotFound": 1, "NotInState": 1}),
        "{st}"
    );
    let codes: Vec<(String, i64)> = st["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["code"].as_i64().unwrap(),
            )
        })
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
        .arg(format!("{{bull}}:{0}:jobretry:ledger:{0}/topo", ns.name))
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
            .arg(format!("bull:{0}:jobretry:ledger:{0}/topo", ns.name))
            .query(&mut con)
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        n == 3
    });
    assert!(ok, "the replica never saw the 3 ledger entries");
}
