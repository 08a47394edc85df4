//! What `classpulse erase` does to one stored object, as functions of its bytes: whether a lake
//! object may hold a member (its footer and bloom filters), the object without them, and the
//! same for dead letters and results.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};

use arrow_array::{Array, BooleanArray, RecordBatch, StringArray};
use bytes::Bytes;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ArrowWriter;
use parquet::bloom_filter::Sbbf;
use parquet::file::metadata::{KeyValue, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::statistics::Statistics;
use serde_json::Value;

use crate::aggregate::output::{ClassResult, ClassSummary, Leader, MemberSummary};
use crate::decode::member_id_in;
use crate::sink::lake::{self, SCHEMA};

/// What a leaderboard shows in place of an erased member.
pub const ERASED: &str = "erased";

/// The footer entries a lake object carries as S3 user metadata too (`classpulse.` + name).
const METADATA: [&str; 11] = [
    "record-count",
    "min-time",
    "max-time",
    "source",
    "stream",
    "partition",
    "first-position",
    "last-position",
    "compacted-from",
    "schema-version",
    "classpulse-version",
];

/// A lake object's class and where a member may be, from its footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// `studio_id`, `class_id` of the row group.
    pub class: (String, String),
    /// The row group.
    pub row_group: usize,
}

/// Bytes to read from the end of an object to have its footer length.
pub const FOOTER_TAIL: usize = 8;

/// The length of the metadata that ends an object, from its last 8 bytes.
pub fn metadata_length(tail: &[u8]) -> Result<usize, String> {
    let [.., a, b, c, d, p1, p2, p3, p4] = tail else {
        return Err("shorter than a Parquet footer".into());
    };
    if [*p1, *p2, *p3, *p4] != *b"PAR1" {
        return Err("not a Parquet object (no PAR1 at its end)".into());
    }
    Ok(u32::from_le_bytes([*a, *b, *c, *d]) as usize)
}

/// Decodes the metadata (the bytes before the last 8).
pub fn decode_metadata(metadata: &[u8]) -> Result<ParquetMetaData, String> {
    ParquetMetaDataReader::decode_metadata(metadata).map_err(|e| e.to_string())
}

/// The byte range of an object holding the bloom filters of `column` in every row group (the
/// writer puts them together after the row groups), if any.
pub fn bloom_range(metadata: &ParquetMetaData, column: &str) -> Option<(u64, u64)> {
    let index = column_index(metadata, column)?;
    let mut range: Option<(u64, u64)> = None;
    for group in metadata.row_groups() {
        let chunk = group.column(index);
        let (offset, length) = (chunk.bloom_filter_offset()?, chunk.bloom_filter_length()?);
        let (start, end) = (offset as u64, offset as u64 + length as u64);
        range = Some(range.map_or((start, end), |(s, e)| (s.min(start), e.max(end))));
    }
    range
}

fn column_index(metadata: &ParquetMetaData, column: &str) -> Option<usize> {
    metadata
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.name() == column)
}

/// The row groups of an object that may hold one of `members`, by the statistics of
/// `member_id` and, where `blooms` (the bytes of [`bloom_range`], starting at `blooms_at`)
/// holds them, its bloom filters. A row group without either is a candidate.
pub fn candidates(
    metadata: &ParquetMetaData,
    blooms: Option<(u64, &[u8])>,
    members: &BTreeSet<String>,
) -> Vec<Candidate> {
    let Some(member) = column_index(metadata, "member_id") else {
        return Vec::new();
    };
    let (studio, class) = (
        column_index(metadata, "studio_id"),
        column_index(metadata, "class_id"),
    );
    let mut found = Vec::new();
    for (index, group) in metadata.row_groups().iter().enumerate() {
        let chunk = group.column(member);
        let in_range = |id: &str| match chunk.statistics() {
            Some(stats @ Statistics::ByteArray(_)) => {
                let (min, max) = (stats.min_bytes_opt(), stats.max_bytes_opt());
                min.is_none_or(|min| id.as_bytes() >= min)
                    && max.is_none_or(|max| id.as_bytes() <= max)
            }
            _ => true,
        };
        let bloom = blooms.and_then(|(at, bytes)| {
            let offset = chunk.bloom_filter_offset()? as u64;
            let length = chunk.bloom_filter_length()? as u64;
            let start = offset.checked_sub(at)? as usize;
            let slice = bytes.get(start..start + length as usize)?;
            Sbbf::from_bytes(slice).ok()
        });
        let may_hold = members
            .iter()
            .any(|id| in_range(id) && bloom.as_ref().is_none_or(|bloom| bloom.check(id.as_str())));
        if may_hold {
            let only = |column: Option<usize>| {
                column
                    .and_then(|column| group.column(column).statistics())
                    .and_then(|stats| stats.min_bytes_opt())
                    .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
                    .unwrap_or_default()
            };
            found.push(Candidate {
                class: (only(studio), only(class)),
                row_group: index,
            });
        }
    }
    found
}

/// A lake object without some members' rows.
#[derive(Debug)]
pub struct Rewritten {
    /// The new object.
    pub body: Bytes,
    /// Rows left out.
    pub removed: usize,
    /// The classes the rows left out were of.
    pub classes: BTreeSet<(String, String)>,
    /// Dates (`YYYY-MM-DD`, UTC) of the rows left out.
    pub dates: BTreeSet<String>,
    /// The members whose rows were left out.
    pub members: BTreeSet<String>,
    /// Its user metadata, as the lake writes it.
    pub metadata: Vec<(&'static str, String)>,
}

/// `body` without the rows of `members`, every row group kept in place (a class's rows stay a
/// row group, in their order), its footer's entries kept with the record count made right;
/// `None` when no row is theirs (a bloom filter's false positive).
pub fn lake_object(body: &Bytes, members: &BTreeSet<String>) -> Result<Option<Rewritten>, String> {
    let error = |e: &dyn std::fmt::Display| e.to_string();
    let reader =
        ArrowReaderMetadata::load(body, ArrowReaderOptions::new()).map_err(|e| error(&e))?;
    if reader.schema().fields() != SCHEMA.fields() {
        return Err("not the lake's schema".into());
    }
    let mut groups = Vec::with_capacity(reader.metadata().num_row_groups());
    let (mut removed, mut kept) = (0, 0);
    let mut classes = BTreeSet::new();
    let mut dates = BTreeSet::new();
    let mut found = BTreeSet::new();
    for index in 0..reader.metadata().num_row_groups() {
        let rows = reader.metadata().row_group(index).num_rows().max(1) as usize;
        let batches =
            ParquetRecordBatchReaderBuilder::new_with_metadata(body.clone(), reader.clone())
                .with_row_groups(vec![index])
                .with_batch_size(rows)
                .build()
                .map_err(|e| error(&e))?;
        let mut group = Vec::new();
        for batch in batches {
            let batch = batch.map_err(|e| error(&e))?;
            let batch = RecordBatch::try_new(SCHEMA.clone(), batch.columns().to_vec())
                .map_err(|e| error(&e))?;
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                    .ok_or_else(|| format!("no {name} column"))
            };
            let member = column("member_id")?;
            let keep: BooleanArray = member
                .iter()
                .map(|id| Some(!id.is_some_and(|id| members.contains(id))))
                .collect();
            let dropped = keep.false_count();
            if dropped > 0 {
                let (studio, class) = (column("studio_id")?, column("class_id")?);
                let created = batch
                    .column_by_name("event_created")
                    .and_then(|c| {
                        c.as_any()
                            .downcast_ref::<arrow_array::TimestampMillisecondArray>()
                    })
                    .ok_or("no event_created column")?;
                for row in (0..batch.num_rows()).filter(|row| !keep.value(*row)) {
                    if !found.contains(member.value(row)) {
                        found.insert(member.value(row).to_owned());
                    }
                    classes.insert((studio.value(row).to_owned(), class.value(row).to_owned()));
                    let date = chrono::DateTime::from_timestamp_millis(created.value(row))
                        .unwrap_or_default();
                    dates.insert(date.format("%Y-%m-%d").to_string());
                }
                removed += dropped;
                let filtered = arrow_select::filter::filter_record_batch(&batch, &keep)
                    .map_err(|e| error(&e))?;
                kept += filtered.num_rows();
                group.push(filtered);
            } else {
                kept += batch.num_rows();
                group.push(batch);
            }
        }
        groups.push(group);
    }
    if removed == 0 {
        return Ok(None);
    }
    let mut writer =
        ArrowWriter::try_new(Vec::new(), SCHEMA.clone(), Some(lake::writer_properties()))
            .map_err(|e| error(&e))?;
    for group in groups {
        let mut wrote = false;
        for batch in group.iter().filter(|batch| batch.num_rows() > 0) {
            writer.write(batch).map_err(|e| error(&e))?;
            wrote = true;
        }
        if wrote {
            writer.flush().map_err(|e| error(&e))?;
        }
    }
    let footer = |name: &str| {
        let entries = reader.metadata().file_metadata().key_value_metadata()?;
        let key = format!("classpulse.{name}");
        entries.iter().find(|kv| kv.key == key)?.value.clone()
    };
    let mut metadata = Vec::new();
    for name in METADATA {
        let value = if name == "record-count" {
            Some(kept.to_string())
        } else {
            footer(name)
        };
        if let Some(value) = value {
            writer.append_key_value_metadata(KeyValue::new(
                format!("classpulse.{name}"),
                value.clone(),
            ));
            metadata.push((name, value));
        }
    }
    let body = writer.into_inner().map_err(|e| error(&e))?;
    Ok(Some(Rewritten {
        body: Bytes::from(body),
        removed,
        classes,
        dates,
        members: found,
        metadata,
    }))
}

/// A zstd NDJSON object of dead letters without the lines whose raw input names one of
/// `members`, how many it left out and whose they were; `None` when none does.
pub fn dead_letters(
    body: &[u8],
    members: &BTreeSet<String>,
) -> Result<Option<(Bytes, usize, BTreeSet<String>)>, String> {
    let text = zstd::decode_all(body).map_err(|e| format!("not zstd: {e}"))?;
    let mut kept = Vec::with_capacity(text.len());
    let mut found = BTreeSet::new();
    let mut removed = 0;
    for line in text.split_inclusive(|byte| *byte == b'\n') {
        if line.trim_ascii().is_empty() {
            continue;
        }
        match letter_member(line) {
            Some(member) if members.contains(&member) => {
                removed += 1;
                found.insert(member);
            }
            _ => kept.extend_from_slice(line),
        }
    }
    if removed == 0 {
        return Ok(None);
    }
    let body = zstd::encode_all(kept.as_slice(), 3).map_err(|e| e.to_string())?;
    Ok(Some((Bytes::from(body), removed, found)))
}

/// The member a dead letter's raw input names, if it can be read.
fn letter_member(line: &[u8]) -> Option<String> {
    use base64::Engine;
    let letter: Value = serde_json::from_slice(line).ok()?;
    let raw = match (letter.get("raw"), letter.get("raw_base64")) {
        (Some(Value::String(raw)), _) => raw.as_bytes().to_vec(),
        (_, Some(Value::String(encoded))) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?,
        _ => return None,
    };
    member_id_in(&raw).map(str::to_owned)
}

/// A class's member lines (NDJSON of [`MemberSummary`]) without `members`' lines: the body,
/// how many lines it left out, the aliases and the ids of the members they were; `None` when
/// no line is theirs.
pub fn member_lines(body: &[u8], members: &BTreeSet<String>) -> Result<Option<Lines>, String> {
    let mut kept = Vec::with_capacity(body.len());
    let mut removed = 0;
    let (mut aliases, mut theirs) = (BTreeSet::new(), BTreeSet::new());
    for line in body.lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        let member: MemberSummary =
            serde_json::from_str(&line).map_err(|e| format!("a member line: {e}"))?;
        if members.contains(&*member.member_id) {
            removed += 1;
            aliases.extend(member.alias.map(String::from));
            theirs.insert(member.member_id.into());
        } else {
            writeln!(kept, "{line}").map_err(|e| e.to_string())?;
        }
    }
    Ok((removed > 0).then(|| (Bytes::from(kept), removed, aliases, theirs)))
}

/// What [`member_lines`] gives: the body, lines left out, their aliases and member ids.
pub type Lines = (Bytes, usize, BTreeSet<String>, BTreeSet<String>);

/// Replaces on `summary`'s leaderboards each member `erased` names (by id, or by one of
/// `aliases`, the names their profiles gave them) with [`ERASED`]; returns how many places it
/// replaced.
pub fn erase_leaders(
    summary: &mut ClassSummary,
    erased: &mut dyn FnMut(&str) -> bool,
    aliases: &BTreeSet<String>,
) -> usize {
    let mut replaced = 0;
    let boards = [
        &mut summary.leaderboard_effort,
        &mut summary.leaderboard_work,
        &mut summary.leaderboard_treadmill,
        &mut summary.leaderboard_rower,
        &mut summary.leaderboard_bike,
    ];
    let older = summary.leaderboard_distance.iter_mut();
    for board in boards.into_iter().chain(older) {
        for leader in board.iter_mut() {
            let theirs = leader.member_id.as_deref().is_some_and(&mut *erased)
                || leader
                    .alias
                    .as_deref()
                    .is_some_and(|alias| alias != ERASED && aliases.contains(alias));
            if theirs {
                *leader = Leader {
                    member_id: None,
                    alias: Some(ERASED.into()),
                    value: leader.value,
                };
                replaced += 1;
            }
        }
    }
    replaced
}

/// A class summary object (one JSON line) with `members` replaced on its leaderboards; `None`
/// when none is on them.
pub fn class_summary(
    body: &[u8],
    members: &BTreeSet<String>,
    aliases: &BTreeSet<String>,
) -> Result<Option<(Bytes, usize)>, String> {
    let mut summary: ClassSummary =
        serde_json::from_slice(body).map_err(|e| format!("a class summary: {e}"))?;
    let replaced = erase_leaders(&mut summary, &mut |id| members.contains(id), aliases);
    if replaced == 0 {
        return Ok(None);
    }
    let mut body = serde_json::to_vec(&summary).map_err(|e| e.to_string())?;
    body.push(b'\n');
    Ok(Some((Bytes::from(body), replaced)))
}

/// A whole class result (the live document, the aggregates table's `live` item, a result
/// waiting in a partition's outbox) without the members `erased` names: their summaries left
/// out, their places on the boards [`ERASED`]. Returns whether it changed anything.
pub fn class_result(result: &mut ClassResult, erased: &mut dyn FnMut(&str) -> bool) -> bool {
    let before = result.members.len();
    let mut aliases = BTreeSet::new();
    result.members.retain(|member| {
        let theirs = erased(&member.member_id);
        if theirs {
            aliases.extend(member.alias.as_deref().map(str::to_owned));
        }
        !theirs
    });
    let replaced = erase_leaders(&mut result.summary, erased, &aliases);
    if before != result.members.len() {
        result.summary.members = result.members.len() as u64;
    }
    before != result.members.len() || replaced > 0
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::sink::lake::tests::{encode, event, groups};

    fn members(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|id| (*id).to_owned()).collect()
    }

    #[test]
    fn metadata_length_reads_the_footer_and_refuses_what_is_not_parquet() {
        let mut tail = 1234u32.to_le_bytes().to_vec();
        tail.extend_from_slice(b"PAR1");
        assert_eq!(metadata_length(&tail), Ok(1234));
        assert!(metadata_length(b"12345678").unwrap_err().contains("PAR1"));
        assert!(metadata_length(b"PAR1").is_err());
    }

    /// Probes `object` as `classpulse erase` does: footer, then the bloom filters' range.
    fn probe(object: &Bytes, members: &BTreeSet<String>) -> Vec<Candidate> {
        let length = metadata_length(&object[object.len() - FOOTER_TAIL..]).unwrap();
        let end = object.len() - FOOTER_TAIL;
        let metadata = decode_metadata(&object[end - length..end]).unwrap();
        let (start, stop) = bloom_range(&metadata, "member_id").expect("bloom filters");
        candidates(
            &metadata,
            Some((start, &object[start as usize..stop as usize])),
            members,
        )
    }

    fn lake() -> Bytes {
        let mut events = Vec::new();
        for (i, member) in ["m1", "m2", "m3"].iter().enumerate() {
            events.push(event(10 + i, "s1", "c1", member, 1_000 + i as i64));
            events.push(event(20 + i, "s1", "c2", member, 2_000 + i as i64));
        }
        events.push(event(30, "s2", "c1", "m2", 3_000));
        encode(&events)
    }

    #[test]
    fn the_footer_and_bloom_filters_name_the_row_groups_a_member_may_be_in() {
        let object = lake();
        let found = probe(&object, &members(&["m3"]));
        let classes: Vec<_> = found.iter().map(|c| c.class.clone()).collect();
        assert_eq!(
            classes,
            [("s1".into(), "c1".into()), ("s1".into(), "c2".into())]
        );
        assert_eq!(probe(&object, &members(&["m2"])).len(), 3);
        assert!(probe(&object, &members(&["m7", "x0"])).is_empty());
    }

    #[test]
    fn a_rewritten_object_holds_every_other_row_as_it_was() {
        let object = lake();
        let before = groups(&object);
        let rewritten = lake_object(&object, &members(&["m2", "m9"]))
            .unwrap()
            .unwrap();
        assert_eq!(rewritten.removed, 3);
        assert_eq!(rewritten.members, members(&["m2"]), "m9 has no rows");
        assert_eq!(
            rewritten.classes,
            [("s1", "c1"), ("s1", "c2"), ("s2", "c1")]
                .iter()
                .map(|(s, c)| ((*s).to_owned(), (*c).to_owned()))
                .collect()
        );
        let after = groups(&rewritten.body);
        let expected: Vec<_> = before
            .iter()
            .map(|group| {
                group
                    .iter()
                    .filter(|row| row.2 != "m2")
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .filter(|group| !group.is_empty())
            .collect();
        assert_eq!(
            after, expected,
            "the other rows, in their row groups and order"
        );
        assert!(rewritten
            .metadata
            .contains(&("record-count", "4".to_owned())));
        assert!(probe(&rewritten.body, &members(&["m2"])).is_empty());
        assert!(lake_object(&rewritten.body, &members(&["m2"]))
            .unwrap()
            .is_none());
    }

    #[test]
    fn dead_letters_of_a_member_go_and_the_rest_stay() {
        let lines = [
            r#"{"reason":"bad_format","raw":"{\"member_id\":\"m2\",\"bpm\":\"x\"}"}"#,
            r#"{"reason":"not_json","raw":"garbage"}"#,
            r#"{"reason":"bad_format","raw":"{\"member_id\": \"m3\"}"}"#,
        ];
        let body = zstd::encode_all(lines.join("\n").as_bytes(), 3).unwrap();
        let (kept, removed, found) = dead_letters(&body, &members(&["m2"])).unwrap().unwrap();
        assert_eq!((removed, found), (1, members(&["m2"])));
        let text = String::from_utf8(zstd::decode_all(&kept[..]).unwrap()).unwrap();
        assert_eq!(text, format!("{}\n{}", lines[1], lines[2]));
        assert!(dead_letters(&body, &members(&["m9"])).unwrap().is_none());
    }

    proptest! {
        #[test]
        fn any_members_erased_leave_exactly_the_others_rows(
            rows in proptest::collection::vec((0u8..4, 0u8..3, 0u8..6, 0i64..10_000), 1..60),
            erased in proptest::collection::btree_set(0u8..6, 0..4),
        ) {
            let events: Vec<_> = rows
                .iter()
                .enumerate()
                .map(|(i, (studio, class, member, time))| {
                    event(i, &format!("s{studio}"), &format!("c{class}"), &format!("m{member}"), *time)
                })
                .collect();
            let object = encode(&events);
            let erased: BTreeSet<String> = erased.iter().map(|m| format!("m{m}")).collect();
            let expected: Vec<Vec<_>> = groups(&object)
                .into_iter()
                .map(|group| group.into_iter().filter(|row| !erased.contains(&row.2)).collect::<Vec<_>>())
                .filter(|group| !group.is_empty())
                .collect();
            let holds = rows.iter().any(|row| erased.contains(&format!("m{}", row.2)));
            match lake_object(&object, &erased).unwrap() {
                Some(rewritten) => {
                    prop_assert!(holds);
                    prop_assert_eq!(groups(&rewritten.body), expected);
                    // Every row group holding a member is found by the probe.
                    prop_assert!(probe(&object, &erased).len() >= rewritten.classes.len());
                }
                None => prop_assert!(!holds),
            }
        }
    }
}
