//! The lake: every valid event as a row of a Parquet object, queryable in place by Athena,
//! DuckDB or Spark.
//!
//! Columns: the base fields, one typed nullable column per known metric, the original
//! `event_data` as JSON text (schema on read), and ingest metadata (source position, ingest
//! time). An open object holds its rows by class; when it is cut, each class becomes a row
//! group of its own, sorted by member and time, with bloom filters on the studio, class and
//! member ids, so that a query for one class or one member reads a sliver of the lake
//! (docs/lake.md, "Layout").

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow_select::interleave::interleave_record_batch;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{BloomFilterProperties, EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::object::{Encoder, ObjectFormat, PartitionObjects};
use crate::decode::DecodedBatch;
use crate::event::{Metrics, PerformanceEvent, Verdict};

/// Rows a class's builders are first made for; they grow as its rows come.
const CLASS_ROWS: usize = 64;

/// False positive rate of the id columns' bloom filters.
const BLOOM_FPP: f64 = 0.01;

/// Bytes held per byte encoded, as `benches/lake.rs` measures the simulator's events (about
/// 300 bytes a row held, 30 to 40 in the object): how an object's encoded size is estimated
/// against `CLASSPULSE_LAKE_MAX_BYTES` before it is encoded.
const RAW_PER_ENCODED_BYTE: usize = 8;

/// The lake's Parquet schema.
pub static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let utc = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let mut fields = vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("event_created", utc(), false),
        Field::new("studio_id", DataType::Utf8, false),
        Field::new("class_id", DataType::Utf8, false),
        Field::new("member_id", DataType::Utf8, false),
        Field::new("device_id", DataType::Utf8, true),
        Field::new("schema_version", DataType::Int32, false),
    ];
    fields.extend(
        Metrics::NUMBER_NAMES
            .iter()
            .map(|name| Field::new(*name, DataType::Float64, true)),
    );
    fields.extend([
        Field::new("exercise", DataType::Utf8, true),
        Field::new("reps", DataType::Int32, true),
        Field::new("event_data", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("stream", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("position", DataType::Int64, false),
        Field::new("ingested_at", utc(), false),
        Field::new("late", DataType::Boolean, false),
    ]);
    Arc::new(Schema::new(fields))
});

/// Where a row came from, shared by every row of a batch.
pub struct Ingest<'a> {
    /// Source kind ("kafka", "simulator").
    pub source: &'a str,
    /// Topic or stream.
    pub stream: &'a str,
    /// Partition number.
    pub partition: u32,
    /// When the batch was received (epoch ms).
    pub received_at_ms: i64,
}

/// Arrow builders for one chunk of rows.
struct EventColumns {
    event_id: StringBuilder,
    event_type: StringBuilder,
    event_created: TimestampMillisecondBuilder,
    studio_id: StringBuilder,
    class_id: StringBuilder,
    member_id: StringBuilder,
    device_id: StringBuilder,
    schema_version: Int32Builder,
    numbers: [Float64Builder; 9],
    exercise: StringBuilder,
    reps: Int32Builder,
    event_data: StringBuilder,
    source: StringBuilder,
    stream: StringBuilder,
    partition: Int32Builder,
    position: Int64Builder,
    ingested_at: TimestampMillisecondBuilder,
    late: BooleanBuilder,
    rows: usize,
}

impl EventColumns {
    fn new(rows: usize) -> EventColumns {
        let utc = || TimestampMillisecondBuilder::with_capacity(rows).with_timezone("UTC");
        let strings = |bytes_per_row| StringBuilder::with_capacity(rows, rows * bytes_per_row);
        EventColumns {
            event_id: strings(36),
            event_type: strings(10),
            event_created: utc(),
            studio_id: strings(12),
            class_id: strings(20),
            member_id: strings(12),
            device_id: strings(16),
            schema_version: Int32Builder::with_capacity(rows),
            numbers: std::array::from_fn(|_| Float64Builder::with_capacity(rows)),
            exercise: strings(0),
            reps: Int32Builder::with_capacity(rows),
            event_data: strings(80),
            source: strings(8),
            stream: strings(12),
            partition: Int32Builder::with_capacity(rows),
            position: Int64Builder::with_capacity(rows),
            ingested_at: utc(),
            late: BooleanBuilder::with_capacity(rows),
            rows: 0,
        }
    }

    fn append(&mut self, event: &PerformanceEvent, ingest: &Ingest<'_>) {
        self.event_id.append_value(&event.event_id);
        self.event_type.append_value(event.event_type.as_str());
        self.event_created.append_value(event.event_time_ms);
        self.studio_id.append_value(&event.studio_id);
        self.class_id.append_value(&event.class_id);
        self.member_id.append_value(&event.member_id);
        self.device_id.append_option(event.device_id.as_deref());
        self.schema_version
            .append_value(i32::from(event.schema_version));
        for (builder, value) in self.numbers.iter_mut().zip(event.metrics.numbers()) {
            builder.append_option(value);
        }
        self.exercise
            .append_option(event.metrics.exercise.as_deref());
        self.reps
            .append_option(event.metrics.reps.map(|reps| reps as i32));
        self.event_data.append_value(event.event_data.get());
        self.source.append_value(ingest.source);
        self.stream.append_value(ingest.stream);
        self.partition.append_value(ingest.partition as i32);
        self.position.append_value(event.offset as i64);
        self.ingested_at.append_value(ingest.received_at_ms);
        self.late.append_value(event.verdict == Verdict::Late);
        self.rows += 1;
    }

    /// Bytes a row of `event` takes in the builders: its strings, their offsets and the
    /// fixed-width columns.
    fn row_bytes(event: &PerformanceEvent, ingest: &Ingest<'_>) -> usize {
        const STRINGS: usize = 10;
        const FIXED: usize = 8 * 13 + 4 * 3 + 1;
        let strings = event.event_id.len()
            + event.event_type.as_str().len()
            + event.studio_id.len()
            + event.class_id.len()
            + event.member_id.len()
            + event.device_id.as_ref().map_or(0, |id| id.len())
            + event.metrics.exercise.as_ref().map_or(0, |e| e.len())
            + event.event_data.get().len()
            + ingest.source.len()
            + ingest.stream.len();
        strings + 4 * STRINGS + FIXED
    }

    fn finish(&mut self) -> Result<RecordBatch, String> {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.event_type.finish()),
            Arc::new(self.event_created.finish()),
            Arc::new(self.studio_id.finish()),
            Arc::new(self.class_id.finish()),
            Arc::new(self.member_id.finish()),
            Arc::new(self.device_id.finish()),
            Arc::new(self.schema_version.finish()),
        ];
        columns.extend(
            self.numbers
                .iter_mut()
                .map(|builder| Arc::new(builder.finish()) as ArrayRef),
        );
        columns.extend([
            Arc::new(self.exercise.finish()) as ArrayRef,
            Arc::new(self.reps.finish()),
            Arc::new(self.event_data.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.stream.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.position.finish()),
            Arc::new(self.ingested_at.finish()),
            Arc::new(self.late.finish()),
        ]);
        self.rows = 0;
        RecordBatch::try_new(SCHEMA.clone(), columns).map_err(|e| e.to_string())
    }
}

/// The rows of one class held in an open object.
struct ClassRows {
    studio_id: Arc<str>,
    class_id: Arc<str>,
    columns: EventColumns,
}

/// Encodes one Parquet object: its rows are held by class until the object is cut, then each
/// class becomes its own row group(s), classes in (`studio_id`, `class_id`) order and rows in
/// (`member_id`, `event_created`) order within a class. Row-group statistics and bloom filters
/// then let a reader skip every class but the one it asks for.
pub struct ParquetEncoder {
    classes: Vec<ClassRows>,
    /// Index into `classes` by studio, then class.
    index: HashMap<Arc<str>, HashMap<Arc<str>, usize>>,
    /// The class of the last row appended: consecutive rows mostly share it.
    last: Option<usize>,
    records: usize,
    held_bytes: usize,
}

impl ParquetEncoder {
    /// An empty object.
    pub fn new() -> ParquetEncoder {
        ParquetEncoder {
            classes: Vec::new(),
            index: HashMap::new(),
            last: None,
            records: 0,
            held_bytes: 0,
        }
    }

    /// Appends one row.
    pub fn append(&mut self, event: &PerformanceEvent, ingest: &Ingest<'_>) -> Result<(), String> {
        let class = self.class_of(event);
        let rows = &mut self.classes[class].columns;
        rows.append(event, ingest);
        self.held_bytes += EventColumns::row_bytes(event, ingest);
        self.records += 1;
        Ok(())
    }

    /// The index of the event's class in `classes`, added if new.
    fn class_of(&mut self, event: &PerformanceEvent) -> usize {
        if let Some(last) = self.last {
            let held = &self.classes[last];
            if *held.class_id == *event.class_id && *held.studio_id == *event.studio_id {
                return last;
            }
        }
        let classes = self.index.entry(Arc::clone(&event.studio_id)).or_default();
        let class = match classes.get(&*event.class_id) {
            Some(class) => *class,
            None => {
                let class = self.classes.len();
                classes.insert(Arc::clone(&event.class_id), class);
                self.classes.push(ClassRows {
                    studio_id: Arc::clone(&event.studio_id),
                    class_id: Arc::clone(&event.class_id),
                    columns: EventColumns::new(CLASS_ROWS),
                });
                class
            }
        };
        self.last = Some(class);
        class
    }
}

/// How lake objects are written: by the sink, by compaction and by an erasure.
pub(crate) fn writer_properties() -> WriterProperties {
    let ids = |column: &str| ColumnPath::from(column);
    WriterProperties::builder()
        // Level 1 measured 30% faster than 3 and, on this data, smaller (benches/lake.rs).
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
        // Unique per row: a dictionary only costs time and falls back to plain anyway.
        .set_column_dictionary_enabled(ids("event_id"), false)
        .set_column_dictionary_enabled(ids("event_data"), false)
        // Min/max of ids and raw JSON help no query; comparing them costs.
        .set_column_statistics_enabled(ids("event_id"), EnabledStatistics::None)
        .set_column_statistics_enabled(ids("event_data"), EnabledStatistics::None)
        // A row group is one class: one studio, one class id, its members. Each filter is
        // sized for at most `max_ndv` values and folded down to what the group holds.
        .set_column_bloom_filter_properties(ids("studio_id"), bloom(16))
        .set_column_bloom_filter_properties(ids("class_id"), bloom(16))
        .set_column_bloom_filter_properties(ids("member_id"), bloom(1024))
        .set_created_by(format!("classpulse {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Bloom filter settings for an id column holding at most about `max_ndv` values a row group.
fn bloom(max_ndv: u64) -> BloomFilterProperties {
    BloomFilterProperties::builder()
        .with_fpp(BLOOM_FPP)
        .with_max_ndv(max_ndv)
        .build()
}

/// The rows of `batches` (of the lake's schema) as one batch in (`member_id`,
/// `event_created`, `position`) order; rows equal in all three keep their order.
pub(super) fn in_row_order(batches: &[RecordBatch]) -> Result<RecordBatch, String> {
    struct Keys<'a> {
        member: &'a arrow_array::StringArray,
        created: &'a arrow_array::TimestampMillisecondArray,
        position: &'a arrow_array::Int64Array,
    }
    let keys: Vec<Keys<'_>> = batches
        .iter()
        .map(|batch| {
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| format!("a lake batch without {name}"))
            };
            Ok(Keys {
                member: column("member_id")?.as_string::<i32>(),
                created: column("event_created")?.as_primitive(),
                position: column("position")?.as_primitive(),
            })
        })
        .collect::<Result<_, String>>()?;
    let mut order: Vec<(usize, usize)> = batches
        .iter()
        .enumerate()
        .flat_map(|(batch, rows)| (0..rows.num_rows()).map(move |row| (batch, row)))
        .collect();
    order.sort_by(|&(a, i), &(b, j)| {
        let (a, b) = (&keys[a], &keys[b]);
        a.member
            .value(i)
            .cmp(b.member.value(j))
            .then(a.created.value(i).cmp(&b.created.value(j)))
            .then(a.position.value(i).cmp(&b.position.value(j)))
    });
    if let [batch] = batches {
        if order.iter().enumerate().all(|(at, &(_, row))| at == row) {
            return Ok(batch.clone());
        }
    }
    let batches: Vec<&RecordBatch> = batches.iter().collect();
    if batches.is_empty() {
        return Ok(RecordBatch::new_empty(SCHEMA.clone()));
    }
    interleave_record_batch(&batches, &order).map_err(|e| e.to_string())
}

impl Default for ParquetEncoder {
    fn default() -> Self {
        ParquetEncoder::new()
    }
}

impl Encoder for ParquetEncoder {
    fn records(&self) -> usize {
        self.records
    }

    fn buffered_bytes(&self) -> usize {
        self.held_bytes
    }

    fn encoded_bytes(&self) -> usize {
        self.held_bytes / RAW_PER_ENCODED_BYTE
    }

    fn finish(mut self, metadata: &[(&'static str, String)]) -> Result<Bytes, String> {
        let mut writer =
            ArrowWriter::try_new(Vec::new(), SCHEMA.clone(), Some(writer_properties()))
                .map_err(|e| e.to_string())?;
        self.classes.sort_unstable_by(|a, b| {
            (&*a.studio_id, &*a.class_id).cmp(&(&*b.studio_id, &*b.class_id))
        });
        for class in &mut self.classes {
            let rows = in_row_order(&[class.columns.finish()?])?;
            writer.write(&rows).map_err(|e| e.to_string())?;
            // Ends the row group: a class never shares one with another.
            writer.flush().map_err(|e| e.to_string())?;
            class.columns = EventColumns::new(0);
        }
        for (name, value) in metadata {
            writer.append_key_value_metadata(KeyValue::new(
                format!("classpulse.{name}"),
                value.clone(),
            ));
        }
        let bytes = writer.into_inner().map_err(|e| e.to_string())?;
        Ok(Bytes::from(bytes))
    }
}

/// The lake's object format.
pub struct LakeFormat {
    /// Source kind written in each row.
    pub source_kind: &'static str,
}

impl ObjectFormat for LakeFormat {
    type Encoder = ParquetEncoder;
    const SINK: &'static str = "lake";
    const FOLDER: &'static str = "events";
    const EXTENSION: &'static str = "parquet";
    const REPLAY_INDEX: bool = true;

    fn append(
        &mut self,
        batch: &DecodedBatch,
        objects: &mut PartitionObjects<ParquetEncoder>,
    ) -> Result<(), String> {
        let ingest = Ingest {
            source: self.source_kind,
            stream: &batch.partition.stream,
            partition: batch.partition.index,
            received_at_ms: batch.received_at_ms,
        };
        // A duplicate is already in the lake (or on its way there) as its first copy.
        for event in batch
            .events
            .iter()
            .filter(|e| e.verdict != Verdict::Duplicate)
        {
            // Already in an object a previous run or owner wrote past the committed position.
            if objects.already_written(event.event_time_ms, event.offset) {
                continue;
            }
            let object = objects.for_time(event.event_time_ms);
            object.encoder.append(event, &ingest)?;
            object.include(event.offset, event.event_time_ms, &batch.ack);
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use arrow_array::Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::properties::ReaderProperties;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::file::serialized_reader::ReadOptionsBuilder;
    use proptest::prelude::*;

    use super::*;
    use crate::aggregate::reference;
    use crate::event::EventType;

    const INGEST: Ingest<'static> = Ingest {
        source: "kafka",
        stream: "performance-events",
        partition: 3,
        received_at_ms: 1_764_090_000_000,
    };

    /// A heart-rate event of `member` in `studio`'s `class`, at position `id`.
    pub(crate) fn event(
        id: usize,
        studio: &str,
        class: &str,
        member: &str,
        time_ms: i64,
    ) -> PerformanceEvent {
        let mut event = reference::event(
            &format!("e{id}"),
            member,
            time_ms,
            EventType::HeartRate,
            Metrics {
                bpm: Some(120.0),
                ..Metrics::default()
            },
            id as u64,
        );
        event.studio_id = Arc::from(studio);
        event.class_id = Arc::from(class);
        event
    }

    /// One row group as read back: its (studio, class, member, time, event id) rows.
    pub(crate) type Group = Vec<(String, String, String, i64, String)>;

    /// The object's row groups, each as its rows in stored order.
    pub(crate) fn groups(object: &Bytes) -> Vec<Group> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(object.clone()).unwrap();
        let count = builder.metadata().num_row_groups();
        (0..count)
            .map(|group| {
                let reader = ParquetRecordBatchReaderBuilder::try_new(object.clone())
                    .unwrap()
                    .with_row_groups(vec![group])
                    .build()
                    .unwrap();
                let mut rows = Vec::new();
                for batch in reader {
                    let batch = batch.unwrap();
                    let text = |name: &str| {
                        batch
                            .column_by_name(name)
                            .unwrap()
                            .as_string::<i32>()
                            .clone()
                    };
                    let (studio, class, member, id) = (
                        text("studio_id"),
                        text("class_id"),
                        text("member_id"),
                        text("event_id"),
                    );
                    let created = batch
                        .column_by_name("event_created")
                        .unwrap()
                        .as_primitive::<arrow_array::types::TimestampMillisecondType>()
                        .clone();
                    for row in 0..batch.num_rows() {
                        rows.push((
                            studio.value(row).to_owned(),
                            class.value(row).to_owned(),
                            member.value(row).to_owned(),
                            created.value(row),
                            id.value(row).to_owned(),
                        ));
                    }
                    assert_eq!(created.null_count(), 0);
                }
                rows
            })
            .collect()
    }

    pub(crate) fn encode(events: &[PerformanceEvent]) -> Bytes {
        let mut encoder = ParquetEncoder::new();
        for event in events {
            encoder.append(event, &INGEST).unwrap();
        }
        assert_eq!(encoder.records(), events.len());
        encoder
            .finish(&[("record-count", events.len().to_string())])
            .unwrap()
    }

    #[test]
    fn each_class_is_a_row_group_in_key_order_sorted_by_member_and_time() {
        // Arrival order mixes classes, members and times.
        let events = vec![
            event(1, "s2", "c1", "m9", 3_000),
            event(2, "s1", "c2", "m1", 2_000),
            event(3, "s1", "c1", "m2", 1_000),
            event(4, "s2", "c1", "m1", 5_000),
            event(5, "s1", "c1", "m1", 4_000),
            event(6, "s1", "c1", "m2", 500),
            event(7, "s1", "c2", "m1", 1_000),
        ];
        let groups = groups(&encode(&events));
        let found: Vec<Vec<&str>> = groups
            .iter()
            .map(|group| group.iter().map(|row| row.4.as_str()).collect())
            .collect();
        assert_eq!(
            found,
            vec![vec!["e5", "e6", "e3"], vec!["e7", "e2"], vec!["e4", "e1"]],
            "s1/c1, s1/c2, s2/c1; by member, then time"
        );
    }

    #[test]
    fn bloom_filters_and_statistics_tell_one_class_and_its_members_from_the_rest() {
        let mut events = Vec::new();
        for class in 0..20 {
            for member in 0..12 {
                for second in 0..5 {
                    let id = events.len();
                    let member = format!("m{:03}", class * 12 + member);
                    events.push(event(
                        id,
                        "s1",
                        &format!("c{class:02}"),
                        &member,
                        second * 1000,
                    ));
                }
            }
        }
        let object = encode(&events);
        let options = ReadOptionsBuilder::new()
            .with_reader_properties(
                ReaderProperties::builder()
                    .set_read_bloom_filter(true)
                    .build(),
            )
            .build();
        let reader = SerializedFileReader::new_with_options(object, options).unwrap();
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let column = |name: &str| {
            schema
                .columns()
                .iter()
                .position(|c| c.name() == name)
                .unwrap()
        };
        assert_eq!(reader.num_row_groups(), 20);
        let mut false_positives = 0;
        for group in 0..20 {
            let row_group = reader.get_row_group(group).unwrap();
            let class = row_group
                .get_column_bloom_filter(column("class_id"))
                .expect("a class filter");
            assert!(class.check(&format!("c{group:02}").as_str()));
            let members = row_group
                .get_column_bloom_filter(column("member_id"))
                .expect("a member filter");
            for member in 0..240 {
                let held = member / 12 == group;
                let said = members.check(&format!("m{member:03}").as_str());
                assert!(
                    said || !held,
                    "group {group} must say it may hold m{member:03}"
                );
                false_positives += usize::from(said && !held);
            }
            // Statistics: one studio and one class a group.
            let stats = row_group
                .metadata()
                .column(column("class_id"))
                .statistics()
                .unwrap();
            assert_eq!(stats.min_bytes_opt(), stats.max_bytes_opt());
        }
        // 20 groups x 228 members each not held, at a 1% target rate.
        assert!(
            false_positives <= 100,
            "{false_positives} false positives of 4,560"
        );
    }

    /// Events of a few studios, classes and members in any order.
    pub(crate) fn arrivals() -> impl Strategy<Value = Vec<PerformanceEvent>> {
        prop::collection::vec((0..2usize, 0..3usize, 0..4usize, 0..1_000i64), 1..200).prop_map(
            |rows| {
                rows.into_iter()
                    .enumerate()
                    .map(|(id, (studio, class, member, time))| {
                        event(
                            id,
                            &format!("s{studio}"),
                            &format!("c{class}"),
                            &format!("m{member}"),
                            time,
                        )
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #[test]
        fn an_object_holds_every_row_once_in_key_order(events in arrivals()) {
            let groups = groups(&encode(&events));
            let mut seen = BTreeMap::new();
            let mut previous_class: Option<(String, String)> = None;
            for group in &groups {
                let class = (group[0].0.clone(), group[0].1.clone());
                prop_assert!(group.iter().all(|row| (&row.0, &row.1) == (&class.0, &class.1)), "one class a group");
                prop_assert!(previous_class.as_ref().is_none_or(|previous| *previous < class), "classes in key order");
                prop_assert!(group.windows(2).all(|pair| (&pair[0].2, pair[0].3) <= (&pair[1].2, pair[1].3)), "members, then times, in order");
                for row in group {
                    *seen.entry(row.4.clone()).or_insert(0) += 1;
                }
                previous_class = Some(class);
            }
            let expected: BTreeMap<String, i32> = events.iter().map(|e| (e.event_id.to_string(), 1)).collect();
            prop_assert_eq!(seen, expected);
        }
    }
}
