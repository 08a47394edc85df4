//! Sending the workload to a real broker: Kafka (rdkafka, compressed, idempotent, keyed by
//! class) or Kinesis (PutRecords, 500 records a call, partition key the class), paced by
//! event time or a fixed rate, with a progress bar; then the manifest of what was sent.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde::{Deserialize, Serialize};

use crate::expect::Expected;
use crate::model::{Message, Plan, WorkloadArgs};

/// Where the workload goes.
#[derive(clap::Args, Debug, Clone, Serialize, Deserialize)]
pub struct TargetArgs {
    /// `kafka` or `kinesis`.
    #[arg(long, default_value = "kafka")]
    pub target: String,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Kafka topic or Kinesis stream (created if missing).
    #[arg(long, default_value = "performance-events")]
    pub topic: String,
    /// Partitions of a created topic, shards of a created stream.
    #[arg(long, default_value_t = 12)]
    pub partitions: u32,
    /// Kafka producer compression (`lz4`, `gzip`, `none`).
    #[arg(long, default_value = "lz4")]
    pub compression: String,
    /// Kinesis endpoint (local server).
    #[arg(long, default_value = "http://127.0.0.1:4567")]
    pub kinesis_endpoint: String,
}

/// How fast to send.
#[derive(clap::Args, Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PaceArgs {
    /// Event time runs this many times faster than the wall clock (1: real time; 0: as fast as
    /// the broker takes it).
    #[arg(long, default_value_t = 0.0)]
    pub speedup: f64,
    /// Send this many events a second instead (overrides --speedup).
    #[arg(long)]
    pub rate: Option<f64>,
}

impl PaceArgs {
    /// The speedup the plan assumes for event times (a fixed rate is treated as unpaced).
    pub fn plan_speedup(&self) -> f64 {
        if self.rate.is_some() {
            0.0
        } else {
            self.speedup
        }
    }
}

/// What was sent, written next to the expectations.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub workload: WorkloadArgs,
    pub target: TargetArgs,
    pub pace: PaceArgs,
    pub run_id: u32,
    pub classes: usize,
    pub valid_events: u64,
    pub peak_concurrent_classes: usize,
    pub messages: u64,
    pub events_sent: u64,
    pub bytes_sent: u64,
    /// Wall clock of the first and last send, epoch ms.
    pub started_ms: i64,
    pub finished_ms: i64,
    pub expected: Expected,
}

impl Manifest {
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("manifest.json.zst");
        let file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut encoder = zstd::Encoder::new(file, 3)?.auto_finish();
        serde_json::to_writer(&mut encoder, self)?;
        Ok(path)
    }

    pub fn read(dir: &Path) -> anyhow::Result<Manifest> {
        let path = dir.join("manifest.json.zst");
        let file =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(serde_json::from_reader(zstd::Decoder::new(file)?)?)
    }
}

/// When each valid event was first sent, ms after the first send (`u32::MAX`: never), kept
/// beside the manifest for the latency report.
pub struct SendTimes(pub Vec<u32>);

impl SendTimes {
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let bytes: Vec<u8> = self.0.iter().flat_map(|t| t.to_le_bytes()).collect();
        std::fs::write(
            dir.join("sends.u32le.zst"),
            zstd::encode_all(&bytes[..], 3)?,
        )?;
        Ok(())
    }

    pub fn read(dir: &Path) -> anyhow::Result<SendTimes> {
        let bytes = zstd::decode_all(std::fs::File::open(dir.join("sends.u32le.zst"))?)?;
        Ok(SendTimes(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ))
    }
}

/// What a running load test watches while producing: messages sent so far, and per class
/// the send times (ms after the first send) of the events its aggregates count, in order.
#[derive(Default)]
pub struct Observer {
    pub messages: AtomicU64,
    pub started_ms: std::sync::atomic::AtomicI64,
    pub class_sends: std::sync::Mutex<std::collections::HashMap<String, Vec<u32>>>,
    /// With walls (Kafka only): per class, where each message carrying events sent for the
    /// first time landed, for matching the live records' positions.
    pub deliveries: Option<std::sync::Mutex<std::collections::HashMap<String, Vec<Delivered>>>>,
}

impl Observer {
    /// An observer that also keeps every message's offset.
    pub fn with_deliveries() -> Observer {
        Observer {
            deliveries: Some(Default::default()),
            ..Observer::default()
        }
    }
}

/// A message the broker took: its offset, when it was sent (ms after the first send) and the
/// events it carried for the first time.
#[derive(Debug, Clone, Copy)]
pub struct Delivered {
    pub offset: i64,
    pub sent_ms: u32,
    pub events: u32,
}

/// What a delivery report is to record, carried with the message.
pub struct Sent {
    key: String,
    sent_ms: u32,
    events: u32,
}

/// Counts delivery failures (a message the broker never took is lost to the test).
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    delivered: AtomicU64,
}

struct Context {
    deliveries: Arc<Deliveries>,
    observer: Option<Arc<Observer>>,
}

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<Option<Sent>>;
    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Option<Sent>>) {
        match result {
            Ok(message) => {
                self.deliveries.delivered.fetch_add(1, Ordering::Relaxed);
                let tracked = self.observer.as_ref().and_then(|o| o.deliveries.as_ref());
                if let (Some(tracked), Some(sent)) = (tracked, *sent) {
                    if let Ok(mut classes) = tracked.lock() {
                        classes.entry(sent.key).or_default().push(Delivered {
                            offset: rdkafka::Message::offset(message),
                            sent_ms: sent.sent_ms,
                            events: sent.events,
                        });
                    }
                }
            }
            Err((error, _)) => {
                eprintln!("delivery failed: {error}");
                self.deliveries.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Sends messages one way or the other (called from the generating thread).
enum Sender {
    Kafka {
        producer: ThreadedProducer<Context>,
        topic: String,
        deliveries: Arc<Deliveries>,
    },
    Kinesis {
        tx: tokio::sync::mpsc::Sender<Message>,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    },
}

impl Sender {
    /// Sends `message`; `sent`, if given, is recorded by its delivery report.
    fn send(&mut self, message: Message, sent: Option<Sent>) -> anyhow::Result<()> {
        match self {
            Sender::Kafka {
                producer, topic, ..
            } => {
                let mut record = BaseRecord::with_opaque_to(topic.as_str(), Box::new(sent))
                    .key(&message.key)
                    .payload(&message.payload);
                loop {
                    match producer.send(record) {
                        Ok(()) => return Ok(()),
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        Err((error, _)) => return Err(error.into()),
                    }
                }
            }
            Sender::Kinesis { tx, .. } => tx
                .blocking_send(message)
                .map_err(|_| anyhow::anyhow!("the Kinesis sender stopped")),
        }
    }

    fn finish(self, runtime: &tokio::runtime::Handle) -> anyhow::Result<()> {
        match self {
            Sender::Kafka {
                producer,
                deliveries,
                ..
            } => {
                producer.flush(Duration::from_secs(120))?;
                let failed = deliveries.failed.load(Ordering::Relaxed);
                anyhow::ensure!(failed == 0, "{failed} messages were not delivered");
                Ok(())
            }
            Sender::Kinesis { tx, task } => {
                drop(tx);
                runtime.block_on(task)?
            }
        }
    }
}

/// Creates the topic or stream if missing (before consumers start, so they find every
/// partition at once rather than at their next metadata refresh).
pub async fn prepare(target: &TargetArgs) -> anyhow::Result<()> {
    match target.target.as_str() {
        "kafka" => create_topic(target).await,
        "kinesis" => {
            let client = crate::kinesis_client(&target.kinesis_endpoint).await;
            crate::kinesis::ensure_stream(&client, &target.topic, target.partitions).await
        }
        other => anyhow::bail!("--target must be kafka or kinesis, not {other:?}"),
    }
}

/// Creates the topic or stream if missing and returns a sender.
async fn connect(target: &TargetArgs, observer: Option<Arc<Observer>>) -> anyhow::Result<Sender> {
    prepare(target).await?;
    match target.target.as_str() {
        "kafka" => {
            let deliveries = Arc::new(Deliveries::default());
            let producer: ThreadedProducer<Context> = ClientConfig::new()
                .set("bootstrap.servers", &target.brokers)
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("compression.type", &target.compression)
                .set("linger.ms", "20")
                .set("batch.size", "1000000")
                .set("queue.buffering.max.kbytes", "1048576")
                .set("queue.buffering.max.messages", "1000000")
                .create_with_context(Context {
                    deliveries: Arc::clone(&deliveries),
                    observer,
                })
                .context("creating the Kafka producer")?;
            Ok(Sender::Kafka {
                producer,
                topic: target.topic.clone(),
                deliveries,
            })
        }
        "kinesis" => {
            let client = crate::kinesis_client(&target.kinesis_endpoint).await;
            let (tx, rx) = tokio::sync::mpsc::channel(10_000);
            let stream = target.topic.clone();
            let task =
                tokio::spawn(async move { crate::kinesis::put_all(&client, &stream, rx).await });
            Ok(Sender::Kinesis { tx, task })
        }
        other => anyhow::bail!("--target must be kafka or kinesis, not {other:?}"),
    }
}

/// Creates `target`'s topic if missing.
pub async fn create_topic(target: &TargetArgs) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &target.brokers)
        .create()?;
    let topic = NewTopic::new(
        &target.topic,
        target.partitions as i32,
        TopicReplication::Fixed(1),
    );
    for result in admin.create_topics([&topic], &AdminOptions::new()).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}

/// Generates and sends the workload; returns the manifest and the send times.
pub async fn produce(
    workload: &WorkloadArgs,
    target: &TargetArgs,
    pace: PaceArgs,
    progress: bool,
    observer: Option<Arc<Observer>>,
) -> anyhow::Result<(Manifest, SendTimes)> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let plan = Plan::new(workload, pace.plan_speedup(), now_ms)?;
    let (peak, peak_at) = plan.peak_concurrency();
    eprintln!(
        "{} classes, {} valid events, at most {peak} classes at once (from {}); run {:08x}",
        plan.classes.len(),
        plan.valid_events(),
        crate::model::utc_rfc3339(peak_at),
        plan.run_id
    );
    let sender = connect(target, observer.clone()).await?;
    let runtime = tokio::runtime::Handle::current();
    let target = target.clone();
    tokio::task::spawn_blocking(move || {
        send_all(plan, sender, &runtime, target, pace, progress, observer)
    })
    .await?
}

fn send_all(
    plan: Plan,
    mut sender: Sender,
    runtime: &tokio::runtime::Handle,
    target: TargetArgs,
    pace: PaceArgs,
    progress: bool,
    observer: Option<Arc<Observer>>,
) -> anyhow::Result<(Manifest, SendTimes)> {
    let total = plan.valid_events();
    let bar = if progress {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} events, {per_sec}, ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let started_ms = chrono::Utc::now().timestamp_millis();
    if let Some(observer) = &observer {
        observer.started_ms.store(started_ms, Ordering::Relaxed);
    }
    let mut sends = vec![u32::MAX; total as usize];
    let (mut messages, mut events, mut bytes, mut failure) = (0u64, 0u64, 0u64, None);
    let expected = plan.generate(|message| {
        if failure.is_some() {
            return;
        }
        // Pacing: by event time, or by a fixed rate of events.
        let due = match pace.rate {
            Some(rate) => Some(started + Duration::from_secs_f64(events as f64 / rate)),
            None => plan.wall_due_ms(message.tick_ms).map(|due_ms| {
                started + Duration::from_millis((due_ms - plan.pacing.wall_start_ms).max(0) as u64)
            }),
        };
        if let Some(due) = due {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let sent_ms = started.elapsed().as_millis() as u32;
        for index in message.first_sends.iter().chain(&message.late_sends) {
            sends[*index as usize] = sent_ms;
        }
        if let Some(observer) = &observer {
            if !message.first_sends.is_empty() {
                if let Ok(mut classes) = observer.class_sends.lock() {
                    let times = classes.entry(message.key.clone()).or_default();
                    times.extend(std::iter::repeat_n(sent_ms, message.first_sends.len()));
                }
            }
        }
        messages += 1;
        events += u64::from(message.events);
        bytes += message.payload.len() as u64;
        bar.inc((message.first_sends.len() + message.late_sends.len()) as u64);
        let sent = observer
            .as_ref()
            .filter(|o| o.deliveries.is_some() && !message.first_sends.is_empty())
            .map(|_| Sent {
                key: message.key.clone(),
                sent_ms,
                events: message.first_sends.len() as u32,
            });
        if let Err(error) = sender.send(message, sent) {
            failure = Some(error);
        }
        if let Some(observer) = &observer {
            observer.messages.fetch_add(1, Ordering::Relaxed);
        }
    });
    if let Some(error) = failure {
        return Err(error);
    }
    sender.finish(runtime)?;
    bar.finish();
    let (peak, _) = plan.peak_concurrency();
    let manifest = Manifest {
        workload: plan.args.clone(),
        target,
        pace,
        run_id: plan.run_id,
        classes: plan.classes.len(),
        valid_events: total,
        peak_concurrent_classes: peak,
        messages,
        events_sent: events,
        bytes_sent: bytes,
        started_ms,
        finished_ms: chrono::Utc::now().timestamp_millis(),
        expected,
    };
    eprintln!(
        "sent {events} events ({} retries, {} late, {} invalid) in {messages} messages, {:.1} MB, in {:.1} s ({:.0} events/s)",
        manifest.expected.retries,
        manifest.expected.late.len(),
        manifest.expected.invalid.len() + manifest.expected.rejected_valid.len(),
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        events as f64 / started.elapsed().as_secs_f64()
    );
    Ok((manifest, SendTimes(sends)))
}
