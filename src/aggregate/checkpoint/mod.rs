//! The checkpoint format: how a partition's state and a class's part are serialised
//! (postcard, then zstd level 1), and the readers of the earlier versions still restored.
//!
//! Both start with their format version. This build writes [`VERSION`] and restores every
//! checkpoint from [`OLDEST`] on: an earlier version keeps its reader in a module of its own
//! (`v3` to `v7`), with the types as that version wrote them and an upgrade into a later
//! version's form, so a restore runs the chain up to the newest. A checkpoint of a version newer than
//! this build's (written by a newer build, met in a rolling deploy or after a rollback) is
//! [`CheckpointError::Newer`]: the stage refuses its partition and never overwrites it
//! (`docs/decisions/0015-checkpoint-versions-and-rollback.md`).
//!
//! Changing a serialised type: bump [`VERSION`], move the old definitions into `v{old}.rs`
//! with an upgrade, and write the new version's fixture with
//! `CLASSPULSE_TEST_WRITE_FIXTURES=1 cargo test --lib aggregate::checkpoint`. A class part
//! changes version only when its own layout does ([`PART_VERSION`]), so an older home still
//! merges the parts of a newer visitor whenever it can, and a home merges the parts of
//! visitors back to [`OLDEST_PART`].

mod v3;
mod v4;
mod v5;
mod v6;
mod v7;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::class::ClassState;
use super::output::Outgoing;
use super::partition::{FinalClass, PartitionState, Trigger};

/// The checkpoint format this build writes.
pub const VERSION: u32 = 8;
/// The oldest checkpoint format this build restores.
pub const OLDEST: u32 = 3;
/// The format of a class part handed to its home, written by this build.
pub const PART_VERSION: u32 = 7;
/// The oldest format of a class part this build merges.
pub const OLDEST_PART: u32 = 3;

/// A checkpoint or part this build cannot read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Written by a newer build: left alone for a build that reads it.
    #[error("format version {found} is newer than this build reads ({OLDEST} to {newest})")]
    Newer {
        /// The version found.
        found: u32,
        /// The newest this build reads.
        newest: u32,
    },
    /// Older than any this build restores.
    #[error("format version {found} is older than this build reads ({OLDEST} to {VERSION})")]
    Older {
        /// The version found.
        found: u32,
    },
    /// A class part older than any this build merges.
    #[error("class part format version {found} is older than this build merges ({OLDEST_PART} to {PART_VERSION})")]
    OlderPart {
        /// The version found.
        found: u32,
    },
    /// Not a zstd frame.
    #[error("zstd: {0}")]
    Compression(#[source] std::io::Error),
    /// Not of the layout its version says.
    #[error("postcard: {0}")]
    Layout(#[source] postcard::Error),
    /// An older version's content that does not upgrade.
    #[error("upgrading from format version {from}: {detail}")]
    Upgrade {
        /// The version upgraded from.
        from: u32,
        /// What did not fit.
        detail: String,
    },
}

impl CheckpointError {
    /// Whether a newer build wrote it (the partition waits for such a build).
    pub fn is_newer(&self) -> bool {
        matches!(self, CheckpointError::Newer { .. })
    }
}

/// A partition's state as [`VERSION`] serialises it; `C` is the class state (borrowed when
/// writing), `F` a final class (of its own layout in versions 5 to 7).
#[derive(Serialize, Deserialize)]
struct Checkpoint<C, F = FinalClass> {
    version: u32,
    name: String,
    position: Option<u64>,
    clock_ms: i64,
    classes: Vec<C>,
    finalised: BTreeMap<String, F>,
    outbox: Vec<Outgoing>,
    left_out: BTreeMap<u64, Vec<(u128, bool, i64)>>,
    last_class: Option<String>,
    closing: Vec<(String, C, Trigger)>,
}

impl<C, F> Checkpoint<C, F> {
    /// This build's form of an older version's checkpoint, each class and final class
    /// upgraded.
    fn upgrade(
        self,
        class: impl Fn(C) -> ClassState,
        finalised: impl Fn(F) -> FinalClass,
    ) -> Checkpoint<ClassState> {
        Checkpoint {
            version: VERSION,
            name: self.name,
            position: self.position,
            clock_ms: self.clock_ms,
            classes: self.classes.into_iter().map(&class).collect(),
            finalised: self
                .finalised
                .into_iter()
                .map(|(key, final_class)| (key, finalised(final_class)))
                .collect(),
            outbox: self.outbox,
            left_out: self.left_out,
            last_class: self.last_class,
            closing: self
                .closing
                .into_iter()
                .map(|(key, state, trigger)| (key, class(state), trigger))
                .collect(),
        }
    }
}

/// A part of a class handed to its home, as [`PART_VERSION`] serialises it.
#[derive(Serialize, Deserialize)]
struct Part<C> {
    version: u32,
    /// `stream/partition` that counted it.
    partition: String,
    class: C,
}

/// Serialises `state`.
pub fn encode(state: &PartitionState) -> Vec<u8> {
    let mut classes: Vec<&ClassState> = state.classes.values().collect();
    classes.sort_by(|a, b| (&a.studio_id, &a.class_id).cmp(&(&b.studio_id, &b.class_id)));
    pack(&Checkpoint {
        version: VERSION,
        name: state.name.clone(),
        position: state.position,
        clock_ms: state.clock_ms,
        classes,
        finalised: state.finalised.clone(),
        outbox: state.outbox.clone(),
        left_out: state.left_out.clone(),
        last_class: state.last_class.clone(),
        closing: state
            .closing
            .iter()
            .map(|(key, (class, trigger))| (key.clone(), class, *trigger))
            .collect(),
    })
}

/// Restores a state written by this build or an earlier one (up to [`OLDEST`]). Wall-clock
/// idle times restart at `wall_ms`: a task that was down is not a class that went quiet.
pub fn decode(bytes: &[u8], wall_ms: i64) -> Result<PartitionState, CheckpointError> {
    let plain = zstd::stream::decode_all(bytes).map_err(CheckpointError::Compression)?;
    let checkpoint: Checkpoint<ClassState> = match version(&plain)? {
        VERSION => postcard::from_bytes(&plain).map_err(CheckpointError::Layout)?,
        7 => v7::upgrade(v7::read(&plain)?),
        6 => v6::upgrade(v6::read(&plain)?),
        5 => v5::upgrade(v5::read(&plain)?),
        4 => v5::upgrade(v4::read(&plain)?.upgrade()),
        3 => v5::upgrade(v3::read(&plain)?.upgrade()?.upgrade()),
        found if found > VERSION => {
            return Err(CheckpointError::Newer {
                found,
                newest: VERSION,
            })
        }
        found => return Err(CheckpointError::Older { found }),
    };
    let mut state = PartitionState::new(checkpoint.name);
    state.position = checkpoint.position;
    state.clock_ms = checkpoint.clock_ms;
    state.classes = checkpoint
        .classes
        .into_iter()
        .map(|mut class| {
            class.last_seen_wall_ms = wall_ms;
            (format!("{}:{}", class.studio_id, class.class_id), class)
        })
        .collect();
    state.finalised = checkpoint.finalised;
    state.outbox = checkpoint.outbox;
    state.left_out = checkpoint.left_out;
    state.last_class = checkpoint.last_class;
    state.closing = checkpoint
        .closing
        .into_iter()
        .map(|(key, class, trigger)| (key, (class, trigger)))
        .collect();
    Ok(state)
}

/// Serialises a class's part counted on `partition`.
pub fn encode_part(partition: &str, class: &ClassState) -> Vec<u8> {
    pack(&Part {
        version: PART_VERSION,
        partition: partition.to_owned(),
        class,
    })
}

/// Reads a part: the partition that counted it, and its state.
pub fn decode_part(bytes: &[u8]) -> Result<(String, ClassState), CheckpointError> {
    let plain = zstd::stream::decode_all(bytes).map_err(CheckpointError::Compression)?;
    match version(&plain)? {
        PART_VERSION => {
            let part: Part<ClassState> =
                postcard::from_bytes(&plain).map_err(CheckpointError::Layout)?;
            Ok((part.partition, part.class))
        }
        6 => {
            let part: Part<v7::ClassV7> =
                postcard::from_bytes(&plain).map_err(CheckpointError::Layout)?;
            Ok((part.partition, part.class.upgrade()))
        }
        5 => {
            let part: Part<v6::ClassV6> =
                postcard::from_bytes(&plain).map_err(CheckpointError::Layout)?;
            Ok((part.partition, part.class.upgrade()))
        }
        4 => {
            let part: Part<v5::ClassV5> =
                postcard::from_bytes(&plain).map_err(CheckpointError::Layout)?;
            Ok((part.partition, part.class.upgrade()))
        }
        3 => {
            let part: Part<v4::ClassV4> =
                postcard::from_bytes(&plain).map_err(CheckpointError::Layout)?;
            Ok((part.partition, part.class.upgrade().upgrade()))
        }
        found if found > PART_VERSION => Err(CheckpointError::Newer {
            found,
            newest: PART_VERSION,
        }),
        found => Err(CheckpointError::OlderPart { found }),
    }
}

/// The format version a serialised checkpoint or part starts with.
fn version(plain: &[u8]) -> Result<u32, CheckpointError> {
    postcard::take_from_bytes::<u32>(plain)
        .map(|(version, _)| version)
        .map_err(CheckpointError::Layout)
}

/// postcard, then zstd level 1.
fn pack<T: Serialize>(value: &T) -> Vec<u8> {
    let plain = postcard::to_stdvec(value)
        .unwrap_or_else(|error| unreachable!("aggregate state does not serialise: {error}"));
    zstd::bulk::compress(&plain, 1)
        .unwrap_or_else(|error| unreachable!("zstd cannot compress in memory: {error}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::aggregate::fixture;

    /// A class's state as text (its ids sorted: they are kept in the order they came).
    fn canonical(class: &ClassState) -> String {
        let mut plain = class.clone();
        plain.changed = false;
        plain.unpublished = false;
        format!("{plain:?}")
    }

    /// Every object the outbox writes (results with their live documents), by key; parts
    /// as their canonical state; a class's id segments as one entry, `ids/{studio}/{class}`,
    /// the union of their ids.
    fn written(outbox: &[Outgoing]) -> BTreeMap<String, String> {
        written_as(outbox, |_, class| canonical(&class))
    }

    /// The member fields results gained with format 6 (and `alias`, rendered in results of
    /// format 6 since the live screens): an older build's results in the outbox are written as
    /// it rendered them, without these.
    const FORMAT_6_FIELDS: [&str; 10] = [
        "alias",
        "hr_max_used",
        "hr_max_source",
        "hr_max_observed",
        "zone_basis",
        "hr_pct_avg",
        "hr_pct_peak",
        "hr_current",
        "hr_pct_current",
        "zone_current",
    ];

    /// The fields results gained with format 7 (energy, work, the boards by machine): an
    /// older state has no work chain, and an older build's results in the outbox hold its
    /// boards.
    const FORMAT_7_FIELDS: [&str; 12] = [
        "calories_hr",
        "trimp",
        "work_kj",
        "profile_missing",
        "leaderboard",
        "leaderboard_effort",
        "leaderboard_work",
        "leaderboard_treadmill",
        "leaderboard_rower",
        "leaderboard_bike",
        "leaderboard_hidden",
        "leaderboard_distance",
    ];

    /// [`written`] as an older format is compared: parts as the result they give (their state
    /// is held in another form: zone times, no profile, no work chain), results without
    /// [`FORMAT_6_FIELDS`] and [`FORMAT_7_FIELDS`].
    fn written_by_result(outbox: &[Outgoing]) -> BTreeMap<String, String> {
        let rules = fixture::rules();
        let mut objects = written_as(outbox, |partition, mut class| {
            class.seal_all(&rules);
            serde_json::to_string(&class.result(&rules, &partition, true)).unwrap()
        });
        for (key, body) in objects.iter_mut() {
            if !key.starts_with("aggregates/") && !key.contains("/part-") {
                continue;
            }
            let strip = |object: &mut serde_json::Value| {
                if let Some(object) = object.as_object_mut() {
                    for field in FORMAT_6_FIELDS.iter().chain(&FORMAT_7_FIELDS) {
                        object.remove(*field);
                    }
                    for machine in ["treadmill", "rower", "bike"] {
                        if let Some(machine) =
                            object.get_mut(machine).and_then(|m| m.as_object_mut())
                        {
                            machine.remove("work_kj");
                            machine.remove("split_500m_s");
                        }
                    }
                }
            };
            let (prefix, json) = match body.split_once(' ') {
                Some((partition, json)) if key.contains("/part-") => {
                    (format!("{partition} "), json)
                }
                _ => (String::new(), body.as_str()),
            };
            let mut lines = Vec::new();
            for line in json.lines() {
                let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
                strip(&mut value);
                if let Some(summary) = value.get_mut("summary") {
                    strip(summary);
                }
                if let Some(members) = value.get_mut("members").and_then(|m| m.as_array_mut()) {
                    members.iter_mut().for_each(strip);
                }
                lines.push(value.to_string());
            }
            *body = prefix + &lines.join("\n");
        }
        objects
    }

    /// [`written`], parts shown by `part`.
    fn written_as(
        outbox: &[Outgoing],
        part: impl Fn(String, ClassState) -> String,
    ) -> BTreeMap<String, String> {
        let mut ids: BTreeMap<String, std::collections::BTreeSet<u128>> = BTreeMap::new();
        let mut objects = BTreeMap::new();
        for outgoing in outbox {
            match outgoing {
                Outgoing::Result(result) => {
                    let mut rendered = result.objects().unwrap();
                    rendered.push(result.live_object().unwrap());
                    objects.extend(
                        rendered
                            .into_iter()
                            .map(|(key, body)| (key, String::from_utf8(body).unwrap())),
                    );
                }
                Outgoing::Part { key, body } => {
                    let (partition, class) = decode_part(body).unwrap();
                    objects.insert(
                        key.clone(),
                        format!("{partition} {}", part(partition.clone(), class)),
                    );
                }
                Outgoing::HomeFinal { key, body } => {
                    objects.insert(key.clone(), String::from_utf8(body.clone()).unwrap());
                }
                Outgoing::Ids {
                    studio_id,
                    class_id,
                    ids: segment,
                } => {
                    ids.entry(format!("ids/{studio_id}/{class_id}"))
                        .or_default()
                        .extend(segment);
                }
            }
        }
        objects.extend(ids.into_iter().map(|(key, ids)| (key, format!("{ids:?}"))));
        objects
    }

    /// A state as text: everything a checkpoint holds.
    fn canonical_state(state: &PartitionState) -> String {
        let classes: BTreeMap<&String, String> = state
            .classes
            .iter()
            .map(|(key, class)| (key, canonical(class)))
            .collect();
        let closing: BTreeMap<&String, (String, Trigger)> = state
            .closing
            .iter()
            .map(|(key, (class, trigger))| (key, (canonical(class), *trigger)))
            .collect();
        format!(
            "{} {:?} {} {classes:?} {:?} {:?} {:?} {closing:?} {:?}",
            state.name,
            state.position,
            state.clock_ms,
            state.finalised,
            state.left_out,
            state.last_class,
            written(&state.outbox)
        )
    }

    /// The state at the fixture's cut, as this build holds it.
    fn at_cut() -> PartitionState {
        let (events, cut) = fixture::events();
        let mut state = fixture::state();
        fixture::apply(&mut state, &events[..cut]);
        state
    }

    /// The fixture of this build's format holds what this build writes at the cut: a change
    /// to the serialised types without a new version fails here.
    /// `CLASSPULSE_TEST_WRITE_FIXTURES=1` writes it first (for a new version).
    #[test]
    fn this_builds_format_is_its_fixture() {
        let encoded = encode(&at_cut());
        let path = fixture::directory().join(format!("v{VERSION}.postcard.zst"));
        if std::env::var_os("CLASSPULSE_TEST_WRITE_FIXTURES").is_some() {
            std::fs::create_dir_all(fixture::directory()).unwrap();
            std::fs::write(&path, &encoded).unwrap();
        }
        let fixture = std::fs::read(&path).unwrap_or_else(|error| {
            panic!(
                "{}: {error} (CLASSPULSE_TEST_WRITE_FIXTURES=1 writes it)",
                path.display()
            )
        });
        let fixture = decode(&fixture, 0).unwrap_or_else(|error| {
            panic!(
                "{}: {error}: bump VERSION and keep a reader of the old one",
                path.display()
            )
        });
        assert_eq!(
            canonical_state(&fixture),
            canonical_state(&decode(&encoded, 0).unwrap()),
            "{} holds another state than this build writes: bump VERSION and keep a reader of the old one",
            path.display()
        );
    }

    /// Each version's checkpoint at the cut, restored, runs on to the results, positions and
    /// verdicts of a run from scratch. Versions before 5 forgot the ids of final classes and
    /// those past the lateness horizon: a retry of such an event is late for them where the
    /// run from scratch finds a duplicate, and they seal fewer ids. Versions before 6 held
    /// zone times, not the time at each bpm, and no profiles: their parts are compared by the
    /// results they give, and the results they rendered lack the fields 6 added.
    #[test]
    fn every_versions_fixture_restores_into_the_run_from_scratch() {
        let (events, cut) = fixture::events();
        let mut scratch = fixture::state();
        fixture::apply(&mut scratch, &events);
        fixture::finish(&mut scratch);
        let expected = written(&scratch.outbox);
        assert!(
            expected.keys().any(|key| key.ends_with("/home"))
                && expected.keys().any(|key| key.contains("/part-"))
                && expected
                    .keys()
                    .filter(|key| key.starts_with("aggregates/classes/"))
                    .count()
                    == 3,
            "three results, a part and a home record: {:?}",
            expected.keys()
        );
        for version in OLDEST..=VERSION {
            let path = fixture::directory().join(format!("v{version}.postcard.zst"));
            let bytes =
                std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            let mut restored =
                decode(&bytes, 0).unwrap_or_else(|error| panic!("v{version}: {error}"));
            assert!(
                !restored.outbox.is_empty() && !restored.closing.is_empty(),
                "v{version}: the cut holds results not yet written and a closing class"
            );
            fixture::prepare(&mut restored);
            fixture::apply(&mut restored, &events[cut..]);
            fixture::finish(&mut restored);
            assert_eq!(restored.position, scratch.position, "v{version}");
            assert_eq!(restored.clock_ms, scratch.clock_ms, "v{version}");
            assert!(restored.classes.is_empty() && restored.closing.is_empty());
            // Version 7 differs from this build's only in how it lays out ids.
            let (written_restored, expected) = if version >= 7 {
                (written(&restored.outbox), expected.clone())
            } else {
                (
                    written_by_result(&restored.outbox),
                    written_by_result(&scratch.outbox),
                )
            };
            let (ids, objects): (BTreeMap<_, _>, BTreeMap<_, _>) = written_restored
                .iter()
                .partition(|(key, _)| key.starts_with("ids/"));
            let (expected_ids, expected_objects): (BTreeMap<_, _>, BTreeMap<_, _>) = expected
                .iter()
                .partition(|(key, _)| key.starts_with("ids/"));
            assert_eq!(objects, expected_objects, "v{version}");
            if version >= 5 {
                assert_eq!(ids, expected_ids);
            } else {
                // What an older build forgot is not sealed; what it held is.
                for (key, sealed) in ids {
                    let sealed = sealed.trim_matches(['{', '}']);
                    for id in sealed.split(", ") {
                        assert!(expected_ids[key].contains(id), "v{version}: {key} {id}");
                    }
                }
            }
            if version >= 5 {
                assert_eq!(restored.finalised, scratch.finalised);
                assert_eq!(restored.left_out, scratch.left_out);
                continue;
            }
            assert_eq!(
                restored.finalised.keys().collect::<Vec<_>>(),
                scratch.finalised.keys().collect::<Vec<_>>(),
                "v{version}"
            );
            assert_eq!(
                restored.left_out.keys().collect::<Vec<_>>(),
                scratch.left_out.keys().collect::<Vec<_>>(),
                "v{version}"
            );
            for (offset, entries) in &restored.left_out {
                for ((id, late, arrival), (id_s, late_s, arrival_s)) in
                    entries.iter().zip(&scratch.left_out[offset])
                {
                    assert_eq!((id, arrival), (id_s, arrival_s), "v{version}: {offset}");
                    assert!(
                        late == late_s || (*late && !late_s),
                        "v{version}: offset {offset} is a duplicate only from scratch"
                    );
                }
            }
        }
    }

    /// A part of the fixture's oldest version (a visitor of an older build) merges here, and
    /// this build writes it in its own part format.
    #[test]
    fn older_parts_are_read() {
        let path = fixture::directory().join(format!("v{OLDEST}.postcard.zst"));
        let restored = decode(&std::fs::read(path).unwrap(), 0).unwrap();
        let Some(Outgoing::Part { body, .. }) = restored
            .outbox
            .iter()
            .find(|outgoing| matches!(outgoing, Outgoing::Part { .. }))
        else {
            panic!("the fixture hands a part over");
        };
        assert_eq!(
            version(&zstd::stream::decode_all(&body[..]).unwrap()).unwrap(),
            OLDEST_PART
        );
        let (partition, class) = decode_part(body).unwrap();
        assert_eq!(partition, fixture::PARTITION);
        assert!(
            class.stored_ids,
            "a visitor's part: the home holds ids of the class"
        );
        let again = encode_part(&partition, &class);
        assert_eq!(
            version(&zstd::stream::decode_all(&again[..]).unwrap()).unwrap(),
            PART_VERSION
        );
        assert_eq!(
            canonical(&decode_part(&again).unwrap().1),
            canonical(&class)
        );
    }

    #[test]
    fn a_newer_or_older_format_is_refused_by_its_version() {
        let with_version = |version: u32| {
            let mut plain = postcard::to_stdvec(&version).unwrap();
            plain.extend_from_slice(b"whatever a newer build writes");
            zstd::bulk::compress(&plain, 1).unwrap()
        };
        let error = decode(&with_version(VERSION + 1), 0).unwrap_err();
        assert!(error.is_newer(), "{error}");
        assert_eq!(
            error.to_string(),
            format!(
                "format version {} is newer than this build reads ({OLDEST} to {VERSION})",
                VERSION + 1
            )
        );
        let error = decode(&with_version(OLDEST - 1), 0).unwrap_err();
        assert!(
            matches!(error, CheckpointError::Older { found } if found == OLDEST - 1),
            "{error}"
        );
        assert!(decode_part(&with_version(PART_VERSION + 1))
            .unwrap_err()
            .is_newer());
        assert!(matches!(
            decode_part(&with_version(OLDEST_PART - 1)).unwrap_err(),
            CheckpointError::OlderPart { found } if found == OLDEST_PART - 1
        ));
        assert!(matches!(
            decode(b"not zstd", 0).unwrap_err(),
            CheckpointError::Compression(_)
        ));
    }
}
