//! `loadtest run`: starts 1..N classpulse processes on the topic, produces (live, or first as
//! a backlog), samples every process's `/metrics` and the servers' CPU each second, waits
//! until every class is final and every partition caught up, drains classpulse with SIGTERM,
//! verifies, and writes the report.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::TryStreamExt;
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::model::WorkloadArgs;
use crate::produce::{PaceArgs, TargetArgs};
use crate::report::{Report, Sample};
use crate::verify::{self, OutputArgs};

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub pace: PaceArgs,
    /// classpulse processes (one consumer group, or one Kinesis application).
    #[arg(long, default_value_t = 1)]
    pub instances: u32,
    /// Produce everything first, then start classpulse (measures draining a backlog).
    #[arg(long)]
    pub backlog: bool,
    /// The classpulse binary. Default: the one beside this binary.
    #[arg(long)]
    pub classpulse: Option<PathBuf>,
    /// Directory for the manifest, the logs and the report.
    #[arg(long, default_value = "loadtest-out")]
    pub out: PathBuf,
    /// Where classpulse writes: `file://DIR` (default: OUT/lake) or `s3://bucket/prefix`.
    #[arg(long)]
    pub lake: Option<String>,
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    #[arg(long)]
    pub dynamodb_endpoint: Option<String>,
    /// classpulse's events table (created by `classpulse tables create`), checked by verify.
    #[arg(long)]
    pub events_table: Option<String>,
    /// classpulse's aggregates table.
    #[arg(long)]
    pub aggregates_table: Option<String>,
    /// A members table (created by `classpulse tables create`) the load test fills with the
    /// run's profiles, for classpulse to read; default: the profiles as OUT/members.ndjson,
    /// `CLASSPULSE_MEMBERS_FILE`.
    #[arg(long)]
    pub members_table: Option<String>,
    /// Extra classpulse settings, `NAME=VALUE` (repeatable).
    #[arg(long = "env", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// classpulse's CLASSPULSE_CLASS_IDLE_TIMEOUT for the run (the last classes become final
    /// this long after their last event; it must exceed --fast-clock-ms).
    #[arg(long, default_value = "4m")]
    pub idle_timeout: String,
    /// classpulse's CLASSPULSE_AGG_FLUSH_INTERVAL (live values).
    #[arg(long, default_value = "1s")]
    pub flush_interval: String,
    #[command(flatten)]
    pub walls: crate::walls::WallsArgs,
    /// Give up waiting for classpulse after this long once producing ends.
    #[arg(long, default_value_t = 1800)]
    pub timeout_secs: u64,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {text:?}"))
}

/// One classpulse process.
struct Instance {
    child: Child,
    metrics_url: String,
}

/// The Prometheus text of one scrape, summed over label sets by metric name.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Scrape {
    pub values: HashMap<String, f64>,
    /// `classpulse_end_to_end_latency_seconds` buckets per sink: (le, cumulative count).
    pub latency_buckets: BTreeMap<String, Vec<(f64, f64)>>,
    /// `classpulse_source_message_age_seconds` buckets, summed over sources.
    pub message_age_buckets: Vec<(f64, f64)>,
}

impl Scrape {
    /// A metric summed over its label sets (0 if absent).
    pub fn value(&self, name: &str) -> f64 {
        self.values.get(name).copied().unwrap_or(0.0)
    }
}

fn parse_metrics(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        let label = |key: &str| {
            series
                .split(&format!("{key}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .map(str::to_owned)
        };
        let le = label("le").map(|le| {
            if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            }
        });
        if name == "classpulse_end_to_end_latency_seconds_bucket" {
            if let (Some(sink), Some(le)) = (label("sink"), le) {
                scrape
                    .latency_buckets
                    .entry(sink)
                    .or_default()
                    .push((le, value));
            }
        }
        if name == "classpulse_source_message_age_seconds_bucket" {
            if let Some(le) = le {
                add_bucket(&mut scrape.message_age_buckets, le, value);
            }
        }
        *scrape.values.entry(name.to_owned()).or_default() += value;
        // Keep the per-table split of DynamoDB counters too.
        if name.starts_with("classpulse_dynamodb_write_units") {
            *scrape.values.entry(series.to_owned()).or_default() += value;
        }
    }
    scrape
}

/// Adds `count` to the cumulative bucket `le` (kept in order of `le`).
pub fn add_bucket(buckets: &mut Vec<(f64, f64)>, le: f64, count: f64) {
    match buckets.iter_mut().find(|(bound, _)| *bound == le) {
        Some(bucket) => bucket.1 += count,
        None => {
            buckets.push((le, count));
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
    }
}

pub async fn scrape(client: &reqwest::Client, url: &str) -> Option<Scrape> {
    let response = client
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    Some(parse_metrics(&response.text().await.ok()?))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn classpulse_binary(args: &RunArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.classpulse {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("no directory")?.join("classpulse");
    anyhow::ensure!(
        path.exists(),
        "no classpulse binary at {} (build it, or pass --classpulse)",
        path.display()
    );
    Ok(path)
}

fn start_instance(
    args: &RunArgs,
    binary: &PathBuf,
    lake: &str,
    group: &str,
    n: u32,
) -> anyhow::Result<Instance> {
    let port = free_port()?;
    let w = &args.workload;
    let log = std::fs::File::create(args.out.join(format!("classpulse-{n}.log")))?;
    let mut command = Command::new(binary);
    command
        .arg("run")
        .env("CLASSPULSE_SOURCE", &args.target.target)
        .env("CLASSPULSE_LAKE_URL", lake)
        .env("CLASSPULSE_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("CLASSPULSE_LOG_FORMAT", "json")
        .env("CLASSPULSE_PROGRESS_INTERVAL", "0s")
        .env("CLASSPULSE_CLASS_IDLE_TIMEOUT", &args.idle_timeout)
        .env("CLASSPULSE_AGG_FLUSH_INTERVAL", &args.flush_interval)
        .env("CLASSPULSE_LAKE_MAX_AGE", "10s")
        .env("CLASSPULSE_AGG_CHECKPOINT_INTERVAL", "5s")
        .env("CLASSPULSE_COMMIT_INTERVAL", "2s")
        .env("CLASSPULSE_HR_MAX_BPM", w.hr_max_bpm.to_string())
        .env("CLASSPULSE_HR_MAX_GAP", format!("{}ms", w.hr_max_gap_ms))
        .env(
            "CLASSPULSE_HR_MAX_RAISE_AFTER",
            format!("{}ms", w.hr_max_raise_after_ms),
        )
        .env(
            "CLASSPULSE_WATERMARK_DELAY",
            format!("{}ms", w.watermark_delay_ms),
        )
        .env(
            "CLASSPULSE_ALLOWED_LATENESS",
            format!("{}ms", w.allowed_lateness_ms),
        )
        .env(
            "CLASSPULSE_MAX_CLOCK_SKEW",
            format!("{}ms", w.max_clock_skew_ms),
        )
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    match args.target.target.as_str() {
        "kafka" => {
            command
                .env("CLASSPULSE_KAFKA_BROKERS", &args.target.brokers)
                .env("CLASSPULSE_KAFKA_TOPICS", &args.target.topic)
                .env("CLASSPULSE_KAFKA_GROUP_ID", group);
        }
        _ => {
            command
                .env("CLASSPULSE_KINESIS_STREAM", &args.target.topic)
                .env("CLASSPULSE_KINESIS_ENDPOINT", &args.target.kinesis_endpoint)
                .env("CLASSPULSE_KINESIS_APP_NAME", group);
        }
    }
    for (name, value) in [
        ("CLASSPULSE_S3_ENDPOINT", &args.s3_endpoint),
        ("CLASSPULSE_DYNAMODB_ENDPOINT", &args.dynamodb_endpoint),
        ("CLASSPULSE_DYNAMODB_EVENTS_TABLE", &args.events_table),
        (
            "CLASSPULSE_DYNAMODB_AGGREGATES_TABLE",
            &args.aggregates_table,
        ),
        ("CLASSPULSE_DYNAMODB_MEMBERS_TABLE", &args.members_table),
    ] {
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    if args.members_table.is_none() {
        command.env("CLASSPULSE_MEMBERS_FILE", args.out.join("members.ndjson"));
    }
    // Local servers take any credentials; real AWS ones come from the environment.
    for (name, value) in [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ] {
        if std::env::var_os(name).is_none() {
            command.env(name, value);
        }
    }
    if args.walls.walls {
        command
            .env("CLASSPULSE_LIVE_TOPIC", &args.walls.live_topic)
            .env("CLASSPULSE_LIVE_INTERVAL", &args.walls.live_interval)
            .env("CLASSPULSE_LIVE_TILE_KEY", crate::walls::TILE_KEY);
    }
    for (name, value) in &args.env {
        command.env(name, value);
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    Ok(Instance {
        child,
        metrics_url: format!("http://127.0.0.1:{port}/metrics"),
    })
}

/// CPU seconds (user + system) of a process, from /proc.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The local servers' processes by name (from their command lines), for the saturation report.
fn server_pids() -> Vec<(String, u32)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        for (needle, name) in [
            ("tansu", "Kafka broker (tansu)"),
            ("DynamoDBLocal", "DynamoDB Local"),
            ("s3s-fs", "S3 server (s3s-fs)"),
            ("kinesalite", "Kinesis server (kinesalite)"),
        ] {
            if cmdline.contains(needle) && !found.iter().any(|(n, _)| n == name) {
                found.push((name.to_owned(), pid));
            }
        }
    }
    found
}

/// Puts the profiles of every member the run seats where classpulse reads them: the members
/// table, or OUT/members.ndjson (`CLASSPULSE_MEMBERS_FILE`).
async fn write_profiles(args: &RunArgs) -> anyhow::Result<()> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let plan = crate::model::Plan::new(&args.workload, args.pace.plan_speedup(), now_ms)?;
    let profiles = plan.profiles_ndjson();
    let path = args.out.join("members.ndjson");
    std::fs::write(&path, &profiles)?;
    let Some(table) = &args.members_table else {
        return Ok(());
    };
    use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
    let client = crate::dynamodb_client(args.dynamodb_endpoint.as_deref()).await;
    let mut requests = Vec::new();
    for line in profiles.lines() {
        let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)?;
        let item = fields
            .into_iter()
            .map(|(name, value)| {
                let value = match value {
                    serde_json::Value::String(text) => AttributeValue::S(text),
                    serde_json::Value::Bool(flag) => AttributeValue::Bool(flag),
                    number => AttributeValue::N(number.to_string()),
                };
                (name, value)
            })
            .collect();
        let put = PutRequest::builder().set_item(Some(item)).build()?;
        requests.push(WriteRequest::builder().put_request(put).build());
    }
    let count = requests.len();
    for chunk in requests.chunks(25) {
        let mut pending = chunk.to_vec();
        while !pending.is_empty() {
            let output = client
                .batch_write_item()
                .request_items(table, pending)
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "writing profiles to {table}: {}",
                        aws_sdk_dynamodb::error::DisplayErrorContext(e)
                    )
                })?;
            pending = output
                .unprocessed_items
                .and_then(|mut tables| tables.remove(table))
                .unwrap_or_default();
        }
    }
    eprintln!("{count} member profiles in {table}");
    Ok(())
}

/// Runs the whole load test; returns whether verify was clean.
pub async fn run(mut args: RunArgs) -> anyhow::Result<bool> {
    std::fs::create_dir_all(&args.out)?;
    let out = std::fs::canonicalize(&args.out)?;
    args.out = out.clone();
    let lake = args
        .lake
        .clone()
        .unwrap_or_else(|| format!("file://{}", out.join("lake").display()));
    let binary = classpulse_binary(&args)?;
    let group = format!("loadtest-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S"));
    let servers = server_pids();
    let servers_cpu0: Vec<f64> = servers
        .iter()
        .map(|(_, pid)| cpu_seconds(*pid).unwrap_or(0.0))
        .collect();
    let started = Instant::now();

    let mut instances = Vec::new();
    let start_all = |instances: &mut Vec<Instance>| -> anyhow::Result<()> {
        for n in 0..args.instances {
            instances.push(start_instance(&args, &binary, &lake, &group, n)?);
        }
        Ok(())
    };

    let http = reqwest::Client::new();
    write_profiles(&args).await?;
    let observer = Arc::new(if args.walls.walls {
        crate::produce::Observer::with_deliveries()
    } else {
        crate::produce::Observer::default()
    });
    let walls = if args.walls.walls {
        anyhow::ensure!(
            args.target.target == "kafka",
            "--walls needs --target kafka (the live records go to a Kafka topic)"
        );
        let live = TargetArgs {
            topic: args.walls.live_topic.clone(),
            ..args.target.clone()
        };
        crate::produce::create_topic(&live).await?;
        let plan = crate::model::Plan::new(
            &args.workload,
            args.pace.plan_speedup(),
            chrono::Utc::now().timestamp_millis(),
        )?;
        let studios: std::collections::BTreeSet<String> =
            plan.classes.iter().map(|c| c.studio_id.clone()).collect();
        let running = crate::walls::Running::start(
            &binary,
            &out,
            &args.target.brokers,
            &args.walls,
            args.target.partitions,
            studios.into_iter().collect(),
        )
        .await?;
        eprintln!(
            "screen server on {}, {} walls open",
            running.screens.addr, running.walls.studios
        );
        Some(running)
    } else {
        None
    };
    if !args.backlog {
        crate::produce::prepare(&args.target).await?;
        start_all(&mut instances)?;
        wait_owned(&http, &instances, args.target.partitions).await;
    }
    let producing = {
        let (workload, target, pace) = (args.workload.clone(), args.target.clone(), args.pace);
        let observer = Arc::clone(&observer);
        tokio::spawn(async move {
            crate::produce::produce(&workload, &target, pace, false, Some(observer)).await
        })
    };
    let stop_watching = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = lake.strip_prefix("file://").map(|dir| {
        let live = PathBuf::from(dir).join("aggregates/live");
        let (observer, stop) = (Arc::clone(&observer), Arc::clone(&stop_watching));
        tokio::task::spawn_blocking(move || watch_live(&live, &observer, &stop))
    });
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let mut produced = None;
    let mut produce_task = Some(producing);
    let mut last = Vec::new();
    let mut drain_started = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(task) = &produce_task {
            if task.is_finished() {
                let (manifest, sends) = produce_task.take().context("task")?.await??;
                eprintln!("produced in {:.1} s", started.elapsed().as_secs_f64());
                produced = Some((manifest, sends, started.elapsed()));
                if args.backlog {
                    drain_started = Some(started.elapsed().as_secs_f64());
                    start_all(&mut instances)?;
                }
            }
        }
        let mut sample = Sample {
            t: started.elapsed().as_secs_f64(),
            ..Sample::default()
        };
        let mut scrapes = Vec::new();
        for instance in &instances {
            if let Some(scrape) = scrape(&http, &instance.metrics_url).await {
                sample.events_in += scrape.value("classpulse_events_in_total");
                sample.lag_messages += scrape.value("classpulse_source_lag_messages");
                sample.lag_seconds = sample
                    .lag_seconds
                    .max(scrape.value("classpulse_source_lag_seconds"));
                sample.cpu_seconds += scrape.value("classpulse_process_cpu_seconds_total");
                sample.rss_bytes += scrape.value("classpulse_process_resident_memory_bytes");
                sample.open_fds += scrape.value("classpulse_process_open_fds");
                scrapes.push(scrape);
            }
        }
        let read: f64 = scrapes
            .iter()
            .filter_map(|s| s.values.get("classpulse_messages_in_total"))
            .sum();
        sample.backlog_messages =
            (observer.messages.load(std::sync::atomic::Ordering::Relaxed) as f64 - read).max(0.0);
        samples
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .push(sample.clone());
        if !scrapes.is_empty() {
            last = scrapes;
        }
        if let Some((manifest, _, produced_after)) = &produced {
            let (store, prefix) = verify::open_lake(&output_args(&args, &lake))?;
            let path = if prefix.is_empty() {
                object_store::path::Path::from("aggregates/classes")
            } else {
                object_store::path::Path::from(format!("{prefix}/aggregates/classes"))
            };
            let listed: Vec<_> = store
                .list(Some(&path))
                .try_collect()
                .await
                .unwrap_or_default();
            let names: std::collections::HashSet<String> = listed
                .iter()
                .filter_map(|o| {
                    o.location
                        .filename()
                        .map(|f| f.trim_end_matches(".json").to_owned())
                })
                .collect();
            let final_classes = manifest
                .expected
                .classes
                .keys()
                .filter(|key| names.contains(&key.replacen(':', "-", 1)))
                .count();
            let waiting = manifest.expected.classes.len() - final_classes;
            // Nothing left to read by the loadtest's own count (classpulse's lag metric reads the
            // broker's watermarks, which tansu reports wrong).
            if waiting == 0 && sample.backlog_messages == 0.0 {
                break;
            }
            if started.elapsed() > *produced_after + Duration::from_secs(args.timeout_secs) {
                eprintln!(
                    "gave up waiting: {waiting} classes not final, lag {}",
                    sample.lag_messages
                );
                break;
            }
        }
    }
    let caught_up = started.elapsed();
    if let (Some(walls), Some((manifest, _, _))) = (&walls, &produced) {
        walls
            .wait_finals(manifest.expected.classes.len(), Duration::from_secs(60))
            .await;
    }
    // Drain: SIGTERM each, wait for it to exit.
    let mut exits = Vec::new();
    for instance in &mut instances {
        if let Some(pid) = instance.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
    }
    for instance in &mut instances {
        let status = tokio::time::timeout(Duration::from_secs(60), instance.child.wait()).await;
        exits.push(format!("{status:?}"));
    }
    stop_watching.store(true, std::sync::atomic::Ordering::Relaxed);
    let visible_latency = match watcher {
        Some(task) => task.await?,
        None => None,
    };
    let servers_cpu: Vec<(String, f64)> = servers
        .iter()
        .zip(servers_cpu0)
        .map(|((name, pid), before)| (name.clone(), cpu_seconds(*pid).unwrap_or(before) - before))
        .collect();
    let (manifest, sends, produced_after) = produced.context("producing did not finish")?;
    let walls = match walls {
        Some(walls) => {
            // Wall-clock seconds of classes (event time runs --speedup times faster).
            let speedup = args.pace.plan_speedup();
            let class_seconds =
                manifest.classes as f64 * f64::from(args.workload.class_minutes) * 60.0
                    / if speedup > 0.0 { speedup } else { 1.0 };
            Some(
                walls
                    .finish(&observer, &args.walls.live_interval, class_seconds)
                    .await?,
            )
        }
        None => None,
    };
    manifest.write(&out)?;
    sends.write(&out)?;
    let output = output_args(&args, &lake);
    let verdict = verify::verify_with(&manifest, Some(&sends), &output).await?;
    verdict.print();
    let samples = samples
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let report = Report {
        args: &args,
        manifest: &manifest,
        verdict: &verdict,
        samples: &samples,
        last_scrapes: &last,
        produced_seconds: produced_after.as_secs_f64(),
        caught_up_seconds: caught_up.as_secs_f64(),
        drain_started,
        servers_cpu,
        exits,
        visible_latency,
        walls: walls.as_ref(),
    };
    let path = report.write(&out)?;
    eprintln!("report: {}", path.display());
    Ok(verdict.clean())
}

/// Waits (at most 2 minutes) until the instances own every partition between them, so that
/// latencies measure classpulse, not the consumer group's first join.
async fn wait_owned(http: &reqwest::Client, instances: &[Instance], partitions: u32) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let mut owned = 0.0;
        for instance in instances {
            if let Some(scrape) = scrape(http, &instance.metrics_url).await {
                owned += scrape.value("classpulse_source_leases_held");
            }
        }
        if owned >= f64::from(partitions) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "classpulse did not own all {partitions} partitions within 2 minutes; producing anyway"
    );
}

/// Watches the live documents of a local lake until `stop`: each time a class's document is
/// rewritten with more events counted, those events (the next ones the class sent) became
/// visible at the document's write time. Returns ms from send to visible, per event.
fn watch_live(
    dir: &std::path::Path,
    observer: &crate::produce::Observer,
    stop: &std::sync::atomic::AtomicBool,
) -> Option<hdrhistogram::Histogram<u64>> {
    use std::sync::atomic::Ordering;
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3).ok()?;
    let mut seen: HashMap<PathBuf, (std::time::SystemTime, usize)> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            let before = seen.get(&path).copied();
            if before.is_some_and(|(time, _)| time == modified) {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            let summary = &doc["summary"];
            let counted: u64 = summary["events"]
                .as_object()
                .map_or(0, |o| o.values().filter_map(|v| v.as_u64()).sum());
            let key = format!(
                "{}:{}",
                summary["studio_id"].as_str().unwrap_or(""),
                summary["class_id"].as_str().unwrap_or("")
            );
            let visible_ms = modified
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let started_ms = observer.started_ms.load(Ordering::Relaxed);
            let from = before.map_or(0, |(_, n)| n);
            let Ok(classes) = observer.class_sends.lock() else {
                continue;
            };
            let Some(times) = classes.get(&key) else {
                continue;
            };
            let to = (counted as usize).min(times.len());
            for sent in times.get(from..to).unwrap_or(&[]) {
                let _ =
                    histogram.record((visible_ms - started_ms - i64::from(*sent)).max(0) as u64);
            }
            seen.insert(path, (modified, to.max(from)));
        }
    }
    (!histogram.is_empty()).then_some(histogram)
}

fn output_args(args: &RunArgs, lake: &str) -> OutputArgs {
    OutputArgs {
        lake: lake.to_owned(),
        s3_endpoint: args.s3_endpoint.clone(),
        dynamodb_endpoint: args.dynamodb_endpoint.clone(),
        events_table: args.events_table.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_sum_over_labels_and_keep_latency_buckets() {
        let text = "# TYPE x counter\n\
            classpulse_events_in_total{partition=\"0\"} 5\n\
            classpulse_events_in_total{partition=\"1\"} 7\n\
            classpulse_end_to_end_latency_seconds_bucket{sink=\"lake\",le=\"0.5\"} 3\n\
            classpulse_end_to_end_latency_seconds_bucket{sink=\"lake\",le=\"+Inf\"} 4\n";
        let scrape = parse_metrics(text);
        assert_eq!(scrape.values["classpulse_events_in_total"], 12.0);
        assert_eq!(
            scrape.latency_buckets["lake"],
            vec![(0.5, 3.0), (f64::INFINITY, 4.0)]
        );
    }
}
