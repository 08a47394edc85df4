//! The load test against the real local servers (`scripts/backends up`): a small day through
//! Kafka and through Kinesis into classpulse, verified clean; then the same lake tampered with,
//! which `verify` must catch and name.
//!
//! classpulse's binary is the one `cargo test --workspace` builds beside this one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn loadtest() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loadtest"))
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("loadtest-{name}-{}-{nanos}", std::process::id())
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A small day: 12 studios in four time zones, 2 classes each of 8 minutes (so held-back
/// events can be late), every imperfection at a rate that makes dozens of each, and one
/// studio 10 s fast.
fn small_day(args: &mut Command) -> &mut Command {
    args.args([
        "--studios",
        "12",
        "--classes-per-day",
        "2",
        "--class-minutes",
        "8",
        "--duplicate-rate",
        "0.02",
        "--late-rate",
        "0.002",
        "--malformed-rate",
        "0.001",
        "--out-of-range-rate",
        "0.001",
        "--fast-clock-ms",
        "10000",
        "--idle-timeout",
        "30s",
        "--events-per-message",
        "6",
    ])
}

fn run(target: &[&str], out: &Path) -> Output {
    let mut command = loadtest();
    command.arg("run");
    small_day(&mut command);
    command
        .args(target)
        .args(["--partitions", "4", "--timeout-secs", "300"])
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn a_day_through_kafka_is_verified_clean_and_tampering_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let output = run(&["--target", "kafka", "--topic", &unique("kafka")], &out);
    let log = text(&output);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("verify: clean"), "{log}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for needle in [
        "| verdict | **clean** |",
        "counted in its class's live document",
        "Cost projection",
    ] {
        assert!(report.contains(needle), "{needle} not in\n{report}");
    }
    // The day had each imperfection, or the clean verdict proves less than it says.
    let imperfections = report
        .lines()
        .find(|l| l.starts_with("| imperfections |"))
        .unwrap();
    for needle in ["| 0 producer retries", ", 0 late", ", 0 malformed"] {
        assert!(
            !imperfections.contains(needle),
            "{needle} in {imperfections}"
        );
    }
    let chart = std::fs::read_to_string(out.join("report.svg")).unwrap();
    for caption in ["events/s into classpulse", "classpulse RSS, MB"] {
        assert!(chart.contains(caption), "{caption} not in the chart");
    }
    assert!(
        chart.matches("<polyline").count() >= 4,
        "the chart draws its four series"
    );

    // Tamper: lose one Parquet object, change one member's result.
    let lake = out.join("lake");
    let parquet = find(&lake.join("events"), ".parquet").remove(0);
    std::fs::remove_file(&parquet).unwrap();
    let members = find(&lake.join("aggregates/members"), ".ndjson").remove(0);
    let body = std::fs::read_to_string(&members).unwrap();
    let tampered = body.replacen("\"hr_samples\":", "\"hr_samples\":1", 1);
    assert_ne!(body, tampered);
    std::fs::write(&members, tampered).unwrap();
    let output = loadtest()
        .args(["verify", "--manifest"])
        .arg(&out)
        .arg("--lake")
        .arg(format!("file://{}", lake.display()))
        .output()
        .unwrap();
    let log = text(&output);
    assert!(!output.status.success(), "{log}");
    assert!(log.contains("verify: DIFFERENCES"), "{log}");
    assert!(
        log.contains("is missing"),
        "the lost events are named: {log}"
    );
    assert!(
        log.contains("members[0].hr_samples: expected"),
        "the changed value is named: {log}"
    );
}

#[test]
fn a_day_through_kinesis_is_verified_clean() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let output = run(
        &[
            "--target",
            "kinesis",
            "--topic",
            &unique("kinesis"),
            "--env",
            "CLASSPULSE_KINESIS_LEASE_DURATION=2s",
            "--env",
            "CLASSPULSE_KINESIS_POLL_INTERVAL=200ms",
            "--dynamodb-endpoint",
            "http://127.0.0.1:8000",
        ],
        &out,
    );
    let log = text(&output);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("verify: clean"), "{log}");
}

fn find(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found.sort();
    assert!(
        !found.is_empty(),
        "nothing ending {suffix} under {}",
        dir.display()
    );
    found
}
