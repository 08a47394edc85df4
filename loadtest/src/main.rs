//! `loadtest`: the studios' workload through a real broker into classpulse, checked event by
//! event and aggregate by aggregate.
//!
//! ```text
//! loadtest produce --target kafka|kinesis ...   generate and send; write the manifest
//! loadtest verify --manifest DIR --lake URL     check the lake, dead letters, aggregates, tables
//! loadtest run ...                              start classpulse, produce, drain, verify, report
//! ```

use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod expect;
mod kinesis;
mod model;
mod produce;
mod report;
mod run;
mod selectivity;
mod verify;
mod walls;

#[derive(Parser)]
#[command(
    version,
    about = "Load test for classpulse: produce, verify, run and report"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Generate the workload and send it to Kafka or Kinesis; write the manifest.
    Produce {
        #[command(flatten)]
        workload: model::WorkloadArgs,
        #[command(flatten)]
        target: produce::TargetArgs,
        #[command(flatten)]
        pace: produce::PaceArgs,
        /// Directory for the manifest (what was sent and what classpulse must make of it).
        #[arg(long, default_value = "loadtest-out")]
        manifest: PathBuf,
    },
    /// Check what classpulse wrote against a manifest.
    Verify {
        /// Directory holding the manifest.
        #[arg(long, default_value = "loadtest-out")]
        manifest: PathBuf,
        #[command(flatten)]
        output: verify::OutputArgs,
    },
    /// Start classpulse, produce, wait until it has caught up, verify, and write a report.
    Run(run::RunArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Produce {
            workload,
            target,
            pace,
            manifest,
        } => {
            let (sent, sends) = produce::produce(&workload, &target, pace, true, None).await?;
            let path = sent.write(&manifest)?;
            sends.write(&manifest)?;
            eprintln!("manifest: {}", path.display());
            // The profiles classpulse is to read (CLASSPULSE_MEMBERS_FILE or the members table).
            let now_ms = chrono::Utc::now().timestamp_millis();
            let plan = model::Plan::new(&workload, pace.plan_speedup(), now_ms)?;
            let profiles = manifest.join("members.ndjson");
            std::fs::write(&profiles, plan.profiles_ndjson())?;
            eprintln!("member profiles: {}", profiles.display());
        }
        Command::Verify { manifest, output } => {
            let verdict = verify::verify(&manifest, &output).await?;
            verdict.print();
            if !verdict.clean() {
                std::process::exit(1);
            }
        }
        Command::Run(args) => {
            let clean = run::run(args).await?;
            if !clean {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

/// A Kinesis client for a local endpoint (credentials and region from the environment, with
/// the local servers' defaults).
async fn kinesis_client(endpoint: &str) -> aws_sdk_kinesis::Client {
    let config = aws_config(Some(endpoint)).await;
    aws_sdk_kinesis::Client::new(&config)
}

/// A DynamoDB client, for a local endpoint if given.
async fn dynamodb_client(endpoint: Option<&str>) -> aws_sdk_dynamodb::Client {
    let config = aws_config(endpoint).await;
    aws_sdk_dynamodb::Client::new(&config)
}

async fn aws_config(endpoint: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            loader = loader.credentials_provider(aws_sdk_kinesis::config::Credentials::new(
                "test", "test", None, None, "loadtest",
            ));
        }
        if std::env::var_os("AWS_REGION").is_none() {
            loader = loader.region(aws_config::Region::new("us-east-1"));
        }
    }
    loader.load().await
}
