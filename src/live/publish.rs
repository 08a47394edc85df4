//! Where the aggregate stage puts live records: the live topic (`CLASSPULSE_LIVE_TOPIC`), the
//! live stream (`CLASSPULSE_LIVE_STREAM`, PutRecords), or, in the embedded default, the board
//! its own screens serve.
//!
//! A wall shows a view, so the pipeline never waits on it: each class has at most one record
//! waiting and one in flight (so a class's records reach the topic or stream in version
//! order), and a newer record replaces an unsent one
//! (`classpulse_live_records_superseded_total`). Memory stays at two records a class however
//! long the broker is away. Only a class's final record is waited for
//! ([`Publisher::publish_final`]): the stage's writer sends it after the checkpoint that
//! records it and goes on once the broker has it, so a crash cannot lose it (a restore sends it
//! again).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::board::Board;
use super::record::{LiveRecord, Version};
use crate::config::KafkaConfig;
use crate::health::Health;
use crate::kafka::{self, MskIam, TokenContext};
use crate::metrics;

/// How long a failed send waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// A record waiting to be sent, or in flight.
struct Entry {
    version: Version,
    body: Bytes,
    /// Told once the broker has this version or a newer one of the class.
    waiters: Vec<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Queue {
    waiting: HashMap<Arc<str>, Entry>,
    /// Classes with a record in flight.
    in_flight: HashSet<Arc<str>>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts `entry` in the class's place unless a newer record waits there: the older of the
    /// two is superseded (its waiters wait on the newer).
    fn enqueue(&self, key: Arc<str>, mut entry: Entry) {
        let mut queue = self.lock();
        match queue.waiting.get_mut(&key) {
            Some(waiting) if waiting.version >= entry.version => {
                waiting.waiters.append(&mut entry.waiters);
                if waiting.version > entry.version {
                    metrics::record_live_superseded(1);
                }
            }
            Some(waiting) => {
                entry.waiters.append(&mut waiting.waiters);
                *waiting = entry;
                metrics::record_live_superseded(1);
            }
            None => {
                queue.waiting.insert(key, entry);
            }
        }
        metrics::set_live_pending(queue.waiting.len() + queue.in_flight.len());
        drop(queue);
        self.wake.notify_one();
    }
}

/// The most records in one PutRecords call (Kinesis's limit).
const MAX_RECORDS_PER_PUT: usize = 500;
/// The most bytes of data and keys in one PutRecords call (Kinesis allows 5 MiB).
const MAX_BYTES_PER_PUT: usize = 4 << 20;

enum Target {
    /// A topic or a stream, sent by its task.
    Queue(Arc<Shared>),
    Board(Board),
}

/// Hands live records to the walls' channel (cloning shares it).
#[derive(Clone)]
pub struct Publisher {
    target: Arc<Target>,
}

impl Publisher {
    /// Records into `board` directly (the embedded default).
    pub fn board(board: Board) -> Publisher {
        Publisher {
            target: Arc::new(Target::Board(board)),
        }
    }

    /// Records to `topic` on the Kafka brokers of `config`, sent by a task that runs until
    /// `stop` (then flushes for up to 5 s).
    pub fn topic(
        config: &KafkaConfig,
        topic: &str,
        health: Health,
        msk_iam: Option<MskIam>,
        stop: CancellationToken,
    ) -> Result<Publisher, String> {
        let producer: FutureProducer<TokenContext> = kafka::live_producer_config(config)
            .create_with_context(TokenContext::new(msk_iam, health))
            .map_err(|error| format!("live topic producer: {}", kafka::redacted(&error)))?;
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            wake: Notify::new(),
        });
        tokio::spawn(send(Arc::clone(&shared), producer, topic.to_owned(), stop));
        Ok(Publisher {
            target: Arc::new(Target::Queue(shared)),
        })
    }

    /// Records to the Kinesis stream `stream` (a name or an ARN), put by a task that runs
    /// until `stop`: at most [`MAX_RECORDS_PER_PUT`] a call, partition key
    /// `studio_id:class_id`, the records a call failed put again.
    pub fn stream(
        kinesis: aws_sdk_kinesis::Client,
        stream: &str,
        stop: CancellationToken,
    ) -> Publisher {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            wake: Notify::new(),
        });
        tokio::spawn(put(Arc::clone(&shared), kinesis, stream.to_owned(), stop));
        Publisher {
            target: Arc::new(Target::Queue(shared)),
        }
    }

    /// Hands `record` over without waiting.
    pub fn publish(&self, record: &LiveRecord) {
        let (key, body) = record.encode();
        match &*self.target {
            Target::Board(board) => {
                if board.offer(Bytes::from(body), now_ms()).is_ok() {
                    metrics::record_live_records("published", 1);
                }
            }
            Target::Queue(shared) => shared.enqueue(
                key.into(),
                Entry {
                    version: record.version,
                    body: Bytes::from(body),
                    waiters: Vec::new(),
                },
            ),
        }
    }

    /// Hands `record` over and returns once the broker has it (or a newer record of its
    /// class), retrying for as long as that takes.
    pub async fn publish_final(&self, record: &LiveRecord) {
        let (key, body) = record.encode();
        match &*self.target {
            Target::Board(board) => {
                if board.offer(Bytes::from(body), now_ms()).is_ok() {
                    metrics::record_live_records("published", 1);
                }
            }
            Target::Queue(shared) => {
                let (told, delivered) = oneshot::channel();
                shared.enqueue(
                    key.into(),
                    Entry {
                        version: record.version,
                        body: Bytes::from(body),
                        waiters: vec![told],
                    },
                );
                // The sender task ends only at shutdown, dropping the waiters: nothing to wait for.
                let _ = delivered.await;
            }
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What a send came to.
struct Sent {
    key: Arc<str>,
    entry: Entry,
    delivered: bool,
}

type Delivery = std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Sent>> + Send>>;

/// Takes what a send came to: a delivered record tells its waiters, a failed one waits again.
fn settle(shared: &Shared, sent: Vec<Sent>) {
    for sent in sent {
        let mut queue = shared.lock();
        queue.in_flight.remove(&sent.key);
        if sent.delivered {
            metrics::record_live_records("published", 1);
            for waiter in sent.entry.waiters {
                let _ = waiter.send(());
            }
            metrics::set_live_pending(queue.waiting.len() + queue.in_flight.len());
        } else {
            metrics::record_live_records("failed", 1);
            drop(queue);
            shared.enqueue(sent.key, sent.entry);
        }
    }
}

/// Sends each class's waiting record once none of the class is in flight. A failed send is
/// held for [`RETRY_AFTER`], then waits again (behind a newer record of its class, if one came).
async fn send(
    shared: Arc<Shared>,
    producer: FutureProducer<TokenContext>,
    topic: String,
    stop: CancellationToken,
) {
    let mut deliveries: FuturesUnordered<Delivery> = FuturesUnordered::new();
    loop {
        for (key, entry) in take_ready(&shared) {
            let record = FutureRecord::to(&topic)
                .key(&*key)
                .payload(&entry.body[..])
                .timestamp(now_ms());
            let delivery: Delivery = match producer.send_result(record) {
                Ok(delivery) => Box::pin(async move {
                    let delivered = matches!(delivery.await, Ok(Ok(_)));
                    if !delivered {
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                    vec![Sent {
                        key,
                        entry,
                        delivered,
                    }]
                }),
                // librdkafka's queue is full, or the producer failed.
                Err((error, _)) => {
                    tracing::debug!(error = %error, "live record not queued");
                    Box::pin(async move {
                        tokio::time::sleep(RETRY_AFTER).await;
                        vec![Sent {
                            key,
                            entry,
                            delivered: false,
                        }]
                    })
                }
            };
            deliveries.push(delivery);
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            Some(sent) = deliveries.next() => settle(&shared, sent),
            _ = stop.cancelled() => break,
        }
    }
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
}

/// Puts each class's waiting record once none of the class is in flight, in calls of up to
/// [`MAX_RECORDS_PER_PUT`] records. The records a call failed (throttled, or the call itself)
/// are held for [`RETRY_AFTER`], then wait again.
async fn put(
    shared: Arc<Shared>,
    kinesis: aws_sdk_kinesis::Client,
    stream: String,
    stop: CancellationToken,
) {
    let mut calls: FuturesUnordered<Delivery> = FuturesUnordered::new();
    loop {
        for chunk in put_calls(take_ready(&shared)) {
            calls.push(Box::pin(put_records(
                kinesis.clone(),
                stream.clone(),
                chunk,
            )));
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            Some(sent) = calls.next() => settle(&shared, sent),
            _ = stop.cancelled() => break,
        }
    }
    // What is in flight is given 5 s to land.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(sent) = calls.next().await {
            settle(&shared, sent);
        }
    })
    .await;
}

/// `ready` in calls within Kinesis's limits of records and bytes.
fn put_calls(ready: Vec<(Arc<str>, Entry)>) -> Vec<Vec<(Arc<str>, Entry)>> {
    let mut calls: Vec<Vec<(Arc<str>, Entry)>> = Vec::new();
    let mut bytes = 0;
    for (key, entry) in ready {
        let size = key.len() + entry.body.len();
        match calls.last_mut() {
            Some(call) if call.len() < MAX_RECORDS_PER_PUT && bytes + size <= MAX_BYTES_PER_PUT => {
                bytes += size;
                call.push((key, entry));
            }
            _ => {
                bytes = size;
                calls.push(vec![(key, entry)]);
            }
        }
    }
    calls
}

/// One PutRecords call; each record says whether it landed.
async fn put_records(
    kinesis: aws_sdk_kinesis::Client,
    stream: String,
    records: Vec<(Arc<str>, Entry)>,
) -> Vec<Sent> {
    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::PutRecordsRequestEntry;
    let entries: Vec<PutRecordsRequestEntry> = records
        .iter()
        .map(|(key, entry)| {
            PutRecordsRequestEntry::builder()
                .partition_key(&**key)
                .data(Blob::new(entry.body.to_vec()))
                .build()
                .expect("the key and data are set")
        })
        .collect();
    let request = kinesis.put_records().set_records(Some(entries));
    let request = if stream.starts_with("arn:") {
        request.stream_arn(&stream)
    } else {
        request.stream_name(&stream)
    };
    let landed: Vec<bool> = match request.send().await {
        Ok(output) => {
            let results = output.records();
            (0..records.len())
                .map(|i| results.get(i).is_some_and(|r| r.error_code().is_none()))
                .collect()
        }
        Err(error) => {
            tracing::debug!(error = %aws_sdk_kinesis::error::DisplayErrorContext(&error), "live records not put");
            vec![false; records.len()]
        }
    };
    if landed.iter().any(|landed| !landed) {
        tokio::time::sleep(RETRY_AFTER).await;
    }
    records
        .into_iter()
        .zip(landed)
        .map(|((key, entry), delivered)| Sent {
            key,
            entry,
            delivered,
        })
        .collect()
}

/// The waiting records of classes with nothing in flight, now in flight.
fn take_ready(shared: &Shared) -> Vec<(Arc<str>, Entry)> {
    let mut queue = shared.lock();
    let keys: Vec<Arc<str>> = queue
        .waiting
        .keys()
        .filter(|key| !queue.in_flight.contains(*key))
        .cloned()
        .collect();
    keys.into_iter()
        .filter_map(|key| {
            let entry = queue.waiting.remove(&key)?;
            queue.in_flight.insert(Arc::clone(&key));
            Some((key, entry))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(position: u64, waiters: Vec<oneshot::Sender<()>>) -> Entry {
        Entry {
            version: Version(0, position),
            body: Bytes::from(position.to_string()),
            waiters,
        }
    }

    #[test]
    fn a_class_has_one_record_waiting_and_one_in_flight_the_newest_waiting() {
        let shared = Shared {
            queue: Mutex::default(),
            wake: Notify::new(),
        };
        let key: Arc<str> = "s1:c1".into();
        shared.enqueue(Arc::clone(&key), entry(10, Vec::new()));
        // An older record (a replay) is dropped; whoever waits on it waits on the newer.
        let (told, _delivered) = oneshot::channel();
        shared.enqueue(Arc::clone(&key), entry(8, vec![told]));
        shared.enqueue(Arc::clone(&key), entry(12, Vec::new()));
        shared.enqueue("s1:c2".into(), entry(3, Vec::new()));
        let mut ready = take_ready(&shared);
        ready.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(ready.len(), 2);
        assert_eq!(ready[0].1.version, Version(0, 12));
        assert_eq!(
            ready[0].1.waiters.len(),
            1,
            "the waiter moved to the newest"
        );
        // In flight: the next record of c1 waits, and only the newest of them.
        shared.enqueue(Arc::clone(&key), entry(14, Vec::new()));
        shared.enqueue(Arc::clone(&key), entry(16, Vec::new()));
        assert!(take_ready(&shared).is_empty());
        let queue = shared.lock();
        assert_eq!(queue.waiting.len(), 1);
        assert_eq!(queue.waiting[&key].version, Version(0, 16));
    }

    #[test]
    fn puts_are_cut_at_500_records_and_at_4_mib() {
        let many: Vec<(Arc<str>, Entry)> = (0..1_201)
            .map(|i| (Arc::from(format!("s1:c{i}")), entry(i, Vec::new())))
            .collect();
        let sizes: Vec<usize> = put_calls(many).iter().map(Vec::len).collect();
        assert_eq!(sizes, [500, 500, 201]);
        let big = |i: u64| Entry {
            version: Version(0, i),
            body: Bytes::from(vec![b'x'; 1 << 20]),
            waiters: Vec::new(),
        };
        let large: Vec<(Arc<str>, Entry)> = (0..9)
            .map(|i| (Arc::from(format!("s1:c{i}")), big(i)))
            .collect();
        let sizes: Vec<usize> = put_calls(large).iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            [3, 3, 3],
            "three 1 MiB records and their keys a call"
        );
    }
}
