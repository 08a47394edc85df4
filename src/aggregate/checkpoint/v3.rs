//! Format version 3: the outbox as rendered objects `(key relative to the prefix, body)`.
//! A final class's result is its three JSON objects (summary, members, minutes) and, where
//! anything reads it, its live document; a part or a home record is the object as written.
//!
//! The class state is as version 4 has it ([`ClassV4`]): its layout is the same in both.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::v4::{CheckpointV4, ClassV4};
use super::CheckpointError;
use crate::aggregate::output::{ClassMinute, ClassResult, ClassSummary, MemberSummary, Outgoing};
use crate::aggregate::partition::Trigger;

#[derive(Deserialize)]
pub(super) struct CheckpointV3 {
    #[allow(dead_code)] // read by `super::version`
    version: u32,
    name: String,
    position: Option<u64>,
    clock_ms: i64,
    classes: Vec<ClassV4>,
    finalised: BTreeMap<String, i64>,
    outbox: Vec<(String, Vec<u8>)>,
    left_out: BTreeMap<u64, Vec<(u128, bool, i64)>>,
    last_class: Option<String>,
    closing: Vec<(String, ClassV4, Trigger)>,
}

pub(super) fn read(plain: &[u8]) -> Result<CheckpointV3, CheckpointError> {
    postcard::from_bytes(plain).map_err(CheckpointError::Layout)
}

impl CheckpointV3 {
    /// Version 4's form: each final class's objects back into its [`ClassResult`].
    pub(super) fn upgrade(self) -> Result<CheckpointV4, CheckpointError> {
        Ok(CheckpointV4 {
            version: 4,
            name: self.name,
            position: self.position,
            clock_ms: self.clock_ms,
            classes: self.classes,
            finalised: self.finalised,
            outbox: outbox(self.outbox)?,
            left_out: self.left_out,
            last_class: self.last_class,
            closing: self.closing,
        })
    }
}

/// Version 3's outbox in version 4's entries. A result's objects are consecutive: summary,
/// members, minutes, then its live document if it was rendered (the same result again).
fn outbox(entries: Vec<(String, Vec<u8>)>) -> Result<Vec<Outgoing>, CheckpointError> {
    let error = |detail: String| CheckpointError::Upgrade { from: 3, detail };
    let mut outbox = Vec::new();
    let mut entries = entries.into_iter().peekable();
    while let Some((key, body)) = entries.next() {
        if key.ends_with(".postcard.zst") && key.contains("/part-") {
            outbox.push(Outgoing::Part { key, body });
        } else if key.ends_with("/home") {
            outbox.push(Outgoing::HomeFinal { key, body });
        } else if let Some(name) = key
            .strip_prefix("aggregates/classes/")
            .and_then(|rest| rest.strip_suffix(".json"))
        {
            let summary: ClassSummary =
                serde_json::from_slice(&body).map_err(|e| error(format!("{key}: {e}")))?;
            let mut next = |folder: &str| -> Result<Vec<u8>, CheckpointError> {
                let expected = format!("aggregates/{folder}/{name}.ndjson");
                match entries.next() {
                    Some((key, body)) if key == expected => Ok(body),
                    other => Err(error(format!(
                        "{expected} does not follow its summary (found {:?})",
                        other.map(|(key, _)| key)
                    ))),
                }
            };
            let members: Vec<MemberSummary> =
                lines(&next("members")?).map_err(|e| error(format!("members of {name}: {e}")))?;
            let minutes: Vec<ClassMinute> =
                lines(&next("minutes")?).map_err(|e| error(format!("minutes of {name}: {e}")))?;
            if entries
                .peek()
                .is_some_and(|(key, _)| key.starts_with("aggregates/live/"))
            {
                entries.next();
            }
            outbox.push(Outgoing::Result(Box::new(ClassResult {
                summary,
                members,
                minutes,
            })));
        } else {
            return Err(error(format!("unexpected outbox entry {key}")));
        }
    }
    Ok(outbox)
}

fn lines<T: serde::de::DeserializeOwned>(body: &[u8]) -> serde_json::Result<Vec<T>> {
    body.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(serde_json::from_slice)
        .collect()
}
