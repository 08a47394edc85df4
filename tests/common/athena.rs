//! The lake's Athena tables as `deploy/cloudformation/classpulse.yaml` defines them, and the
//! same tables as DuckDB views over a local lake, so a query runs against the columns and types
//! Athena would see.

use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One table of the template.
pub struct Table {
    /// Its columns, (name, Athena type).
    pub columns: Vec<(String, String)>,
    /// Its partition keys, (name, type).
    pub partition_keys: Vec<(String, String)>,
    /// The resource's lines.
    pub text: String,
}

/// Table `name` of the CloudFormation template: the resource after the comment
/// `# Athena table \`name\``, up to the next resource.
pub fn cloudformation_table(name: &str) -> Table {
    let template =
        std::fs::read_to_string(format!("{ROOT}/deploy/cloudformation/classpulse.yaml")).unwrap();
    let start = format!("  # Athena table `{name}`");
    let lines: Vec<&str> = template
        .lines()
        .skip_while(|line| !line.starts_with(&start))
        .skip(2)
        .take_while(|line| line.is_empty() || line.starts_with("   "))
        .collect();
    assert!(!lines.is_empty(), "no table {name} in the template");
    Table {
        columns: section(&lines, "Columns:"),
        partition_keys: section(&lines, "PartitionKeys:"),
        text: lines.join("\n"),
    }
}

/// `{Name: x, Type: y}` lines after `title` (`Columns:` or `PartitionKeys:`), as (name, type).
fn section(lines: &[&str], title: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut columns = Vec::new();
    for line in lines {
        let trimmed = line.trim();
        if trimmed.ends_with(':') && !trimmed.starts_with('-') {
            inside = trimmed == title;
            continue;
        }
        let entry = trimmed
            .strip_prefix("- {Name: ")
            .and_then(|rest| rest.strip_suffix('}'));
        if let (true, Some(entry)) = (inside, entry) {
            let (name, kind) = entry.split_once(", Type: ").unwrap();
            columns.push((name.to_owned(), kind.trim_matches('"').to_owned()));
        }
    }
    columns
}

/// DuckDB's type for an Athena (Hive) type: `struct<a:bigint>` is `STRUCT("a" BIGINT)`.
pub fn duckdb_type(hive: &str) -> String {
    let (converted, rest) = convert(hive);
    assert!(rest.is_empty(), "{hive}: left over {rest:?}");
    converted
}

/// Converts the type at the start of `text`; returns it and the text after it.
fn convert(text: &str) -> (String, &str) {
    if let Some(rest) = text.strip_prefix("array<") {
        let (inner, rest) = convert(rest);
        return (format!("{inner}[]"), rest.strip_prefix('>').unwrap());
    }
    if let Some(mut rest) = text.strip_prefix("struct<") {
        let mut fields = Vec::new();
        loop {
            let (name, after) = rest.split_once(':').unwrap();
            let (kind, after) = convert(after);
            fields.push(format!("\"{name}\" {kind}"));
            match after.as_bytes().first() {
                Some(b',') => rest = &after[1..],
                Some(b'>') => return (format!("STRUCT({})", fields.join(", ")), &after[1..]),
                _ => panic!("{text}: a struct ends with >"),
            }
        }
    }
    let end = text.find([',', '>']).unwrap_or(text.len());
    let kind = match &text[..end] {
        "string" => "VARCHAR",
        "bigint" => "BIGINT",
        "int" => "INTEGER",
        "double" => "DOUBLE",
        "boolean" => "BOOLEAN",
        "timestamp" => "TIMESTAMP WITH TIME ZONE",
        other => panic!("no DuckDB type for {other}"),
    };
    (kind.to_owned(), &text[end..])
}

/// SQL creating a DuckDB view per table of the template over the lake in `lake`, each with the
/// table's columns and types, partition keys as strings (as Athena has them).
pub fn duckdb_views(lake: &Path) -> String {
    let lake = lake.display();
    let mut sql = String::new();
    for (name, files) in [
        ("events", "events/*/*/*.parquet"),
        ("dead_letters", "dead-letters/*/*/*.ndjson.zst"),
        ("classes", "aggregates/classes/*/*.json"),
        ("members", "aggregates/members/*/*.ndjson"),
        ("minutes", "aggregates/minutes/*/*.ndjson"),
    ] {
        let table = cloudformation_table(name);
        let keys: Vec<String> = table
            .partition_keys
            .iter()
            .map(|(key, _)| format!("'{key}': 'VARCHAR'"))
            .collect();
        let hive = format!(
            "hive_partitioning = true, hive_types = {{{}}}",
            keys.join(", ")
        );
        let names: Vec<String> = table
            .columns
            .iter()
            .chain(&table.partition_keys)
            .map(|(column, _)| format!("\"{column}\""))
            .collect();
        let source = if files.ends_with(".parquet") {
            format!("read_parquet('{lake}/{files}', {hive})")
        } else {
            let columns: Vec<String> = table
                .columns
                .iter()
                .map(|(column, kind)| {
                    format!("'{column}': '{}'", duckdb_type(kind).replace('\'', "''"))
                })
                .collect();
            format!(
                "read_json('{lake}/{files}', format = 'newline_delimited', columns = {{{}}}, {hive})",
                columns.join(", ")
            )
        };
        sql.push_str(&format!(
            "CREATE VIEW {name} AS SELECT {} FROM {source};\n",
            names.join(", ")
        ));
    }
    sql
}
