//! Helpers shared by the integration tests: running the binary, reading what it wrote, and
//! talking to its HTTP endpoints.

#![allow(dead_code)] // each test binary uses a different subset

pub mod athena;
pub mod backends;
pub mod faulty_dynamodb;
pub mod members;
pub mod tables;
pub mod tcp_proxy;
pub mod walls;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

/// The `classpulse` binary with no inherited `CLASSPULSE_*` variables, JSON logs and a free
/// HTTP port, writing its lake under `lake`.
pub fn classpulse(lake: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_classpulse"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("CLASSPULSE_")) {
        command.env_remove(name);
    }
    command
        .env("CLASSPULSE_LAKE_URL", format!("file://{}", lake.display()))
        .env("CLASSPULSE_HTTP_ADDR", "127.0.0.1:0")
        .env("CLASSPULSE_LOG_FORMAT", "json")
        .env("CLASSPULSE_SIM_START", "2026-11-25T17:00:00Z")
        .env("CLASSPULSE_SIM_SEED", "20261125");
    command
}

/// A small, unpaced simulation.
pub fn small_simulation(command: &mut Command) -> &mut Command {
    command
        .env("CLASSPULSE_SIM_STUDIOS", "6")
        .env("CLASSPULSE_SIM_DURATION", "5m")
        .env("CLASSPULSE_SIM_SPEEDUP", "0")
        .env("CLASSPULSE_SIM_INVALID_RATE", "0.02")
}

/// Every file under `{lake}/aggregates`, by path relative to it.
pub fn aggregate_files(lake: &Path) -> BTreeMap<String, Vec<u8>> {
    let root = lake.join("aggregates");
    let mut files = BTreeMap::new();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                // A running classpulse writes through staging files it renames: one may be
                // gone between listing and reading.
                let body = match std::fs::read(&path) {
                    Ok(body) => body,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(error) => panic!("{}: {error}", path.display()),
                };
                if path.to_string_lossy().contains('#') {
                    continue; // object_store's staging file, not an object
                }
                let relative = path.strip_prefix(&root).unwrap().display().to_string();
                files.insert(relative, body);
            }
        }
    }
    files
}

/// Asserts the aggregate results under `actual` are those under `expected`, byte for byte.
pub fn assert_same_aggregates(actual: &Path, expected: &Path) {
    let expected = aggregate_files(expected);
    let actual = aggregate_files(actual);
    assert!(!expected.is_empty(), "no results to compare with");
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (name, body) in &expected {
        assert!(
            actual[name] == *body,
            "{name} differs from the clean run:\n{}\n{}",
            String::from_utf8_lossy(&actual[name]),
            String::from_utf8_lossy(body)
        );
    }
}

/// The results under `lake` as JSON (objects, or lines of ndjson), by file, without their
/// source positions (which name the partitions a class was counted on).
pub fn results_without_positions(lake: &Path) -> BTreeMap<String, Vec<serde_json::Value>> {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(fields) => {
                fields.remove("positions");
                fields.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    aggregate_files(lake)
        .into_iter()
        .map(|(name, body)| {
            let text = String::from_utf8(body).unwrap();
            let mut values: Vec<serde_json::Value> = text
                .lines()
                .filter(|line| !line.is_empty())
                .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: {e}")))
                .collect();
            if values.is_empty() || (values.len() > 1 && name.ends_with(".json")) {
                values = vec![serde_json::from_str(&text).unwrap()];
            }
            values.iter_mut().for_each(strip);
            (name, values)
        })
        .collect()
}

/// Fails unless two JSON values are equal, numbers within a relative 1e-9 (sums merged from
/// two parts add in another order).
pub fn assert_json_close(actual: &serde_json::Value, expected: &serde_json::Value, path: &str) {
    use serde_json::Value;
    match (actual, expected) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
                "{path}: {a} != {b}"
            );
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: lengths");
            for (i, (a, b)) in a.iter().zip(b).enumerate() {
                assert_json_close(a, b, &format!("{path}[{i}]"));
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            assert_eq!(
                a.keys().collect::<Vec<_>>(),
                b.keys().collect::<Vec<_>>(),
                "{path}: fields"
            );
            for (key, a) in a {
                assert_json_close(a, &b[key], &format!("{path}.{key}"));
            }
        }
        (a, b) => assert_eq!(a, b, "{path}"),
    }
}

/// Asserts the results under `actual` are those under `expected` but for their source
/// positions, numbers within a relative 1e-9: a class counted on two partitions (its key moved,
/// or its shard split) names other positions, and sums merged from two parts add in another
/// order.
pub fn assert_same_results(actual: &Path, expected: &Path) {
    let expected = results_without_positions(expected);
    let actual = results_without_positions(actual);
    assert!(!expected.is_empty(), "no results to compare with");
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (name, values) in &expected {
        assert_json_close(
            &serde_json::Value::Array(actual[name].clone()),
            &serde_json::Value::Array(values.clone()),
            name,
        );
    }
}

/// `messages` as producers send them while classes run: by event time. (The simulator hands
/// out one simulated partition's stretch at a time, so a class's events come in bursts with
/// other classes' later events between them.) A message that does not decode goes where the
/// one before it was.
pub fn in_event_time_order(
    messages: Vec<classpulse::decode::RawMessage>,
) -> Vec<classpulse::decode::RawMessage> {
    let mut sent_at = i64::MIN;
    let mut order: Vec<(i64, usize)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let (events, _) = decode_all(std::slice::from_ref(message));
        sent_at = events
            .iter()
            .map(|e| e.event_time_ms)
            .min()
            .unwrap_or(sent_at);
        order.push((sent_at, i));
    }
    order.sort();
    order.iter().map(|(_, i)| messages[*i].clone()).collect()
}

/// Runs `command` to its end and returns its stdout; fails the test if it fails.
pub fn run_to_end(command: &mut Command) -> String {
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A running classpulse whose stderr (JSON logs) is collected by a thread.
pub struct Running {
    pub child: Child,
    pub http: SocketAddr,
    logs: std::sync::mpsc::Receiver<String>,
}

impl Drop for Running {
    /// A test that fails midway must not leave classpulse running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Running {
    /// Starts `command` and waits for its HTTP address.
    pub fn start(command: &mut Command) -> Running {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("classpulse starts");
        let stderr = child.stderr.take().unwrap();
        let (sender, logs) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let Ok(line) = logs.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("classpulse did not log its http address");
            };
            let Ok(log) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if log["message"] == "http endpoints listening" {
                let http = log["addr"].as_str().unwrap().parse().unwrap();
                return Running { child, http, logs };
            }
        }
    }

    /// Sends a signal to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit; returns the exit code, stdout, and the remaining log lines.
    pub fn wait(mut self, timeout: Duration) -> (Option<i32>, String, Vec<String>) {
        let exited = poll_until(timeout, || self.child.try_wait().unwrap().ok_or(()));
        let Ok(status) = exited else {
            let _ = self.child.kill();
            panic!("classpulse did not exit within {timeout:?}");
        };
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let logs = self.logs.try_iter().collect();
        (status.code(), stdout, logs)
    }
}

/// Stops `running` with SIGTERM and waits for it to drain; fails the test unless it exits 0.
/// Returns its stdout and remaining log lines.
pub async fn drain(running: Running) -> (String, Vec<String>) {
    running.signal("TERM");
    let (code, stdout, logs) =
        tokio::task::spawn_blocking(move || running.wait(Duration::from_secs(30)))
            .await
            .unwrap();
    assert_eq!(code, Some(0), "{stdout}\n{}", logs.join("\n"));
    (stdout, logs)
}

/// A plain HTTP/1.0 GET; returns the status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path)
}

/// A plain HTTP/1.0 request with `method` and no body; returns the status code and body.
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_request_with(addr, method, path, "")
}

/// [`http_request`] with extra header lines (each ending in CRLF).
pub fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .expect("http endpoint accepts connections");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n{headers}\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of an unlabelled or labelled series in Prometheus text, summed over labels.
pub fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.starts_with(&format!("{name} ")) || line.starts_with(&format!("{name}{{"))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every file under `dir` whose name ends with `suffix`, sorted.
pub fn files_under(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.map_while(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Every row of every Parquet object in the lake.
pub fn read_lake(lake: &Path) -> Vec<RecordBatch> {
    files_under(&lake.join("events"), ".parquet")
        .into_iter()
        .flat_map(|path| {
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
                .unwrap()
                .build()
                .unwrap();
            reader.map(|batch| batch.unwrap()).collect::<Vec<_>>()
        })
        .collect()
}

/// Every dead-letter line in the lake.
pub fn read_dead_letters(lake: &Path) -> Vec<Value> {
    files_under(&lake.join("dead-letters"), ".ndjson.zst")
        .into_iter()
        .flat_map(|path| {
            let text = zstd::decode_all(File::open(&path).unwrap()).unwrap();
            String::from_utf8(text)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// The number after `label` in the run summary (e.g. "events in").
pub fn summary_number(stdout: &str, label: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|line| line.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in {stdout}"));
    line.trim_start()[label.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Rows the lake must hold after a run: valid events but the duplicates left out.
pub fn expected_lake_rows(stdout: &str) -> u64 {
    summary_number(stdout, "events in") - summary_number(stdout, "duplicates")
}

/// Every message of a simulation run in-process (unpaced, as configured).
pub async fn simulate(
    config: &classpulse::config::SimulatorConfig,
) -> Vec<classpulse::decode::RawMessage> {
    use classpulse::source::Source;
    let mut simulator =
        classpulse::source::simulator::Simulator::new(config, 500, chrono::Utc::now());
    let mut messages = Vec::new();
    while let Some(batch) = simulator.next_batch().await.unwrap() {
        messages.extend(batch.messages);
    }
    messages
}

/// Decodes `messages` with the default limits: the events and rejections classpulse should
/// produce from them.
pub fn decode_all(
    messages: &[classpulse::decode::RawMessage],
) -> (
    Vec<classpulse::event::PerformanceEvent>,
    Vec<classpulse::decode::RejectedInput>,
) {
    let limits = classpulse::decode::DecodeLimits {
        max_message_bytes: 1 << 20,
        max_clock_skew_ms: 60_000,
    };
    let (mut events, mut rejected) = (Vec::new(), Vec::new());
    let now_ms = chrono::Utc::now().timestamp_millis();
    for message in messages {
        classpulse::decode::decode_message(message, &limits, now_ms, &mut events, &mut rejected);
    }
    (events, rejected)
}

/// How many rows the lake under `lake` holds for each event id.
pub fn lake_ids(lake: &Path) -> BTreeMap<String, u32> {
    use arrow_array::cast::AsArray;
    let mut ids = BTreeMap::new();
    for batch in read_lake(lake) {
        let column = batch.column_by_name("event_id").unwrap().as_string::<i32>();
        for row in 0..batch.num_rows() {
            *ids.entry(column.value(row).to_owned()).or_insert(0) += 1;
        }
    }
    ids
}

/// Fails unless `actual` holds the same rows per event id as `expected`, naming the first
/// ids that differ.
pub fn assert_same_lake_rows(actual: &Path, expected: &Path) {
    let (actual, expected) = (lake_ids(actual), lake_ids(expected));
    let differing: Vec<_> = actual
        .keys()
        .chain(expected.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|id| actual.get(*id) != expected.get(*id))
        .take(5)
        .map(|id| (id, actual.get(id), expected.get(id)))
        .collect();
    assert!(
        differing.is_empty(),
        "rows per event id differ, (id, rows, rows expected): {differing:?}"
    );
}

/// How often [`wait_until`] and [`wait_until_async`] look again.
const POLL: Duration = Duration::from_millis(250);

/// Looks at `condition` until it holds (`Ok`), and returns what it found; fails the test after
/// `within`, naming `what` and the condition's last word on how far things got (`Err`).
pub fn wait_until<T>(
    within: Duration,
    what: &str,
    condition: impl FnMut() -> Result<T, String>,
) -> T {
    poll_until(within, condition)
        .unwrap_or_else(|state| panic!("{what}: not within {within:?}: {state}"))
}

/// [`wait_until`] with a condition that awaits (it sleeps on the runtime's timer).
pub async fn wait_until_async<T, F, Fut>(within: Duration, what: &str, condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    poll_until_async(within, condition)
        .await
        .unwrap_or_else(|state| panic!("{what}: not within {within:?}: {state}"))
}

/// Looks at `condition` until it holds (`Ok`) or `within` has passed, and returns its last
/// answer: for a caller that reports a failure with more than the condition knows (a log).
pub fn poll_until<T, E>(
    within: Duration,
    mut condition: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + within;
    loop {
        match condition() {
            Err(_) if Instant::now() < deadline => std::thread::sleep(POLL),
            answer => return answer,
        }
    }
}

/// [`poll_until`] with a condition that awaits.
pub async fn poll_until_async<T, E, F, Fut>(within: Duration, mut condition: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match condition().await {
            Err(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
            answer => return answer,
        }
    }
}

/// Waits until the metric `name` (summed over its series) of the process at `http` reaches
/// `at_least`; returns its value.
pub fn wait_for_metric(http: SocketAddr, name: &str, at_least: f64, within: Duration) -> f64 {
    wait_until(within, &format!("{name} at {at_least}"), || {
        let (_, metrics) = http_get(http, "/metrics");
        let value = metric_sum(&metrics, name);
        if value >= at_least {
            Ok(value)
        } else {
            Err(format!("{name} is {value}"))
        }
    })
}

/// Waits until `lake` holds at least `events` distinct event ids; returns them.
pub async fn await_lake_ids(lake: &Path, events: usize, within: Duration) -> BTreeMap<String, u32> {
    wait_until_async(
        within,
        &format!("{events} events in the lake"),
        || async move {
            let ids = lake_ids(lake);
            if ids.len() >= events {
                Ok(ids)
            } else {
                Err(format!("{} there", ids.len()))
            }
        },
    )
    .await
}

/// Waits until `lake` holds `classes` final class summaries; returns how many it holds.
pub fn await_final_classes(lake: &Path, classes: usize, within: Duration) -> usize {
    let answer = poll_until(within, || match final_classes(lake) {
        summaries if summaries >= classes => Ok(summaries),
        summaries => Err(summaries),
    });
    answer.unwrap_or_else(|summaries| summaries)
}

/// How many final class summaries `lake` holds.
pub fn final_classes(lake: &Path) -> usize {
    aggregate_files(lake)
        .keys()
        .filter(|name| name.starts_with("classes/"))
        .count()
}

/// Runs `member` (a command writing into `lake`) until `lake` holds `classes` final class
/// summaries, then drains it; fails the test, with its log, if the member exits first or they
/// are not all there within 150 s (generous: a member behind a fault proxy on a loaded machine may take a minute to join
/// its group and fetch; a run that is done returns at once).
/// Returns the member's log lines.
pub async fn run_until_final(member: &mut Command, lake: &Path, classes: usize) -> Vec<String> {
    run_until_final_within(member, lake, classes, Duration::from_secs(150)).await
}

/// [`run_until_final`] with a deadline of the test's own.
pub async fn run_until_final_within(
    member: &mut Command,
    lake: &Path,
    classes: usize,
    within: Duration,
) -> Vec<String> {
    let mut running = Running::start(member);
    let path = lake.to_owned();
    let (running, finals, exited) = tokio::task::spawn_blocking(move || {
        let answer = poll_until(within, || match final_classes(&path) {
            summaries if summaries >= classes => Ok((summaries, None)),
            summaries => match running.child.try_wait().unwrap() {
                Some(status) => Ok((summaries, Some(status))),
                None => Err(summaries),
            },
        });
        let (finals, exited) = answer.unwrap_or_else(|summaries| (summaries, None));
        (running, finals, exited)
    })
    .await
    .unwrap();
    if let Some(status) = exited {
        let (_, _, logs) = running.wait(Duration::from_secs(5));
        panic!(
            "classpulse exited ({status}) with {finals} of {classes} classes final; log:\n{}",
            logs.join("\n")
        );
    }
    let (_, logs) = drain(running).await;
    assert_eq!(
        finals,
        classes,
        "final classes within {within:?}; log:\n{}",
        logs.join("\n")
    );
    logs
}
