//! The Prometheus rules and the Grafana dashboard in `deploy/`, proven with real tools:
//! promtool checks and unit-tests the rules, and a real Prometheus (Debian's package, unpacked
//! by `scripts/backends install`) scrapes a classpulse consuming from the local Kafka broker
//! while every dashboard query and every rule expression is run against it.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::backends::*;
use common::*;
use serde_json::Value;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

/// `prometheus` or `promtool` from the unpacked Debian package.
fn prometheus_tool(name: &str) -> PathBuf {
    installed_tool(&format!("prometheus/usr/bin/{name}"))
}

fn rules() -> Value {
    let text = std::fs::read_to_string(format!("{DEPLOY}/prometheus/rules.yml")).unwrap();
    // YAML is a superset of JSON; promtool has checked its syntax. Parse the bits we need.
    yaml_rules(&text)
}

/// `(kind, name, expr)` of every rule, read from the rules file's simple layout.
fn rule_list() -> Vec<(String, String, String)> {
    rules()
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| {
            (
                rule["kind"].as_str().unwrap().to_owned(),
                rule["name"].as_str().unwrap().to_owned(),
                rule["expr"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A minimal reader for the rules file: `- record:`/`- alert:` entries and their `expr`
/// (inline or a `|` block). promtool is the authority on the format; this only extracts.
fn yaml_rules(text: &str) -> Value {
    let mut rules = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        let entry = line
            .strip_prefix("- record:")
            .map(|name| ("record", name))
            .or_else(|| line.strip_prefix("- alert:").map(|name| ("alert", name)));
        if let Some((kind, name)) = entry {
            let mut j = i + 1;
            while !lines[j].trim_start().starts_with("expr:") {
                j += 1;
            }
            let inline = lines[j].trim_start().trim_start_matches("expr:").trim();
            let expr = if inline == "|" {
                let indent = lines[j + 1].len() - lines[j + 1].trim_start().len();
                let mut body = Vec::new();
                let mut k = j + 1;
                while k < lines.len()
                    && (lines[k].trim().is_empty()
                        || lines[k].len() - lines[k].trim_start().len() >= indent)
                {
                    body.push(lines[k].trim());
                    k += 1;
                }
                body.join(" ")
            } else {
                inline.to_owned()
            };
            rules.push(serde_json::json!({"kind": kind, "name": name.trim(), "expr": expr.trim()}));
            i = j;
        }
        i += 1;
    }
    Value::Array(rules)
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let promtool = prometheus_tool("promtool");
    for args in [
        vec!["check", "rules", "rules.yml"],
        vec!["test", "rules", "rules_test.yml"],
    ] {
        let output = Command::new(&promtool)
            .args(&args)
            .current_dir(format!("{DEPLOY}/prometheus"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Every alert has a runbook entry, and every runbook entry an alert.
    let runbook = std::fs::read_to_string(format!("{DEPLOY}/RUNBOOK.md")).unwrap();
    let headings: BTreeSet<String> = runbook
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .map(|heading| heading.trim().to_ascii_lowercase())
        .collect();
    let text = std::fs::read_to_string(format!("{DEPLOY}/prometheus/rules.yml")).unwrap();
    let alerts: BTreeSet<String> = rule_list()
        .into_iter()
        .filter(|(kind, _, _)| kind == "alert")
        .map(|(_, name, _)| name.to_ascii_lowercase())
        .collect();
    assert_eq!(alerts.len(), 11, "{alerts:?}");
    for alert in &alerts {
        assert!(
            text.contains(&format!("runbook_url: deploy/RUNBOOK.md#{alert}")),
            "{alert} has no runbook link"
        );
    }
    assert_eq!(alerts, headings, "RUNBOOK.md sections and alerts differ");
}

/// A Prometheus on 127.0.0.1 scraping `target` every second; killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _data: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let data = tempfile::tempdir().unwrap();
        let config = data.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: classpulse\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(prometheus_tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let prometheus = Prometheus {
            child,
            addr,
            _data: data,
        };
        wait_until(Duration::from_secs(30), "prometheus listening", || {
            std::net::TcpStream::connect(addr).map_err(|e| e.to_string())
        });
        prometheus
    }

    /// `/api/v1/{endpoint}` with `params`; the `data` of a successful answer.
    fn api(&self, endpoint: &str, params: &[(&str, String)]) -> Result<Value, String> {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let (status, body) = http_get(self.addr, &format!("/api/v1/{endpoint}?{query}"));
        let answer: Value =
            serde_json::from_str(&body).map_err(|e| format!("{status} {e}: {body}"))?;
        if answer["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(answer["data"].clone())
    }

    /// Every value of `expr` over the last `seconds`, one per second.
    fn range(&self, expr: &str, seconds: i64) -> Result<Vec<f64>, String> {
        let end = chrono::Utc::now().timestamp();
        let data = self.api(
            "query_range",
            &[
                ("query", expr.to_owned()),
                ("start", (end - seconds).to_string()),
                ("end", end.to_string()),
                ("step", "1".to_owned()),
            ],
        )?;
        Ok(data["result"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|series| series["values"].as_array().unwrap().clone())
            .filter_map(|point| point[1].as_str()?.parse::<f64>().ok())
            .collect())
    }
}

/// Every `(panel title, expr)` of the dashboard, with Grafana's rate interval filled in.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{DEPLOY}/grafana/classpulse.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queries.push((
                panel["title"].as_str().unwrap().to_owned(),
                target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "15s"),
            ));
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_rule_returns_data_from_a_real_prometheus() {
    require(KAFKA);
    require(DYNAMODB);
    let (admin, topic) = create_topic(3).await;
    let group = unique_name("group");
    let client = dynamodb_client().await;
    let events_table = create_table(&client, "events").await;
    let messages = simulated_messages(17, "2026-11-25T22:00:00Z").await;
    let lake = tempfile::tempdir().unwrap();

    // Live records too, for the walls' panel.
    let (_, live_topic) = create_topic(1).await;
    let mut command = kafka_member(lake.path(), &topic, &group);
    with_local_dynamodb(&mut command)
        .env("CLASSPULSE_DYNAMODB_EVENTS_TABLE", &events_table)
        .env("CLASSPULSE_DYNAMODB_PACK_WINDOW", "20s")
        .env("CLASSPULSE_LIVE_TOPIC", &live_topic)
        .env("CLASSPULSE_LIVE_TILE_KEY", "observability-tile-key");
    let running = Running::start(&mut command);
    let prometheus = Prometheus::start(running.http);
    let started = Instant::now();
    // Produce for about 15 seconds once classpulse has joined its group (seconds, on tansu),
    // so that the scrapes see it working and behind.
    let chunks: Vec<_> = messages.chunks(messages.len() / 15 + 1).collect();
    produce(&topic, chunks[0], 3).await;
    wait_for_metric(
        running.http,
        "classpulse_events_in_total",
        1.0,
        Duration::from_secs(60),
    );
    for chunk in &chunks[1..] {
        produce(&topic, chunk, 3).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Prometheus has scraped everything classpulse consumed.
    wait_until(
        Duration::from_secs(60),
        "a scrape of every event in",
        || {
            let (_, metrics) = http_get(running.http, "/metrics");
            let consumed = metric_sum(&metrics, "classpulse_events_in_total");
            let window = started.elapsed().as_secs() as i64 + 5;
            let scraped = prometheus
                .range("sum(classpulse_events_in_total)", window)?
                .into_iter()
                .fold(0.0, f64::max);
            if consumed > 0.0 && scraped >= consumed {
                Ok(())
            } else {
                Err(format!("scraped {scraped} of {consumed}"))
            }
        },
    );
    let window = started.elapsed().as_secs() as i64 + 5;

    let must_move = ["Events in per second", "Source lag", "End-to-end latency"];
    let mut failures = Vec::new();
    for (title, expr) in dashboard_queries() {
        match prometheus.range(&expr, window) {
            Err(error) => failures.push(format!("{title}: {expr}: {error}")),
            Ok(values) if values.is_empty() => failures.push(format!("{title}: {expr}: no data")),
            Ok(values) => {
                if must_move.iter().any(|prefix| title.starts_with(prefix))
                    && !values.iter().any(|v| *v > 0.0)
                {
                    failures.push(format!("{title}: {expr}: only zeros"));
                }
            }
        }
    }
    for (kind, name, expr) in rule_list() {
        match prometheus.range(&expr, window) {
            Err(error) => failures.push(format!("{kind} {name}: {expr}: {error}")),
            // Alerts are quiet when all is well; recording rules must record something.
            Ok(values) if kind == "record" && values.is_empty() => {
                failures.push(format!("record {name}: {expr}: no data"))
            }
            Ok(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(up over the window: {:?})",
        failures.join("\n"),
        prometheus.range("up", window)
    );

    drain(running).await;
    drop(prometheus);
    admin
        .delete_topics(&[&topic, &live_topic], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();
    delete_table(&client, &events_table).await;
}
