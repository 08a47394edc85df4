//! `classpulse redrive` against a lake on the local S3 server: dead letters whose cause is
//! fixed go into the lake once, those already there are left out, and a second redrive
//! writes nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use arrow_array::cast::AsArray;
use classpulse::decode::{decode_message, DecodeLimits, RawMessage};
use common::backends::*;
use common::*;

/// Every lake row as (event_id, source, late).
fn rows(lake: &std::path::Path) -> Vec<(String, String, bool)> {
    let mut rows = Vec::new();
    for batch in read_lake(lake) {
        let ids = batch.column_by_name("event_id").unwrap().as_string::<i32>();
        let sources = batch.column_by_name("source").unwrap().as_string::<i32>();
        let late = batch.column_by_name("late").unwrap().as_boolean();
        for i in 0..batch.num_rows() {
            rows.push((
                ids.value(i).to_owned(),
                sources.value(i).to_owned(),
                late.value(i),
            ));
        }
    }
    rows
}

/// The ids of the valid events in the `too_large` dead letters, decoded without the limit.
fn too_large_ids(lake: &std::path::Path) -> BTreeSet<String> {
    let limits = DecodeLimits {
        max_message_bytes: 1 << 20,
        max_clock_skew_ms: 60_000,
    };
    let (mut events, mut rejected) = (Vec::new(), Vec::new());
    for line in read_dead_letters(lake) {
        if line["reason"] != "too_large" {
            continue;
        }
        let received: chrono::DateTime<chrono::Utc> =
            line["received_at"].as_str().unwrap().parse().unwrap();
        let message = RawMessage {
            offset: 0,
            timestamp_ms: Some(received.timestamp_millis()),
            key: None,
            payload: Some(line["raw"].as_str().unwrap().to_owned().into()),
        };
        decode_message(&message, &limits, 0, &mut events, &mut rejected);
    }
    events.iter().map(|e| e.event_id.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_writes_what_is_valid_now_once_and_nothing_twice() {
    let s3 = PrivateS3::start().await;
    let started = chrono::Utc::now() - chrono::Duration::minutes(1);
    let scratch = tempfile::tempdir().unwrap();
    // Messages over 2 KiB are dead letters: about one in six of the simulation's.
    let mut command = classpulse(scratch.path());
    s3.lake_for(&mut command);
    let stdout = run_to_end(
        small_simulation(&mut command)
            .env("CLASSPULSE_MAX_MESSAGE_BYTES", "2KiB")
            .arg("run"),
    );
    let lake = s3.lake();
    let before = rows(&lake);
    let fixed = too_large_ids(&lake);
    assert!(fixed.len() > 500, "too_large dead letters: {stdout}");
    let ids_before: BTreeSet<&String> = before.iter().map(|(id, _, _)| id).collect();
    // The simulation's producer retries: some have a copy in the lake and one too large.
    let already = fixed.iter().filter(|id| ids_before.contains(id)).count();
    assert!(already > 0, "no retry straddles the limit");

    let redrive = |dry_run: bool| {
        let mut command = classpulse(scratch.path());
        s3.lake_for(&mut command);
        command.args([
            "redrive",
            "--from",
            &started.to_rfc3339(),
            "--to",
            &(chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339(),
            "--reason",
            "too_large",
        ]);
        if dry_run {
            command.arg("--dry-run");
        }
        run_to_end(&mut command)
    };
    let dry = redrive(true);
    assert!(dry.contains("(dry run)"), "{dry}");
    assert_eq!(rows(&lake).len(), before.len(), "a dry run writes nothing");

    let first = redrive(false);
    eprintln!("{first}");
    let after = rows(&lake);
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for (id, _, _) in &after {
        *counts.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "in the lake twice: {twice:?}");
    for id in &fixed {
        assert!(counts.contains_key(id.as_str()), "{id} was not redriven");
    }
    let redriven: Vec<_> = after.iter().filter(|(_, s, _)| s == "redrive").collect();
    assert_eq!(redriven.len(), fixed.len() - already, "{first}");
    assert!(redriven
        .iter()
        .all(|(id, _, late)| *late && fixed.contains(id)));
    assert_eq!(summary_number(&first, "written"), redriven.len() as u64);

    // Run again (after a crash, or by a second operator): nothing new.
    let second = redrive(false);
    assert_eq!(summary_number(&second, "written"), 0, "{second}");
    assert_eq!(rows(&lake).len(), after.len());
}
