//! The README documents what the code does: every variable with its default, every reason code.

use std::collections::BTreeMap;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// `| \`NAME\` | default | meaning |` rows of the configuration table.
fn documented_variables() -> BTreeMap<String, String> {
    readme()
        .lines()
        .filter(|line| line.starts_with("| `CLASSPULSE_"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`').to_owned();
            let default = if cells[2] == "(unset)" {
                String::new()
            } else {
                cells[2].trim_matches('`').to_owned()
            };
            (name, default)
        })
        .collect()
}

#[test]
fn configuration_table_matches_the_code() {
    let documented = documented_variables();
    let in_code: BTreeMap<String, String> = classpulse::config::VARS
        .iter()
        .map(|spec| (spec.name.to_owned(), spec.default.to_owned()))
        .collect();
    let expected_rows: String = classpulse::config::VARS
        .iter()
        .map(|spec| {
            let default = if spec.default.is_empty() {
                "(unset)".to_owned()
            } else {
                format!("`{}`", spec.default)
            };
            format!("| `{}` | {default} | {} |\n", spec.name, spec.meaning)
        })
        .collect();
    assert!(
        documented == in_code,
        "README.md's configuration table and config::VARS differ; the rows should read:\n{expected_rows}"
    );
}

#[test]
fn every_reason_code_is_documented() {
    let readme = readme();
    for reason in classpulse::decode::RejectReason::ALL {
        assert!(
            readme.contains(&format!("| `{}` |", reason.as_str())),
            "README.md does not document {reason}"
        );
    }
}

#[test]
fn every_metric_is_documented() {
    let readme = readme();
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics.rs")).unwrap();
    let names: Vec<&str> = source
        .lines()
        .filter_map(|line| line.trim().strip_prefix("pub const ")?.split('"').nth(1))
        .collect();
    assert!(names.len() > 10, "{names:?}");
    for name in names {
        assert!(
            readme.contains(&format!("`{name}")),
            "README.md does not document the metric {name}"
        );
    }
}
