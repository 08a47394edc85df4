//! The studios' walls in a load test (`run --walls`, Kafka only): classpulse publishes live
//! records to a topic of their own, one `classpulse screens` process serves them, and one
//! Server-Sent Events stream per studio reads them as the studio's wall does. Every event is
//! followed hop by hop: from its send to the first live record whose position covers its
//! message (the record's timestamp, read off the live topic: published), from publication to
//! the wall, and from send to the wall.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message as _;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::produce::{Delivered, Observer};

/// The walls of a run.
#[derive(clap::Args, Debug, Clone)]
pub struct WallsArgs {
    /// Publish live records, serve them with `classpulse screens` and read them with one
    /// stream per studio (Kafka only).
    #[arg(long)]
    pub walls: bool,
    /// The live records' topic (created with the source topic's partition count).
    #[arg(long, default_value = "classpulse-live")]
    pub live_topic: String,
    /// classpulse's CLASSPULSE_LIVE_INTERVAL.
    #[arg(long, default_value = "1s")]
    pub live_interval: String,
}

/// The key the run's tiles are made under (any: the load test reads no tile).
pub const TILE_KEY: &str = "loadtest-tile-key";

/// What identifies a record on a wall or on the topic.
#[derive(Deserialize)]
struct Head {
    studio_id: String,
    class_id: String,
    version: (u32, u64),
    #[serde(default, rename = "final")]
    is_final: bool,
}

impl Head {
    fn key(&self) -> String {
        format!("{}:{}", self.studio_id, self.class_id)
    }
}

/// One record as a wall received it.
struct Arrival {
    key: String,
    position: u64,
    at_ms: i64,
}

/// The screen server of the run.
pub struct Screens {
    child: Child,
    pub addr: SocketAddr,
    pid: u32,
    cpu_before: f64,
}

impl Screens {
    /// Starts `classpulse screens` on the live topic (no key: walls are open on loopback) and
    /// waits until it is ready.
    pub async fn start(
        binary: &Path,
        out: &Path,
        brokers: &str,
        topic: &str,
    ) -> anyhow::Result<Screens> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let log = std::fs::File::create(out.join("screens.log"))?;
        let child = Command::new(binary)
            .arg("screens")
            .env("CLASSPULSE_KAFKA_BROKERS", brokers)
            .env("CLASSPULSE_LIVE_TOPIC", topic)
            .env("CLASSPULSE_HTTP_ADDR", addr.to_string())
            .env("CLASSPULSE_LOG_FORMAT", "json")
            .env("CLASSPULSE_SCREENS_MAX_CLIENTS", "5000")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("starting classpulse screens")?;
        let pid = child.id().context("the screen server exited at once")?;
        let screens = Screens {
            child,
            addr,
            pid,
            cpu_before: crate::run::cpu_seconds(pid).unwrap_or(0.0),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = http
                .get(format!("http://{addr}/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(screens);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the screen server was not ready within 60 s (see screens.log)"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Its CPU seconds since the start, its highest RSS and its metrics; then SIGTERM.
    pub async fn stop(mut self) -> (f64, u64, Option<crate::run::Scrape>) {
        let cpu = crate::run::cpu_seconds(self.pid).map_or(0.0, |now| now - self.cpu_before);
        let peak_rss = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
                let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kb * 1024)
            })
            .unwrap_or(0);
        let scrape = crate::run::scrape(
            &reqwest::Client::new(),
            &format!("http://{}/metrics", self.addr),
        )
        .await;
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        (cpu, peak_rss, scrape)
    }
}

/// One stream per studio, as the studios' walls.
pub struct Walls {
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    finals: Arc<Mutex<HashSet<String>>>,
    bytes: Arc<AtomicU64>,
    reconnects: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub studios: usize,
}

impl Walls {
    /// Opens a stream for each of `studios` on the screen server at `addr`.
    pub fn open(addr: SocketAddr, studios: impl IntoIterator<Item = String>) -> Walls {
        let arrivals: Arc<Mutex<Vec<Arrival>>> = Arc::default();
        let finals: Arc<Mutex<HashSet<String>>> = Arc::default();
        let bytes = Arc::new(AtomicU64::new(0));
        let reconnects = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = studios
            .into_iter()
            .map(|studio| {
                let wall = Wall {
                    addr,
                    studio,
                    arrivals: Arc::clone(&arrivals),
                    finals: Arc::clone(&finals),
                    bytes: Arc::clone(&bytes),
                };
                let reconnects = Arc::clone(&reconnects);
                tokio::spawn(async move {
                    let mut last_id = None;
                    loop {
                        if let Err(error) = wall.follow(&mut last_id).await {
                            eprintln!("wall of {}: {error:#}; reconnecting", wall.studio);
                        }
                        reconnects.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                })
            })
            .collect();
        Walls {
            studios: tasks.len(),
            arrivals,
            finals,
            bytes,
            reconnects,
            tasks,
        }
    }

    /// Classes whose final record reached their wall.
    pub fn finals(&self) -> usize {
        self.finals.lock().map_or(0, |finals| finals.len())
    }

    fn close(self) -> (Vec<Arrival>, u64, u64) {
        for task in &self.tasks {
            task.abort();
        }
        let arrivals =
            std::mem::take(&mut *self.arrivals.lock().unwrap_or_else(|p| p.into_inner()));
        (
            arrivals,
            self.bytes.load(Ordering::Relaxed),
            self.reconnects.load(Ordering::Relaxed),
        )
    }
}

struct Wall {
    addr: SocketAddr,
    studio: String,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    finals: Arc<Mutex<HashSet<String>>>,
    bytes: Arc<AtomicU64>,
}

impl Wall {
    /// Reads the studio's stream (HTTP/1.0: no chunked framing) until it ends, resuming
    /// from `last_id`.
    async fn follow(&self, last_id: &mut Option<String>) -> anyhow::Result<()> {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await?;
        let resume = last_id
            .as_ref()
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET /studios/{}/live HTTP/1.0\r\nHost: {}\r\nAccept: text/event-stream\r\n{resume}\r\n",
            self.studio, self.addr
        );
        stream.write_all(request.as_bytes()).await?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        anyhow::ensure!(line.contains(" 200 "), "status line {:?}", line.trim_end());
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 || line == "\r\n" {
                break;
            }
        }
        let (mut id, mut data) = (None, String::new());
        loop {
            line.clear();
            let read = reader.read_line(&mut line).await?;
            if read == 0 {
                return Ok(());
            }
            self.bytes.fetch_add(read as u64, Ordering::Relaxed);
            let text = line.trim_end_matches(['\r', '\n']);
            if let Some(value) = text.strip_prefix("id:") {
                id = Some(value.trim_start().to_owned());
            } else if let Some(value) = text.strip_prefix("data:") {
                data.push_str(value.trim_start());
            } else if text.is_empty() && !data.is_empty() {
                let at_ms = chrono::Utc::now().timestamp_millis();
                let head: Head = serde_json::from_str(&data)
                    .with_context(|| format!("a record that is not one: {data}"))?;
                if head.is_final {
                    if let Ok(mut finals) = self.finals.lock() {
                        finals.insert(head.key());
                    }
                }
                if let Ok(mut arrivals) = self.arrivals.lock() {
                    arrivals.push(Arrival {
                        key: head.key(),
                        position: head.version.1,
                        at_ms,
                    });
                }
                data.clear();
                if id.is_some() {
                    *last_id = id.take();
                }
            }
        }
    }
}

/// When each (class, position) was published (ms), and the records' bytes.
type Published = (HashMap<(String, u64), i64>, u64);

/// Reads every record of the live topic: when each (class, position) was published.
pub struct TopicReader {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<Published>>,
}

impl TopicReader {
    pub fn start(brokers: &str, topic: &str, partitions: u32) -> anyhow::Result<TopicReader> {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "loadtest-walls")
            .set("enable.auto.commit", "false")
            .create()
            .context("creating the live topic's reader")?;
        let mut assignment = rdkafka::TopicPartitionList::new();
        for partition in 0..partitions as i32 {
            assignment.add_partition_offset(topic, partition, rdkafka::Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut published, mut bytes) = (HashMap::new(), 0u64);
            let mut quiet = 0;
            loop {
                match consumer.poll(Duration::from_millis(200)) {
                    Some(message) => {
                        quiet = 0;
                        let message = message?;
                        let payload = message.payload().unwrap_or_default();
                        bytes += payload.len() as u64;
                        let head: Head = serde_json::from_slice(payload)?;
                        let at_ms = message.timestamp().to_millis().unwrap_or(0);
                        published.insert((head.key(), head.version.1), at_ms);
                    }
                    // Once told to stop, read on until the topic has been quiet for a second.
                    None if stopping.load(Ordering::Relaxed) => {
                        quiet += 1;
                        if quiet >= 5 {
                            return Ok((published, bytes));
                        }
                    }
                    None => {}
                }
            }
        });
        Ok(TopicReader { stop, thread })
    }

    fn finish(self) -> anyhow::Result<Published> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the live topic's reader panicked"))?
    }
}

/// What the walls saw, hop by hop (ms).
pub struct WallsMeasure {
    pub interval: String,
    pub walls: usize,
    pub send_to_published: hdrhistogram::Histogram<u64>,
    pub published_to_wall: hdrhistogram::Histogram<u64>,
    pub send_to_wall: hdrhistogram::Histogram<u64>,
    /// Events sent for the first time, and those no record on a wall covered.
    pub events: u64,
    pub events_unseen: u64,
    pub records_published: usize,
    pub record_bytes: u64,
    pub arrivals: usize,
    /// Records at a wall that the topic reader never saw.
    pub arrivals_unmatched: usize,
    pub wall_bytes: u64,
    pub reconnects: u64,
    pub screens_cpu_seconds: f64,
    pub screens_peak_rss: u64,
    pub screens_metrics: Option<crate::run::Scrape>,
    /// Class-seconds of the run (classes x class length), to scale to a day.
    pub class_seconds: f64,
}

/// The walls of a running load test.
pub struct Running {
    pub screens: Screens,
    pub walls: Walls,
    reader: TopicReader,
}

impl Running {
    pub async fn start(
        binary: &Path,
        out: &Path,
        brokers: &str,
        args: &WallsArgs,
        partitions: u32,
        studios: Vec<String>,
    ) -> anyhow::Result<Running> {
        let screens = Screens::start(binary, out, brokers, &args.live_topic).await?;
        let reader = TopicReader::start(brokers, &args.live_topic, partitions)?;
        let walls = Walls::open(screens.addr, studios);
        Ok(Running {
            screens,
            walls,
            reader,
        })
    }

    /// Waits (at most `timeout`) until `classes` classes' final records reached the walls.
    pub async fn wait_finals(&self, classes: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.walls.finals() < classes && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if self.walls.finals() < classes {
            eprintln!(
                "walls: {} of {classes} final records arrived",
                self.walls.finals()
            );
        }
    }

    /// Stops everything and measures.
    pub async fn finish(
        self,
        observer: &Observer,
        interval: &str,
        class_seconds: f64,
    ) -> anyhow::Result<WallsMeasure> {
        let walls = self.walls.studios;
        let (arrivals, wall_bytes, reconnects) = self.walls.close();
        let (screens_cpu_seconds, screens_peak_rss, screens_metrics) = self.screens.stop().await;
        let (published, record_bytes) = self.reader.finish()?;
        let started_ms = observer.started_ms.load(Ordering::Relaxed);
        let deliveries = observer
            .deliveries
            .as_ref()
            .context("the observer kept no deliveries")?
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone();
        let mut measure = WallsMeasure {
            interval: interval.to_owned(),
            walls,
            send_to_published: hdrhistogram::Histogram::new(3)?,
            published_to_wall: hdrhistogram::Histogram::new(3)?,
            send_to_wall: hdrhistogram::Histogram::new(3)?,
            events: deliveries
                .values()
                .flatten()
                .map(|d| u64::from(d.events))
                .sum(),
            events_unseen: 0,
            records_published: published.len(),
            record_bytes,
            arrivals: arrivals.len(),
            arrivals_unmatched: 0,
            wall_bytes,
            reconnects,
            screens_cpu_seconds,
            screens_peak_rss,
            screens_metrics,
            class_seconds,
        };
        // Records on the topic, per class in position order: each covers the messages up to
        // its position (last offset x 2 + final).
        let mut by_class: HashMap<&str, Vec<(u64, i64)>> = HashMap::new();
        for ((key, position), at_ms) in &published {
            by_class
                .entry(key.as_str())
                .or_default()
                .push((*position, *at_ms));
        }
        for (key, records) in &mut by_class {
            records.sort_unstable();
            let sent = deliveries.get(*key).map(Vec::as_slice).unwrap_or_default();
            covered(sent, records, started_ms, &mut measure.send_to_published)?;
        }
        // Records at the walls, in arrival order per class.
        let mut at_walls: HashMap<&str, Vec<(u64, i64)>> = HashMap::new();
        for arrival in &arrivals {
            match published.get(&(arrival.key.clone(), arrival.position)) {
                Some(published_ms) => measure
                    .published_to_wall
                    .record((arrival.at_ms - published_ms).max(0) as u64)?,
                None => measure.arrivals_unmatched += 1,
            }
            at_walls
                .entry(arrival.key.as_str())
                .or_default()
                .push((arrival.position, arrival.at_ms));
        }
        for (key, sent) in &deliveries {
            let records = at_walls
                .get(key.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            measure.events_unseen += covered(sent, records, started_ms, &mut measure.send_to_wall)?;
        }
        Ok(measure)
    }
}

/// Records, for every event of `sent` (a class's messages), the time from its send to the
/// first of `records` (position, ms) covering its message; returns the events none covered.
fn covered(
    sent: &[Delivered],
    records: &[(u64, i64)],
    started_ms: i64,
    histogram: &mut hdrhistogram::Histogram<u64>,
) -> anyhow::Result<u64> {
    let mut sent = sent.to_vec();
    sent.sort_unstable_by_key(|d| d.offset);
    let mut next = 0;
    for (position, at_ms) in records {
        while let Some(message) = sent.get(next) {
            if message.offset as u64 > position / 2 {
                break;
            }
            let ms = (at_ms - started_ms - i64::from(message.sent_ms)).max(0) as u64;
            histogram.record_n(ms, u64::from(message.events))?;
            next += 1;
        }
    }
    Ok(sent[next..].iter().map(|d| u64::from(d.events)).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(offset: i64, sent_ms: u32, events: u32) -> Delivered {
        Delivered {
            offset,
            sent_ms,
            events,
        }
    }

    #[test]
    fn a_record_covers_the_messages_up_to_its_position() {
        let sent = [message(4, 300, 5), message(0, 100, 5), message(2, 200, 3)];
        let mut histogram = hdrhistogram::Histogram::new(3).unwrap();
        // Position 5 is offset 2 (x 2, plus 1 for final): offsets 0 and 2, not 4.
        let unseen = covered(&sent, &[(5, 10_600)], 10_000, &mut histogram).unwrap();
        assert_eq!(unseen, 5);
        assert_eq!(histogram.len(), 8);
        assert_eq!(histogram.max(), 500);
        assert_eq!(histogram.min(), 400);
        // A later record takes the rest, each event once.
        let mut histogram = hdrhistogram::Histogram::new(3).unwrap();
        let unseen = covered(&sent, &[(4, 10_600), (8, 11_000)], 10_000, &mut histogram).unwrap();
        assert_eq!(unseen, 0);
        assert_eq!(histogram.len(), 13);
        assert_eq!(histogram.max(), 700);
    }

    #[test]
    fn the_head_of_a_record_is_read_without_its_tiles() {
        let head: Head = serde_json::from_str(
            r#"{"studio_id":"studio-0001","class_id":"c1","version":[3,41],"final":true,"members":[{"tile":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(head.key(), "studio-0001:c1");
        assert_eq!(head.version, (3, 41));
        assert!(head.is_final);
    }
}
