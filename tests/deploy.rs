//! The deployment files in `deploy/`, checked by real tools (hadolint, cfn-lint: installed
//! into `.backends/venv` by `scripts/backends install`) and against the code: the task role
//! grants exactly the AWS calls the code makes, and the task sets or documents every variable.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::backends::installed_tool;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn template() -> String {
    std::fs::read_to_string(format!("{ROOT}/deploy/cloudformation/classpulse.yaml")).unwrap()
}

fn run_tool(tool: &str, args: &[&str]) {
    let output = Command::new(installed_tool(&format!("venv/bin/{tool}")))
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{tool} {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn cfn_lint_finds_no_error_or_warning_in_the_template() {
    run_tool("cfn-lint", &["deploy/cloudformation/classpulse.yaml"]);
}

#[test]
fn hadolint_passes_the_dockerfile_which_runs_as_non_root_with_a_health_check() {
    run_tool("hadolint", &["deploy/Dockerfile"]);
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/deploy/Dockerfile")).unwrap();
    assert!(dockerfile.contains("USER 65532:65532"), "non-root");
    assert!(dockerfile.contains(r#"CMD ["/usr/local/bin/classpulse", "healthcheck"]"#));
    assert!(dockerfile.contains("CLASSPULSE_HTTP_ADDR=0.0.0.0:9898"));
    assert!(dockerfile.contains("CLASSPULSE_LOG_FORMAT=json"));
}

/// cargo reads every workspace member's manifest, even to build one binary: the image build
/// needs each member's directory (and the files the package itself builds from).
#[test]
fn the_dockerfile_copies_every_workspace_member_and_source_directory() {
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/deploy/Dockerfile")).unwrap();
    let manifest = std::fs::read_to_string(format!("{ROOT}/Cargo.toml")).unwrap();
    let members_line = manifest
        .lines()
        .find(|line| line.trim_start().starts_with("members"))
        .expect("a [workspace] members line");
    let members: Vec<&str> = members_line
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|member| *member != ".")
        .collect();
    assert!(!members.is_empty(), "{members_line}");
    for directory in members.iter().copied().chain(["src", "benches", "schemas"]) {
        assert!(
            dockerfile.contains(&format!("COPY {directory} ./{directory}")),
            "deploy/Dockerfile does not copy {directory}"
        );
    }
}

#[test]
fn the_task_sets_or_documents_every_variable() {
    let template = template();
    let missing: Vec<&str> = classpulse::config::VARS
        .iter()
        .map(|spec| spec.name)
        .filter(|name| !template.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/cloudformation/classpulse.yaml neither sets nor mentions {missing:?}"
    );
    // ECS must wait longer than classpulse's drain before it kills the task.
    let default_of = |parameter: &str| -> u64 {
        let at = template.find(&format!("  {parameter}:\n")).unwrap();
        let rest = &template[at..];
        let line = rest
            .lines()
            .find(|l| l.trim_start().starts_with("Default:"))
            .unwrap();
        line.split(':').nth(1).unwrap().trim().parse().unwrap()
    };
    assert!(default_of("StopTimeoutSeconds") > default_of("ShutdownTimeoutSeconds"));
}

/// Every `.rs` file under `dir`, without its `#[cfg(test)]` modules.
fn production_sources(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            production_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap().to_owned();
            out.push((path, code));
        }
    }
}

/// `snake_case` to `PascalCase`, as SDK methods map to API actions.
fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().unwrap().to_ascii_uppercase().to_string() + chars.as_str()
        })
        .collect()
}

/// The IAM actions the production code calls. SDK operations are found by their builder
/// methods; object_store calls by the store operations it uses (a PUT, a multipart upload and
/// its abort, a GET or HEAD, a DELETE, a LIST).
fn actions_called(under: &str) -> BTreeSet<String> {
    let mut sources = Vec::new();
    production_sources(&Path::new(ROOT).join("src"), &mut sources);
    // The screen server runs under a role of its own (`ScreensTaskRole`): its own code and the
    // AWS helpers it shares with the task (`src/aws.rs`: a stream's ARN, its fan-out consumer).
    let screens = Path::new(ROOT).join("src/screens");
    let shared = Path::new(ROOT).join("src/aws.rs");
    sources.retain(|(path, _)| {
        if under == "src/screens" {
            path.starts_with(&screens) || *path == shared
        } else {
            !path.starts_with(&screens)
        }
    });
    let dynamodb_operations = [
        "batch_write_item",
        "put_item",
        "update_item",
        "delete_item",
        "get_item",
        "query",
        "scan",
        "batch_get_item",
        "describe_table",
        "create_table",
        "update_time_to_live",
        "delete_table",
        "transact_write_items",
    ];
    let kinesis_operations = [
        "get_records",
        "get_shard_iterator",
        "list_shards",
        "describe_stream_summary",
        "describe_stream",
        "subscribe_to_shard",
        "put_record",
        "put_records",
        "register_stream_consumer",
        "describe_stream_consumer",
        "deregister_stream_consumer",
    ];
    let object_store_calls: [(&str, &str); 8] = [
        (".put_opts(", "s3:PutObject"),
        (".put_multipart_opts(", "s3:PutObject"),
        (".put_multipart(", "s3:PutObject"),
        ("upload.abort()", "s3:AbortMultipartUpload"),
        ("store.get(", "s3:GetObject"),
        ("store.head(", "s3:GetObject"),
        ("store().delete(", "s3:DeleteObject"),
        (".list(Some(", "s3:ListBucket"),
    ];
    let mut actions = BTreeSet::new();
    for (path, code) in &sources {
        // `classpulse tables create` is a development tool: the task never creates tables.
        if path.ends_with("sink/dynamodb/tables.rs") {
            continue;
        }
        for operation in dynamodb_operations {
            if code.contains(&format!(".{operation}()")) && code.contains("aws_sdk_dynamodb") {
                actions.insert(format!("dynamodb:{}", pascal(operation)));
            }
        }
        for operation in kinesis_operations {
            if code.contains(&format!(".{operation}()")) {
                actions.insert(format!("kinesis:{}", pascal(operation)));
            }
        }
        for (call, action) in object_store_calls {
            if code.contains(call) || code.contains(&call.replace("store.", "self.store.")) {
                actions.insert(action.to_owned());
            }
        }
        if code.contains("self.store.delete(") {
            actions.insert("s3:DeleteObject".to_owned());
        }
    }
    actions
}

/// Actions a role grants between `# {role}-policy-begin` and `# {role}-policy-end`.
fn actions_granted(role: &str) -> BTreeSet<String> {
    let template = template();
    let begin = template.find(&format!("# {role}-policy-begin")).unwrap();
    let end = template.find(&format!("# {role}-policy-end")).unwrap();
    template[begin..end]
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("Action:"))
        .flat_map(|list| {
            list.trim()
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(|action| action.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_task_role_grants_exactly_the_calls_the_code_makes() {
    let called = actions_called("src");
    let granted = actions_granted("task-role");
    // Sanity: the scan sees what classpulse is known to call.
    for known in [
        "dynamodb:BatchWriteItem",
        "dynamodb:PutItem",
        "s3:PutObject",
        "s3:ListBucket",
    ] {
        assert!(
            called.contains(known),
            "the code scan missed {known}: {called:?}"
        );
    }
    let missing: Vec<_> = called.difference(&granted).collect();
    assert!(
        missing.is_empty(),
        "the code calls {missing:?}, which the task role lacks"
    );
    // Granted without a call in classpulse's own code, each for a stated reason: SSE-KMS on
    // the bucket and tables (S3 and DynamoDB call KMS for the task), and librdkafka's calls to
    // MSK under IAM authentication.
    let indirect: BTreeSet<String> = [
        "kms:GenerateDataKey",
        "kms:Decrypt",
        "kafka-cluster:Connect",
        "kafka-cluster:DescribeCluster",
        "kafka-cluster:DescribeTopic",
        "kafka-cluster:ReadData",
        "kafka-cluster:WriteData",
        "kafka-cluster:DescribeGroup",
        "kafka-cluster:AlterGroup",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let extra: Vec<_> = granted
        .iter()
        .filter(|action| !called.contains(*action) && !indirect.contains(*action))
        .collect();
    assert!(
        extra.is_empty(),
        "the task role grants {extra:?}, which nothing calls"
    );
    assert!(
        !granted.iter().any(|action| action.contains('*')),
        "{granted:?}"
    );
}

#[test]
fn the_screens_role_grants_exactly_the_calls_the_screen_server_makes() {
    let called = actions_called("src/screens");
    let granted = actions_granted("screens-role");
    assert!(
        called.contains("kinesis:SubscribeToShard"),
        "the code scan missed the fan-out: {called:?}"
    );
    let missing: Vec<_> = called.difference(&granted).collect();
    assert!(
        missing.is_empty(),
        "the screen server calls {missing:?}, which its role lacks"
    );
    // librdkafka's calls to MSK under IAM authentication, reading the live topic.
    let indirect = [
        "kafka-cluster:Connect",
        "kafka-cluster:DescribeCluster",
        "kafka-cluster:DescribeTopic",
        "kafka-cluster:ReadData",
    ];
    let extra: Vec<_> = granted
        .iter()
        .filter(|action| !called.contains(*action) && !indirect.contains(&action.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "the screens role grants {extra:?}, which nothing calls"
    );
}
