//! `classpulse run` end to end with the embedded default: simulator in, local lake out.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::Array;
use common::*;
use parquet::file::reader::{FileReader, SerializedFileReader};

#[test]
fn invalid_configuration_exits_2_naming_the_variable() {
    let lake = tempfile::tempdir().unwrap();
    let output = classpulse(lake.path())
        .env("CLASSPULSE_BATCH_MAX_EVENTS", "abc")
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("CLASSPULSE_BATCH_MAX_EVENTS=\"abc\" is invalid"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(!lake.path().join("events").exists(), "nothing ran");
}

#[test]
fn config_command_prints_every_variable_and_its_origin() {
    let lake = tempfile::tempdir().unwrap();
    let output = classpulse(lake.path())
        .env("CLASSPULSE_SIM_STUDIOS", "7")
        .arg("config")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("CLASSPULSE_SIM_STUDIOS=7 (set)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("CLASSPULSE_BATCH_MAX_EVENTS=500 (default)"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), classpulse::config::VARS.len());
}

#[test]
fn run_lands_every_event_in_parquet_and_every_rejection_in_dead_letters() {
    let lake = tempfile::tempdir().unwrap();
    let stdout = run_to_end(small_simulation(&mut classpulse(lake.path())).arg("run"));

    let valid = summary_number(&stdout, "events in");
    let rejected = summary_number(&stdout, "rejected");
    assert!(valid > 5_000, "{stdout}");
    assert!(
        rejected > 50,
        "the simulation corrupts 2% of events: {stdout}"
    );

    // The lake holds exactly the valid events, with their typed values.
    let batches = read_lake(lake.path());
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows as u64, expected_lake_rows(&stdout));
    let mut types = BTreeSet::new();
    for batch in &batches {
        let event_type = batch
            .column_by_name("event_type")
            .unwrap()
            .as_string::<i32>();
        let bpm = batch
            .column_by_name("bpm")
            .unwrap()
            .as_primitive::<Float64Type>();
        let speed = batch
            .column_by_name("speed_kph")
            .unwrap()
            .as_primitive::<Float64Type>();
        let position = batch
            .column_by_name("position")
            .unwrap()
            .as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            let kind = event_type.value(row);
            types.insert(kind.to_owned());
            assert_eq!(
                bpm.is_valid(row),
                kind == "heart_rate",
                "bpm is set exactly on heart-rate rows"
            );
            if kind == "heart_rate" {
                assert!((25.0..=250.0).contains(&bpm.value(row)));
            }
            assert_eq!(speed.is_valid(row), kind == "treadmill");
            assert!(position.value(row) >= 0);
        }
    }
    assert_eq!(types.len(), 5, "{types:?}");

    // Each object says what it holds in its footer.
    let object = &files_under(&lake.path().join("events"), ".parquet")[0];
    let reader = SerializedFileReader::new(std::fs::File::open(object).unwrap()).unwrap();
    let footer = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .clone();
    let count = footer
        .iter()
        .find(|kv| kv.key == "classpulse.record-count")
        .unwrap()
        .value
        .clone()
        .unwrap();
    assert_eq!(
        count.parse::<i64>().unwrap(),
        reader.metadata().file_metadata().num_rows()
    );
    let name = object.file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with("simulator-sim-"), "{name}");
    assert!(
        object
            .to_string_lossy()
            .contains("/events/dt=2026-11-25/hour=17/"),
        "{}",
        object.display()
    );

    // Every rejection is a dead letter with its reason, detail, position and raw input.
    let dead_letters = read_dead_letters(lake.path());
    assert_eq!(dead_letters.len() as u64, rejected);
    let reasons: BTreeSet<&str> = classpulse::decode::RejectReason::ALL
        .iter()
        .map(|r| r.as_str())
        .collect();
    for letter in &dead_letters {
        assert!(
            reasons.contains(letter["reason"].as_str().unwrap()),
            "{letter}"
        );
        assert!(!letter["detail"].as_str().unwrap().is_empty());
        assert!(letter["position"].as_u64().is_some());
        assert!(
            letter["raw"].is_string() || letter["raw_base64"].is_string(),
            "{letter}"
        );
    }
}

#[test]
fn same_seed_same_lake() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    for lake in [&first, &second] {
        let output = small_simulation(&mut classpulse(lake.path()))
            .arg("run")
            .output()
            .unwrap();
        assert!(output.status.success());
    }
    let ids = |lake: &std::path::Path| -> Vec<String> {
        let mut ids: Vec<String> = read_lake(lake)
            .iter()
            .flat_map(|b| {
                let ids = b.column_by_name("event_id").unwrap().as_string::<i32>();
                (0..b.num_rows())
                    .map(|i| ids.value(i).to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(first.path()), ids(second.path()));
}

#[test]
fn sigterm_drains_with_everything_counted_durable() {
    let lake = tempfile::tempdir().unwrap();
    // One simulated hour at 60x: about a minute of wall time, so the run is mid-stream when
    // the signal arrives.
    let running = Running::start(
        classpulse(lake.path())
            .env("CLASSPULSE_SIM_STUDIOS", "10")
            .env("CLASSPULSE_SIM_DURATION", "60m")
            .env("CLASSPULSE_SIM_SPEEDUP", "60")
            .env("CLASSPULSE_LAKE_MAX_AGE", "2s")
            .arg("run"),
    );
    assert_eq!(http_get(running.http, "/healthz"), (200, "ok\n".to_owned()));

    // Wait until events flow and at least one object is durable.
    let metrics = wait_until(Duration::from_secs(30), "an object written", || {
        let (status, metrics) = http_get(running.http, "/metrics");
        assert_eq!(status, 200);
        if metric_sum(&metrics, "classpulse_sink_objects_total") >= 1.0 {
            Ok(metrics)
        } else {
            Err(metrics)
        }
    });
    assert!(metric_sum(&metrics, "classpulse_events_in_total") > 0.0);
    assert!(
        metrics.contains("classpulse_sink_write_seconds_bucket"),
        "histograms have buckets"
    );
    let (ready, report) = http_get(running.http, "/readyz");
    assert_eq!(ready, 200, "{report}");

    running.signal("TERM");
    let (code, stdout, logs) = running.wait(Duration::from_secs(25));
    assert_eq!(code, Some(0), "{stdout}\n{}", logs.join("\n"));
    assert!(stdout.contains("finished (Drained)"), "{stdout}");

    // Everything counted as received is durable in the lake or the dead letters.
    let valid = summary_number(&stdout, "events in");
    let rows: usize = read_lake(lake.path()).iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows as u64, expected_lake_rows(&stdout), "{stdout}");
    assert_eq!(
        read_dead_letters(lake.path()).len() as u64,
        summary_number(&stdout, "rejected")
    );
    assert!(
        valid < 200_000,
        "the run was cut short, not finished: {stdout}"
    );
}

#[test]
fn a_run_killed_after_writing_objects_does_not_write_them_twice() {
    let lake = tempfile::tempdir().unwrap();
    // Objects are cut by age, differently in each run: the replay's objects cannot simply
    // replace the first run's by name.
    let paced = |max_age: &str| {
        let mut command = classpulse(lake.path());
        small_simulation(&mut command)
            .env("CLASSPULSE_SIM_SPEEDUP", "40")
            .env("CLASSPULSE_LAKE_MAX_AGE", max_age)
            // No aggregate checkpoint before the kill: every event is judged again, so the
            // lake's own replay index is what keeps copies out.
            .env("CLASSPULSE_AGG_CHECKPOINT_INTERVAL", "10m")
            .arg("run");
        command
    };
    let running = Running::start(&mut paced("1s"));
    wait_until(
        Duration::from_secs(30),
        "lake objects before the kill",
        || match read_lake(lake.path())
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>()
        {
            0 => Err("none yet".to_owned()),
            _ => Ok(()),
        },
    );
    running.signal("KILL");
    let (code, _, _) = running.wait(Duration::from_secs(10));
    assert_eq!(code, None);

    // The simulator keeps no offsets: the restart reads the same stream from the start.
    let stdout = run_to_end(&mut paced("3s"));
    let batches = read_lake(lake.path());
    let mut ids = std::collections::HashMap::new();
    for batch in &batches {
        let column = batch.column_by_name("event_id").unwrap().as_string::<i32>();
        for row in 0..batch.num_rows() {
            *ids.entry(column.value(row).to_owned()).or_insert(0u32) += 1;
        }
    }
    let twice = ids.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "{twice} events written more than once");
    assert_eq!(ids.len() as u64, expected_lake_rows(&stdout), "{stdout}");
}

#[test]
fn json_logs_come_with_the_lag_as_a_cloudwatch_embedded_metric() {
    let lake = tempfile::tempdir().unwrap();
    let stdout = run_to_end(
        small_simulation(&mut classpulse(lake.path()))
            .env("CLASSPULSE_SIM_SPEEDUP", "150")
            .env("CLASSPULSE_EMF_INTERVAL", "500ms")
            .arg("run"),
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(lines.len() >= 2, "{stdout}");
    for line in &lines {
        assert_eq!(
            line["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "classpulse"
        );
        assert!(line["SourceLagSeconds"].as_f64().unwrap() >= 0.0, "{line}");
        assert_eq!(line["ConsumerGroup"], "simulator");
    }
}
