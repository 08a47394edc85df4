//! Every metric classpulse exports, declared here and nowhere else.
//!
//! Names are `classpulse_<thing>_<unit>`; label values come from small fixed sets (event
//! types, reason codes, sink names, partitions), never from ids in the data. Callers record per
//! batch, not per event.

use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::ack::PartitionId;
use crate::decode::RejectReason;
use crate::event::EventType;

/// Messages read from the source. Labels: `source`.
pub const MESSAGES_IN: &str = "classpulse_messages_in_total";
/// Valid events decoded. Labels: `event_type`.
pub const EVENTS_IN: &str = "classpulse_events_in_total";
/// Rejected inputs sent to the dead-letter sink. Labels: `reason`.
pub const EVENTS_REJECTED: &str = "classpulse_events_rejected_total";
/// Records made durable by a sink. Labels: `sink`.
pub const SINK_RECORDS: &str = "classpulse_sink_records_total";
/// Objects written by a sink. Labels: `sink`.
pub const SINK_OBJECTS: &str = "classpulse_sink_objects_total";
/// Bytes written by a sink. Labels: `sink`.
pub const SINK_BYTES: &str = "classpulse_sink_bytes_total";
/// Latency of one durable write (PUT, batch write). Labels: `sink`.
pub const SINK_WRITE_SECONDS: &str = "classpulse_sink_write_seconds";
/// Write attempts that failed and will be retried. Labels: `sink`, `reason`.
pub const SINK_RETRIES: &str = "classpulse_sink_retries_total";
/// Bytes held in open objects or buffers. Labels: `sink`.
pub const SINK_BUFFERED_BYTES: &str = "classpulse_sink_buffered_bytes";
/// Lake hours compacted into one object, by outcome (`compacted`, `failed`).
pub const LAKE_COMPACTIONS: &str = "classpulse_lake_compactions_total";
/// Lake objects merged into compacted ones (and deleted).
pub const LAKE_COMPACTED_OBJECTS: &str = "classpulse_lake_compacted_objects_total";
/// Rows rewritten by compaction.
pub const LAKE_COMPACTED_ROWS: &str = "classpulse_lake_compacted_rows_total";
/// Time one compaction took, from its first read to its last delete.
pub const LAKE_COMPACTION_SECONDS: &str = "classpulse_lake_compaction_seconds";
/// Events per decoded batch.
pub const BATCH_EVENTS: &str = "classpulse_batch_events";
/// From `event_created` to durable in a sink (for dead letters, which may have no valid event
/// time: from receipt to durable). Labels: `sink`.
pub const END_TO_END_SECONDS: &str = "classpulse_end_to_end_latency_seconds";
/// From a message's timestamp at the source (Kafka's message timestamp, Kinesis's arrival) to
/// its decoding. Labels: `source`.
pub const SOURCE_MESSAGE_AGE_SECONDS: &str = "classpulse_source_message_age_seconds";
/// Messages between the position read and the partition's end. Labels: `source`, `partition`.
pub const SOURCE_LAG_MESSAGES: &str = "classpulse_source_lag_messages";
/// How far behind the source is in time (0 when caught up). Labels: `source`, `partition`.
pub const SOURCE_LAG_SECONDS: &str = "classpulse_source_lag_seconds";
/// Errors the source reported. Labels: `source`, `class` (`unavailable`, `denied`,
/// `partition`).
pub const SOURCE_ERRORS: &str = "classpulse_source_errors_total";
/// Offset resets librdkafka made because a committed offset was out of range (events skipped
/// past retention, or read again). Labels: `source`.
pub const SOURCE_OFFSET_RESETS: &str = "classpulse_source_offset_resets_total";
/// Partitions this task owns: Kafka partitions assigned, or Kinesis shard leases held.
/// Labels: `source`.
pub const SOURCE_LEASES_HELD: &str = "classpulse_source_leases_held";
/// Position commits made to the source. Labels: `source`.
pub const SOURCE_COMMITS: &str = "classpulse_source_commits_total";
/// Batches handed to the sinks and not yet durable everywhere.
pub const BATCHES_IN_FLIGHT: &str = "classpulse_batches_in_flight";
/// Resident memory of the process.
pub const RESIDENT_MEMORY_BYTES: &str = "classpulse_process_resident_memory_bytes";
/// File descriptors the process holds open (sockets, files).
pub const OPEN_FDS: &str = "classpulse_process_open_fds";
/// CPU time the process has used (user plus system).
pub const CPU_SECONDS: &str = "classpulse_process_cpu_seconds_total";
/// Time the last drain took.
pub const DRAIN_SECONDS: &str = "classpulse_drain_seconds";

/// Events left out of the aggregates as duplicates (and out of the lake).
pub const EVENTS_DUPLICATE: &str = "classpulse_events_duplicate_total";
/// Events and rejected inputs of erased members, left out everywhere.
pub const EVENTS_ERASED: &str = "classpulse_events_erased_total";
/// Events left out of the aggregates as late (kept in the lake, flagged).
pub const EVENTS_LATE: &str = "classpulse_events_late_total";
/// Classes with open aggregate state.
pub const AGGREGATE_CLASSES_OPEN: &str = "classpulse_aggregate_classes_open";
/// Classes made final. Labels: `trigger` (`event_time`, `idle`, `end_of_input`).
pub const AGGREGATE_CLASSES_FINAL: &str = "classpulse_aggregate_classes_final_total";
/// Class parts moved between partitions (a class whose key moved when partitions were added).
/// Labels: `outcome` (`handed_over`: a visitor wrote its part; `merged`, `merged_inexact`: its
/// home merged parts, exactly or with one member's samples interleaved; `too_late`: a visitor
/// met a class already final at its home, and counted its events late).
pub const AGGREGATE_HANDOFFS: &str = "classpulse_aggregate_handoffs_total";
/// Partitions refused because their newest checkpoint is of a newer format than this build
/// reads (once per turn of ownership).
pub const AGGREGATE_PARTITIONS_REFUSED: &str = "classpulse_aggregate_partitions_refused_total";
/// Requests for sealed id segments (the ids of classes' late copies). Labels: `request`
/// (`put`: a segment written; `list`: a class's segments listed; `get`: one read back).
pub const ID_SEGMENT_REQUESTS: &str = "classpulse_id_segment_requests_total";
/// Late events looked up in their class's sealed id segments. Labels: `outcome`
/// (`duplicate`: found there, left out of the lake; `late`: not found, written once).
pub const ID_SEGMENT_LOOKUPS: &str = "classpulse_id_segment_lookups_total";
/// Ids held by the task's cache of sealed id segments.
pub const ID_SEGMENT_CACHED_IDS: &str = "classpulse_id_segment_cached_ids";
/// Member-profile fields ignored as out of range. Labels: `field`.
pub const MEMBER_PROFILES_REJECTED: &str = "classpulse_member_profiles_rejected_total";
/// Member profiles read. Labels: `outcome` (`found`, `absent`: no item for the member,
/// `failed`: a read of the members table failed, retried).
pub const MEMBER_PROFILE_READS: &str = "classpulse_member_profile_reads_total";
/// Members of open classes waiting for their profile.
pub const MEMBER_PROFILES_WAITING: &str = "classpulse_member_profiles_waiting";
/// Observed maximum heart rates written. Labels: `outcome` (`raised`; `kept`: a value as
/// high or higher was there).
pub const HR_MAX_OBSERVED_WRITES: &str = "classpulse_hr_max_observed_writes_total";
/// Approximate memory held by aggregate state.
pub const AGGREGATE_STATE_BYTES: &str = "classpulse_aggregate_state_bytes";
/// Time to write one round of aggregate checkpoints and final results.
pub const AGGREGATE_CHECKPOINT_SECONDS: &str = "classpulse_aggregate_checkpoint_seconds";
/// Bytes of aggregate checkpoints written.
pub const AGGREGATE_CHECKPOINT_BYTES: &str = "classpulse_aggregate_checkpoint_bytes_total";

/// Live records handed to the wall's channel. Labels: `outcome` (`published`: the broker or
/// the board has it; `failed`: a send failed, retried unless a newer record replaced it).
pub const LIVE_RECORDS: &str = "classpulse_live_records_total";
/// Live records replaced, unsent, by a newer record of their class (the broker was slow or
/// away): the wall skips them.
pub const LIVE_RECORDS_SUPERSEDED: &str = "classpulse_live_records_superseded_total";
/// Classes with a live record not yet acknowledged by the broker.
pub const LIVE_RECORDS_PENDING: &str = "classpulse_live_records_pending";
/// Screen server: walls connected (event streams open).
pub const SCREENS_CLIENTS: &str = "classpulse_screens_clients";
/// Screen server: live records read from the topic. Labels: `outcome` (`shown`: newer than
/// the board's; `not_newer`; `too_old`: older than the lookback; `malformed`).
pub const SCREENS_RECORDS_IN: &str = "classpulse_screens_records_in_total";
/// Screen server: records sent to walls.
pub const SCREENS_EVENTS_SENT: &str = "classpulse_screens_events_sent_total";
/// Screen server: walls cut. Labels: `reason` (`stalled`: its connection took nothing for
/// 10 s; `full`: refused, the server holds its most walls).
pub const SCREENS_CLIENTS_CUT: &str = "classpulse_screens_clients_cut_total";
/// Screen server: walls that fell more than a few records behind their studio (a burst) and
/// were sent each class's newest record instead of the ones they missed.
pub const SCREENS_WALLS_CAUGHT_UP: &str = "classpulse_screens_walls_caught_up_total";
/// Screen server: age of a record when sent to a wall (from its publication).
pub const SCREENS_RECORD_AGE_SECONDS: &str = "classpulse_screens_record_age_seconds";
/// Screen server: classes on the board.
pub const SCREENS_CLASSES: &str = "classpulse_screens_classes";

/// Write capacity units DynamoDB reports consumed (ReturnConsumedCapacity=TOTAL). Labels:
/// `table`. With the events counted, write units per 1,000 events: the table's cost.
pub const DYNAMODB_WRITE_UNITS: &str = "classpulse_dynamodb_write_units_total";
/// Items DynamoDB accepted. Labels: `table`.
pub const DYNAMODB_ITEMS: &str = "classpulse_dynamodb_items_written_total";
/// Calls or items DynamoDB throttled (throttling errors and UnprocessedItems). Labels: `table`.
pub const DYNAMODB_THROTTLED: &str = "classpulse_dynamodb_throttled_total";
/// Conditional writes refused because the table already holds a result as new or newer.
/// Labels: `table`.
pub const DYNAMODB_CONDITIONAL_REFUSALS: &str = "classpulse_dynamodb_conditional_refusals_total";
/// Calls allowed in flight by the adaptive (AIMD) limit. Labels: `table`.
pub const DYNAMODB_CONCURRENCY: &str = "classpulse_dynamodb_concurrency_limit";
/// Items DynamoDB refused as invalid; their events went to the dead letters. Labels: `table`.
pub const DYNAMODB_REJECTED_ITEMS: &str = "classpulse_dynamodb_rejected_items_total";

/// Installs the Prometheus recorder and describes every metric. Returns the handle that
/// renders `/metrics`. Call once per process.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let latency_buckets = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        600.0,
    ];
    let batch_buckets = [
        1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency_buckets)?
        .set_buckets_for_metric(Matcher::Full(BATCH_EVENTS.into()), &batch_buckets)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_counter!(
        LIVE_RECORDS,
        Unit::Count,
        "Live records handed to the walls' channel, by outcome (published, failed)."
    );
    describe_counter!(
        LIVE_RECORDS_SUPERSEDED,
        Unit::Count,
        "Live records replaced unsent by a newer record of their class."
    );
    describe_gauge!(
        LIVE_RECORDS_PENDING,
        Unit::Count,
        "Classes with a live record not yet acknowledged by the broker."
    );
    describe_gauge!(
        SCREENS_CLIENTS,
        Unit::Count,
        "Walls connected to the screen server."
    );
    describe_counter!(
        SCREENS_RECORDS_IN,
        Unit::Count,
        "Live records the screen server read, by outcome (shown, not_newer, too_old, malformed)."
    );
    describe_counter!(SCREENS_EVENTS_SENT, Unit::Count, "Records sent to walls.");
    describe_counter!(
        SCREENS_CLIENTS_CUT,
        Unit::Count,
        "Walls cut or refused, by reason (stalled, full)."
    );
    describe_counter!(
        SCREENS_WALLS_CAUGHT_UP,
        Unit::Count,
        "Walls that fell behind their studio and were sent each class's newest record."
    );
    describe_histogram!(
        SCREENS_RECORD_AGE_SECONDS,
        Unit::Seconds,
        "Age of a live record when sent to a wall, from its publication."
    );
    describe_gauge!(
        SCREENS_CLASSES,
        Unit::Count,
        "Classes on the screen server's board."
    );
    describe_counter!(
        SOURCE_ERRORS,
        Unit::Count,
        "Errors the source reported, by class (unavailable, denied, partition)."
    );
    describe_counter!(
        EVENTS_DUPLICATE,
        Unit::Count,
        "Events with an event_id already counted for their class: left out of aggregates and lake."
    );
    describe_counter!(
        EVENTS_ERASED,
        Unit::Count,
        "Events and rejected inputs of members on the erasure list: left out of the lake, the tables, the aggregates and the dead letters."
    );
    describe_counter!(
        EVENTS_LATE,
        Unit::Count,
        "Events beyond the allowed lateness or for a final class: left out of aggregates, flagged in the lake."
    );
    describe_counter!(
        ID_SEGMENT_REQUESTS,
        Unit::Count,
        "Requests for sealed id segments, by request (put, list, get)."
    );
    describe_counter!(
        ID_SEGMENT_LOOKUPS,
        Unit::Count,
        "Late events looked up in their class's sealed id segments, by outcome (duplicate, late)."
    );
    describe_gauge!(
        ID_SEGMENT_CACHED_IDS,
        Unit::Count,
        "Ids held by the cache of sealed id segments."
    );
    describe_counter!(
        MEMBER_PROFILES_REJECTED,
        Unit::Count,
        "Member-profile fields ignored as out of range, by field."
    );
    describe_counter!(
        MEMBER_PROFILE_READS,
        Unit::Count,
        "Member profiles read from the members table, by outcome (found, absent, failed)."
    );
    describe_gauge!(
        MEMBER_PROFILES_WAITING,
        Unit::Count,
        "Members of open classes waiting for their profile."
    );
    describe_counter!(
        HR_MAX_OBSERVED_WRITES,
        Unit::Count,
        "Observed maximum heart rates written to the aggregates table, by outcome (raised, kept)."
    );
    describe_gauge!(
        AGGREGATE_CLASSES_OPEN,
        Unit::Count,
        "Classes with open aggregate state."
    );
    describe_counter!(
        AGGREGATE_CLASSES_FINAL,
        Unit::Count,
        "Classes made final, by trigger (event_time, idle, end_of_input)."
    );
    describe_counter!(
        AGGREGATE_HANDOFFS,
        Unit::Count,
        "Class parts moved between partitions, by outcome (handed_over, merged, merged_inexact, too_late)."
    );
    describe_counter!(
        AGGREGATE_PARTITIONS_REFUSED,
        Unit::Count,
        "Partitions refused because their newest checkpoint is of a newer format than this build reads."
    );
    describe_gauge!(
        AGGREGATE_STATE_BYTES,
        Unit::Bytes,
        "Approximate memory held by aggregate state."
    );
    describe_histogram!(
        AGGREGATE_CHECKPOINT_SECONDS,
        Unit::Seconds,
        "Time to write one round of aggregate checkpoints and final results."
    );
    describe_counter!(
        AGGREGATE_CHECKPOINT_BYTES,
        Unit::Bytes,
        "Bytes of aggregate checkpoints written."
    );
    describe_counter!(MESSAGES_IN, Unit::Count, "Messages read from the source.");
    describe_counter!(
        EVENTS_IN,
        Unit::Count,
        "Valid events decoded, by event type."
    );
    describe_counter!(
        EVENTS_REJECTED,
        Unit::Count,
        "Inputs rejected and dead-lettered, by reason."
    );
    describe_counter!(SINK_RECORDS, Unit::Count, "Records made durable, by sink.");
    describe_counter!(SINK_OBJECTS, Unit::Count, "Objects written, by sink.");
    describe_counter!(SINK_BYTES, Unit::Bytes, "Bytes written, by sink.");
    describe_histogram!(
        SINK_WRITE_SECONDS,
        Unit::Seconds,
        "Latency of one durable write, by sink."
    );
    describe_counter!(
        SINK_RETRIES,
        Unit::Count,
        "Failed write attempts that will be retried, by sink and reason."
    );
    describe_gauge!(
        SINK_BUFFERED_BYTES,
        Unit::Bytes,
        "Bytes buffered in open objects, by sink."
    );
    describe_counter!(
        LAKE_COMPACTIONS,
        Unit::Count,
        "Lake hours of a partition merged into one object, by outcome (compacted, failed)."
    );
    describe_counter!(
        LAKE_COMPACTED_OBJECTS,
        Unit::Count,
        "Lake objects merged into compacted objects and deleted."
    );
    describe_counter!(
        LAKE_COMPACTED_ROWS,
        Unit::Count,
        "Lake rows rewritten by compaction."
    );
    describe_histogram!(
        LAKE_COMPACTION_SECONDS,
        Unit::Seconds,
        "Time one lake compaction took."
    );
    describe_histogram!(
        BATCH_EVENTS,
        Unit::Count,
        "Events per batch handed to the sinks."
    );
    describe_histogram!(
        END_TO_END_SECONDS,
        Unit::Seconds,
        "From event_created to durable, by sink."
    );
    describe_histogram!(
        SOURCE_MESSAGE_AGE_SECONDS,
        Unit::Seconds,
        "From a message's timestamp at the source to its decoding, by source."
    );
    describe_gauge!(
        SOURCE_LAG_MESSAGES,
        Unit::Count,
        "Messages between the read position and the end, by partition."
    );
    describe_gauge!(
        SOURCE_LAG_SECONDS,
        Unit::Seconds,
        "How far the source is behind in time (0 when caught up), by partition."
    );
    describe_counter!(
        SOURCE_OFFSET_RESETS,
        Unit::Count,
        "Offset resets forced by an out-of-range committed offset, by source."
    );
    describe_counter!(
        SOURCE_COMMITS,
        Unit::Count,
        "Position commits made to the source."
    );
    describe_gauge!(
        BATCHES_IN_FLIGHT,
        Unit::Count,
        "Batches handed to the sinks and not yet durable everywhere."
    );
    describe_gauge!(
        RESIDENT_MEMORY_BYTES,
        Unit::Bytes,
        "Resident set size of the process."
    );
    describe_gauge!(
        OPEN_FDS,
        Unit::Count,
        "File descriptors the process holds open (sockets, files)."
    );
    describe_gauge!(DRAIN_SECONDS, Unit::Seconds, "Time the last drain took.");
    describe_counter!(
        CPU_SECONDS,
        Unit::Seconds,
        "CPU time the process has used, user plus system."
    );
    describe_counter!(
        DYNAMODB_WRITE_UNITS,
        Unit::Count,
        "Write capacity units DynamoDB reports consumed, by table."
    );
    describe_counter!(
        DYNAMODB_ITEMS,
        Unit::Count,
        "Items DynamoDB accepted, by table."
    );
    describe_counter!(
        DYNAMODB_THROTTLED,
        Unit::Count,
        "Throttled calls and unprocessed items, by table; each is retried."
    );
    describe_counter!(
        DYNAMODB_CONDITIONAL_REFUSALS,
        Unit::Count,
        "Conditional writes refused because the table holds a result as new or newer, by table."
    );
    describe_gauge!(
        DYNAMODB_CONCURRENCY,
        Unit::Count,
        "Calls allowed in flight by the adaptive limit, by table."
    );
    describe_counter!(
        DYNAMODB_REJECTED_ITEMS,
        Unit::Count,
        "Items DynamoDB refused as invalid (their events are dead-lettered), by table."
    );
}

/// One DynamoDB call's outcome for `table`: items accepted and capacity consumed.
pub fn record_dynamodb_write(table: &str, items: usize, write_units: f64) {
    let table = table.to_owned();
    counter!(DYNAMODB_ITEMS, "table" => table.clone()).increment(items as u64);
    // Counters are whole numbers; capacity comes in halves for transactional or small reads,
    // whole units for writes.
    counter!(DYNAMODB_WRITE_UNITS, "table" => table).increment(write_units.ceil() as u64);
}

/// Throttled calls or unprocessed items of `table`.
pub fn record_dynamodb_throttled(table: &str, count: usize) {
    counter!(DYNAMODB_THROTTLED, "table" => table.to_owned()).increment(count as u64);
}

/// A conditional write of `table` refused as not newer.
pub fn record_dynamodb_refusal(table: &str) {
    counter!(DYNAMODB_CONDITIONAL_REFUSALS, "table" => table.to_owned()).increment(1);
}

/// The adaptive concurrency limit of `table`.
pub fn set_dynamodb_concurrency(table: &str, limit: usize) {
    gauge!(DYNAMODB_CONCURRENCY, "table" => table.to_owned()).set(limit as f64);
}

/// Items of `table` refused as invalid.
pub fn record_dynamodb_rejected(table: &str, items: usize) {
    counter!(DYNAMODB_REJECTED_ITEMS, "table" => table.to_owned()).increment(items as u64);
}

/// The ages of the messages of one raw batch at decoding, in seconds, by source.
pub fn record_message_ages(source: &'static str, ages: impl IntoIterator<Item = f64>) {
    let histogram = histogram!(SOURCE_MESSAGE_AGE_SECONDS, "source" => source);
    for age in ages {
        histogram.record(age);
    }
}

/// Counts for one decoded batch.
pub fn record_decoded(
    source: &'static str,
    messages: usize,
    by_type: &[u64; 5],
    by_reason: &[u64; 11],
) {
    counter!(MESSAGES_IN, "source" => source).increment(messages as u64);
    for (event_type, count) in EventType::ALL.iter().zip(by_type) {
        if *count > 0 {
            counter!(EVENTS_IN, "event_type" => event_type.as_str()).increment(*count);
        }
    }
    for (reason, count) in RejectReason::ALL.iter().zip(by_reason) {
        if *count > 0 {
            counter!(EVENTS_REJECTED, "reason" => reason.as_str()).increment(*count);
        }
    }
    histogram!(BATCH_EVENTS).record(by_type.iter().sum::<u64>() as f64);
}

/// One durable write by a sink.
pub fn record_sink_write(sink: &'static str, records: usize, bytes: usize, took: Duration) {
    counter!(SINK_RECORDS, "sink" => sink).increment(records as u64);
    counter!(SINK_OBJECTS, "sink" => sink).increment(1);
    counter!(SINK_BYTES, "sink" => sink).increment(bytes as u64);
    histogram!(SINK_WRITE_SECONDS, "sink" => sink).record(took.as_secs_f64());
}

/// A lake hour merged from `objects` objects holding `rows` rows.
pub fn record_lake_compaction(objects: usize, rows: usize, took: Duration) {
    counter!(LAKE_COMPACTIONS, "outcome" => "compacted").increment(1);
    counter!(LAKE_COMPACTED_OBJECTS).increment(objects as u64);
    counter!(LAKE_COMPACTED_ROWS).increment(rows as u64);
    histogram!(LAKE_COMPACTION_SECONDS).record(took.as_secs_f64());
}

/// A lake compaction given up (its objects stay as they were).
pub fn record_lake_compaction_failed() {
    counter!(LAKE_COMPACTIONS, "outcome" => "failed").increment(1);
}

/// End-to-end latencies of one durable write, as `(latency seconds, events)` buckets.
pub fn record_end_to_end(sink: &'static str, buckets: impl IntoIterator<Item = (f64, u64)>) {
    let histogram = histogram!(END_TO_END_SECONDS, "sink" => sink);
    for (seconds, count) in buckets {
        histogram.record_many(seconds, count as usize);
    }
}

/// A write attempt that failed and will be retried. `reason` is from a fixed set.
pub fn record_sink_retry(sink: &'static str, reason: &'static str) {
    counter!(SINK_RETRIES, "sink" => sink, "reason" => reason).increment(1);
}

/// Bytes a sink holds in memory.
pub fn set_sink_buffered(sink: &'static str, bytes: usize) {
    gauge!(SINK_BUFFERED_BYTES, "sink" => sink).set(bytes as f64);
}

/// Lag of one partition.
pub fn set_source_lag(source: &'static str, partition: &PartitionId, messages: u64, seconds: f64) {
    let label = partition.to_string();
    LAG_SECONDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(label.clone(), seconds);
    gauge!(SOURCE_LAG_MESSAGES, "source" => source, "partition" => label.clone())
        .set(messages as f64);
    gauge!(SOURCE_LAG_SECONDS, "source" => source, "partition" => label).set(seconds);
}

/// Sets how far behind `partition` is in time only (Kinesis reports `MillisBehindLatest`, not
/// a count of records).
pub fn set_source_lag_seconds(source: &'static str, partition: &PartitionId, seconds: f64) {
    let label = partition.to_string();
    LAG_SECONDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(label.clone(), seconds);
    gauge!(SOURCE_LAG_SECONDS, "source" => source, "partition" => label).set(seconds);
}

/// A partition this task no longer reads: its lag is no longer this task's.
pub fn clear_source_lag(source: &'static str, partition: &PartitionId) {
    let label = partition.to_string();
    LAG_SECONDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&label);
    gauge!(SOURCE_LAG_SECONDS, "source" => source, "partition" => label).set(0.0);
}

/// Sets the number of partitions assigned or shard leases held.
pub fn set_leases_held(source: &'static str, leases: usize) {
    gauge!(SOURCE_LEASES_HELD, "source" => source).set(leases as f64);
}

/// Lag in seconds per partition, as last set: the Embedded Metric Format line reads it.
static LAG_SECONDS: std::sync::Mutex<std::collections::BTreeMap<String, f64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// CloudWatch namespace of the Embedded Metric Format lines.
pub const EMF_NAMESPACE: &str = "classpulse";
/// The metric autoscaling follows: the most any partition of this task is behind.
pub const EMF_LAG_METRIC: &str = "SourceLagSeconds";

/// One CloudWatch Embedded Metric Format log line (JSON) holding the task's largest source lag
/// in seconds (0 with no partition), under dimension `ConsumerGroup` = `group`. CloudWatch
/// turns it into a metric; the service scales on its maximum over tasks (see
/// `deploy/cloudformation/classpulse.yaml`). MSK's own OffsetLag follows committed offsets,
/// which the lake holds back for minutes, and would scale on a sawtooth.
pub fn emf_lag_line(group: &str, now_ms: i64) -> String {
    let lag = LAG_SECONDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .copied()
        .fold(0.0_f64, f64::max);
    serde_json::json!({
        "_aws": {
            "Timestamp": now_ms,
            "CloudWatchMetrics": [{
                "Namespace": EMF_NAMESPACE,
                "Dimensions": [["ConsumerGroup"]],
                "Metrics": [{"Name": EMF_LAG_METRIC, "Unit": "Seconds"}],
            }],
        },
        "ConsumerGroup": group,
        EMF_LAG_METRIC: lag,
    })
    .to_string()
}

/// An offset reset forced by an out-of-range committed offset.
pub fn record_offset_reset(source: &'static str) {
    counter!(SOURCE_OFFSET_RESETS, "source" => source).increment(1);
}

/// One commit of positions to the source.
pub fn record_commit(source: &'static str) {
    counter!(SOURCE_COMMITS, "source" => source).increment(1);
}

/// Batches in flight.
pub fn set_batches_in_flight(batches: usize) {
    gauge!(BATCHES_IN_FLIGHT).set(batches as f64);
}

/// The last drain's duration.
pub fn set_drain_duration(took: Duration) {
    gauge!(DRAIN_SECONDS).set(took.as_secs_f64());
}

/// Reads the resident set size, CPU time and open descriptors from /proc (Linux, as on ECS)
/// and publishes them.
pub fn sample_process() {
    if let Some(bytes) = resident_memory_bytes() {
        gauge!(RESIDENT_MEMORY_BYTES).set(bytes as f64);
    }
    if let Some(fds) = open_fds() {
        gauge!(OPEN_FDS).set(fds as f64);
    }
    if let Some(seconds) = cpu_seconds() {
        // A counter of whole units: hundredths of a second kept exact by absolute().
        counter!(CPU_SECONDS).absolute(seconds as u64);
    }
}

/// CPU seconds used (user plus system), where the platform tells.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    // Linux reports clock ticks of 1/100 s (USER_HZ) to user space.
    Some((user + system) / 100.0)
}

/// Resident set size in bytes, where the platform tells.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident_pages * 4096)
}

/// File descriptors open, where the platform tells (a leak of sockets or files shows here
/// long before the task's limit is reached).
pub fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// Records what the aggregator made of a batch's events.
pub fn record_verdicts(duplicate: u64, late: u64) {
    if duplicate > 0 {
        counter!(EVENTS_DUPLICATE).increment(duplicate);
    }
    if late > 0 {
        counter!(EVENTS_LATE).increment(late);
    }
}

/// Counts events and rejected inputs of erased members left out ([`EVENTS_ERASED`]).
pub fn record_erased(count: u64) {
    if count > 0 {
        counter!(EVENTS_ERASED).increment(count);
    }
}

/// Records a class made final.
pub fn record_class_final(trigger: &'static str) {
    counter!(AGGREGATE_CLASSES_FINAL, "trigger" => trigger).increment(1);
}

/// Counts a partition refused for a newer checkpoint ([`AGGREGATE_PARTITIONS_REFUSED`]).
pub fn record_checkpoint_refused() {
    counter!(AGGREGATE_PARTITIONS_REFUSED).increment(1);
}

/// Counts class parts moved between partitions ([`AGGREGATE_HANDOFFS`]).
pub fn record_handoffs(outcome: &'static str, parts: u64) {
    if parts > 0 {
        counter!(AGGREGATE_HANDOFFS, "outcome" => outcome).increment(parts);
    }
}

/// Counts requests for sealed id segments ([`ID_SEGMENT_REQUESTS`]).
pub fn record_id_segment_requests(request: &'static str, count: u64) {
    if count > 0 {
        counter!(ID_SEGMENT_REQUESTS, "request" => request).increment(count);
    }
}

/// Counts late events looked up in sealed id segments ([`ID_SEGMENT_LOOKUPS`]).
pub fn record_id_segment_lookups(duplicate: u64, late: u64) {
    for (outcome, count) in [("duplicate", duplicate), ("late", late)] {
        if count > 0 {
            counter!(ID_SEGMENT_LOOKUPS, "outcome" => outcome).increment(count);
        }
    }
}

/// Counts a profile's fields ignored ([`MEMBER_PROFILES_REJECTED`]).
pub fn record_profile_rejected(fields: &[&'static str]) {
    for field in fields {
        counter!(MEMBER_PROFILES_REJECTED, "field" => *field).increment(1);
    }
}

/// Counts profiles read from the members table ([`MEMBER_PROFILE_READS`]).
pub fn record_profile_reads(outcome: &'static str, count: usize) {
    if count > 0 {
        counter!(MEMBER_PROFILE_READS, "outcome" => outcome).increment(count as u64);
    }
}

/// Sets the members waiting for their profile ([`MEMBER_PROFILES_WAITING`]).
pub fn set_profiles_waiting(members: usize) {
    gauge!(MEMBER_PROFILES_WAITING).set(members as f64);
}

/// Counts an observed maximum written or kept ([`HR_MAX_OBSERVED_WRITES`]).
pub fn record_hr_max_observed(outcome: &'static str) {
    counter!(HR_MAX_OBSERVED_WRITES, "outcome" => outcome).increment(1);
}

/// Sets the ids the segment cache holds.
pub fn set_id_segment_cache(ids: usize) {
    gauge!(ID_SEGMENT_CACHED_IDS).set(ids as f64);
}

/// Sets the size of the aggregate state.
pub fn set_aggregate_state(open_classes: usize, approx_bytes: usize) {
    gauge!(AGGREGATE_CLASSES_OPEN).set(open_classes as f64);
    gauge!(AGGREGATE_STATE_BYTES).set(approx_bytes as f64);
}

/// Records one round of checkpoints written.
pub fn record_aggregate_checkpoint(bytes: usize, took: Duration) {
    counter!(AGGREGATE_CHECKPOINT_BYTES).increment(bytes as u64);
    histogram!(AGGREGATE_CHECKPOINT_SECONDS).record(took.as_secs_f64());
}

/// Records an error the source reported.
pub fn record_source_error(source: &'static str, class: &'static str) {
    counter!(SOURCE_ERRORS, "source" => source, "class" => class).increment(1);
}

/// Counts live records handed over ([`LIVE_RECORDS`]).
pub fn record_live_records(outcome: &'static str, records: u64) {
    if records > 0 {
        counter!(LIVE_RECORDS, "outcome" => outcome).increment(records);
    }
}

/// Counts live records replaced unsent ([`LIVE_RECORDS_SUPERSEDED`]).
pub fn record_live_superseded(records: u64) {
    if records > 0 {
        counter!(LIVE_RECORDS_SUPERSEDED).increment(records);
    }
}

/// Sets the classes with an unacknowledged live record ([`LIVE_RECORDS_PENDING`]).
pub fn set_live_pending(classes: usize) {
    gauge!(LIVE_RECORDS_PENDING).set(classes as f64);
}

/// Counts a wall connected ([`SCREENS_CLIENTS`]), or one gone with `-1`: the gauge moves by
/// each change, so walls that come and go at once leave it at their number.
pub fn add_screens_clients(change: i8) {
    gauge!(SCREENS_CLIENTS).increment(f64::from(change));
}

/// Counts a record the screen server read ([`SCREENS_RECORDS_IN`]).
pub fn record_screens_record_in(outcome: &'static str) {
    counter!(SCREENS_RECORDS_IN, "outcome" => outcome).increment(1);
}

/// Counts a record sent to a wall, `age` after its publication ([`SCREENS_EVENTS_SENT`],
/// [`SCREENS_RECORD_AGE_SECONDS`]).
pub fn record_screens_event_sent(age: Duration) {
    counter!(SCREENS_EVENTS_SENT).increment(1);
    histogram!(SCREENS_RECORD_AGE_SECONDS).record(age.as_secs_f64());
}

/// Counts a wall cut or refused ([`SCREENS_CLIENTS_CUT`]).
pub fn record_screens_client_cut(reason: &'static str) {
    counter!(SCREENS_CLIENTS_CUT, "reason" => reason).increment(1);
}

/// Counts a wall sent each class's newest after falling behind ([`SCREENS_WALLS_CAUGHT_UP`]).
pub fn record_screens_wall_caught_up() {
    counter!(SCREENS_WALLS_CAUGHT_UP).increment(1);
}

/// Sets the classes on the board ([`SCREENS_CLASSES`]).
pub fn set_screens_classes(classes: usize) {
    gauge!(SCREENS_CLASSES).set(classes as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emf_line_carries_the_largest_lag_under_its_namespace() {
        set_source_lag("kafka", &PartitionId::new("emf-test", 0), 10, 4.5);
        set_source_lag("kafka", &PartitionId::new("emf-test", 1), 99, 12.25);
        let line: serde_json::Value =
            serde_json::from_str(&emf_lag_line("classpulse", 1_764_090_000_000)).unwrap();
        assert_eq!(line["SourceLagSeconds"], 12.25);
        assert_eq!(line["ConsumerGroup"], "classpulse");
        let directive = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "classpulse");
        assert_eq!(directive["Metrics"][0]["Name"], "SourceLagSeconds");
        assert_eq!(directive["Dimensions"][0][0], "ConsumerGroup");
        assert_eq!(line["_aws"]["Timestamp"], 1_764_090_000_000_i64);
    }

    #[test]
    fn open_descriptors_are_counted() {
        let before = open_fds().expect("/proc/self/fd");
        let held: Vec<_> = (0..64)
            .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
            .collect();
        let during = open_fds().unwrap();
        // Other tests of this binary open and close descriptors at the same time.
        assert!(
            during >= before + 32,
            "{before} before, {during} with 64 more"
        );
        drop(held);
    }
}
