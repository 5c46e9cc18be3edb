//! High availability, end to end: two operator processes elect a leader on a Lease in the
//! test's namespace; only the leader retries. The leader is SIGKILLed, or SIGTERMed, in the
//! middle of a 20,000-job run (two JobRetry objects of 10,000 ids); the other replica takes
//! over and finishes, and a real BullMQ Worker then processes every job exactly once. A
//! leader cut off from the API server stops before the Lease can pass on. A SIGTERM while
//! the API server or Redis does not answer ends the process within 10 s.

mod support;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use support::*;

const PER_OBJECT: usize = 10_000;
/// Short leases keep the tests quick.
const LEASE_SECONDS: u64 = 5;
/// The tests measure hand-over times in seconds: one at a time, so they do not compete for
/// the CPU with each other's operators and Workers.
static SERIAL: Mutex<()> = Mutex::new(());

/// One replica: an operator process with its own identity and metrics address.
struct Replica {
    op: Operator,
    addr: String,
    name: &'static str,
}

impl Replica {
    fn start(ns: &TestNs, name: &'static str, kubeconfig: &Path, extra: &[&str]) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let lease_seconds = LEASE_SECONDS.to_string();
        let mut args = vec![
            "--watch-namespace",
            &ns.name,
            "--http-addr",
            &addr,
            "--lease-identity",
            name,
            "--lease-duration-seconds",
            &lease_seconds,
            "--batch-size",
            "250",
            "--status-interval-ms",
            "200",
        ];
        args.extend_from_slice(extra);
        let op = Operator::start_with_kubeconfig(ns, kubeconfig, &args);
        Self { op, addr, name }
    }

    fn metric(&self, series: &str) -> Option<f64> {
        metric(&self.addr, series)
    }

    fn leads(&self) -> bool {
        self.metric("jobretry_leader") == Some(1.0)
    }

    fn ready(&self) -> bool {
        http_get(&self.addr, "/readyz").0 == 200
    }
}

fn lease_holder(ns: &TestNs) -> String {
    let out = ns.kubectl(&[
        "get",
        "lease",
        "jobretry-operator",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    out.stdout
}

fn processed(ns: &TestNs, name: &str) -> u64 {
    ns.status(name).processed.unwrap_or(0)
}

/// Jobs processed by all JobRetries of the namespace, in one request.
fn total_processed(ns: &TestNs) -> u64 {
    let out = ns.kubectl(&["get", "jobretries", "-o", "json"]);
    assert!(out.ok, "{}", out.stderr);
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|jr| status_of(jr).processed.unwrap_or(0))
        .sum()
}

/// Seeds 20,000 failed jobs, starts replicas `a` (the leader) and `b` (a ready follower),
/// and applies the two JobRetries; returns once the run is under way.
fn two_replicas_mid_run(ns: &TestNs) -> (Vec<String>, Replica, Replica) {
    let kubeconfig = Path::new(&kubeconfig()).to_path_buf();
    two_replicas_mid_run_with(ns, &kubeconfig)
}

/// The same, with `a` reaching the API server through `a_kubeconfig`.
fn two_replicas_mid_run_with(ns: &TestNs, a_kubeconfig: &Path) -> (Vec<String>, Replica, Replica) {
    let queue = ns.name.as_str();
    let ids = seed_failed(ns, queue, 2 * PER_OBJECT);
    let kubeconfig = Path::new(&kubeconfig()).to_path_buf();
    let a = Replica::start(ns, "a", a_kubeconfig, &[]);
    eventually(Duration::from_secs(20), "a to lead", || {
        a.leads().then_some(())
    });
    let b = Replica::start(ns, "b", &kubeconfig, &[]);
    eventually(Duration::from_secs(20), "b to be ready", || {
        b.ready().then_some(())
    });
    assert!(!b.leads(), "b follows while a leads");
    assert_eq!(lease_holder(ns), "a");
    for (i, chunk) in ids.chunks(PER_OBJECT).enumerate() {
        let applied =
            ns.apply_jr(&jobretry(&format!("part{i}"), queue, chunk).jobs_per_second(1000));
        assert!(applied.ok, "{}", applied.stderr);
    }
    eventually(Duration::from_secs(20), "the run to be under way", || {
        (total_processed(ns) >= 2_000).then_some(())
    });
    // Only the leader retries: the follower has not reconciled or retried anything.
    assert!(a.metric("jobretry_jobs_total{result=\"Retried\"}") > Some(0.0));
    assert_eq!(b.metric("jobretry_reconciles_total"), Some(0.0));
    assert_eq!(
        b.metric("jobretry_jobs_total{result=\"Retried\"}"),
        Some(0.0)
    );
    (ids, a, b)
}

/// Both objects completed as one run each: every job Retried once, one Started event each.
fn assert_one_complete_run(ns: &TestNs, b: &Replica) {
    for name in ["part0", "part1"] {
        let waited = ns.wait_condition(name, "Complete", "120s");
        assert!(waited.ok, "{name}: {}\n{}", waited.stderr, b.op.logs());
        let st = ns.status(name);
        assert_eq!(
            st.counts,
            counts([("Retried", PER_OBJECT as u64)]),
            "{name}"
        );
        assert_eq!(st.processed, Some(PER_OBJECT as u64));
        assert_eq!(st.phase_str(), "Succeeded");
        let started = ns.kubectl(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={name},reason=Started"),
            "-o",
            "name",
        ]);
        assert_eq!(started.stdout.lines().count(), 1, "{name}: one run started");
    }
}

#[test]
fn sigkill_the_leader_mid_run_the_follower_takes_over_and_finishes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = TestNs::new("e2e-ha-kill");
    let (ids, mut a, b) = two_replicas_mid_run(&ns);
    let before = total_processed(&ns);
    a.op.kill();
    let killed = Instant::now();
    eventually(Duration::from_secs(LEASE_SECONDS + 5), "b to lead", || {
        b.leads().then_some(())
    });
    let took_over = killed.elapsed();
    println!(
        "a SIGKILLed at {before} of {} jobs; b led {took_over:?} later (lease {LEASE_SECONDS} s)",
        2 * PER_OBJECT
    );
    assert!(
        took_over <= Duration::from_secs(LEASE_SECONDS + 2),
        "b took over after {took_over:?}"
    );
    assert!(before < 2 * PER_OBJECT as u64, "a was killed mid-run");
    assert_one_complete_run(&ns, &b);
    assert_eq!(lease_holder(&ns), b.name);
    assert_processed_exactly_once(&ns.name, &ids);
    drop_queue(&ns.name);
}

#[test]
fn sigterm_the_leader_mid_run_it_hands_over_at_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = TestNs::new("e2e-ha-term");
    let (ids, mut a, b) = two_replicas_mid_run(&ns);
    let before = total_processed(&ns);
    a.op.terminate();
    let (code, exited) =
        a.op.wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("a still runs 10 s after SIGTERM:\n{}", a.op.logs()));
    let gone = Instant::now();
    let log = a.op.logs();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("released the leader Lease"), "{log}");
    assert!(log.contains("running slices ended"), "{log}");
    assert!(!log.contains("abandoning"), "{log}");
    let at_exit = total_processed(&ns);
    eventually(Duration::from_secs(2), "b to lead", || {
        b.leads().then_some(())
    });
    let led = gone.elapsed();
    eventually(Duration::from_secs(4), "b to go on with the run", || {
        (total_processed(&ns) > at_exit).then_some(())
    });
    let continued = gone.elapsed();
    println!(
        "a SIGTERMed at {before} of {} jobs, exited in {exited:?} with status written at {at_exit}; b led {led:?} and moved the run on {continued:?} after a's exit",
        2 * PER_OBJECT
    );
    assert!(
        continued <= Duration::from_secs(2),
        "b continued after {continued:?}:\n{}",
        b.op.logs()
    );
    assert!(at_exit < 2 * PER_OBJECT as u64, "a was stopped mid-run");
    assert_one_complete_run(&ns, &b);
    assert_processed_exactly_once(&ns.name, &ids);
    drop_queue(&ns.name);
}

/// A TCP proxy to `target` that can be frozen: from then on it forwards nothing and answers
/// nothing, while keeping every connection open (a network partition, not a refused port).
struct Proxy {
    port: u16,
    frozen: Arc<AtomicBool>,
}

impl Proxy {
    fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for client in listener.incoming().flatten() {
                if f.load(Ordering::Relaxed) {
                    held.push(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let f = f.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            while f.load(Ordering::Relaxed) {
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
            }
        });
        Self { port, frozen }
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::Relaxed);
    }
}

/// The admin kubeconfig, with the API server reached through `port` on loopback.
fn kubeconfig_via(dir: &Path, port: u16) -> std::path::PathBuf {
    let text = std::fs::read_to_string(kubeconfig()).unwrap();
    let mut config: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    for c in config["clusters"].as_sequence_mut().unwrap() {
        let server = c["cluster"]["server"].as_str().unwrap().to_string();
        let url = url::Url::parse(&server).unwrap();
        c["cluster"]["server"] = format!("https://{}:{port}", url.host_str().unwrap()).into();
    }
    let path = dir.join("proxied.kubeconfig");
    std::fs::write(&path, serde_norway::to_string(&config).unwrap()).unwrap();
    path
}

fn api_server_addr() -> String {
    let text = std::fs::read_to_string(kubeconfig()).unwrap();
    let config: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let server = config["clusters"][0]["cluster"]["server"].as_str().unwrap();
    let url = url::Url::parse(server).unwrap();
    format!("{}:{}", url.host_str().unwrap(), url.port().unwrap())
}

/// Seeds 2,000 failed jobs and runs replica `a` alone (reaching the API server through
/// `kubeconfig`, Redis as the Secret `redis` says); once a rate-limited run is under way,
/// calls `cut`, waits 1.5 s and SIGTERMs `a`. Returns its exit code, how long it took to
/// exit (at most 10 s, or the test fails) and its log.
fn sigterm_after_cut(
    ns: &TestNs,
    kubeconfig: &Path,
    cut: impl FnOnce(),
) -> (Option<i32>, Duration, String) {
    let queue = ns.name.as_str();
    let ids = seed_failed(ns, queue, 2_000);
    // The binary's own shutdown timeout, as the chart runs it.
    let mut a = Replica::start(ns, "a", kubeconfig, &[]);
    eventually(Duration::from_secs(20), "a to lead", || {
        a.leads().then_some(())
    });
    assert!(
        ns.apply_jr(&jobretry("run", queue, &ids).jobs_per_second(400))
            .ok
    );
    eventually(Duration::from_secs(20), "the run to be under way", || {
        (processed(ns, "run") > 0).then_some(())
    });
    cut();
    std::thread::sleep(Duration::from_millis(1500));
    a.op.terminate();
    let exited = a.op.wait_exit(Duration::from_secs(10));
    let log = a.op.logs();
    let (code, took) = exited.unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{log}"));
    drop_queue(queue);
    (code, took, log)
}

#[test]
fn sigterm_while_the_api_server_does_not_answer_exits_within_10_s() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = TestNs::new("e2e-ha-noapi");
    let proxy = Proxy::start(api_server_addr());
    let kubeconfig = kubeconfig_via(ns.dir.path(), proxy.port);
    let (_, took, log) = sigterm_after_cut(&ns, &kubeconfig, || proxy.freeze());
    println!("exited {took:?} after SIGTERM with the API server cut off");
    // Both bounds were reached: the status write in flight hung (abandoned at the shutdown
    // timeout), then releasing the Lease timed out.
    assert!(log.contains("abandoning"), "{log}");
    assert!(
        log.contains("releasing the leader Lease timed out"),
        "{log}"
    );
}

#[test]
fn sigterm_while_redis_does_not_answer_exits_within_10_s() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = TestNs::new("e2e-ha-noredis");
    // The operator reaches Redis through a proxy that is frozen mid-run: the batch then in
    // flight never gets an answer.
    let redis = url::Url::parse(&redis_url()).unwrap();
    let proxy = Proxy::start(format!(
        "{}:{}",
        redis.host_str().unwrap(),
        redis.port().unwrap()
    ));
    ns.secret("redis", &format!("redis://127.0.0.1:{}", proxy.port));
    let kubeconfig = Path::new(&kubeconfig()).to_path_buf();
    let (code, took, log) = sigterm_after_cut(&ns, &kubeconfig, || proxy.freeze());
    println!("exited {took:?} after SIGTERM with Redis silent");
    assert_eq!(code, Some(0), "{log}");
    // The Lease was given up on the way out (the API server answers).
    assert!(log.contains("released the leader Lease"), "{log}");
    assert_eq!(lease_holder(&ns), "");
}

/// When `needle` was first logged: the timestamp (RFC 3339, UTC) of its line.
fn logged_at(log: &str, needle: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains(needle))?;
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain.split_whitespace().next().map(str::to_string)
}

#[test]
fn a_leader_cut_off_from_the_api_server_stops_before_the_lease_can_pass_on() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = TestNs::new("e2e-ha-cut");
    let proxy = Proxy::start(api_server_addr());
    let via = kubeconfig_via(ns.dir.path(), proxy.port);
    let (ids, mut a, b) = two_replicas_mid_run_with(&ns, &via);
    // a still reaches Redis, but can neither renew the Lease nor write status.
    proxy.freeze();
    let cut = Instant::now();
    let (code, _) =
        a.op.wait_exit(Duration::from_secs(LEASE_SECONDS + 10))
            .unwrap_or_else(|| panic!("a still runs after losing the Lease:\n{}", a.op.logs()));
    println!("a exited {:?} after the cut", cut.elapsed());
    let (a_log, b_log) = (a.op.logs(), b.op.logs());
    assert_eq!(
        code,
        Some(1),
        "a exits to be restarted as a follower:\n{a_log}"
    );
    let stopped = logged_at(&a_log, "lost the leader Lease").expect("a noticed the loss");
    eventually(Duration::from_secs(LEASE_SECONDS + 5), "b to lead", || {
        b.leads().then_some(())
    });
    let b_log_now = b.op.logs();
    let took = logged_at(&b_log_now, "took the leader Lease").expect("b took the Lease");
    println!("a stopped at {stopped}, b took the Lease at {took}");
    assert!(
        stopped < took,
        "a stopped only after b led:\n{a_log}\n{b_log}"
    );
    assert_one_complete_run(&ns, &b);
    assert_processed_exactly_once(&ns.name, &ids);
    drop_queue(&ns.name);
}
