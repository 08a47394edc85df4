//! Class aggregates end to end: a simulated run writes the three kinds of result, consistent
//! with each other and with the lake, and a run killed and restarted any number of times ends
//! with exactly the results of a clean run.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use common::*;

fn lines(body: &[u8]) -> Vec<Value> {
    std::str::from_utf8(body)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn events_total(counts: &Value) -> u64 {
    counts
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn a_simulated_run_writes_summaries_members_and_minutes_that_agree() {
    let lake = tempfile::tempdir().unwrap();
    let stdout = run_to_end(small_simulation(&mut classpulse(lake.path())).arg("run"));

    let classes = summary_number(&stdout, "simulator");
    assert_eq!(
        summary_number(&stdout, "aggregates"),
        classes,
        "every class is final: {stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|line| line.starts_with("  top class") && line.contains(": effort 1. ")),
        "a leaderboard: {stdout}"
    );
    assert_eq!(
        summary_number(&stdout, "late"),
        0,
        "the simulator delays within the watermark"
    );

    let files = aggregate_files(lake.path());
    let summaries: Vec<(&String, Value)> = files
        .iter()
        .filter(|(name, _)| name.starts_with("classes/"))
        .map(|(name, body)| (name, serde_json::from_slice(body).unwrap()))
        .collect();
    assert_eq!(summaries.len() as u64, classes, "{:?}", files.keys());
    let mut counted = 0;
    for (name, summary) in &summaries {
        let members_file = name
            .replace("classes/", "members/")
            .replace(".json", ".ndjson");
        let minutes_file = name
            .replace("classes/", "minutes/")
            .replace(".json", ".ndjson");
        let members = lines(&files[&members_file]);
        let minutes = lines(&files[&minutes_file]);
        let class_events = events_total(&summary["events"]);
        counted += class_events;
        assert_eq!(summary["final"], true);
        assert_eq!(
            summary["members"].as_u64().unwrap(),
            members.len() as u64,
            "{name}"
        );
        assert_eq!(
            members
                .iter()
                .map(|m| events_total(&m["events"]))
                .sum::<u64>(),
            class_events,
            "{name}: members add up to the class"
        );
        assert_eq!(
            minutes
                .iter()
                .map(|m| m["events"].as_u64().unwrap())
                .sum::<u64>(),
            class_events,
            "{name}: minutes add up to the class"
        );
        let distance = summary["distance_m"].as_f64().unwrap();
        let by_minute: f64 = minutes
            .iter()
            .map(|m| m["distance_m"].as_f64().unwrap())
            .sum();
        assert!(
            close(distance, by_minute),
            "{name}: {distance} m, by minute {by_minute} m"
        );
        let effort = &summary["leaderboard_effort"];
        let values: Vec<f64> = effort
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["value"].as_f64().unwrap())
            .collect();
        assert!(!values.is_empty() && values.len() <= 10, "{name}: {effort}");
        assert!(
            values.windows(2).all(|w| w[0] >= w[1]),
            "{name}: sorted {values:?}"
        );
        for member in &members {
            assert_eq!(member["final"], true);
            let zones: f64 = member["zone_seconds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_f64().unwrap())
                .sum();
            // A sample counts at most 5 s, and a 5-minute run has at most 300 s of them.
            assert!(zones <= 300.0 + 5.0, "{name}: {zones} s in zones");
        }
    }
    let rows: usize = read_lake(lake.path()).iter().map(|b| b.num_rows()).sum();
    assert_eq!(
        counted, rows as u64,
        "every lake row is counted once in the aggregates"
    );
}

/// A paced run of the small simulation (about 7 s), checkpointing often.
fn paced(lake: &Path) -> std::process::Command {
    let mut command = classpulse(lake);
    small_simulation(&mut command)
        .env("CLASSPULSE_SIM_SPEEDUP", "40")
        .env("CLASSPULSE_AGG_CHECKPOINT_INTERVAL", "300ms")
        .env("CLASSPULSE_AGG_FLUSH_INTERVAL", "500ms")
        .env("CLASSPULSE_COMMIT_INTERVAL", "200ms")
        .arg("run");
    command
}

#[test]
fn runs_killed_and_restarted_end_with_the_results_of_a_clean_run() {
    let clean = tempfile::tempdir().unwrap();
    let stdout = run_to_end(small_simulation(&mut classpulse(clean.path())).arg("run"));
    let clean_duplicates = summary_number(&stdout, "duplicates");

    // The same stream (same seed and start), killed twice mid-run and once drained.
    let crashed = tempfile::tempdir().unwrap();
    // Random moments (a run takes about 7.5 s); the plan is printed so a failure can be rerun.
    let plan: Vec<(&str, u64)> = ["KILL", "TERM", "KILL"]
        .into_iter()
        .map(|signal| (signal, rand::random_range(1_500..4_500)))
        .collect();
    eprintln!("kill plan: {plan:?}");
    for (signal, after) in plan {
        let running = Running::start(&mut paced(crashed.path()));
        std::thread::sleep(Duration::from_millis(after));
        // Live values for the screens, refreshed while the classes run.
        let live: Vec<Value> = aggregate_files(crashed.path())
            .iter()
            .filter(|(name, _)| name.starts_with("live/"))
            .map(|(_, body)| serde_json::from_slice(body).unwrap())
            .collect();
        assert!(!live.is_empty());
        assert!(
            live.iter().all(|doc| doc["summary"]["final"] == false),
            "{signal} after {after} ms: {:?}",
            live.iter()
                .map(|doc| (&doc["summary"]["class_id"], &doc["summary"]["final"]))
                .collect::<Vec<_>>()
        );
        running.signal(signal);
        let (code, stdout, logs) = running.wait(Duration::from_secs(30));
        if signal == "TERM" {
            assert_eq!(code, Some(0), "{stdout}\n{}", logs.join("\n"));
            assert_eq!(
                summary_number(&stdout, "aggregates"),
                0,
                "a drain does not finalise: {stdout}"
            );
        }
    }
    let running = Running::start(&mut paced(crashed.path()));
    let (code, stdout, logs) = running.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stdout}\n{}", logs.join("\n"));
    // The restarted run reads the stream from the start; the restored state skips what it
    // holds instead of judging it again (which would count every replayed event a duplicate).
    assert!(logs
        .iter()
        .any(|line| line.contains("aggregate state restored")));
    assert!(
        summary_number(&stdout, "duplicates") <= clean_duplicates,
        "replayed events are not duplicates: {stdout}"
    );
    assert_same_aggregates(crashed.path(), clean.path());
}
