//! The lake is queryable as is by an engine nobody here wrote: DuckDB reads the Parquet
//! objects with Hive partitioning and counts what the simulator produced.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use chrono::{DateTime, Utc};
use classpulse::config::Config;
use common::backends::installed_tool;
use common::*;

/// The same simulation `small_simulation` runs, decoded in-process: (event type, date) -> count
/// of distinct events.
async fn expected_counts() -> BTreeMap<(String, String), u64> {
    let mut command = classpulse(std::path::Path::new("/nonexistent"));
    small_simulation(&mut command);
    let vars = command
        .get_envs()
        .filter_map(|(name, value)| Some((name.to_str()?.to_owned(), value?.to_str()?.to_owned())))
        .filter(|(name, _)| name.starts_with("CLASSPULSE_SIM_"))
        .collect();
    let config = Config::from_vars(&vars).unwrap();
    let (events, _) = decode_all(&simulate(&config.simulator).await);
    let mut counts = BTreeMap::new();
    // Producer retries are left out of the lake: each id once.
    let mut ids = std::collections::HashSet::new();
    for event in events
        .into_iter()
        .filter(|e| ids.insert(e.event_id.clone()))
    {
        let date = DateTime::<Utc>::from_timestamp_millis(event.event_time_ms)
            .unwrap()
            .format("%Y-%m-%d")
            .to_string();
        *counts
            .entry((event.event_type.as_str().to_owned(), date))
            .or_default() += 1;
    }
    counts
}

fn python_with_duckdb() -> std::path::PathBuf {
    installed_tool("venv/bin/python")
}

#[tokio::test]
async fn duckdb_reads_the_lake_as_is() {
    let lake = tempfile::tempdir().unwrap();
    let output = small_simulation(&mut classpulse(lake.path()))
        .arg("run")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let query = format!(
        "import duckdb\n\
         rows = duckdb.sql(\"SELECT event_type, CAST(dt AS VARCHAR), count(*), count(DISTINCT hour), min(bpm), max(bpm) \
         FROM read_parquet('{}/events/*/*/*.parquet', hive_partitioning = true) GROUP BY ALL ORDER BY ALL\").fetchall()\n\
         for row in rows: print('|'.join(str(v) for v in row))",
        lake.path().display()
    );
    let result = Command::new(python_with_duckdb())
        .arg("-c")
        .arg(query)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let stdout = String::from_utf8(result.stdout).unwrap();

    let mut queried = BTreeMap::new();
    for line in stdout.lines() {
        let cells: Vec<&str> = line.split('|').collect();
        queried.insert(
            (cells[0].to_owned(), cells[1].to_owned()),
            cells[2].parse::<u64>().unwrap(),
        );
        if cells[0] == "heart_rate" {
            let (min, max): (f64, f64) = (cells[4].parse().unwrap(), cells[5].parse().unwrap());
            assert!(25.0 <= min && max <= 250.0, "bpm is a typed column: {line}");
        } else {
            assert_eq!(
                cells[4], "None",
                "bpm is null outside heart-rate rows: {line}"
            );
        }
    }
    let expected = expected_counts().await;
    assert_eq!(expected.len(), 5, "all five types: {expected:?}");
    assert_eq!(queried, expected);
}
