//! The lake is queryable as is by an engine nobody here wrote: DuckDB reads the Parquet
//! objects with Hive partitioning and counts what the simulator produced, and the queries of
//! docs/lake.md ("Querying") answer right against views of the Athena tables the deployment
//! defines.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use chrono::{DateTime, Utc};
use classpulse::config::Config;
use common::athena::duckdb_views;
use common::backends::installed_tool;
use common::*;
use serde_json::Value;

/// The lake of `small_simulation`, run by classpulse.
fn simulated_lake() -> tempfile::TempDir {
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
    lake
}

/// The same simulation `small_simulation` runs, decoded in-process: each valid event once
/// (producer retries are left out of the lake), and the rejected inputs.
async fn simulated_events() -> (
    Vec<classpulse::event::PerformanceEvent>,
    Vec<classpulse::decode::RejectedInput>,
) {
    let mut command = classpulse(std::path::Path::new("/nonexistent"));
    small_simulation(&mut command);
    let vars = command
        .get_envs()
        .filter_map(|(name, value)| Some((name.to_str()?.to_owned(), value?.to_str()?.to_owned())))
        .filter(|(name, _)| name.starts_with("CLASSPULSE_SIM_"))
        .collect();
    let config = Config::from_vars(&vars).unwrap();
    let (events, rejected) = decode_all(&simulate(&config.simulator).await);
    let mut ids = std::collections::HashSet::new();
    let events = events
        .into_iter()
        .filter(|e| ids.insert(e.event_id.clone()))
        .collect();
    (events, rejected)
}

/// [`simulated_events`] counted by (event type, date).
async fn expected_counts() -> BTreeMap<(String, String), u64> {
    let mut counts = BTreeMap::new();
    for event in simulated_events().await.0 {
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
    let lake = simulated_lake();

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

/// The SQL blocks of docs/lake.md's "Querying" section, by their first line (a comment).
fn documented_queries() -> BTreeMap<String, String> {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/lake.md")).unwrap();
    let section = docs
        .split_once("## Querying")
        .expect("a Querying section")
        .1;
    section
        .split("```sql\n")
        .skip(1)
        .map(|block| {
            let sql = block.split_once("```").unwrap().0;
            let title = sql
                .lines()
                .next()
                .unwrap()
                .trim_start_matches("-- ")
                .to_owned();
            (title, sql.to_owned())
        })
        .collect()
}

/// Reads `{"views": SQL, "queries": {title: SQL}}` and prints `{title: rows}`, each row the
/// list of its values. Rows become JSON in DuckDB (a timestamp with a zone would need pytz in
/// Python).
const DUCKDB_SCRIPT: &str = r#"
import duckdb, json, sys
job = json.load(sys.stdin)
con = duckdb.connect()
con.execute(job["views"])
def rows(sql):
    sql = sql.strip().rstrip(";")
    return [list(json.loads(r[0]).values()) for r in con.execute(f"SELECT to_json(q) FROM ({sql}) q").fetchall()]
print(json.dumps({title: rows(sql) for title, sql in job["queries"].items()}))
"#;

/// Runs each query in DuckDB over views of the Athena tables on `lake`: rows by title.
fn run_in_duckdb(
    lake: &std::path::Path,
    queries: &BTreeMap<String, String>,
) -> BTreeMap<String, Vec<Vec<Value>>> {
    let mut child = Command::new(python_with_duckdb())
        .arg("-c")
        .arg(DUCKDB_SCRIPT)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let job = serde_json::json!({ "views": duckdb_views(lake), "queries": queries });
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(job.to_string().as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn result_lines(lake: &std::path::Path, folder: &str, name: &str) -> Vec<Value> {
    let path = lake.join(format!("aggregates/{folder}/dt=2026-11-25/{name}"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test]
async fn the_documented_queries_answer_right_in_duckdb_over_the_athena_tables() {
    let lake = simulated_lake();
    let queries = documented_queries();
    assert_eq!(queries.len(), 7, "{:?}", queries.keys());
    let answers = run_in_duckdb(lake.path(), &queries);
    let answer = |title: &str| -> &Vec<Vec<Value>> {
        answers
            .get(title)
            .unwrap_or_else(|| panic!("no query {title:?} in docs/lake.md"))
    };

    // What the simulation sent, decoded in-process.
    let (mut events, rejected) = simulated_events().await;
    events.sort_by(|a, b| {
        (&*a.member_id, a.event_time_ms, a.event_type.as_str()).cmp(&(
            &*b.member_id,
            b.event_time_ms,
            b.event_type.as_str(),
        ))
    });
    let (studio, class, member) = ("studio-0001", "20261125T1700-hiit", "m00010004");

    // A class's heart-rate series, member by member.
    let series: Vec<(String, f64)> = events
        .iter()
        .filter(|e| &*e.studio_id == studio && &*e.class_id == class)
        .filter(|e| e.event_type.as_str() == "heart_rate")
        .map(|e| (e.member_id.to_string(), e.metrics.bpm.unwrap()))
        .collect();
    let rows = answer("A class's heart-rate series, member by member");
    assert!(series.len() > 100, "{}", series.len());
    let shown: Vec<(String, f64)> = rows
        .iter()
        .map(|row| {
            (
                row[0].as_str().unwrap().to_owned(),
                row[2].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shown, series);

    // A member's events over a day, in time order.
    let theirs: Vec<&str> = events
        .iter()
        .filter(|e| &*e.member_id == member)
        .map(|e| e.event_type.as_str())
        .collect();
    let rows = answer("A member's events over a day");
    assert!(!theirs.is_empty());
    let shown: Vec<&str> = rows.iter().map(|row| row[1].as_str().unwrap()).collect();
    assert_eq!(shown, theirs);
    assert!(rows.iter().all(|row| row[2] == studio && row[3] == class));

    // A day's totals per studio.
    let mut totals: BTreeMap<
        String,
        (
            u64,
            std::collections::BTreeSet<String>,
            std::collections::BTreeSet<String>,
        ),
    > = BTreeMap::new();
    for event in &events {
        let entry = totals.entry(event.studio_id.to_string()).or_default();
        entry.0 += 1;
        entry.1.insert(event.class_id.to_string());
        entry.2.insert(event.member_id.to_string());
    }
    let expected: Vec<Vec<Value>> = totals
        .into_iter()
        .map(|(studio, (events, classes, members))| {
            vec![
                studio.into(),
                events.into(),
                (classes.len() as u64).into(),
                (members.len() as u64).into(),
            ]
        })
        .collect();
    assert_eq!(answer("A day's totals per studio"), &expected);

    // Dead letters by reason.
    let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
    for reject in &rejected {
        *reasons.entry(reject.rejection.reason.as_str()).or_default() += 1;
    }
    assert!(reasons.len() > 2, "{reasons:?}");
    let mut expected: Vec<(&str, u64)> = reasons.into_iter().collect();
    expected.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let expected: Vec<Vec<Value>> = expected
        .into_iter()
        .map(|(reason, count)| vec![reason.into(), count.into()])
        .collect();
    assert_eq!(
        answer("Dead letters by reason, since the start of a month"),
        &expected
    );

    // The results, as the result files have them.
    let summary = &result_lines(lake.path(), "classes", &format!("{studio}-{class}.json"))[0];
    assert_eq!(
        answer("A studio's classes of a day, with their best effort"),
        &vec![vec![
            class.into(),
            summary["members"].clone(),
            summary["hr_avg"].clone(),
            summary["effort_points"].clone(),
            summary["leaderboard_effort"][0]["value"].clone(),
        ]]
    );
    let line = result_lines(lake.path(), "members", &format!("{studio}-{class}.ndjson"))
        .into_iter()
        .find(|line| line["member_id"] == member)
        .unwrap();
    assert_eq!(
        answer("A member's results, class by class"),
        &vec![vec![
            "2026-11-25".into(),
            studio.into(),
            class.into(),
            line["hr_max_used"].clone(),
            line["hr_max_source"].clone(),
            line["effort_points"].clone(),
            line["zone_seconds"][4].clone(),
            line["calories_hr"].clone(),
        ]]
    );
    let minutes = result_lines(lake.path(), "minutes", &format!("{studio}-{class}.ndjson"));
    let expected: Vec<Vec<Value>> = minutes
        .iter()
        .map(|m| {
            vec![
                m["minute"].clone(),
                m["members_active"].clone(),
                m["hr_avg"].clone(),
                m["distance_m"].clone(),
            ]
        })
        .collect();
    assert!(expected.len() >= 4, "{}", expected.len());
    assert_eq!(answer("A class minute by minute"), &expected);
}
