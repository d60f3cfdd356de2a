//! The chart's dashboards and alert rules against a real Prometheus server
//! scraping a real local cluster under load.
//!
//! A dashboard panel whose query names a metric or label that does not exist
//! shows "No data" forever and nobody notices until an incident; an alert
//! whose expression matches nothing never fires. So this test takes every
//! PromQL expression out of `charts/dsm/dashboards/dsm-overview.json`,
//! `charts/dsm/dashboards/dsm-load-distribution.json` and
//! `charts/dsm/rules/dsm-alerts.yaml` (parsed, not copied), and asks a running
//! Prometheus for it:
//!
//! - dashboard queries and variable queries must return series, with at least
//!   one value that is a number (a NaN from `histogram_quantile` or a division
//!   means the selector found no traffic, which under steady load is a bug);
//! - alert expressions are conditions that are false in a healthy cluster, so
//!   an empty answer proves nothing. Each is evaluated with `bool` added to its
//!   top-level comparisons (`a < b` becomes `a < bool b`): Prometheus then
//!   returns 0 or 1 for every series pair the comparison matched instead of
//!   filtering, so a non-empty answer shows that every series the alert reads
//!   exists *and* that the two sides' labels match (a comparison between
//!   vectors with different label sets matches nothing and would never fire).
//!   Prometheus also loads the rules file itself: every rule must evaluate with
//!   health "ok". Finally two alerts are made to happen for real — a slave is
//!   killed (DsmSlavesDown must go pending) and then both master-capable
//!   processes (DsmNoActiveMaster, whose expression must cope with the
//!   master's series disappearing, must go pending).
//!
//! `promtool check config` checks the generated configuration and
//! `promtool check rules` the rules file. Prometheus and promtool come from
//! Debian's `prometheus` package: `scripts/install-test-deps.sh` installs it.
//! Without them the test fails; it never skips.
//!
//! The operator dashboard (`dsm-operator.json`) reads the operator's metrics,
//! which a local cluster has not, so it is not part of this test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, Options, WAIT, bounded, free_port, try_http_get};
use serde_json::Value;

/// The `namespace` and `cluster` labels the test attaches to every target,
/// as the operator's ServiceMonitor relabelings do on Kubernetes.
const NAMESPACE: &str = "dsm-test";
const CLUSTER: &str = "local";

/// What Grafana's `$__rate_interval` becomes. Grafana makes it at least four
/// scrape intervals; with 1 s scrapes 30 s windows hold plenty of samples.
const RATE_INTERVAL: &str = "30s";
/// What `$__range` (the dashboard's time range) becomes.
const RANGE: &str = "5m";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("node/ has a parent")
        .to_path_buf()
}

fn dashboards() -> [PathBuf; 2] {
    let dir = repo().join("charts/dsm/dashboards");
    [
        dir.join("dsm-overview.json"),
        dir.join("dsm-load-distribution.json"),
    ]
}

fn rules_file() -> PathBuf {
    repo().join("charts/dsm/rules/dsm-alerts.yaml")
}

// ---- the expressions --------------------------------------------------------

/// One query to ask Prometheus, and what its answer must show.
#[derive(Debug)]
struct Check {
    /// Where the expression comes from, for failure messages.
    source: String,
    /// The PromQL sent, with template variables substituted.
    expr: String,
    expect: Expect,
}

#[derive(Debug)]
enum Expect {
    /// Series, at least one with a value that is not NaN.
    Numbers,
    /// Series that carry this label (a `label_values` variable query).
    Label(String),
}

/// Replaces the Grafana variables the dashboards use with concrete values;
/// panics on any other variable, so a new one is not silently sent as is.
fn substitute(expr: &str) -> String {
    let mut out = expr.to_string();
    for (variable, value) in [
        ("${namespace}", NAMESPACE),
        ("$namespace", NAMESPACE),
        ("${cluster}", CLUSTER),
        ("$cluster", CLUSTER),
        ("$__rate_interval", RATE_INTERVAL),
        ("$__range", RANGE),
    ] {
        out = out.replace(variable, value);
    }
    assert!(
        !out.contains('$'),
        "unknown template variable in {expr:?}: teach substitute() its test value"
    );
    out
}

/// Every `expr` anywhere in a dashboard (panels, rows, nested panels), named
/// after the closest enclosing title, plus the template variables' queries.
fn dashboard_checks(path: &Path) -> Vec<Check> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dashboard: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = path.file_name().expect("file name").to_string_lossy();
    let mut checks = Vec::new();
    collect_exprs(&dashboard["panels"], &name, &mut checks);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: no templating.list"));
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        // Grafana stores a variable query as a string or as {"query": "..."}.
        let query = variable["query"]
            .as_str()
            .or_else(|| variable["query"]["query"].as_str())
            .unwrap_or_else(|| panic!("{name}: variable without a query: {variable}"));
        let (selector, label) = query
            .trim()
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .unwrap_or_else(|| {
                panic!("{name}: variable query {query:?} is not label_values(selector, label)")
            });
        checks.push(Check {
            source: format!("{name}: variable {}", variable["name"]),
            expr: substitute(selector.trim()),
            expect: Expect::Label(label.trim().to_string()),
        });
    }
    assert!(!checks.is_empty(), "{name}: no expressions found");
    checks
}

fn collect_exprs(value: &Value, title: &str, checks: &mut Vec<Check>) {
    match value {
        Value::Object(map) => {
            let title = map.get("title").and_then(Value::as_str).unwrap_or(title);
            if let Some(expr) = map.get("expr").and_then(Value::as_str) {
                checks.push(Check {
                    source: format!("{title} ({})", map["refId"].as_str().unwrap_or("?")),
                    expr: substitute(expr),
                    expect: Expect::Numbers,
                });
            }
            for child in map.values() {
                collect_exprs(child, title, checks);
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_exprs(item, title, checks);
            }
        }
        _ => {}
    }
}

/// The rules of the rules file: (alert or record name, expression).
fn rules() -> Vec<(String, String)> {
    let path = rules_file();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file: Value =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut rules = Vec::new();
    for group in file["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or_else(|| rule["record"].as_str())
                .expect("a rule has an alert or record name");
            let expr = rule["expr"].as_str().expect("a rule has an expr");
            rules.push((name.to_string(), expr.to_string()));
        }
    }
    assert!(!rules.is_empty(), "{}: no rules", path.display());
    rules
}

/// What the test asks for an alert rule: its expression with `bool` after
/// each top-level comparison, so that it returns 0 or 1 for every matched
/// series instead of only the series that would alert (see the module
/// comment). `None` when the expression has no top-level comparison: the rule
/// is then not an alert condition this test understands.
///
/// Top level means outside parentheses, braces, brackets and string literals:
/// a comparison nested inside, like `sum(x == 1)`, filters series on purpose
/// and stays as it is; `=`, `!=`, `=~` inside braces are label matchers.
fn with_bool_comparisons(expr: &str) -> Option<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::with_capacity(expr.len() + 16);
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut found = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            out.push(c);
            if c == '\\' && q != '`' {
                if let Some(&next) = chars.get(i + 1) {
                    out.push(next);
                    i += 1;
                }
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth = depth.saturating_sub(1),
            '#' => {
                // A comment runs to the end of the line.
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        let next = chars.get(i + 1).copied();
        let operator = match (c, next) {
            ('=', Some('=')) | ('!', Some('=')) | ('<', Some('=')) | ('>', Some('=')) => 2,
            ('<' | '>', _) => 1,
            _ => 0,
        };
        if depth == 0 && quote.is_none() && operator > 0 {
            out.extend(&chars[i..i + operator]);
            i += operator;
            let rest: String = chars[i..].iter().collect();
            if !rest.trim_start().starts_with("bool") {
                out.push_str(" bool");
            }
            found = true;
            continue;
        }
        out.push(c);
        i += 1;
    }
    found.then_some(out)
}

// ---- Prometheus ------------------------------------------------------------

/// Fails the test, with the fix, when a tool is missing.
fn require_tool(name: &str) {
    match Command::new(name).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{name} --version` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "cannot run `{name}` ({e}): run scripts/install-test-deps.sh as root \
             (it installs Debian's prometheus package, which ships prometheus and promtool)"
        ),
    }
}

/// Runs `promtool` and fails the test with its output unless it succeeds.
fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The scrape configuration: one static target per member, with the labels
/// the dashboards select on. `instance` is the member's name, as the
/// ServiceMonitor makes it the pod name on Kubernetes; a slave's name is also
/// its id, the `slave` label the master puts on `dsm_slave_requests_total`.
fn config(cluster: &Cluster) -> String {
    let members = [&cluster.master, &cluster.backup]
        .into_iter()
        .chain(cluster.slaves.iter());
    let mut config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {:?}\n\
         scrape_configs:\n  - job_name: dsm\n    static_configs:\n",
        rules_file().display().to_string()
    );
    for member in members {
        config.push_str(&format!(
            "      - targets: [{:?}]\n        labels: {{namespace: {NAMESPACE:?}, cluster: {CLUSTER:?}, instance: {:?}}}\n",
            member.metrics_address, member.name
        ));
    }
    config
}

/// A Prometheus server of this test; killed when dropped, also on panic.
struct Prometheus {
    child: Child,
    address: String,
    log: PathBuf,
}

impl Prometheus {
    /// Starts `prometheus` with `config` on a free loopback port, keeping its
    /// data and log under `dir`.
    fn start(dir: &Path, config: &Path) -> Prometheus {
        let address = format!("127.0.0.1:{}", free_port());
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).expect("create the Prometheus log");
        let err = out.try_clone().expect("clone log handle");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn prometheus");
        Prometheus {
            child,
            address,
            log,
        }
    }

    /// The last lines of the server's log, for failure messages.
    fn log(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// GET `path` and the `data` of Prometheus' JSON answer.
    fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = try_http_get(&self.address, path).map_err(|e| e.to_string())?;
        let answer: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if answer["status"] != "success" {
            return Err(format!("HTTP {status}: {answer}"));
        }
        Ok(answer["data"].clone())
    }

    /// An instant query; the series it returned.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(expr)))?;
        match data["resultType"].as_str() {
            Some("vector" | "matrix") => Ok(data["result"].as_array().cloned().unwrap_or_default()),
            Some("scalar") => Ok(vec![
                serde_json::json!({ "metric": {}, "value": data["result"] }),
            ]),
            other => Err(format!("unexpected result type {other:?}: {data}")),
        }
    }

    /// Polls `/-/ready` until Prometheus serves, or fails the test.
    async fn wait_ready(&mut self) {
        let started = Instant::now();
        while started.elapsed() < WAIT {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", self.log());
            }
            if matches!(try_http_get(&self.address, "/-/ready"), Ok((200, _))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("prometheus never became ready:\n{}", self.log());
    }

    /// Polls until `check` returns `Ok`, or fails the test with its last error.
    async fn wait_until(&self, what: &str, check: impl Fn(&Prometheus) -> Result<(), String>) {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < WAIT {
            match check(self) {
                Ok(()) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        panic!(
            "timed out waiting for {what}; last: {last}\n--- prometheus log ---\n{}",
            self.log()
        );
    }

    /// Waits until `alert` for the test cluster is pending or firing.
    async fn wait_alert(&self, alert: &str) {
        self.wait_until(&format!("alert {alert} to go pending"), |p| {
            let data = p.api("/api/v1/alerts")?;
            let alerts = data["alerts"].as_array().cloned().unwrap_or_default();
            if alerts
                .iter()
                .any(|a| a["labels"]["alertname"] == alert && a["labels"]["cluster"] == CLUSTER)
            {
                Ok(())
            } else {
                Err(format!("active alerts: {alerts:?}"))
            }
        })
        .await;
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter (everything but RFC 3986 unreserved).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether a series' value (a JSON string such as "0.25" or "NaN") is a number.
fn is_number(series: &Value) -> bool {
    series["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .is_some_and(|v| !v.is_nan())
}

/// `Ok` when `check`'s answer shows what it expects; otherwise why not.
fn run_check(prometheus: &Prometheus, check: &Check) -> Result<(), String> {
    let series = prometheus.query(&check.expr)?;
    if series.is_empty() {
        return Err("no series".to_string());
    }
    match &check.expect {
        Expect::Numbers if series.iter().any(is_number) => Ok(()),
        Expect::Numbers => Err(format!("only NaN: {series:?}")),
        Expect::Label(label) if series.iter().all(|s| s["metric"][label].is_string()) => Ok(()),
        Expect::Label(label) => Err(format!("series without label {label}: {series:?}")),
    }
}

// ---- load --------------------------------------------------------------------

/// Writes and reads through the client in a loop until stopped, so that rates
/// and latency histograms have traffic in every window the queries look at.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(client: dsm::client::Client) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, ok) = (stop.clone(), ok.clone());
            async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // 100 keys, so reads hit written keys and slaves fill evenly.
                    let key = format!("key-{}", i % 100);
                    let value = format!("value-{i}");
                    if client.write(key.as_bytes(), value.as_bytes()).await.is_ok() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    if client.read(key.as_bytes()).await.is_ok() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            }
        });
        Load { stop, ok, task }
    }

    /// Stops the loop; the number of requests that succeeded.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("load task");
        self.ok.load(Ordering::Relaxed)
    }
}

// ---- the test --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_expression_returns_data_from_a_real_prometheus() {
    require_tool("prometheus");
    require_tool("promtool");
    let rules_path = rules_file();
    promtool(&["check", "rules", &rules_path.display().to_string()]);
    let mut checks: Vec<Check> = dashboards()
        .iter()
        .flat_map(|d| dashboard_checks(d))
        .collect();
    let rules = rules();
    for (name, expr) in &rules {
        let expr = with_bool_comparisons(expr).unwrap_or_else(|| {
            panic!("rule {name}: no top-level comparison; see with_bool_comparisons()")
        });
        checks.push(Check {
            source: format!("rule {name} (with bool)"),
            expr,
            expect: Expect::Numbers,
        });
    }

    bounded(async {
        let mut cluster = Cluster::start(Options::default()).await;
        let dir = tempfile::tempdir().expect("temporary directory");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config(&cluster)).expect("write prometheus.yml");
        promtool(&["check", "config", &config_path.display().to_string()]);

        let mut prometheus = Prometheus::start(dir.path(), &config_path);
        prometheus.wait_ready().await;
        let load = Load::start(cluster.client());

        // Every member scraped, and traffic in the rate windows.
        let members = 2 + cluster.slaves.len();
        prometheus
            .wait_until("every member scraped, requests flowing", |p| {
                let up = p.query(r#"up{job="dsm"} == 1"#)?;
                if up.len() != members {
                    return Err(format!("{} of {members} targets up: {up:?}", up.len()));
                }
                let flowing = p.query(&format!(
                    r#"sum(rate(dsm_requests_total{{op="write",result="ok"}}[{RATE_INTERVAL}])) > 0"#
                ))?;
                if flowing.is_empty() {
                    return Err("no successful writes in the rate window yet".to_string());
                }
                Ok(())
            })
            .await;

        // All checks in rounds until they all pass: a series can still be
        // missing its second sample right after the targets came up.
        prometheus
            .wait_until("every dashboard and rule expression to return data", |p| {
                let failures: Vec<String> = checks
                    .iter()
                    .filter_map(|c| {
                        run_check(p, c)
                            .err()
                            .map(|why| format!("{}: {}\n    {why}", c.source, c.expr))
                    })
                    .collect();
                if failures.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "{} of {} expressions failed:\n{}",
                        failures.len(),
                        checks.len(),
                        failures.join("\n")
                    ))
                }
            })
            .await;

        // Prometheus loaded the same rules from the file and evaluates each
        // without error (e.g. no many-to-many matching at run time).
        prometheus
            .wait_until("every rule to evaluate with health ok", |p| {
                let data = p.api("/api/v1/rules")?;
                let loaded: Vec<&Value> = data["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                    .collect();
                for (name, _) in &rules {
                    let rule = loaded
                        .iter()
                        .find(|r| r["name"] == name.as_str())
                        .ok_or_else(|| format!("rule {name} not loaded"))?;
                    if rule["health"] != "ok" {
                        return Err(format!("rule {name}: {rule}"));
                    }
                }
                Ok(())
            })
            .await;

        let succeeded = load.stop().await;
        assert!(succeeded > 0, "the load made no successful request");

        // The alerts do fire. One slave fewer than configured: DsmSlavesDown.
        cluster.slaves[2].kill9();
        prometheus.wait_alert("DsmSlavesDown").await;
        // No master-capable process left: their series go stale, and the
        // alert must still fire from the slaves' series.
        cluster.master.kill9();
        cluster.backup.kill9();
        prometheus.wait_alert("DsmNoActiveMaster").await;
    })
    .await;
}

#[test]
fn bool_is_added_to_top_level_comparisons_only() {
    assert_eq!(
        with_bool_comparisons("max(x) < max(y)").as_deref(),
        Some("max(x) < bool max(y)")
    );
    assert_eq!(
        with_bool_comparisons(r#"sum(x{a!="b", c=~"d>"} == 1) >= 2"#).as_deref(),
        Some(r#"sum(x{a!="b", c=~"d>"} == 1) >= bool 2"#)
    );
    assert_eq!(
        with_bool_comparisons("a < b and on (c) d > 0").as_deref(),
        Some("a < bool b and on (c) d > bool 0")
    );
    assert_eq!(
        with_bool_comparisons("a != bool b").as_deref(),
        Some("a != bool b")
    );
    assert_eq!(with_bool_comparisons("rate(x[5m])"), None);
    assert_eq!(with_bool_comparisons("sum(x > 1) # a > b"), None);
}

#[test]
fn every_grafana_variable_is_substituted() {
    assert_eq!(
        substitute(r#"rate(x{namespace="$namespace", cluster="${cluster}"}[$__rate_interval])"#),
        format!(r#"rate(x{{namespace="{NAMESPACE}", cluster="{CLUSTER}"}}[{RATE_INTERVAL}])"#)
    );
}
