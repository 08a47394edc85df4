//! The documents say what the code does: the configuration reference is the code's own table,
//! every reason code and every metric is documented, and no document names a variable the code
//! does not read.

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path))
        .unwrap_or_else(|error| panic!("reading {path}: {error}"))
}

/// README.md, loadtest/README.md and every Markdown file under docs/, with their paths.
fn documents() -> Vec<(String, String)> {
    let mut paths = vec!["README.md".to_owned(), "loadtest/README.md".to_owned()];
    let mut pending = vec![Path::new(ROOT).join("docs")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "md") {
                let relative = path.strip_prefix(ROOT).unwrap();
                paths.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    paths
        .into_iter()
        .map(|path| {
            let text = read(&path);
            (path, text)
        })
        .collect()
}

#[test]
fn the_configuration_reference_is_what_classpulse_config_markdown_prints() {
    let output = Command::new(env!("CARGO_BIN_EXE_classpulse"))
        .args(["config", "--markdown"])
        .env_clear()
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8(output.stdout).unwrap();
    assert_eq!(table, classpulse::config::reference_markdown());
    let doc = read("docs/configuration.md");
    let begin = "<!-- BEGIN classpulse config --markdown -->\n";
    let end = "<!-- END classpulse config --markdown -->";
    let documented = doc
        .split_once(begin)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(table, _)| table)
        .expect("docs/configuration.md has the generated table between its markers");
    assert!(
        documented == table,
        "docs/configuration.md's table and config::VARS differ; paste the output of \
         `classpulse config --markdown` between the markers:\n{table}"
    );
}

#[test]
fn every_variable_a_document_names_is_one_classpulse_reads() {
    let declared: Vec<&str> = classpulse::config::VARS
        .iter()
        .map(|spec| spec.name)
        .collect();
    // Names that are not variables of their own: the pass-through prefix, and the retired
    // name classpulse refuses with its replacement.
    let allowed = [
        "CLASSPULSE_KAFKA_PROP_",
        "CLASSPULSE_KAFKA_DEAD_LETTER_TOPIC",
    ];
    for (path, text) in documents() {
        for (at, _) in text.match_indices("CLASSPULSE_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            // `CLASSPULSE_*`, `CLASSPULSE_KINESIS_*`: a prefix some variable has.
            let prefix =
                name.ends_with('_') && declared.iter().any(|declared| declared.starts_with(&name));
            let known = declared.contains(&name.as_str())
                || prefix
                || allowed.iter().any(|prefix| name.starts_with(prefix))
                || name.starts_with("CLASSPULSE_TEST_");
            assert!(known, "{path} names {name}, which classpulse does not read");
        }
    }
}

#[test]
fn every_reason_code_is_documented() {
    let contract = read("docs/event-contract.md");
    for reason in classpulse::decode::RejectReason::ALL {
        assert!(
            contract.contains(&format!("| `{}` |", reason.as_str())),
            "docs/event-contract.md does not document {reason}"
        );
    }
}

#[test]
fn every_metric_is_documented() {
    let operating = read("docs/operating.md");
    let source = read("src/metrics.rs");
    let names: Vec<&str> = source
        .lines()
        .filter_map(|line| line.trim().strip_prefix("pub const ")?.split('"').nth(1))
        .collect();
    assert!(names.len() > 10, "{names:?}");
    for name in names {
        assert!(
            operating.contains(&format!("`{name}")),
            "docs/operating.md does not document the metric {name}"
        );
    }
}

#[test]
fn every_relative_link_in_the_documents_leads_to_a_file() {
    for (path, text) in documents() {
        let dir = Path::new(ROOT).join(&path).parent().unwrap().to_owned();
        for (at, _) in text.match_indices("](") {
            let target: String = text[at + 2..].chars().take_while(|c| *c != ')').collect();
            if target.contains("://") || target.starts_with('#') {
                continue;
            }
            let file = target.split('#').next().unwrap();
            assert!(
                dir.join(file).exists(),
                "{path} links to {target}, which does not exist"
            );
        }
    }
}

/// A path in backticks such as `src/decode/` or `tests/kafka.rs` names a file or directory of
/// the repository as it is. Decision records are left out: they tell where things were.
#[test]
fn every_source_path_a_document_names_exists() {
    let mut checked = 0;
    for (path, text) in documents() {
        if path.starts_with("docs/decisions/") {
            continue;
        }
        for quoted in text.split('`').skip(1).step_by(2) {
            let named = quoted.split_whitespace().next().unwrap_or_default();
            let is_path = ["src/", "tests/", "benches/", "scripts/", "deploy/"]
                .iter()
                .any(|root| named.starts_with(root))
                && !named.contains(['*', '{', '<']);
            if !is_path {
                continue;
            }
            checked += 1;
            assert!(
                Path::new(ROOT).join(named.trim_end_matches(':')).exists(),
                "{path} names {named}, which does not exist"
            );
        }
    }
    assert!(checked > 20, "only {checked} paths found");
}
