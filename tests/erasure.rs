//! `classpulse erase` against Kafka, the local S3 server and DynamoDB Local, with a pipeline
//! running: an erased member's rows, results, dead letters and items are gone everywhere,
//! everyone else's are as they were, and neither their later events, nor a crash and its
//! replay, nor a second run brings anything back or changes anything.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::backends::*;
use common::tables::lake_events;
use common::*;

const START: &str = "2026-11-25T17:00:00Z";

/// The servers a run and an erase share: the lake on S3, both tables, a list read every second.
struct Servers {
    bucket: String,
    events_table: String,
    aggregates_table: String,
}

impl Servers {
    fn apply<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        with_local_dynamodb(command)
            .env("CLASSPULSE_LAKE_URL", format!("s3://{}/lake", self.bucket))
            .env("CLASSPULSE_S3_ENDPOINT", S3)
            .env("CLASSPULSE_DYNAMODB_EVENTS_TABLE", &self.events_table)
            .env(
                "CLASSPULSE_DYNAMODB_AGGREGATES_TABLE",
                &self.aggregates_table,
            )
            .env("CLASSPULSE_DYNAMODB_PACK_WINDOW", "1s")
            .env("CLASSPULSE_LAKE_MAX_AGE", "1s")
            .env("CLASSPULSE_ERASURE_KEY", "the erasure key of these tests")
            .env("CLASSPULSE_ERASURE_REFRESH", "1s")
    }

    /// `classpulse erase --member ...` on these servers.
    fn erase(&self, scratch: &Path, members: &[&str]) -> Command {
        let mut command = classpulse(scratch);
        self.apply(&mut command).arg("erase");
        for member in members {
            command.args(["--member", member]);
        }
        command
    }

    /// Every object under the lake's prefix, copied into `into` at the same relative paths
    /// (DuckDB and the readers of `common` read a directory).
    async fn mirror(&self, s3: &aws_sdk_s3::Client, into: &Path) {
        let _ = std::fs::remove_dir_all(into);
        let mut pages = s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix("lake/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for object in page.unwrap().contents() {
                let key = object.key().unwrap();
                let body = match s3.get_object().bucket(&self.bucket).key(key).send().await {
                    Ok(body) => body.body.collect().await.unwrap().into_bytes(),
                    // Deleted between the listing and the read (a compaction, a task's index).
                    Err(_) => continue,
                };
                let path = into.join(key.strip_prefix("lake/").unwrap());
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, body).unwrap();
            }
        }
    }
}

/// How many objects the bucket holds under `prefix`.
async fn objects_under(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<usize, String> {
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(listed.contents().len())
}

/// What DuckDB counts of `member`'s rows and of all rows in the lake under `lake`.
fn duckdb_counts(lake: &Path, member: &str) -> (u64, u64) {
    let script = format!(
        "import duckdb\n\
         print(duckdb.sql(\"SELECT count(*) FILTER (WHERE member_id = '{member}'), count(*) \
         FROM read_parquet('{}/events/*/*/*.parquet', hive_partitioning = true)\").fetchone())",
        lake.display()
    );
    let output = Command::new(installed_tool("venv/bin/python"))
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let numbers: Vec<u64> = text
        .trim()
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(|n| n.trim().parse().unwrap())
        .collect();
    (numbers[0], numbers[1])
}

/// Fails unless nothing under `lake` (results, live documents, dead letters, the list, the
/// log) and no item of `tables` names `member`; `what` says when.
async fn assert_gone(
    lake: &Path,
    dynamodb: &aws_sdk_dynamodb::Client,
    servers: &Servers,
    member: &str,
    what: &str,
) {
    let quoted = format!("\"{member}\"");
    // Partitions' checkpoints are not edited: a restored state leaves erased members out
    // (docs/erasure.md).
    let checkpoints = lake.join("checkpoints/aggregates");
    for path in files_under(lake, "")
        .into_iter()
        .filter(|p| !p.starts_with(&checkpoints))
    {
        let body = std::fs::read(&path).unwrap();
        let text = if path.to_string_lossy().ends_with(".zst") {
            zstd::decode_all(&body[..]).unwrap()
        } else {
            body
        };
        let text = String::from_utf8_lossy(&text);
        // Parquet compresses its pages; its rows are counted by DuckDB below.
        if !path.to_string_lossy().ends_with(".parquet") {
            assert!(
                !text.contains(&quoted) && !text.contains(&format!("\\\"{member}\\\"")),
                "{what}: {} names {member}",
                path.display()
            );
        }
    }
    let (theirs, all) = duckdb_counts(lake, member);
    assert_eq!(theirs, 0, "{what}: DuckDB finds {member}'s rows");
    assert!(all > 0);
    for table in [&servers.events_table, &servers.aggregates_table] {
        let items = scan_all(dynamodb, table).await;
        assert!(!items.is_empty(), "{what}: {table} is empty");
        let naming: Vec<_> = items
            .iter()
            .filter(|item| format!("{item:?}").contains(member))
            .map(|item| (item["pk"].clone(), item["sk"].clone()))
            .collect();
        assert!(
            naming.is_empty(),
            "{what}: {table} names {member}: {naming:?}"
        );
    }
}

/// Fails unless `found` equals `expected`, naming a few ids missing and a few not expected.
fn assert_same_rows(
    found: &BTreeMap<String, String>,
    expected: &BTreeMap<String, String>,
    what: &str,
) {
    let missing: Vec<_> = expected
        .iter()
        .filter(|(id, member)| found.get(*id) != Some(member))
        .collect();
    let extra: Vec<_> = found
        .iter()
        .filter(|(id, member)| expected.get(*id) != Some(member))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} rows, {} expected; {} missing, e.g. {:?}; {} not expected, e.g. {:?}",
        found.len(),
        expected.len(),
        missing.len(),
        &missing[..missing.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)],
    );
}

/// A number in an erase report line: the one before `label`.
fn reported(stdout: &str, label: &str) -> u64 {
    stdout
        .lines()
        .flat_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = line.find(label).map(|_| ());
            at.and_then(|()| {
                let first = label.split_whitespace().next().unwrap();
                let index = words.iter().position(|word| *word == first)?;
                words.get(index.checked_sub(1)?)?.parse().ok()
            })
        })
        .next()
        .unwrap_or_else(|| panic!("no {label:?} in:\n{stdout}"))
}

#[tokio::test]
async fn an_erased_member_is_gone_everywhere_and_stays_gone() {
    require(KAFKA);
    require(S3);
    require(DYNAMODB);
    let clock = std::time::Instant::now();
    let step = |what: &str| eprintln!("{:>6.1} s  {what}", clock.elapsed().as_secs_f64());
    let messages = simulated_messages(34, START).await;
    let (events, _) = decode_all(&messages);
    let half = messages.len() / 2;
    let cut = messages[half].offset;
    // The member with most events on both sides of the cut, and one more for the erase cut
    // short.
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for event in &events {
        let entry = counts.entry(event.member_id.to_string()).or_default();
        if event.offset < cut {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }
    let mut ranked: Vec<_> = counts.iter().collect();
    ranked.sort_by_key(|(member, (before, after))| {
        (std::cmp::Reverse(*before.min(after)), (*member).clone())
    });
    let (member, other) = (ranked[0].0.clone(), ranked[1].0.clone());
    let classes = class_count(&messages);

    let s3 = s3_client().await;
    let dynamodb = dynamodb_client().await;
    let servers = Servers {
        bucket: unique_name("erasure"),
        events_table: create_table(&dynamodb, "events").await,
        aggregates_table: create_table(&dynamodb, "aggregates").await,
    };
    s3.create_bucket()
        .bucket(&servers.bucket)
        .send()
        .await
        .unwrap();
    let (_admin, topic) = create_topic(3).await;
    let group = unique_name("erasure");
    let scratch = tempfile::tempdir().unwrap();
    let mirror = scratch.path().join("mirror");
    let member_command = || {
        let mut command = finalising_kafka_member(&scratch.path().join("unused"), &topic, &group);
        servers.apply(&mut command);
        command
    };

    // The first half of the day, a pipeline counting it.
    produce(&topic, &messages[..half], 3).await;
    let running = Running::start(&mut member_command());
    let theirs_before: usize = counts[&member].0;
    wait_until_async(
        Duration::from_secs(90),
        "the member's rows in the lake",
        || {
            let (servers, s3, mirror, member) = (&servers, &s3, &mirror, &member);
            async move {
                servers.mirror(s3, mirror).await;
                let rows = lake_events(mirror)
                    .values()
                    .filter(|m| *m == member)
                    .count();
                if rows * 2 >= theirs_before {
                    Ok(())
                } else {
                    Err(format!("{rows} of {theirs_before}"))
                }
            }
        },
    )
    .await;

    step("the member's rows are in the lake");
    // Erased mid-class, with the pipeline running.
    let stdout = tokio::task::spawn_blocking({
        let mut command = servers.erase(scratch.path(), &[&member]);
        move || run_to_end(&mut command)
    })
    .await
    .unwrap();
    assert!(reported(&stdout, "rows removed") > 0, "{stdout}");
    assert_eq!(reported(&stdout, "added to"), 1, "{stdout}");

    step("erased");
    // Their later events come, the pipeline is killed and replays, the classes end.
    produce(&topic, &messages[half..], 3).await;
    let mut running = running;
    let _ = running.child.kill();
    let _ = running.child.wait();
    drop(running);
    let running = Running::start(&mut member_command());
    let expected: BTreeMap<String, String> = events
        .iter()
        .filter(|event| *event.member_id != *member)
        .map(|event| (event.event_id.to_string(), event.member_id.to_string()))
        .collect();
    wait_until_async(
        Duration::from_secs(150),
        "every other member's event in the lake",
        || {
            let (servers, s3, mirror, expected) = (&servers, &s3, &mirror, &expected);
            async move {
                servers.mirror(s3, mirror).await;
                let rows = lake_events(mirror).len();
                if rows >= expected.len() {
                    Ok(())
                } else {
                    Err(format!("{rows} of {}", expected.len()))
                }
            }
        },
    )
    .await;
    wait_until_async(Duration::from_secs(60), "every class final", || {
        let (servers, s3) = (&servers, &s3);
        async move {
            let finals = objects_under(s3, &servers.bucket, "lake/aggregates/classes/").await?;
            if finals >= classes {
                Ok(())
            } else {
                Err(format!("{finals} of {classes}"))
            }
        }
    })
    .await;
    drain(running).await;
    step("every event in, every class final, drained");

    servers.mirror(&s3, &mirror).await;
    assert_gone(&mirror, &dynamodb, &servers, &member, "after the run").await;
    let member_lines = files_under(&mirror.join("aggregates/members"), ".ndjson")
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap().lines().count())
        .sum::<usize>();
    assert!(member_lines > 0, "the other members' results are there");
    // Everyone else's rows, once each (`lake_events` fails on a second copy), as the events
    // were.
    assert_same_rows(&lake_events(&mirror), &expected, "the other members' rows");

    step("checked");
    // A second run finds nothing and changes nothing.
    let stdout = tokio::task::spawn_blocking({
        let mut command = servers.erase(scratch.path(), &[&member]);
        move || run_to_end(&mut command)
    })
    .await
    .unwrap();
    assert!(stdout.contains("1 found nowhere"), "{stdout}");
    assert_eq!(reported(&stdout, "rows removed"), 0, "{stdout}");
    assert_eq!(reported(&stdout, "objects rewritten"), 0, "{stdout}");

    step("second run");
    // A redrive of every dead letter writes nothing of theirs.
    tokio::task::spawn_blocking({
        let mut command = classpulse(scratch.path());
        // Dead letters are filed by the hour they were received: this one.
        let now = chrono::Utc::now();
        let (from, to) = (
            now - chrono::Duration::hours(1),
            now + chrono::Duration::hours(1),
        );
        servers.apply(&mut command).args([
            "redrive",
            "--from",
            &from.to_rfc3339(),
            "--to",
            &to.to_rfc3339(),
        ]);
        move || run_to_end(&mut command)
    })
    .await
    .unwrap();
    servers.mirror(&s3, &mirror).await;
    assert_gone(&mirror, &dynamodb, &servers, &member, "after a redrive").await;
    step("redriven");
    // An erase killed once it has planned (its rewrites under way or not), and run again,
    // ends as one run would.
    let mut killed = servers.erase(scratch.path(), &[&other]);
    let mut child = killed
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until_async(Duration::from_secs(60), "the erase's plan", || {
        let (servers, s3) = (&servers, &s3);
        async move {
            if objects_under(s3, &servers.bucket, "lake/_erasure/pending/").await? == 0 {
                Err("no plan yet".to_owned())
            } else {
                Ok(())
            }
        }
    })
    .await;
    step("the erase planned, killed");
    child.kill().unwrap();
    child.wait().unwrap();
    tokio::task::spawn_blocking({
        let mut command = servers.erase(scratch.path(), &[&other]);
        move || run_to_end(&mut command)
    })
    .await
    .unwrap();
    servers.mirror(&s3, &mirror).await;
    assert_gone(
        &mirror,
        &dynamodb,
        &servers,
        &other,
        "after an erase cut short and run again",
    )
    .await;
    let erased: BTreeSet<&str> = [member.as_str(), other.as_str()].into();
    let expected: BTreeMap<String, String> = events
        .iter()
        .filter(|event| !erased.contains(&*event.member_id))
        .map(|event| (event.event_id.to_string(), event.member_id.to_string()))
        .collect();
    assert_same_rows(
        &lake_events(&mirror),
        &expected,
        "the other members' rows after two erasures",
    );
    let pending = objects_under(&s3, &servers.bucket, "lake/_erasure/pending/").await;
    assert_eq!(pending, Ok(0), "the plans are gone once done");

    delete_table(&dynamodb, &servers.events_table).await;
    delete_table(&dynamodb, &servers.aggregates_table).await;
}

#[test]
fn ids_that_are_not_member_ids_are_refused_naming_the_rule() {
    let scratch = tempfile::tempdir().unwrap();
    let output = classpulse(scratch.path())
        .args(["erase", "--member", "m0001", "--member", "not an id"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--member \"not an id\"") && stderr.contains("A-Za-z0-9"),
        "{stderr}"
    );
    assert!(
        !scratch.path().join("_erasure").exists(),
        "nothing recorded"
    );

    let output = classpulse(scratch.path()).arg("erase").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no member given"));
}

#[test]
fn an_id_that_matches_nobody_says_so_and_exits_0() {
    let scratch = tempfile::tempdir().unwrap();
    let lake = scratch.path().join("lake");
    run_to_end(small_simulation(&mut classpulse(&lake)).arg("run"));
    let before = lake_events(&lake);
    let member = before.values().next().unwrap().clone();
    let erase = |members: &[&str]| {
        let mut command = classpulse(&lake);
        command
            .env("CLASSPULSE_ERASURE_REFRESH", "1s")
            .env("CLASSPULSE_LAKE_MAX_AGE", "1s")
            .env("CLASSPULSE_DYNAMODB_PACK_WINDOW", "1s")
            .env("CLASSPULSE_WATERMARK_DELAY", "1s")
            .arg("erase");
        for member in members {
            command.args(["--member", member]);
        }
        run_to_end(&mut command)
    };
    let stdout = erase(&["m99999999"]);
    assert!(stdout.contains("1 found nowhere"), "{stdout}");
    assert!(
        stdout.contains("found nowhere  m99999999 (an id that matches nobody is not an error"),
        "{stdout}"
    );
    assert_eq!(reported(&stdout, "rows removed"), 0);
    assert_eq!(lake_events(&lake), before, "nothing changed");

    // With a member who is there: only the other is named.
    let stdout = erase(&[&member, "m99999998"]);
    assert!(stdout.contains("found nowhere  m99999998 ("), "{stdout}");
    assert!(stdout.contains("1 found nowhere"), "{stdout}");
    let theirs = before.values().filter(|m| **m == member).count();
    assert_eq!(reported(&stdout, "rows removed"), theirs as u64, "{stdout}");
    let after = lake_events(&lake);
    assert_eq!(after.len(), before.len() - theirs);
    assert!(after.values().all(|m| *m != member));
}
