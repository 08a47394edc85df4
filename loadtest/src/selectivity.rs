//! How selectively the lake reads: for a query of one class-hour (`dt`, `hour`, `studio_id`,
//! `class_id`) and of one member over a day (`dt`, `member_id`), the rows in the row groups a
//! reader cannot skip, against the rows the query returns. A row group is skipped when its
//! min/max statistics exclude the value, or its bloom filter says the value is not there, as
//! Athena and DuckDB do; the partition keys pick the folders.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use arrow_array::{Array, RecordBatch, StringArray};
use bytes::Bytes;
use parquet::bloom_filter::Sbbf;
use parquet::file::properties::ReaderProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::serialized_reader::ReadOptionsBuilder;
use parquet::file::statistics::Statistics;
use serde::Serialize;

/// The id columns a query selects by.
pub const COLUMNS: [&str; 3] = ["studio_id", "class_id", "member_id"];
/// Class-hours and member-days measured, at most (evenly spread over all of them).
const SAMPLE: usize = 400;

/// One id column of a row group: its min/max and its bloom filter, where written.
struct ColumnFilter {
    range: Option<(String, String)>,
    bloom: Option<Sbbf>,
}

impl ColumnFilter {
    /// Whether a reader must read the row group for `value`.
    fn may_hold(&self, value: &str) -> bool {
        let in_range = self
            .range
            .as_ref()
            .is_none_or(|(min, max)| min.as_str() <= value && value <= max.as_str());
        in_range && self.bloom.as_ref().is_none_or(|bloom| bloom.check(&value))
    }
}

struct RowGroup {
    /// (`dt`, `hour`) of its object.
    folder: (String, String),
    rows: u64,
    /// In [`COLUMNS`] order.
    filters: Vec<ColumnFilter>,
}

/// The lake's row groups and the rows of each class-hour and member-day, gathered object by
/// object.
#[derive(Default)]
pub struct Selectivity {
    groups: Vec<RowGroup>,
    /// Rows by (`dt`, `hour`), then by `studio_id` and `class_id` (joined by a tab).
    class_hours: HashMap<(String, String), HashMap<String, u64>>,
    /// Rows by `dt`, then by `member_id`.
    member_days: HashMap<String, HashMap<String, u64>>,
}

/// Rows read over rows returned, over the sample.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratios {
    pub queries: usize,
    pub mean: f64,
    pub max: f64,
}

/// The figures of a lake.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub row_groups: usize,
    pub class_hour: Ratios,
    pub member_day: Ratios,
}

impl Selectivity {
    /// Takes in the row groups of one object, `key` its path (with `dt=` and `hour=`
    /// folders): their sizes, statistics and bloom filters.
    pub fn row_groups(&mut self, key: &str, body: &Bytes) -> anyhow::Result<()> {
        let folder = folder(key);
        let options = ReadOptionsBuilder::new()
            .with_reader_properties(
                ReaderProperties::builder()
                    .set_read_bloom_filter(true)
                    .build(),
            )
            .build();
        let reader = SerializedFileReader::new_with_options(body.clone(), options)
            .with_context(|| format!("reading {key}"))?;
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let indexes = crate::verify::leaf_indexes(&schema, &COLUMNS, key)?;
        for index in 0..reader.num_row_groups() {
            let group = reader.get_row_group(index)?;
            let meta = group.metadata();
            let filters = indexes
                .iter()
                .map(|&column| ColumnFilter {
                    range: string_range(meta.column(column).statistics()),
                    bloom: group.get_column_bloom_filter(column).cloned(),
                })
                .collect();
            self.groups.push(RowGroup {
                folder: folder.clone(),
                rows: meta.num_rows() as u64,
                filters,
            });
        }
        Ok(())
    }

    /// Counts what each query returns from rows of object `key` (a batch with the
    /// [`COLUMNS`]): the rows of each class-hour and member-day.
    pub fn rows(&mut self, key: &str, batch: &RecordBatch) -> anyhow::Result<()> {
        let column = |name: &str| -> anyhow::Result<&StringArray> {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .with_context(|| format!("{name} is not a string column"))
        };
        let (studios, classes, members) = (
            column("studio_id")?,
            column("class_id")?,
            column("member_id")?,
        );
        let folder = folder(key);
        let members_of_day = self.member_days.entry(folder.0.clone()).or_default();
        let classes_of_hour = self.class_hours.entry(folder).or_default();
        let mut class = String::new();
        for row in 0..batch.num_rows() {
            class.clear();
            class.push_str(studios.value(row));
            class.push('\t');
            class.push_str(classes.value(row));
            count(classes_of_hour, &class);
            count(members_of_day, members.value(row));
        }
        Ok(())
    }

    /// The ratios over an even sample of the class-hours and member-days.
    pub fn figures(&self) -> Figures {
        let class_hours: BTreeMap<(&str, &str, &str), u64> = self
            .class_hours
            .iter()
            .flat_map(|((dt, hour), classes)| {
                classes
                    .iter()
                    .map(move |(class, rows)| ((dt.as_str(), hour.as_str(), class.as_str()), *rows))
            })
            .collect();
        let member_days: BTreeMap<(&str, &str), u64> = self
            .member_days
            .iter()
            .flat_map(|(dt, members)| {
                members
                    .iter()
                    .map(move |(member, rows)| ((dt.as_str(), member.as_str()), *rows))
            })
            .collect();
        let class_hour = ratios(sample(&class_hours), |(dt, hour, class)| {
            let (studio, class) = class.split_once('\t').unwrap_or((class, ""));
            self.groups
                .iter()
                .filter(|g| g.folder.0 == *dt && g.folder.1 == *hour)
                .filter(|g| g.filters[0].may_hold(studio) && g.filters[1].may_hold(class))
                .map(|g| g.rows)
                .sum()
        });
        let member_day = ratios(sample(&member_days), |(dt, member)| {
            self.groups
                .iter()
                .filter(|g| g.folder.0 == *dt && g.filters[2].may_hold(member))
                .map(|g| g.rows)
                .sum()
        });
        Figures {
            row_groups: self.groups.len(),
            class_hour,
            member_day,
        }
    }
}

/// Every n-th entry, so that at most [`SAMPLE`] are measured.
fn sample<K: Clone>(rows: &BTreeMap<K, u64>) -> Vec<(K, u64)> {
    let step = rows.len().div_ceil(SAMPLE).max(1);
    rows.iter()
        .step_by(step)
        .map(|(key, rows)| (key.clone(), *rows))
        .collect()
}

fn ratios<K>(sample: Vec<(K, u64)>, read: impl Fn(&K) -> u64) -> Ratios {
    let each: Vec<f64> = sample
        .iter()
        .map(|(key, returned)| read(key) as f64 / (*returned).max(1) as f64)
        .collect();
    Ratios {
        queries: each.len(),
        mean: each.iter().sum::<f64>() / each.len().max(1) as f64,
        max: each.iter().copied().fold(0.0, f64::max),
    }
}

/// One more row of `key`, allocating the key only the first time.
fn count(rows: &mut HashMap<String, u64>, key: &str) {
    match rows.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            rows.insert(key.to_owned(), 1);
        }
    }
}

/// (`dt`, `hour`) of an object's path.
fn folder(key: &str) -> (String, String) {
    (partition_value(key, "dt="), partition_value(key, "hour="))
}

/// The value of a Hive-style folder `name=` in `key` (empty without one).
fn partition_value(key: &str, name: &str) -> String {
    key.split('/')
        .find_map(|part| part.strip_prefix(name))
        .unwrap_or_default()
        .to_owned()
}

fn string_range(statistics: Option<&Statistics>) -> Option<(String, String)> {
    match statistics? {
        Statistics::ByteArray(s) => Some((
            String::from_utf8(s.min_opt()?.data().to_vec()).ok()?,
            String::from_utf8(s.max_opt()?.data().to_vec()).ok()?,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_group_is_read_unless_its_range_or_its_bloom_filter_excludes_the_value() {
        let mut bloom = Sbbf::new_with_ndv_fpp(16, 0.01).unwrap();
        bloom.insert("m1");
        let filter = ColumnFilter {
            range: Some(("m0".into(), "m5".into())),
            bloom: Some(bloom),
        };
        assert!(filter.may_hold("m1"));
        assert!(!filter.may_hold("m9"), "out of range");
        assert!(!filter.may_hold("m3"), "in range, not in the filter");
        let unfiltered = ColumnFilter {
            range: None,
            bloom: None,
        };
        assert!(unfiltered.may_hold("anything"));
        assert_eq!(
            partition_value("lake/events/dt=2026-12-02/hour=07/k.parquet", "hour="),
            "07"
        );
    }

    #[test]
    fn the_sample_spreads_over_every_key() {
        let rows: BTreeMap<u32, u64> = (0..1_000).map(|k| (k, 1)).collect();
        let picked = sample(&rows);
        assert!(picked.len() <= SAMPLE && picked.len() >= SAMPLE / 2);
        assert_eq!(picked[0].0, 0);
        let r = ratios(vec![(1, 10), (2, 5)], |k| if *k == 1 { 20 } else { 5 });
        assert_eq!((r.queries, r.mean, r.max), (2, 1.5, 2.0));
    }
}
