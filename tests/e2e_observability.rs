//! End to end, what an on-call engineer sees of the operator: its `/metrics` moving during a
//! real run (a Redis error counted while Redis is stopped, the operator still running), its
//! JSON log lines naming the run they belong to, `/readyz` recovering by itself after the
//! API server was unreachable, and the chart's Service, ServiceMonitor, alerting rules
//! (checked and unit-tested by a real `promtool`, built by tests/platform/build-promtool.sh)
//! and Grafana dashboard, whose queries may only name metrics the operator exports.

mod support;

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::{helm::*, *};

// ---- which metrics a PromQL query names --------------------------------------------------

/// Words of PromQL that are not metric names when they stand alone (besides
/// [`LABEL_LISTS`]).
const KEYWORDS: [&str; 8] = [
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];
/// Keywords followed by a list of label names, not metric names.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: identifiers that are not functions,
/// keywords, label names (in `{..}`, `by (..)` and the like), strings, durations, numbers or
/// Grafana variables (`$__rate_interval`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening delimiter to its closing one (strings: to the same quote).
    let skip = |i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        let mut j = i;
        while j < chars.len() {
            let c = chars[j];
            if c == '\\' {
                j += 2;
                continue;
            }
            if open == close && j > i && c == close {
                return j + 1;
            }
            if open != close && c == open {
                depth += 1;
            } else if open != close && c == close {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip(i, c, c),
            '{' => i = skip(i, '{', '}'),
            '[' => i = skip(i, '[', ']'),
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let rest: String = chars[next..].iter().take(8).collect();
                // A call, or an aggregation whose grouping comes first: `sum by (le) (..)`.
                let call = chars.get(next) == Some(&'(')
                    || ["by", "without"].iter().any(|k| {
                        rest.strip_prefix(k)
                            .is_some_and(|r| r.starts_with([' ', '(']))
                    });
                if LABEL_LISTS.contains(&word.as_str()) && call {
                    i = skip(next, '(', ')');
                } else if !call
                    && !KEYWORDS.contains(&word.to_lowercase().as_str())
                    && !LABEL_LISTS.contains(&word.as_str())
                {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The sample names a `/metrics` page (OpenMetrics or Prometheus text) can have: those of
/// its samples, and those its `# TYPE` lines promise (a counter `x` has `x_total`, a
/// histogram `x` has `x_bucket`, `x_sum` and `x_count`), so a family that has not moved yet
/// counts too.
fn exported_names(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// `query: name` for every metric a query names that `exported` does not have.
fn unknown_metrics(queries: &[String], exported: &BTreeSet<String>) -> Vec<String> {
    queries
        .iter()
        .flat_map(|q| {
            metric_names(q)
                .into_iter()
                .filter(|n| !exported.contains(n))
                .map(move |n| format!("{q}: {n}"))
        })
        .collect()
}

/// The PromQL of every panel target of a Grafana dashboard.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let panels = dashboard["panels"].as_array().expect("dashboard panels");
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("target expr").to_string())
        .collect()
}

/// The expression of every rule of a PrometheusRule.
fn rule_queries(rule: &Value) -> Vec<String> {
    rule["spec"]["groups"]
        .as_array()
        .expect("rule groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .map(|r| r["expr"].as_str().expect("rule expr").to_string())
        .collect()
}

#[test]
fn checker_names_the_metrics_of_a_query_and_nothing_else() {
    let q = r#"histogram_quantile(0.99, sum by (le, script) (rate(jobretry_redis_script_duration_seconds_bucket{script=~"retry|select"}[$__rate_interval])))"#;
    assert_eq!(
        metric_names(q),
        BTreeSet::from(["jobretry_redis_script_duration_seconds_bucket".to_string()])
    );
    let q = "max(jobretry_leader) < 1 or absent(jobretry_leader) unless on (job) up offset 5m > bool 1e3";
    assert_eq!(
        metric_names(q),
        BTreeSet::from(["jobretry_leader".to_string(), "up".to_string()])
    );
    let q = r#"sum(increase(a_total{category="by (x)"}[2m])) by (category) / ignoring(x) group_left(y) b:rate5m"#;
    assert_eq!(
        metric_names(q),
        BTreeSet::from(["a_total".to_string(), "b:rate5m".to_string()])
    );
}

#[test]
fn checker_flags_a_panel_naming_a_metric_that_does_not_exist() {
    let page = "# TYPE jobretry_jobs counter\n# TYPE jobretry_reconcile_duration_seconds histogram\n# TYPE jobretry_runs gauge\njobretry_runs{phase=\"Running\"} 1\n# EOF\n";
    let exported = exported_names(page);
    let dashboard = json!({"panels": [
        {"targets": [{"expr": "sum by (result) (rate(jobretry_jobs_total[5m]))"}]},
        {"targets": [{"expr": "max by (phase) (jobretry_runs)"},
                     {"expr": "histogram_quantile(0.9, rate(jobretry_reconcile_duration_seconds_bucket[5m]))"}]},
    ]});
    assert_eq!(
        unknown_metrics(&dashboard_queries(&dashboard), &exported),
        Vec::<String>::new()
    );
    let bad = json!({"panels": [
        {"targets": [{"expr": "sum(rate(jobretry_jobs_retried_total[5m]))"}]},
        {"targets": [{"expr": "jobretry_reconcile_duration_seconds"}]},
    ]});
    assert_eq!(
        unknown_metrics(&dashboard_queries(&bad), &exported),
        [
            "sum(rate(jobretry_jobs_retried_total[5m])): jobretry_jobs_retried_total",
            "jobretry_reconcile_duration_seconds: jobretry_reconcile_duration_seconds",
        ]
    );
}

// ---- the chart's pieces ------------------------------------------------------------------

/// The chart rendered with the metrics Service, ServiceMonitor, PrometheusRule and
/// dashboard, plus `set`.
fn render_observability(ns: &str, set: &[&str]) -> Vec<Value> {
    let mut all = vec![
        "metrics.serviceMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true",
        "metrics.grafanaDashboard.enabled=true",
    ];
    all.extend_from_slice(set);
    docs(&render("jr", ns, &all))
}

/// The dashboard as the chart's ConfigMap carries it.
fn rendered_dashboard(docs: &[Value]) -> Value {
    let cm = find(docs, "ConfigMap");
    serde_json::from_str(cm["data"]["jobretry-operator.json"].as_str().unwrap())
        .expect("the dashboard is JSON")
}

fn promtool_bin() -> String {
    std::env::var("JOBRETRY_TEST_PROMTOOL").unwrap_or_else(|_| {
        panic!(
            "JOBRETRY_TEST_PROMTOOL is not set: it must name a promtool binary. tests/run.sh \
             builds one with tests/platform/build-promtool.sh and exports it; by hand: \
             export JOBRETRY_TEST_PROMTOOL=$(tests/platform/build-promtool.sh)"
        )
    })
}

/// Writes the rendered PrometheusRule's groups as a Prometheus rule file `alerts.yaml`,
/// with the rule unit tests beside it, in `dir`.
fn write_rules(dir: &Path, docs: &[Value]) {
    let groups = json!({"groups": find(docs, "PrometheusRule")["spec"]["groups"]});
    std::fs::write(
        dir.join("alerts.yaml"),
        serde_norway::to_string(&groups).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        repo().join("tests/promtool/alerts_test.yaml"),
        dir.join("alerts_test.yaml"),
    )
    .unwrap();
}

fn promtool(dir: &Path, args: &[&str]) -> Out {
    run(Command::new(promtool_bin()).current_dir(dir).args(args))
}

#[test]
fn chart_renders_a_metrics_service_a_service_monitor_and_the_dashboard() {
    let chart_dir = chart();
    helm_ok(&[
        "lint",
        "--strict",
        chart_dir.to_str().unwrap(),
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "metrics.grafanaDashboard.enabled=true",
    ]);
    let manifests = render_observability("ops", &[]);
    let service = find(&manifests, "Service");
    let deployment = find(&manifests, "Deployment");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            &pod_labels[k], v,
            "the Service selects the operator pods ({k})"
        );
    }
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}])
    );
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["ports"][0]["name"], "http");

    let monitor = find(&manifests, "ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the Service ({k})"
        );
    }
    assert_eq!(
        monitor["spec"]["endpoints"],
        json!([{"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}])
    );
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        json!(["ops"])
    );

    let cm = find(&manifests, "ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("dashboards/jobretry-operator.json")).unwrap(),
    )
    .unwrap();
    let dashboard = rendered_dashboard(&manifests);
    assert_eq!(
        dashboard, file,
        "the ConfigMap carries the dashboard file as is"
    );
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for wanted in [
        "Runs by phase",
        "Jobs retried per second, by result",
        "Redis script latency",
        "Errors per second, by category",
        "Policy runs created, by cause",
    ] {
        assert!(titles.contains(&wanted), "no panel {wanted}: {titles:?}");
    }

    // Off by default, but the metrics Service; a ServiceMonitor without it is refused.
    let default = docs(&render("jr", "ops", &[]));
    for kind in ["ServiceMonitor", "PrometheusRule", "ConfigMap"] {
        assert!(
            default.iter().all(|d| d["kind"] != kind),
            "{kind} rendered by default"
        );
    }
    let refused = helm(&[
        "template",
        "jr",
        chart().to_str().unwrap(),
        "--set",
        "metrics.service.enabled=false",
        "--set",
        "metrics.serviceMonitor.enabled=true",
    ]);
    assert!(
        !refused.ok && refused.stderr.contains("needs metrics.service.enabled"),
        "{}",
        refused.stderr
    );

    // The Service and the dashboard's ConfigMap are core kinds: the real API server takes
    // them (the ServiceMonitor and PrometheusRule need the Prometheus Operator's CRDs).
    let ns = TestNs::new("obs-chart");
    let core: Vec<String> = render_observability(&ns.name, &[])
        .iter()
        .filter(|d| d["kind"] == "Service" || d["kind"] == "ConfigMap")
        .map(|d| serde_json::to_string(d).unwrap())
        .collect();
    assert_eq!(core.len(), 2);
    let applied = ns.apply("observability.json", &core.join("\n"));
    assert!(applied.ok, "{}{}", applied.stdout, applied.stderr);
    kubectl_ok(&[
        "-n",
        &ns.name,
        "get",
        "service",
        "jr-jobretry-operator-metrics",
    ]);
    let stored = kubectl_ok(&[
        "-n",
        &ns.name,
        "get",
        "configmap",
        "jr-jobretry-operator-dashboard",
        "-o",
        "jsonpath={.data.jobretry-operator\\.json}",
    ]);
    assert_eq!(serde_json::from_str::<Value>(&stored).unwrap(), file);
}

#[test]
fn alerts_pass_promtool_and_each_fires_on_synthetic_series() {
    let dir = tempfile::tempdir().unwrap();
    write_rules(dir.path(), &render_observability("ops", &[]));
    let version = promtool(dir.path(), &["--version"]);
    assert!(version.ok, "{}", version.stderr);
    println!("{}", version.stdout.lines().next().unwrap_or_default());

    let checked = promtool(dir.path(), &["check", "rules", "alerts.yaml"]);
    assert!(
        checked.ok,
        "promtool check rules:\n{}{}",
        checked.stdout, checked.stderr
    );
    assert!(
        checked.stdout.contains("SUCCESS: 4 rules found"),
        "{}",
        checked.stdout
    );

    let tested = promtool(dir.path(), &["test", "rules", "alerts_test.yaml"]);
    assert!(
        tested.ok,
        "promtool test rules:\n{}{}",
        tested.stdout, tested.stderr
    );
    println!("{}", tested.stdout);

    // The unit tests hold the rules to what they promise: a rule that waits 30 minutes
    // fails them.
    let slow = tempfile::tempdir().unwrap();
    write_rules(
        slow.path(),
        &render_observability("ops", &["metrics.prometheusRule.stalledFor=30m"]),
    );
    let failed = promtool(slow.path(), &["test", "rules", "alerts_test.yaml"]);
    assert!(!failed.ok, "a 30m stall rule passed the 15m tests");
    let said = format!("{}{}", failed.stdout, failed.stderr);
    assert!(said.contains("JobRetryRunStalled"), "{said}");
}

// ---- a real run: /metrics ------------------------------------------------------------------

/// A redis-server of the test's own (on a free port, saving to `dir`), so stopping it
/// disturbs no other test.
struct PrivateRedis {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl PrivateRedis {
    fn start(dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Self {
            child: None,
            port,
            dir: dir.to_path_buf(),
        };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again): it loads what `stop` saved.
    fn restart(&mut self) {
        let log = std::fs::File::create(self.dir.join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--dbfilename",
                "dump.rdb",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::from(log))
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let url = self.url();
        eventually(Duration::from_secs(20), "the private Redis", || {
            let client = redis::Client::open(url.as_str()).ok()?;
            let mut con = client.get_connection().ok()?;
            redis::cmd("PING").query::<String>(&mut con).ok()
        });
    }

    /// `SHUTDOWN SAVE`: it saves its data, then exits.
    fn stop(&mut self) {
        let out =
            run(Command::new("redis-cli").args(["-p", &self.port.to_string(), "shutdown", "save"]));
        let _ = out;
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of the sample `series` (as `/metrics` writes it, labels included), if any.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn scrape(addr: &str) -> String {
    let (code, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200, "GET /metrics: {body}");
    body
}

/// Waits until the scrape has `series` at `at_least` or more; returns that page.
fn scrape_until(addr: &str, series: &str, at_least: f64) -> String {
    eventually(
        Duration::from_secs(60),
        &format!("{series} >= {at_least}"),
        || {
            let page = scrape(addr);
            (sample(&page, series).unwrap_or(0.0) >= at_least).then_some(page)
        },
    )
}

fn failed_jobs(n: usize) -> Value {
    let jobs: Vec<Value> = (0..n)
        .map(|i| json!({"key": format!("k{i}"), "name": "charge", "data": {}, "opts": {}, "outcome": "fail"}))
        .collect();
    json!({ "jobs": jobs })
}

const JOBS: usize = 240;

#[test]
fn metrics_move_during_a_run_and_count_redis_errors_while_redis_is_stopped() {
    let ns = TestNs::new("obs-metrics");
    let mut redis = PrivateRedis::start(ns.dir.path());
    ns.secret("redis", &redis.url());
    let queue = ns.name.clone();
    let ids: Vec<String> = seed_at(ns.dir.path(), &redis.url(), &queue, &failed_jobs(JOBS))
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    let op = Operator::start(&ns, &["--batch-size", "10"]);
    let addr = op.http_addr();

    let before = scrape(&addr);
    assert_eq!(
        sample(&before, "jobretry_runs{phase=\"Running\"}"),
        Some(0.0),
        "{before}"
    );

    // One run that cannot start (its Secret does not exist), one slow run (20 jobs/s, 12 s).
    assert!(
        ns.apply_jr(&jobretry("stuck", &queue, &["1"]).secret("no-such-secret"))
            .ok
    );
    assert!(
        ns.apply_jr(&jobretry("incident", &queue, &ids).jobs_per_second(20))
            .ok
    );

    let running = scrape_until(&addr, "jobretry_jobs_total{result=\"Retried\"}", 20.0);
    for (series, value) in [
        ("jobretry_runs{phase=\"Running\"}", 1.0),
        ("jobretry_runs{phase=\"Pending\"}", 1.0),
        ("jobretry_runs_stalled", 1.0),
        // A held run shows under the reason of its conditions.
        ("jobretry_runs_held{reason=\"SecretInvalid\"}", 1.0),
        ("jobretry_runs_held{reason=\"QueueBusy\"}", 0.0),
    ] {
        assert_eq!(
            sample(&running, series),
            Some(value),
            "{series}:\n{running}"
        );
    }
    for series in [
        "jobretry_secret_errors_total{category=\"not_found\"}",
        "jobretry_redis_script_duration_seconds_count{script=\"retry\"}",
        "jobretry_reconcile_duration_seconds_count",
        "jobretry_reconciles_total",
    ] {
        assert!(
            sample(&running, series).unwrap_or(0.0) >= 1.0,
            "{series}:\n{running}"
        );
    }
    // The Started event is out while the run goes on, not only once it ends.
    let started = ns.kubectl(&[
        "get",
        "events.v1.events.k8s.io",
        "--field-selector",
        "reason=Started,regarding.name=incident",
        "-o",
        "name",
    ]);
    assert!(
        !started.stdout.trim().is_empty(),
        "no Started event: {}",
        started.stderr
    );
    assert_eq!(ns.status("incident").phase_str(), "Running");

    // The series move: a second later, more jobs and more script calls.
    std::thread::sleep(Duration::from_secs(1));
    let later = scrape(&addr);
    for series in [
        "jobretry_jobs_total{result=\"Retried\"}",
        "jobretry_redis_script_duration_seconds_count{script=\"retry\"}",
    ] {
        assert!(
            sample(&later, series) > sample(&running, series),
            "{series} did not move:\n{later}"
        );
    }

    // Redis stops mid-run: a connection error is counted, the run waits, the operator serves.
    redis.stop();
    let down = scrape_until(
        &addr,
        "jobretry_redis_errors_total{category=\"connection\"}",
        1.0,
    );
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    let waiting = eventually(Duration::from_secs(30), "the run to wait for Redis", || {
        let st = ns.status("incident");
        (st.condition_reason("Reconciling") == "RedisUnavailable").then_some(st)
    });
    assert_eq!(waiting.phase_str(), "Running");
    let retried_while_down = sample(&down, "jobretry_jobs_total{result=\"Retried\"}").unwrap();
    assert!(retried_while_down < JOBS as f64, "{down}");

    // Redis is back (with its data): the run finishes, every job retried once.
    redis.restart();
    let done = ns.wait_condition("incident", "Complete", "90s");
    assert!(done.ok, "{}\n{}", done.stderr, op.logs());
    let st = ns.status("incident");
    assert_eq!(st.phase_str(), "Succeeded", "{st:?}");
    assert_eq!(st.retried, Some(JOBS as u64));
    let after = scrape_until(&addr, "jobretry_runs{phase=\"Succeeded\"}", 1.0);
    for (series, value) in [
        ("jobretry_jobs_total{result=\"Retried\"}", JOBS as f64),
        ("jobretry_runs_finished_total{phase=\"Succeeded\"}", 1.0),
        ("jobretry_runs{phase=\"Running\"}", 0.0),
        ("jobretry_runs{phase=\"Pending\"}", 1.0),
    ] {
        assert_eq!(sample(&after, series), Some(value), "{series}:\n{after}");
    }
    assert!(
        !after.contains(&queue),
        "no queue or namespace names in labels"
    );
    for line in after.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, labels)) = line.split_once('{') else {
            continue;
        };
        for pair in labels.split('}').next().unwrap().split(',') {
            let label = pair.split('=').next().unwrap();
            assert!(
                [
                    "result", "phase", "category", "script", "reason", "cause", "le"
                ]
                .contains(&label),
                "label {label}: only low-cardinality labels: {line}"
            );
        }
    }

    // A text log written to a file: no colour codes, no Rust Debug output.
    let logs = op.logs();
    assert!(!logs.contains('\u{1b}'), "colour codes in a file:\n{logs}");
    assert!(!logs.contains("Some("), "Debug output in the log:\n{logs}");

    // The dashboard's and the alerts' queries name only what this operator exports.
    let manifests = render_observability("ops", &[]);
    let mut queries = dashboard_queries(&rendered_dashboard(&manifests));
    queries.extend(rule_queries(find(&manifests, "PrometheusRule")));
    assert!(queries.len() >= 10, "{queries:?}");
    let missing = unknown_metrics(&queries, &exported_names(&after));
    assert!(
        missing.is_empty(),
        "queries name metrics the operator does not export:\n{}\n\nexported:\n{after}",
        missing.join("\n")
    );
}

// ---- a real run: JSON logs -----------------------------------------------------------------

#[test]
fn every_json_log_line_of_a_run_names_its_object_and_run_key() {
    let ns = TestNs::new("obs-logs");
    let queue = ns.name.clone();
    let ids: Vec<String> = seed(ns.dir.path(), &queue, &failed_jobs(3))
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    let op = Operator::start(&ns, &["--log-format", "json"]);
    assert!(
        ns.apply_jr(&jobretry("good", &queue, &ids).run_key("incident-42"))
            .ok
    );
    assert!(
        ns.apply_jr(&jobretry("stuck", &queue, &ids).secret("no-such-secret"))
            .ok
    );
    assert!(
        ns.wait_condition("good", "Complete", "60s").ok,
        "{}",
        op.logs()
    );
    assert!(
        ns.wait_condition("stuck", "Stalled", "60s").ok,
        "{}",
        op.logs()
    );

    let run_keys = [
        ("good", "incident-42".to_string()),
        ("stuck", format!("{}/stuck", ns.name)),
    ];
    let logs = eventually(
        Duration::from_secs(10),
        "the runs' milestones logged",
        || {
            let logs = op.logs();
            (logs.contains("SecretInvalid") && logs.contains("Completed")).then_some(logs)
        },
    );
    let mut of_run: Vec<(String, Value)> = Vec::new();
    for line in logs.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(!line.contains("Some("), "Debug output: {line}");
        // kube-runtime runs each reconcile in its own span naming the object; every line
        // logged in it must carry our span's fields.
        let spans = v["spans"].as_array().cloned().unwrap_or_default();
        let Some(kube) = spans.iter().find(|s| s["name"] == "reconciling object") else {
            continue;
        };
        let span = &v["span"];
        let name = span["jobretry"]
            .as_str()
            .unwrap_or_else(|| panic!("no jobretry: {line}"));
        assert_eq!(span["namespace"], ns.name.as_str(), "{line}");
        let (_, key) = run_keys
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("unknown object {name}: {line}"));
        assert_eq!(span["run_key"], key.as_str(), "{line}");
        let object_ref = kube["object.ref"].as_str().unwrap();
        assert!(
            object_ref.contains(&format!("/{name}.{}", ns.name)),
            "{object_ref} vs {name}: {line}"
        );
        of_run.push((name.to_string(), v));
    }
    let messages = |name: &str, level: &str| -> Vec<String> {
        of_run
            .iter()
            .filter(|(n, v)| n == name && v["level"] == level)
            .map(|(_, v)| v["fields"]["message"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let good_info = messages("good", "INFO");
    assert!(
        good_info.iter().any(|m| m.starts_with("retrying 3 jobs")),
        "no Started line of the good run: {good_info:?}\n{logs}"
    );
    assert!(
        good_info
            .iter()
            .any(|m| m.starts_with("3 of 3 jobs retried")),
        "no Completed line of the good run: {good_info:?}"
    );
    let stuck_warn = messages("stuck", "WARN");
    assert!(
        stuck_warn
            .iter()
            .any(|m| m.contains("no-such-secret") && m.contains("not found")),
        "the stuck run's Secret error is a WARN line of its run: {stuck_warn:?}"
    );
}

// ---- /readyz after the API server was unreachable ------------------------------------------

/// A TCP relay between the operator and the API server that the test can cut (dropping
/// every connection and refusing new ones) and restore.
struct Relay {
    addr: String,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let server = match TcpStream::connect(&upstream) {
                    Ok(s) if o.load(Ordering::SeqCst) => s,
                    _ => {
                        // Cut: the connection is closed at once, as by a dead server.
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                };
                let mut held = c.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(server.try_clone().unwrap());
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Self { addr, open, conns }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` on a thread of its own until either side closes.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

#[test]
fn readyz_recovers_by_itself_once_the_watch_works_again() {
    let ns = TestNs::new("obs-ready");
    let text = std::fs::read_to_string(kubeconfig()).unwrap();
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .expect("the kubeconfig's server")
        .to_string();
    let relay = Relay::start(server.clone());
    let relayed = ns.dir.path().join("relayed.kubeconfig");
    std::fs::write(&relayed, text.replace(&server, &relay.addr)).unwrap();
    let op = Operator::start_with_kubeconfig(&ns, &relayed, &["--watch-namespace", &ns.name]);
    let addr = op.http_addr();
    let ready = |want: u16| http_get(&addr, "/readyz").0 == want;
    eventually(Duration::from_secs(30), "ready", || {
        ready(200).then_some(())
    });

    relay.cut();
    eventually(
        Duration::from_secs(30),
        "not ready while the API server is unreachable",
        || ready(503).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        ready(503),
        "ready again while still unreachable\n{}",
        op.logs()
    );
    assert_eq!(
        http_get(&addr, "/healthz").0,
        200,
        "the process itself is fine"
    );

    relay.restore();
    let back = Instant::now();
    eventually(
        Duration::from_secs(150),
        "ready again once the watch works",
        || ready(200).then_some(()),
    );
    println!(
        "ready again {:?} after the API server came back",
        back.elapsed()
    );

    // And the watch does work: a new JobRetry is seen and handled.
    assert!(
        ns.apply_jr(&jobretry("stuck", &ns.name, &["1"]).secret("no-such-secret"))
            .ok
    );
    assert!(
        ns.wait_condition("stuck", "Stalled", "30s").ok,
        "{}",
        op.logs()
    );
}
