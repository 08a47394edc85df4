//! The run's report: Markdown (what was sent, what classpulse did with it, latency
//! percentiles, resources, which process saturated, the cost projection for a full day) and a
//! SVG chart of events/s and source lag over time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Serialize;

use crate::produce::Manifest;
use crate::run::{RunArgs, Scrape};
use crate::verify::Verdict;

/// Events a day at the full workload.
pub const EVENTS_PER_DAY: f64 = 69_120_000.0;
/// On-demand DynamoDB, US East: dollars per million write request units.
const DYNAMODB_PER_MILLION_WRU: f64 = 0.625;
/// S3 Standard: dollars per 1,000 PUTs, and per GB-month stored.
const S3_PER_THOUSAND_PUTS: f64 = 0.005;
const S3_PER_GB_MONTH: f64 = 0.023;
/// Kinesis on-demand is not used: provisioned shard-hours and PUT payload units (25 KB).
const KINESIS_PER_SHARD_HOUR: f64 = 0.015;
const KINESIS_PER_MILLION_PUT_UNITS: f64 = 0.014;
/// Fargate, Linux x86, US East: dollars per vCPU-hour and per GB-hour.
const FARGATE_PER_VCPU_HOUR: f64 = 0.04048;
const FARGATE_PER_GB_HOUR: f64 = 0.004445;
/// Application Load Balancer, US East: dollars per hour and per LCU-hour (an LCU: 1 GB
/// processed an hour, or 3,000 active connections, whichever is more).
const ALB_PER_HOUR: f64 = 0.0225;
const ALB_PER_LCU_HOUR: f64 = 0.008;
/// MSK storage, dollars per GB-month.
const MSK_PER_GB_MONTH: f64 = 0.10;
/// The default deployment (deploy/cloudformation): classpulse tasks (MinTasks, TaskCpu,
/// TaskMemory) and screen-server tasks (ScreensTasks, 512 CPU units, 1 GB).
const DEFAULT_TASKS: (f64, f64, f64) = (2.0, 1.0, 2.0);
const DEFAULT_SCREENS_TASKS: (f64, f64, f64) = (2.0, 0.5, 1.0);
/// Class-seconds a day: 3,200 one-hour classes.
const CLASS_SECONDS_PER_DAY: f64 = 3200.0 * 3600.0;

/// One second of the run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Sample {
    pub t: f64,
    pub events_in: f64,
    pub lag_messages: f64,
    /// Messages sent but not yet read by any instance (the loadtest's own count).
    pub backlog_messages: f64,
    pub lag_seconds: f64,
    pub cpu_seconds: f64,
    pub rss_bytes: f64,
    pub open_fds: f64,
}

/// How a long run's resources moved: the first and the last third of the producing time
/// after the first class length (while state fills up), each third's highest values. A
/// leak shows as growth from one third to the other; a steady process is flat.
#[derive(Debug, Clone, PartialEq)]
pub struct Steadiness {
    /// Seconds after the start: the first third begins, ends; the last third begins, ends.
    pub thirds: [(f64, f64); 2],
    pub rss_mb: [f64; 2],
    pub open_fds: [f64; 2],
    pub backlog_messages: [f64; 2],
    pub lag_seconds: [f64; 2],
}

impl Steadiness {
    /// Compares the thirds of `[warm_up, produced]`; `None` for a run too short to tell (under
    /// 10 minutes to compare).
    pub fn of(samples: &[Sample], warm_up: f64, produced: f64) -> Option<Steadiness> {
        let third = (produced - warm_up) / 3.0;
        if third * 3.0 < 600.0 {
            return None;
        }
        let thirds = [(warm_up, warm_up + third), (produced - third, produced)];
        let highest = |field: fn(&Sample) -> f64| {
            thirds.map(|(from, to)| {
                samples
                    .iter()
                    .filter(|s| s.t >= from && s.t <= to)
                    .map(field)
                    .fold(0.0, f64::max)
            })
        };
        Some(Steadiness {
            thirds,
            rss_mb: highest(|s| s.rss_bytes / 1e6),
            open_fds: highest(|s| s.open_fds),
            backlog_messages: highest(|s| s.backlog_messages),
            lag_seconds: highest(|s| s.lag_seconds),
        })
    }

    /// Flat: memory within 10% (plus 20 MB of allocator noise), descriptors within 16, and the
    /// messages waiting within half again (plus one second of the peak rate's messages).
    pub fn flat(&self) -> Vec<&'static str> {
        let mut grew = Vec::new();
        if self.rss_mb[1] > self.rss_mb[0] * 1.1 + 20.0 {
            grew.push("RSS");
        }
        if self.open_fds[1] > self.open_fds[0] + 16.0 {
            grew.push("open file descriptors");
        }
        if self.backlog_messages[1] > self.backlog_messages[0] * 1.5 + 1000.0 {
            grew.push("messages waiting");
        }
        grew
    }
}

pub struct Report<'a> {
    pub args: &'a RunArgs,
    pub manifest: &'a Manifest,
    pub verdict: &'a Verdict,
    pub samples: &'a [Sample],
    pub last_scrapes: &'a [Scrape],
    pub produced_seconds: f64,
    pub caught_up_seconds: f64,
    /// With a backlog: seconds after the start at which classpulse was started.
    pub drain_started: Option<f64>,
    pub servers_cpu: Vec<(String, f64)>,
    pub exits: Vec<String>,
    /// ms from send to visible in the class's live document (local lakes only).
    pub visible_latency: Option<hdrhistogram::Histogram<u64>>,
    /// What the walls saw (`--walls`).
    pub walls: Option<&'a crate::walls::WallsMeasure>,
}

impl Report<'_> {
    /// Writes `report.md` and `report.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let chart = dir.join("report.svg");
        self.chart(&chart)?;
        let path = dir.join("report.md");
        std::fs::write(&path, self.markdown())?;
        Ok(path)
    }

    fn total(&self, name: &str) -> f64 {
        self.last_scrapes
            .iter()
            .filter_map(|s| s.values.get(name))
            .sum()
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# classpulse load test, {}\n",
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
        );
        self.workload(&mut md);
        self.verification(&mut md);
        self.latency(&mut md);
        self.walls(&mut md);
        self.resources(&mut md);
        self.steadiness(&mut md);
        let _ = writeln!(md, "\n## Cost projection for 69,120,000 events a day\n");
        md.push_str(&self.cost());
        let _ = writeln!(md, "\n![events/s and lag](report.svg)");
        md
    }

    /// The workload sent and how classpulse read it.
    fn workload(&self, md: &mut String) {
        let m = self.manifest;
        let w = &m.workload;
        let e = &m.expected;
        let _ = writeln!(md, "## Workload\n");
        let mode = if w.all_at_once {
            "every class at once"
        } else {
            "a day's schedule"
        };
        let pace = match (m.pace.rate, m.pace.speedup) {
            (Some(rate), _) => format!("{rate} events/s"),
            (None, s) if s > 0.0 => format!("speedup {s}"),
            _ => "unpaced (as fast as the broker takes it)".to_owned(),
        };
        let _ = writeln!(md, "| | |\n|---|---|");
        let _ = writeln!(
            md,
            "| shape | {} studios, {} classes ({mode}) of {} min, {} members |",
            w.studios, m.classes, w.class_minutes, w.members
        );
        let _ = writeln!(
            md,
            "| most classes at once | {} |",
            m.peak_concurrent_classes
        );
        let _ = writeln!(
            md,
            "| target | {} `{}`, {} partitions/shards, {} instance(s){} |",
            m.target.target,
            m.target.topic,
            m.target.partitions,
            self.args.instances,
            if self.args.backlog {
                ", backlog first"
            } else {
                ""
            }
        );
        let _ = writeln!(md, "| pacing | {pace} |");
        let _ = writeln!(md, "| valid events | {} |", m.valid_events);
        let _ = writeln!(
            md,
            "| sent | {} events in {} messages, {:.1} MB |",
            m.events_sent,
            m.messages,
            m.bytes_sent as f64 / 1e6
        );
        let _ = writeln!(md, "| imperfections | {} extra copies (producer retries, {} classes posted again after they were final), {} late, {} malformed or out of range, {} ahead of the clock (fast studio) |", e.retries, e.resent_classes, e.late.len(), e.invalid.len(), e.rejected_valid.len());
        let _ = writeln!(
            md,
            "| produce | {:.1} s ({:.0} events/s) |",
            self.produced_seconds,
            m.events_sent as f64 / self.produced_seconds.max(1e-9)
        );
        let _ = writeln!(
            md,
            "| all final and caught up | {:.1} s after the start |",
            self.caught_up_seconds
        );
        let events_in = self.samples.iter().map(|s| s.events_in).fold(0.0, f64::max);
        if let Some(start) = self.drain_started {
            // From classpulse's start (its group join included) to its last event read.
            let done = self
                .samples
                .iter()
                .find(|s| s.events_in >= events_in)
                .map_or(start, |s| s.t);
            let _ = writeln!(
                md,
                "| backlog read | {:.0} s from classpulse's start (joining the group included) to its last event: {:.0} events/s |",
                done - start,
                events_in / (done - start).max(1e-9)
            );
        }
        let first = self
            .samples
            .iter()
            .find(|s| s.events_in > 0.0)
            .map_or(0.0, |s| s.t - 1.0);
        let last = self
            .samples
            .iter()
            .find(|s| s.events_in >= events_in)
            .map_or(0.0, |s| s.t);
        if last > first {
            let _ = writeln!(md, "| classpulse throughput | {:.0} events/s from its first event to its last ({:.0} s, by 1 s samples) |", events_in / (last - first), last - first);
        }
        let peak_lag = self
            .samples
            .iter()
            .map(|s| s.lag_messages)
            .fold(0.0, f64::max);
        let peak_backlog = self
            .samples
            .iter()
            .map(|s| s.backlog_messages)
            .fold(0.0, f64::max);
        let _ = writeln!(md, "| source lag | at most {peak_lag:.0} messages by classpulse's metric; at most {peak_backlog:.0} messages sent and not yet read |");
        let _ = writeln!(md, "| classpulse exits | {} |", self.exits.join(", "));
    }

    /// What the verifier found in the lake, the dead letters and the tables.
    fn verification(&self, md: &mut String) {
        let v = self.verdict;
        let _ = writeln!(md, "\n## Verify\n");
        let _ = writeln!(md, "| check | result |\n|---|---|");
        let _ = writeln!(md, "| lake | {} rows in {} objects: **{} missing, {} duplicated**, {} late flags wrong, {} rows that should have been rejected |", v.lake_rows, v.lake_objects, v.missing, v.duplicated, v.late_flag_wrong, v.unexpected_rows);
        if let Some(s) = &v.lake_selectivity {
            let _ = writeln!(md, "| lake reads | {} row groups; rows in the row groups a reader cannot skip (statistics, bloom filters) per row returned: one class-hour {:.1} on average, {:.1} at most ({} class-hours); one member's day {:.1}, {:.1} at most ({} member-days) |", s.row_groups, s.class_hour.mean, s.class_hour.max, s.class_hour.queries, s.member_day.mean, s.member_day.max, s.member_day.queries);
        }
        let _ = writeln!(
            md,
            "| dead letters | {}: {} missing, {} wrong reason, {} unexpected |",
            v.dead_letters,
            v.dead_letters_missing,
            v.dead_letters_wrong_reason,
            v.dead_letters_unexpected
        );
        let _ = writeln!(
            md,
            "| final aggregates | {} classes: {} missing, **{} different** |",
            v.classes_expected, v.classes_missing, v.classes_wrong
        );
        if let Some(events) = v.table_events {
            let _ = writeln!(
                md,
                "| events table | {events} events in {} items: {} missing, {} duplicated |",
                v.table_items, v.table_missing, v.table_duplicated
            );
        }
        let _ = writeln!(
            md,
            "| verdict | **{}** |",
            if v.clean() { "clean" } else { "DIFFERENCES" }
        );
        for line in v.differences.iter().take(30) {
            let _ = writeln!(md, "\n- {line}");
        }
    }

    /// From send to the lake, the live document and each sink.
    fn latency(&self, md: &mut String) {
        let v = self.verdict;
        let _ = writeln!(md, "\n## Latency\n");
        let _ = writeln!(
            md,
            "| from first send to | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|"
        );
        if let Some(h) = &v.lake_latency_ms {
            let q = |p: f64| format!("{:.2} s", h.value_at_quantile(p) as f64 / 1000.0);
            let _ = writeln!(md, "| the lake object holding it written (hdrhistogram, every event in an object not merged with others) | {} | {} | {} | {} | {:.2} s |", q(0.5), q(0.9), q(0.99), q(0.999), h.max() as f64 / 1000.0);
        }
        if let Some(h) = &self.visible_latency {
            let q = |p: f64| format!("{:.2} s", h.value_at_quantile(p) as f64 / 1000.0);
            let _ = writeln!(md, "| counted in its class's live document (hdrhistogram, every counted event; live interval {}) | {} | {} | {} | {} | {:.2} s |", self.args.flush_interval, q(0.5), q(0.9), q(0.99), q(0.999), h.max() as f64 / 1000.0);
        }
        let mut sinks: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
        for scrape in self.last_scrapes {
            for (sink, buckets) in &scrape.latency_buckets {
                let merged = sinks.entry(sink.clone()).or_default();
                for (i, (le, count)) in buckets.iter().enumerate() {
                    if merged.len() <= i {
                        merged.push((*le, 0.0));
                    }
                    merged[i].1 += count;
                }
            }
        }
        for (sink, buckets) in &sinks {
            let q =
                |p: f64| bucket_quantile(buckets, p).map_or("-".to_owned(), |s| format!("≤ {s} s"));
            let _ = writeln!(md, "| durable in `{sink}` (classpulse's own histogram, from `event_created`: meaningful at real time; bucket upper bounds) | {} | {} | {} | {} | |", q(0.5), q(0.9), q(0.99), q(0.999));
        }
    }

    /// From send to the studios' walls, hop by hop, and the screen server's resources.
    fn walls(&self, md: &mut String) {
        let Some(w) = self.walls else {
            return;
        };
        let _ = writeln!(md, "\n## Walls\n");
        let _ = writeln!(md, "{} walls (one Server-Sent Events stream per studio) on one `classpulse screens`; live interval {}.\n", w.walls, w.interval);
        let _ = writeln!(
            md,
            "| hop | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|"
        );
        let mut age = Vec::new();
        for scrape in self.last_scrapes {
            for (le, count) in &scrape.message_age_buckets {
                crate::run::add_bucket(&mut age, *le, *count);
            }
        }
        let q = |p: f64| bucket_quantile(&age, p).map_or("-".to_owned(), |s| format!("≤ {s} s"));
        let _ = writeln!(md, "| send → read by classpulse (its `classpulse_source_message_age_seconds`, from the message's timestamp; bucket upper bounds) | {} | {} | {} | {} | {} |", q(0.5), q(0.9), q(0.99), q(0.999), q(1.0));
        let rows = [
            ("send → published (the first live record covering the event's message, by the record's timestamp; every event)", &w.send_to_published),
            ("published → at the wall (every record at every wall)", &w.published_to_wall),
            ("**send → at the wall** (every event)", &w.send_to_wall),
        ];
        for (name, h) in rows {
            let q = |p: f64| format!("{:.2} s", h.value_at_quantile(p) as f64 / 1000.0);
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {} | {:.2} s |",
                q(0.5),
                q(0.9),
                q(0.99),
                q(0.999),
                h.max() as f64 / 1000.0
            );
        }
        let cut = w
            .screens_metrics
            .as_ref()
            .map_or(0.0, |s| s.value("classpulse_screens_clients_cut_total"));
        let seconds = self.caught_up_seconds.max(1e-9);
        let _ = writeln!(md, "\n| | |\n|---|---|");
        let _ = writeln!(
            md,
            "| events followed | {} sent for the first time; {} on no wall |",
            w.events, w.events_unseen
        );
        let _ = writeln!(md, "| live records | {} published ({:.1} MB), {} arrivals at walls ({:.1} MB), {} not found on the topic |", w.records_published, w.record_bytes as f64 / 1e6, w.arrivals, w.wall_bytes as f64 / 1e6, w.arrivals_unmatched);
        let _ = writeln!(
            md,
            "| walls cut or reconnected | {cut:.0} cut by the server, {} reconnects |",
            w.reconnects
        );
        let _ = writeln!(md, "| screen server | {:.1} CPU-seconds ({:.1}% of a core over the run), RSS at most {:.0} MB |", w.screens_cpu_seconds, w.screens_cpu_seconds / seconds * 100.0, w.screens_peak_rss as f64 / 1e6);
    }

    /// CPU, memory and partitions of classpulse, CPU of the servers.
    fn resources(&self, md: &mut String) {
        let m = self.manifest;
        let _ = writeln!(md, "\n## Resources\n");
        let cpu = self.total("classpulse_process_cpu_seconds_total");
        let _ = writeln!(md, "| | |\n|---|---|");
        // Each instance's CPU over the events it read itself.
        let per_instance: Vec<String> = self
            .last_scrapes
            .iter()
            .map(|s| {
                let cpu = s.value("classpulse_process_cpu_seconds_total");
                let events = s.value("classpulse_events_in_total");
                format!("{:.1}", cpu / (events / 1e6).max(1e-9))
            })
            .collect();
        let _ = writeln!(md, "| classpulse CPU | {cpu:.1} s in all: {:.1} CPU-seconds per million events; per instance (its CPU over the events it read): {} |", cpu / (m.events_sent as f64 / 1e6), per_instance.join(" / "));
        let owned: Vec<String> = self
            .last_scrapes
            .iter()
            .map(|s| format!("{:.0}", s.value("classpulse_source_leases_held")))
            .collect();
        let _ = writeln!(
            md,
            "| partitions owned per instance at the end | {} |",
            owned.join(" / ")
        );
        let rss = self.samples.iter().map(|s| s.rss_bytes).fold(0.0, f64::max);
        let _ = writeln!(
            md,
            "| classpulse RSS | at most {:.0} MB over all instances |",
            rss / 1e6
        );
        let wall = self.caught_up_seconds.max(1e-9);
        let mut busiest = ("classpulse".to_owned(), cpu / wall);
        let _ = writeln!(
            md,
            "| classpulse busy | {:.0}% of one core on average |",
            cpu / wall * 100.0
        );
        for (name, seconds) in &self.servers_cpu {
            let _ = writeln!(
                md,
                "| {name} | {seconds:.1} CPU-seconds, {:.0}% of one core on average |",
                seconds / wall * 100.0
            );
            if seconds / wall > busiest.1 {
                busiest = (name.clone(), seconds / wall);
            }
        }
        let _ = writeln!(
            md,
            "| busiest (the first to saturate on 2 cores) | {} |",
            busiest.0
        );
    }

    /// Whether memory, descriptors and lag stayed flat while producing.
    fn steadiness(&self, md: &mut String) {
        let m = self.manifest;
        let warm_up = (f64::from(m.workload.class_minutes) * 60.0).min(self.produced_seconds / 4.0);
        if let Some(steady) = Steadiness::of(self.samples, warm_up, self.produced_seconds) {
            let [(a, b), (c, d)] = steady.thirds;
            let _ = writeln!(md, "\n## Steadiness\n");
            let _ = writeln!(
                md,
                "Highest values in the first and the last third of producing, after the first class length (state filling up).\n"
            );
            let _ = writeln!(md, "| | {a:.0}-{b:.0} s | {c:.0}-{d:.0} s |\n|---|---|---|");
            let _ = writeln!(
                md,
                "| classpulse RSS | {:.0} MB | {:.0} MB |",
                steady.rss_mb[0], steady.rss_mb[1]
            );
            let _ = writeln!(
                md,
                "| open file descriptors | {:.0} | {:.0} |",
                steady.open_fds[0], steady.open_fds[1]
            );
            let _ = writeln!(
                md,
                "| messages sent and not yet read | {:.0} | {:.0} |",
                steady.backlog_messages[0], steady.backlog_messages[1]
            );
            let _ = writeln!(
                md,
                "| classpulse's lag metric, seconds | {:.1} | {:.1} |",
                steady.lag_seconds[0], steady.lag_seconds[1]
            );
            let grew = steady.flat();
            let _ = writeln!(
                md,
                "| verdict | **{}** |",
                if grew.is_empty() {
                    "flat".to_owned()
                } else {
                    format!("GREW: {}", grew.join(", "))
                }
            );
        }
    }

    /// Dollars a day, from this run's request counts scaled to the full workload. Requests
    /// that follow the clock rather than the events (object cuts by age, checkpoints) are
    /// projected from the production intervals.
    fn cost(&self) -> String {
        let m = self.manifest;
        let scale = EVENTS_PER_DAY / (m.valid_events as f64).max(1.0);
        let mut md = String::new();
        let _ = writeln!(md, "| item | per day | how |\n|---|---|---|");
        let mut total = 0.0;
        let mut wru_by_table: Vec<(String, f64)> = Vec::new();
        for scrape in self.last_scrapes {
            for (series, value) in &scrape.values {
                if let Some(rest) = series.strip_prefix("classpulse_dynamodb_write_units_total{") {
                    let table = rest
                        .split("table=\"")
                        .nth(1)
                        .and_then(|t| t.split('"').next())
                        .unwrap_or("?");
                    match wru_by_table.iter_mut().find(|(t, _)| t == table) {
                        Some(entry) => entry.1 += value,
                        None => wru_by_table.push((table.to_owned(), *value)),
                    }
                }
            }
        }
        for (table, units) in &wru_by_table {
            let dollars = units * scale / 1e6 * DYNAMODB_PER_MILLION_WRU;
            total += dollars;
            let _ = writeln!(md, "| DynamoDB `{table}` writes | ${dollars:.2} | {units:.0} write units measured ({:.1} per 1,000 events) x {scale:.1} |", units / m.valid_events as f64 * 1000.0);
        }
        let naive = EVENTS_PER_DAY / 1e6 * DYNAMODB_PER_MILLION_WRU;
        let _ = writeln!(
            md,
            "| (naive: one item per event) | ${naive:.2} | 1 write unit per event |"
        );
        // S3: lake objects cut at least every 5 minutes per partition (CLASSPULSE_LAKE_MAX_AGE),
        // each with an index entry; dead letters likewise at most; 3 result objects per class;
        // a checkpoint per partition every 30 s.
        let partitions = f64::from(m.target.partitions);
        let classes_per_day = 3200.0;
        let lake_puts = partitions * 288.0 * 2.0;
        let dead_letter_puts = partitions * 288.0;
        let result_puts = classes_per_day * 3.0;
        let checkpoint_puts = partitions * 2880.0;
        let puts = lake_puts + dead_letter_puts + result_puts + checkpoint_puts;
        let put_dollars = puts / 1000.0 * S3_PER_THOUSAND_PUTS;
        total += put_dollars;
        let _ = writeln!(md, "| S3 PUTs | ${put_dollars:.2} | {puts:.0}: lake objects and index entries {lake_puts:.0} ({partitions} partitions, one object per 5 min), dead letters at most {dead_letter_puts:.0}, results {result_puts:.0} (3 for each of 3,200 classes), checkpoints {checkpoint_puts:.0} (every 30 s) |");
        let bytes_per_event =
            self.verdict.lake_bytes as f64 / (self.verdict.lake_rows as f64).max(1.0);
        let gb_per_day = bytes_per_event * EVENTS_PER_DAY / 1e9;
        let storage = gb_per_day * S3_PER_GB_MONTH / 30.0 * 30.0;
        let _ = writeln!(md, "| S3 storage | each day adds {gb_per_day:.2} GB: ${storage:.3} a month for it | {bytes_per_event:.1} bytes/event measured in the lake |");
        let records = m.messages as f64 * scale;
        let put_units = records
            * (m.bytes_sent as f64 / m.messages.max(1) as f64 / 25_000.0)
                .ceil()
                .max(1.0);
        let peak_mb_s = m.bytes_sent as f64 / m.events_sent.max(1) as f64 * 4800.0 / 1e6;
        let shards = (peak_mb_s / 1.0)
            .max(4800.0 / (m.events_sent as f64 / m.messages.max(1) as f64) / 1000.0)
            .ceil()
            .max(1.0)
            * 2.0;
        let kinesis = shards * 24.0 * KINESIS_PER_SHARD_HOUR
            + put_units / 1e6 * KINESIS_PER_MILLION_PUT_UNITS;
        let _ = writeln!(md, "| Kinesis (if the source) | ${kinesis:.2} | {shards:.0} shards (twice the peak's {peak_mb_s:.2} MB/s, for catch-up), {put_units:.0} PUT payload units |");
        let _ = writeln!(
            md,
            "| **DynamoDB and S3 requests** | **${total:.2}** | target: under $3 |"
        );
        if let Some(w) = self.walls {
            md.push_str(&all_in(total, w, self.produced_seconds));
        }
        let _ = writeln!(md, "\nLive values (the aggregates table's `live` item, about 6 KB for 12 members: 6 write units a flush while the class runs) cost apart: every 1 s ${:.2}, 5 s ${:.2}, 30 s ${:.2} a day for 3,200 one-hour classes.",
            live_cost(1.0), live_cost(5.0), live_cost(30.0));
        md
    }

    fn chart(&self, path: &Path) -> anyhow::Result<()> {
        // SVG keeps text as text: no font to parse or ship.
        let root = SVGBackend::new(path, (1000, 900)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, rest) = root.split_vertically(300);
        let (bottom, resources) = rest.split_vertically(300);
        let rates: Vec<(f64, f64)> = self
            .samples
            .windows(2)
            .map(|w| {
                (
                    w[1].t,
                    (w[1].events_in - w[0].events_in).max(0.0) / (w[1].t - w[0].t).max(1e-9),
                )
            })
            .collect();
        let t_max = self.samples.last().map_or(1.0, |s| s.t).max(1.0);
        let rate_max = rates.iter().map(|r| r.1).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&top)
            .caption("events/s into classpulse", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..t_max, 0.0..rate_max)?;
        chart.configure_mesh().x_desc("seconds").draw()?;
        chart.draw_series(LineSeries::new(rates, &BLUE))?;
        let lag_max = self
            .samples
            .iter()
            .map(|s| s.lag_messages.max(s.backlog_messages))
            .fold(1.0, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&bottom)
            .caption(
                "messages sent and not yet read (red); classpulse's lag metric (grey)",
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..t_max, 0.0..lag_max)?;
        chart.configure_mesh().x_desc("seconds").draw()?;
        chart.draw_series(LineSeries::new(
            self.samples.iter().map(|s| (s.t, s.lag_messages)),
            &RGBColor(150, 150, 150),
        ))?;
        chart.draw_series(LineSeries::new(
            self.samples.iter().map(|s| (s.t, s.backlog_messages)),
            &RED,
        ))?;
        let rss_max = self
            .samples
            .iter()
            .map(|s| s.rss_bytes / 1e6)
            .fold(1.0, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&resources)
            .caption("classpulse RSS, MB (all instances)", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..t_max, 0.0..rss_max)?;
        chart.configure_mesh().x_desc("seconds").draw()?;
        chart.draw_series(LineSeries::new(
            self.samples.iter().map(|s| (s.t, s.rss_bytes / 1e6)),
            &BLUE,
        ))?;
        root.present()?;
        Ok(())
    }
}

/// The default deployment's whole day, the walls included: tasks, the load balancer, the live
/// topic's storage, and the requests measured above (`requests`).
fn all_in(requests: f64, w: &crate::walls::WallsMeasure, produced_seconds: f64) -> String {
    let mut md = String::new();
    let task_day = |(tasks, vcpu, gb): (f64, f64, f64)| {
        tasks * (vcpu * FARGATE_PER_VCPU_HOUR + gb * FARGATE_PER_GB_HOUR) * 24.0
    };
    let day = CLASS_SECONDS_PER_DAY / w.class_seconds.max(1.0);
    let wall_gb = w.wall_bytes as f64 * day / 1e9;
    // Walls connected all day (one per studio), and the bytes they are sent.
    let lcu_hours = wall_gb.max(w.walls as f64 / 3000.0 * 24.0);
    let alb = ALB_PER_HOUR * 24.0 + lcu_hours * ALB_PER_LCU_HOUR;
    let topic_gb = w.record_bytes as f64 * day / 1e9;
    // An hour's retention at this run's average rate.
    let retained_gb = w.record_bytes as f64 / produced_seconds.max(1.0) * 3600.0 / 1e9;
    let topic = retained_gb * MSK_PER_GB_MONTH / 30.0;
    let (tasks, screens) = (task_day(DEFAULT_TASKS), task_day(DEFAULT_SCREENS_TASKS));
    let total = requests + tasks + screens + alb + topic;
    let _ = writeln!(md, "\n**All in, the default deployment with its walls** (`deploy/cloudformation`; the MSK cluster the deployment already runs is not counted):\n");
    let _ = writeln!(md, "| item | per day | how |\n|---|---|---|");
    let _ = writeln!(
        md,
        "| classpulse tasks | ${tasks:.2} | {} Fargate tasks of {} vCPU and {} GB |",
        DEFAULT_TASKS.0, DEFAULT_TASKS.1, DEFAULT_TASKS.2
    );
    let _ = writeln!(
        md,
        "| screen-server tasks | ${screens:.2} | {} Fargate tasks of {} vCPU and {} GB |",
        DEFAULT_SCREENS_TASKS.0, DEFAULT_SCREENS_TASKS.1, DEFAULT_SCREENS_TASKS.2
    );
    let _ = writeln!(md, "| load balancer | ${alb:.2} | 24 hours and {lcu_hours:.1} LCU-hours ({wall_gb:.1} GB to the walls a day, scaled from this run's {:.1} MB over {:.0} class-seconds) |", w.wall_bytes as f64 / 1e6, w.class_seconds);
    let _ = writeln!(md, "| live topic | ${topic:.3} | {topic_gb:.1} GB published a day; an hour's retention at this run's average rate holds {retained_gb:.1} GB |");
    let _ = writeln!(md, "| DynamoDB and S3 requests | ${requests:.2} | above |");
    let _ = writeln!(md, "| **all in** | **${total:.2}** | |");
    md
}

fn live_cost(interval_s: f64) -> f64 {
    let classes = 3200.0;
    let writes = 3600.0 / interval_s;
    classes * writes * 6.0 / 1e6 * DYNAMODB_PER_MILLION_WRU
}

/// The upper bound of the bucket holding quantile `p` of a cumulative histogram.
fn bucket_quantile(buckets: &[(f64, f64)], p: f64) -> Option<String> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let (le, _) = buckets.iter().find(|(_, count)| *count >= p * total)?;
    Some(if le.is_infinite() {
        "+Inf".to_owned()
    } else {
        format!("{le}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(rss_mb: impl Fn(f64) -> f64, fds: impl Fn(f64) -> f64) -> Vec<Sample> {
        (0..=3600)
            .map(|t| Sample {
                t: f64::from(t),
                rss_bytes: rss_mb(f64::from(t)) * 1e6,
                open_fds: fds(f64::from(t)),
                backlog_messages: 500.0 + f64::from(t % 7) * 100.0,
                ..Sample::default()
            })
            .collect()
    }

    #[test]
    fn steady_runs_are_flat_and_leaks_are_named() {
        // A sawtooth of class state that turns over every 15 minutes is flat.
        let saw = samples(|t| 200.0 + (t % 900.0) / 10.0, |_| 40.0);
        let steady = Steadiness::of(&saw, 900.0, 3600.0).unwrap();
        assert_eq!(steady.thirds, [(900.0, 1800.0), (2700.0, 3600.0)]);
        assert_eq!(steady.open_fds, [40.0, 40.0]);
        assert!(steady.flat().is_empty(), "{steady:?}");
        // Memory that climbs by 100 MB an hour, and a socket leaked a minute, are not.
        let leak = samples(|t| 200.0 + t / 36.0, |t| 40.0 + (t / 60.0).floor());
        let steady = Steadiness::of(&leak, 900.0, 3600.0).unwrap();
        assert_eq!(steady.flat(), ["RSS", "open file descriptors"]);
        // Ten minutes is too short to tell.
        assert_eq!(Steadiness::of(&saw, 100.0, 650.0), None);
    }

    #[test]
    fn quantiles_come_from_the_bucket_that_holds_them() {
        let buckets = [
            (0.1, 50.0),
            (0.5, 90.0),
            (1.0, 99.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(bucket_quantile(&buckets, 0.5).as_deref(), Some("0.1"));
        assert_eq!(bucket_quantile(&buckets, 0.9).as_deref(), Some("0.5"));
        assert_eq!(bucket_quantile(&buckets, 0.999).as_deref(), Some("+Inf"));
        assert_eq!(bucket_quantile(&[], 0.5), None);
    }

    #[test]
    fn live_values_cost_in_proportion_to_the_flush_rate() {
        assert!((live_cost(5.0) - 8.64).abs() < 0.01, "{}", live_cost(5.0));
        assert!((live_cost(1.0) / live_cost(30.0) - 30.0).abs() < 1e-9);
    }
}
