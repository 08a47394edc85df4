//! The `classpulse` command.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use classpulse::aggregate::stage::AggregateStage;
use classpulse::aggregate::Rules;
use classpulse::config::{self, Config, LakeLocation, LogFormat, SourceKind};
use classpulse::decode::DecodeLimits;
use classpulse::health::Health;
use classpulse::kafka::MskIam;
use classpulse::live::{Board, Publisher, Tiles};
use classpulse::pipeline::{Pipeline, RunReport, Settings};
use classpulse::profile::source::{Profiles, TableSource};
use classpulse::screens::{wall_routes, Access, Walls};
use classpulse::sink::dead_letter_topic::DeadLetterTopicSink;
use classpulse::sink::dynamodb::aggregates::AggregatesTable;
use classpulse::sink::dynamodb::events::{EventsTableSink, PackSettings, MAX_PAYLOAD_BYTES};
use classpulse::sink::dynamodb::tables::{create_table_of, Created, Schema};
use classpulse::sink::dynamodb::TableWriter;
use classpulse::sink::lake::{LakeFormat, ParquetEncoder};
use classpulse::sink::object::{ObjectLimits, ObjectSink};
use classpulse::sink::Sink;
use classpulse::source::kafka::KafkaSource;
use classpulse::source::kinesis::KinesisSource;
use classpulse::source::simulator::{Simulator, SimulatorStats};
use classpulse::source::Source;
use classpulse::stats::Stats;
use classpulse::store::ObjectWriter;
use classpulse::{http, metrics, redrive, schema, shutdown};

/// Exit code for invalid configuration.
const CONFIG_ERROR_EXIT_CODE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "classpulse",
    version,
    about = "Consume fitness-studio performance events: validate, land in the lake, aggregate per class."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline (configured by CLASSPULSE_* variables; with none, the built-in simulator
    /// writes to ./classpulse-data).
    Run,
    /// Print the effective configuration (every variable, its value, whether it is the default)
    /// and exit.
    Config {
        /// Print the reference table of every variable (default, meaning) as Markdown instead,
        /// as docs/configuration.md holds it.
        #[arg(long)]
        markdown: bool,
    },
    /// Print the JSON Schema of a performance event.
    Schema,
    /// Exit 0 if the classpulse at CLASSPULSE_HTTP_ADDR answers /healthz, else 1: the
    /// container's health check (the image has no curl).
    Healthcheck,
    /// Send dead letters from the lake through the pipeline again, once their cause is fixed
    /// (a limit raised, a schema version learned): those valid now go into the lake (source
    /// `redrive`, flagged late) and the events table, unless their id is there already. Uses
    /// the lake, table and limit settings of CLASSPULSE_* as `run` does.
    Redrive(RedriveArgs),
    /// Erase members' data on request: puts them on the erasure list (every task leaves them
    /// out from then on), then removes their rows from the lake's closed objects, their dead
    /// letters, results and live documents, and their items in the DynamoDB tables. Prints
    /// what it found and changed; a second run finds nothing. See docs/erasure.md.
    Erase(EraseArgs),
    /// DynamoDB tables.
    Tables {
        #[command(subcommand)]
        command: TablesCommand,
    },
    /// The screen server: reads CLASSPULSE_LIVE_TOPIC (or CLASSPULSE_LIVE_STREAM, by enhanced
    /// fan-out) and streams each studio's classes to its
    /// walls on CLASSPULSE_HTTP_ADDR (`/studios/{studio_id}?k=TOKEN`).
    Screens {
        #[command(subcommand)]
        command: Option<ScreensCommand>,
    },
}

#[derive(Subcommand)]
enum ScreensCommand {
    /// Print the URL of a studio's wall, its token made with CLASSPULSE_SCREENS_KEY.
    Url {
        /// The studio.
        studio_id: String,
        /// Where the screen server is reached, e.g. https://walls.example.com; default:
        /// http://CLASSPULSE_HTTP_ADDR.
        #[arg(long)]
        base: Option<String>,
    },
}

#[derive(clap::Args)]
struct RedriveArgs {
    /// Dead letters received at or after this time (RFC 3339).
    #[arg(long)]
    from: DateTime<Utc>,
    /// Dead letters received before this time (RFC 3339).
    #[arg(long)]
    to: DateTime<Utc>,
    /// Only dead letters of this reason (repeatable; default: every reason).
    #[arg(long = "reason")]
    reasons: Vec<String>,
    /// Decode again and report what would be written; write nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args)]
struct EraseArgs {
    /// A member to erase (repeatable).
    #[arg(long = "member")]
    members: Vec<String>,
    /// A file of member ids to erase, one a line (blank lines and lines from `#` left out).
    #[arg(long)]
    from_file: Option<std::path::PathBuf>,
    /// Find and count what would be removed; change nothing (the list included).
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand)]
enum TablesCommand {
    /// Create the tables named by CLASSPULSE_DYNAMODB_EVENTS_TABLE and
    /// CLASSPULSE_DYNAMODB_AGGREGATES_TABLE (on-demand billing, TTL on `ttl`) and
    /// CLASSPULSE_DYNAMODB_MEMBERS_TABLE (key `member_id`), for local development; production
    /// uses deploy/terraform/dynamodb.tf. Existing tables are left as they are.
    Create,
}

/// jemalloc serves Rust's allocations and, its `malloc` replacing glibc's, librdkafka's:
/// RSS stays flat without arena limits or trimming (decision 0021).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config { markdown: true } => {
            print!("{}", config::reference_markdown());
            ExitCode::SUCCESS
        }
        Command::Config { markdown: false } => {
            let env = config::classpulse_vars();
            for line in config::effective(&env) {
                println!("{line}");
            }
            match Config::from_vars(&env) {
                Ok(_) => ExitCode::SUCCESS,
                Err(error) => config_error(&error),
            }
        }
        Command::Schema => {
            print!("{}", schema::performance_event_schema_text());
            ExitCode::SUCCESS
        }
        Command::Healthcheck => {
            let config = match Config::from_env() {
                Ok(config) => config,
                Err(error) => return config_error(&error),
            };
            match http::probe_health(config.http_addr, std::time::Duration::from_secs(3)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("classpulse: unhealthy: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Tables {
            command: TablesCommand::Create,
        } => {
            let config = match Config::from_env() {
                Ok(config) => config,
                Err(error) => return config_error(&error),
            };
            block_on(create_tables(&config))
        }
        Command::Redrive(args) => {
            let config = match Config::from_env() {
                Ok(config) => config,
                Err(error) => return config_error(&error),
            };
            init_logging(&config);
            block_on(redrive(config, args))
        }
        Command::Erase(args) => {
            let config = match Config::from_env() {
                Ok(config) => config,
                Err(error) => return config_error(&error),
            };
            let members = match erase_members(&args) {
                Ok(members) => members,
                Err(error) => {
                    eprintln!("classpulse erase: {error}");
                    return ExitCode::from(CONFIG_ERROR_EXIT_CODE);
                }
            };
            init_logging(&config);
            block_on(erase(config, members, args.dry_run))
        }
        Command::Run => {
            let config = match Config::from_env() {
                Ok(config) => config,
                Err(error) => return config_error(&error),
            };
            if config.live.published() {
                if let Err(error) = config.live.tile_key_for_topic() {
                    return config_error(&error);
                }
            }
            init_logging(&config);
            block_on(run(config))
        }
        Command::Screens { command } => {
            let config = match Config::from_env() {
                Ok(config) => config,
                Err(error) => return config_error(&error),
            };
            match command {
                Some(ScreensCommand::Url { studio_id, base }) => {
                    match wall_url(&config, &studio_id, base.as_deref()) {
                        Ok(url) => {
                            println!("{url}");
                            ExitCode::SUCCESS
                        }
                        Err(error) => {
                            eprintln!("classpulse: {error}");
                            ExitCode::from(CONFIG_ERROR_EXIT_CODE)
                        }
                    }
                }
                None => {
                    init_logging(&config);
                    block_on(serve_screens(config))
                }
            }
        }
    }
}

/// The URL of `studio_id`'s wall, with its token when walls need one.
fn wall_url(config: &Config, studio_id: &str, base: Option<&str>) -> Result<String, String> {
    if !classpulse::screens::valid_id(studio_id) {
        return Err(format!(
            "studio id {studio_id:?}: expected 1 to {} characters of [A-Za-z0-9_.-]",
            classpulse::event::ID_LEN
        ));
    }
    let base = base.map_or_else(
        || format!("http://{}", config.http_addr),
        |base| base.trim_end_matches('/').to_owned(),
    );
    let access = Access::new(
        config.screens.key.as_deref(),
        config.http_addr.ip().is_loopback(),
    );
    match (access.token(studio_id), access) {
        (Some(token), _) => Ok(format!("{base}/studios/{studio_id}?k={token}")),
        (None, Access::Open) => Ok(format!("{base}/studios/{studio_id}")),
        _ => Err("CLASSPULSE_SCREENS_KEY is unset: walls off a loopback address need it".into()),
    }
}

async fn serve_screens(config: Config) -> anyhow::Result<()> {
    let metrics_handle = metrics::install().context("installing the metrics recorder")?;
    let shutdown = shutdown::on_signals().context("installing signal handlers")?;
    classpulse::screens::serve(&config, metrics_handle, shutdown)
        .await
        .map_err(anyhow::Error::msg)
}

async fn create_tables(config: &Config) -> anyhow::Result<()> {
    let tables: Vec<(&String, Schema)> = [
        (&config.dynamodb.events_table, Schema::Written),
        (&config.dynamodb.aggregates_table, Schema::Written),
        (&config.members.table, Schema::Members),
    ]
    .into_iter()
    .filter_map(|(table, schema)| table.as_ref().map(|table| (table, schema)))
    .collect();
    if tables.is_empty() {
        anyhow::bail!(
            "no table to create: set CLASSPULSE_DYNAMODB_EVENTS_TABLE, CLASSPULSE_DYNAMODB_AGGREGATES_TABLE and/or CLASSPULSE_DYNAMODB_MEMBERS_TABLE"
        );
    }
    let sdk = classpulse::aws::sdk_config().await;
    let client = classpulse::aws::dynamodb(
        &sdk,
        config.aws.dynamodb.as_ref(),
        classpulse::aws::Retries::Sdk,
    );
    for (table, schema) in tables {
        match create_table_of(&client, table, schema).await? {
            Created::Created if schema == Schema::Members => {
                println!("created {table} (on-demand, key member_id)")
            }
            Created::Created => println!("created {table} (on-demand, TTL on `ttl`)"),
            Created::Existed => println!("{table} exists; left as it is"),
        }
    }
    Ok(())
}

/// Runs `job` on a new runtime; an error is logged and printed, and fails the process.
fn block_on(job: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("classpulse: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(job) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "classpulse stopped");
            eprintln!("classpulse: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_error(error: &config::ConfigError) -> ExitCode {
    eprintln!("classpulse: {error}");
    ExitCode::from(CONFIG_ERROR_EXIT_CODE)
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&config.log_level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// The members an erase run is given, each checked by the event contract's rule.
fn erase_members(args: &EraseArgs) -> Result<std::collections::BTreeSet<String>, String> {
    let mut members: Vec<(String, String)> = args
        .members
        .iter()
        .map(|member| (format!("--member {member:?}"), member.clone()))
        .collect();
    if let Some(path) = &args.from_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                members.push((
                    format!("{} line {}", path.display(), number + 1),
                    line.to_owned(),
                ));
            }
        }
    }
    if members.is_empty() {
        return Err("no member given: use --member ID (repeatable) or --from-file F".into());
    }
    members
        .into_iter()
        .map(|(place, member)| {
            classpulse::erasure::check_member_id(&member)
                .map(|()| member)
                .map_err(|rule| format!("{place}: not a member id: {rule}"))
        })
        .collect()
}

async fn erase(
    config: Config,
    members: std::collections::BTreeSet<String>,
    dry_run: bool,
) -> anyhow::Result<()> {
    use classpulse::erasure::{job, ErasureKey};
    let health = Health::new();
    let stats = Arc::new(Stats::default());
    let lake = ObjectWriter::open(&config.lake, "erase", health, stats)?;
    let client = match (
        &config.dynamodb.events_table,
        &config.dynamodb.aggregates_table,
    ) {
        (None, None) => None,
        _ => Some(classpulse::aws::dynamodb(
            &classpulse::aws::sdk_config().await,
            config.aws.dynamodb.as_ref(),
            classpulse::aws::Retries::Sdk,
        )),
    };
    let tables = job::Tables {
        client,
        events: config.dynamodb.events_table.clone(),
        aggregates: config.dynamodb.aggregates_table.clone(),
    };
    let key = ErasureKey::new(config.lake.erasure_key.as_deref());
    println!(
        "classpulse erase{}: {} members, in {}{}",
        if dry_run { " (dry run)" } else { "" },
        members.len(),
        describe_lake(&config.lake.location),
        [
            &config.dynamodb.events_table,
            &config.dynamodb.aggregates_table
        ]
        .into_iter()
        .flatten()
        .map(|table| format!(" and table {table}"))
        .collect::<String>(),
    );
    // Every task reads the list within the refresh interval; what it held then is written
    // within a lake object's age, or an events-table item's window and delay.
    let held = config
        .lake
        .max_age
        .max(config.dynamodb.pack_window + config.aggregates.watermark_delay);
    let settle = config.lake.erasure_refresh + held + std::time::Duration::from_secs(3);
    if !dry_run {
        println!(
            "  looks again {} s after the members are on the list (every task has read it and written what it held)",
            settle.as_secs()
        );
    }
    let request = job::Request {
        members,
        dry_run,
        settle,
    };
    let report = job::erase(&lake, &key, &tables, &request).await?;
    print!("{report}");
    if report.not_found > 0 {
        let nowhere: Vec<&str> = request
            .members
            .iter()
            .filter(|member| !report.found.contains(*member))
            .map(String::as_str)
            .collect();
        println!(
            "  found nowhere  {} (an id that matches nobody is not an error; it stays on the list)",
            nowhere.join(", ")
        );
    }
    if !report.unfinished.is_empty() {
        println!(
            "  {} objects are unfinished: run the same command again after CLASSPULSE_LAKE_COMPACT_AFTER",
            report.unfinished.len()
        );
    }
    Ok(())
}

/// The erasure list, read as the pipeline starts (its decoder waits for it) and again every
/// refresh.
fn suppression(
    config: &Config,
    lake: &ObjectWriter,
    health: &Health,
    shutdown: &CancellationToken,
) -> classpulse::erasure::Suppression {
    classpulse::erasure::Suppression::start(
        lake.clone(),
        classpulse::erasure::ErasureKey::new(config.lake.erasure_key.as_deref()),
        config.lake.erasure_refresh,
        health.clone(),
        shutdown.clone(),
    )
}

async fn run(config: Config) -> anyhow::Result<()> {
    let health = Health::new();
    let stats = Arc::new(Stats::default());
    let shutdown = shutdown::on_signals().context("installing signal handlers")?;
    // The embedded default serves its own walls; a deployment publishes to the live topic or
    // stream.
    let board = (!config.live.published() && config.source == SourceKind::Simulator)
        .then(|| Board::new(config.screens.keep_final));
    let (http_shutdown, http_addr) = serve_http(&config, &health, board.clone()).await?;
    if board.is_some() {
        let mut local = config.clone();
        local.http_addr = http_addr;
        if let Ok(url) = wall_url(&local, "studio-0001", None) {
            println!("watch: {url}");
        }
    }
    let msk_iam = msk_iam(&config).await?;
    let (source, simulator_stats, simulated_members) =
        open_source(&config, &health, msk_iam.as_ref()).await?;
    let profiles = member_profiles(&config, simulated_members).await?;
    let profiles_stop = CancellationToken::new();
    if let Some(profiles) = &profiles {
        tokio::spawn(profiles.clone().run(health.clone(), profiles_stop.clone()));
    }
    let lake = ObjectWriter::open(
        &config.lake,
        source.kind(),
        health.clone(),
        Arc::clone(&stats),
    )?;
    let dynamodb = dynamodb_client(&config).await;
    let mut table_writers = Vec::new();
    let mut aggregates = aggregate_stage(
        &config,
        dynamodb.as_ref(),
        &lake,
        &health,
        &stats,
        &mut table_writers,
    );
    if let Some(profiles) = profiles {
        aggregates = aggregates.with_profiles(profiles);
    }
    let walls_stop = CancellationToken::new();
    let publisher = match (&config.live.topic, &config.live.stream, &board) {
        (_, Some(stream), _) => {
            let sdk = classpulse::aws::sdk_config().await;
            Some(Publisher::stream(
                classpulse::aws::kinesis(&sdk, config.aws.kinesis.as_ref()),
                stream,
                walls_stop.clone(),
            ))
        }
        (Some(topic), _, _) => Some(
            Publisher::topic(
                &config.kafka,
                topic,
                health.clone(),
                msk_iam.clone(),
                walls_stop.clone(),
            )
            .map_err(anyhow::Error::msg)?,
        ),
        (None, None, Some(board)) => Some(Publisher::board(board.clone())),
        (None, None, None) => None,
    };
    if let Some(publisher) = publisher {
        aggregates = aggregates.with_walls(classpulse::aggregate::stage::Walls {
            publisher,
            tiles: Tiles::new(if config.live.published() {
                config.live.tile_key_for_topic()?.as_bytes()
            } else {
                config.live.tile_key_or_embedded().as_bytes()
            }),
            interval: config.live.interval,
        });
    }
    let sinks = sinks(
        &config,
        source.kind(),
        dynamodb.as_ref(),
        &lake,
        &health,
        msk_iam.as_ref(),
        &mut table_writers,
    )?;
    tracing::info!(source = source.kind(), lake = %describe_lake(&config.lake.location), "classpulse starting");
    let erased = suppression(&config, &lake, &health, &shutdown);
    let pipeline = Pipeline::new(
        source,
        sinks,
        pipeline_settings(&config),
        Arc::clone(&stats),
        health,
    )
    .with_aggregates(aggregates.with_suppression(erased.clone()))
    .with_suppression(erased);
    let report = pipeline.run(shutdown).await;
    profiles_stop.cancel();
    walls_stop.cancel();
    http_shutdown.cancel();
    let report = report?;
    print_summary(&config, &report, &stats, simulator_stats.as_deref());
    print_table_totals(&table_writers, &stats);
    Ok(())
}

/// Serves `/metrics` and the health endpoints, the walls of `board` if given (and, with JSON
/// logs, the lag metric for CloudWatch) until the returned token is cancelled; returns the
/// token and the bound address.
async fn serve_http(
    config: &Config,
    health: &Health,
    board: Option<Board>,
) -> anyhow::Result<(CancellationToken, std::net::SocketAddr)> {
    let metrics_handle = metrics::install().context("installing the metrics recorder")?;
    let stop = CancellationToken::new();
    let walls = board.map(|board| {
        tokio::spawn(classpulse::screens::forget_old(board.clone(), stop.clone()));
        let access = Access::new(
            config.screens.key.as_deref(),
            config.http_addr.ip().is_loopback(),
        );
        wall_routes(Walls::new(
            board,
            access,
            config.screens.max_clients,
            stop.clone(),
        ))
    });
    let addr = http::serve(
        config.http_addr,
        metrics_handle,
        health.clone(),
        stop.clone(),
        walls,
    )
    .await
    .with_context(|| format!("binding CLASSPULSE_HTTP_ADDR={}", config.http_addr))?;
    tracing::info!(addr = %addr, "http endpoints listening");
    if config.log_format == LogFormat::Json && !config.emf_interval.is_zero() {
        let group = match config.source {
            SourceKind::Kafka => config.kafka.group_id.clone(),
            SourceKind::Kinesis => config.kinesis.app_name.clone(),
            SourceKind::Simulator => "simulator".to_owned(),
        };
        tokio::spawn(emit_lag_metric(group, config.emf_interval, stop.clone()));
    }
    Ok((stop, addr))
}

/// The MSK IAM signer, when the Kafka source authenticates with AWS IAM.
async fn msk_iam(config: &Config) -> anyhow::Result<Option<MskIam>> {
    if !(config.kafka.aws_iam && config.source == SourceKind::Kafka) {
        return Ok(None);
    }
    let sdk = classpulse::aws::sdk_config().await;
    let signer = MskIam::new(&sdk).map_err(anyhow::Error::msg)?;
    tracing::info!(signer = ?signer, "kafka: authenticating with AWS IAM");
    Ok(Some(signer))
}

/// The source, its counters and the simulator's member profiles (NDJSON) when it is the
/// simulator.
type Opened = (Box<dyn Source>, Option<Arc<SimulatorStats>>, Option<String>);

/// The configured source, and the simulator's counters and members when it is the simulator.
async fn open_source(
    config: &Config,
    health: &Health,
    msk_iam: Option<&MskIam>,
) -> anyhow::Result<Opened> {
    Ok(match config.source {
        SourceKind::Simulator => {
            let simulator = Simulator::new(&config.simulator, config.batch_max_events, Utc::now());
            let stats = simulator.stats();
            let members = simulator.profiles_ndjson();
            (Box::new(simulator), Some(stats), Some(members))
        }
        SourceKind::Kafka => {
            let source = KafkaSource::new(
                &config.kafka,
                config.batch_max_events,
                health.clone(),
                msk_iam.cloned(),
            )?;
            (Box::new(source), None, None)
        }
        SourceKind::Kinesis => {
            let sdk = classpulse::aws::sdk_config().await;
            let source = KinesisSource::start(
                &config.kinesis,
                classpulse::aws::kinesis(&sdk, config.aws.kinesis.as_ref()),
                classpulse::aws::dynamodb(
                    &sdk,
                    config.aws.dynamodb.as_ref(),
                    classpulse::aws::Retries::Sdk,
                ),
                health.clone(),
            )
            .await?;
            (Box::new(source), None, None)
        }
    })
}

/// Member profiles: from `CLASSPULSE_MEMBERS_FILE`, and from the members table when one is
/// named (a member in the file is not looked up there); with neither, the simulator's members
/// (written beside a local lake as `members.ndjson`, for a look). `None`: no profiles (every
/// member has the default maximum).
async fn member_profiles(
    config: &Config,
    simulated: Option<String>,
) -> anyhow::Result<Option<Profiles>> {
    let members = &config.members;
    let file = match (&members.file, simulated) {
        (Some(path), _) => {
            Some(Profiles::read_file(path).context("reading CLASSPULSE_MEMBERS_FILE")?)
        }
        (None, Some(text)) if members.table.is_none() => {
            if let LakeLocation::Local(directory) = &config.lake.location {
                let path = directory.join("members.ndjson");
                std::fs::create_dir_all(directory)
                    .and_then(|()| std::fs::write(&path, &text))
                    .with_context(|| {
                        format!("writing the simulator's members to {}", path.display())
                    })?;
            }
            Some(Profiles::parse(&text, "the simulator's members")?)
        }
        (None, _) => None,
    };
    let table = match &members.table {
        Some(table) => {
            let sdk = classpulse::aws::sdk_config().await;
            Some(TableSource {
                client: classpulse::aws::dynamodb(
                    &sdk,
                    config.aws.dynamodb.as_ref(),
                    classpulse::aws::Retries::Sdk,
                ),
                members: table.clone(),
                aggregates: config.dynamodb.aggregates_table.clone(),
            })
        }
        None => None,
    };
    if file.is_none() && table.is_none() {
        return Ok(None);
    }
    let file = file.unwrap_or_default();
    tracing::info!(
        from_file = file.len(),
        table = members.table.as_deref().unwrap_or("(none)"),
        "member profiles"
    );
    Ok(Some(Profiles::new(file, table, members.cache_ttl)))
}

/// The DynamoDB client of the sinks, when a table is configured.
async fn dynamodb_client(config: &Config) -> Option<aws_sdk_dynamodb::Client> {
    let dynamodb = &config.dynamodb;
    if dynamodb.events_table.is_none() && dynamodb.aggregates_table.is_none() {
        return None;
    }
    let sdk = classpulse::aws::sdk_config().await;
    Some(classpulse::aws::dynamodb(
        &sdk,
        config.aws.dynamodb.as_ref(),
        classpulse::aws::Retries::Caller,
    ))
}

/// The aggregate stage: results into the lake, and into the aggregates table when one is
/// configured (its writer added to `table_writers`).
fn aggregate_stage(
    config: &Config,
    dynamodb: Option<&aws_sdk_dynamodb::Client>,
    lake: &ObjectWriter,
    health: &Health,
    stats: &Arc<Stats>,
    table_writers: &mut Vec<TableWriter>,
) -> AggregateStage {
    // Live values go to the object store only in the embedded default (a local directory):
    // on S3 a PUT per class every few seconds would cost more than it is worth.
    let live_interval = matches!(config.lake.location, LakeLocation::Local(_))
        .then_some(config.aggregates.flush_interval)
        .flatten();
    let mut aggregates = AggregateStage::new(
        Rules::from_config(&config.aggregates),
        config.aggregates.checkpoint_interval,
        live_interval,
        lake.clone(),
        health.clone(),
        Arc::clone(stats),
    );
    if matches!(config.source, SourceKind::Kafka) {
        // Partitions can be added to a topic, moving classes in progress.
        aggregates = aggregates.with_class_directory();
    }
    let dynamodb_config = &config.dynamodb;
    if let (Some(client), Some(table)) = (dynamodb, &dynamodb_config.aggregates_table) {
        let writer = TableWriter::new(
            client.clone(),
            table,
            classpulse::sink::dynamodb::aggregates::NAME,
            dynamodb_config.max_inflight,
            health.clone(),
        );
        table_writers.push(writer.clone());
        aggregates = aggregates.with_table(
            AggregatesTable::new(writer, dynamodb_config.ttl_days),
            config.aggregates.flush_interval,
        );
    }
    aggregates
}

/// The sinks: the lake, the dead letters, and the events table and dead-letter topic when
/// configured (the table's writer added to `table_writers`).
fn sinks(
    config: &Config,
    source_kind: &'static str,
    dynamodb: Option<&aws_sdk_dynamodb::Client>,
    lake: &ObjectWriter,
    health: &Health,
    msk_iam: Option<&MskIam>,
    table_writers: &mut Vec<TableWriter>,
) -> anyhow::Result<Vec<Box<dyn Sink>>> {
    let mut sinks = classpulse::sink::lake_sinks(&config.lake, source_kind, lake);
    if let (Some(client), Some(table)) = (dynamodb, &config.dynamodb.events_table) {
        let (sink, table_writer) = events_table(config, client, table, health, lake);
        table_writers.push(table_writer);
        sinks.push(Box::new(sink));
    }
    if let (SourceKind::Kafka, Some(topic)) = (config.source, &config.kafka.dead_letter_topic) {
        sinks.push(Box::new(DeadLetterTopicSink::new(
            &config.kafka,
            topic,
            health.clone(),
            msk_iam.cloned(),
        )?));
    }
    Ok(sinks)
}

/// One summary line per DynamoDB table written.
fn print_table_totals(table_writers: &[TableWriter], stats: &Stats) {
    for writer in table_writers {
        let totals = writer.totals();
        println!(
            "  dynamodb       {}: {} items, {} write units ({:.1} per 1,000 events in; the server reported {:.0}), {} refused as not newer",
            writer.table(),
            totals.items(),
            totals.sized_units(),
            totals.sized_units() as f64 * 1000.0 / (Stats::get(&stats.events).max(1) as f64),
            totals.write_units(),
            totals.refused.load(std::sync::atomic::Ordering::Relaxed),
        );
    }
}

/// The pipeline's settings from the configuration.
fn pipeline_settings(config: &Config) -> Settings {
    Settings {
        batch_max_events: config.batch_max_events,
        channel_capacity: config.channel_capacity,
        limits: DecodeLimits {
            max_message_bytes: config.max_message_bytes,
            max_clock_skew_ms: config.max_clock_skew.as_millis() as i64,
        },
        commit_interval: config.commit_interval,
        shutdown_timeout: config.shutdown_timeout,
        progress_interval: config.progress_interval,
    }
}

/// The events-table sink (refused items dead-lettered through `lake`), and its writer for the
/// summary.
fn events_table(
    config: &Config,
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    health: &Health,
    lake: &ObjectWriter,
) -> (EventsTableSink, TableWriter) {
    let dynamodb = &config.dynamodb;
    let table_writer = TableWriter::new(
        client.clone(),
        table,
        classpulse::sink::dynamodb::events::NAME,
        dynamodb.max_inflight,
        health.clone(),
    );
    let settings = PackSettings {
        window_ms: dynamodb.pack_window.as_millis() as i64,
        delay_ms: config.aggregates.watermark_delay.as_millis() as i64,
        max_clock_skew_ms: config.max_clock_skew.as_millis() as i64,
        ttl_days: dynamodb.ttl_days,
        max_payload_bytes: MAX_PAYLOAD_BYTES,
    };
    let sink = EventsTableSink::new(table_writer.clone(), settings, lake.clone());
    (sink, table_writer)
}

/// `classpulse redrive`: see [`classpulse::redrive`].
async fn redrive(config: Config, args: RedriveArgs) -> anyhow::Result<()> {
    let health = Health::new();
    let stats = Arc::new(Stats::default());
    let lake = ObjectWriter::open(
        &config.lake,
        redrive::KIND,
        health.clone(),
        Arc::clone(&stats),
    )?;
    let selection = redrive::Selection {
        from: args.from,
        to: args.to,
        reasons: args.reasons,
    };
    let letters = redrive::read_dead_letters(&lake, &selection).await?;
    let mut by_reason: BTreeMap<&str, u64> = BTreeMap::new();
    for letter in &letters {
        *by_reason.entry(&letter.reason).or_default() += 1;
    }
    let settings = pipeline_settings(&config);
    let (valid, still) = redrive::decode_again(&letters, &settings.limits);
    let in_lake = redrive::LakeIds::read(&lake, &redrive::hours_of(&valid)).await?;
    let already = valid
        .iter()
        .filter(|e| in_lake.contains(&e.event_id))
        .count();
    let counts = |counts: &BTreeMap<&str, u64>| {
        let listed: Vec<String> = counts.iter().map(|(r, n)| format!("{r} {n}")).collect();
        if listed.is_empty() {
            "none".to_owned()
        } else {
            listed.join(", ")
        }
    };
    println!(
        "classpulse redrive{}: dead letters received from {} to {} under {}/dead-letters",
        if args.dry_run { " (dry run)" } else { "" },
        selection.from.to_rfc3339(),
        selection.to.to_rfc3339(),
        describe_lake(&config.lake.location),
    );
    println!(
        "  dead letters   {} read ({})",
        letters.len(),
        counts(&by_reason)
    );
    println!(
        "  valid now      {} events, {already} of them in the lake already ({} ids read from the lake's hours)",
        valid.len(),
        in_lake.len()
    );
    println!(
        "  still rejected {} ({}), left where they are",
        still.values().sum::<u64>(),
        counts(&still)
    );
    if args.dry_run || valid.is_empty() {
        return Ok(());
    }

    let run = Utc::now().format("%Y%m%dT%H%M%S%3fZ").to_string();
    let source = redrive::RedriveSource::new(&letters, &run, settings.batch_max_events);
    let limits = ObjectLimits::from_config(&config.lake);
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(ObjectSink::new(
        LakeFormat {
            source_kind: redrive::KIND,
        },
        ParquetEncoder::new,
        lake.clone(),
        limits,
    ))];
    if let Some(table) = &config.dynamodb.events_table {
        let sdk = classpulse::aws::sdk_config().await;
        let client = classpulse::aws::dynamodb(
            &sdk,
            config.aws.dynamodb.as_ref(),
            classpulse::aws::Retries::Caller,
        );
        let (sink, _) = events_table(&config, &client, table, &health, &lake);
        sinks.push(Box::new(sink));
    }
    let shutdown = shutdown::on_signals().context("installing signal handlers")?;
    let erased = suppression(&config, &lake, &health, &shutdown);
    let report = Pipeline::new(
        Box::new(source),
        sinks,
        settings,
        Arc::clone(&stats),
        health,
    )
    .with_judge(redrive::judge(in_lake))
    .with_suppression(erased)
    .run(shutdown)
    .await?;
    println!(
        "  written        {} events into {} lake objects in {:.1} s (run {run}: source `redrive`, late = true){}",
        Stats::get(&stats.lake_records),
        Stats::get(&stats.lake_objects),
        report.elapsed.as_secs_f64(),
        if config.dynamodb.events_table.is_some() {
            ", and the events table"
        } else {
            ""
        }
    );
    println!(
        "  left out       {} already in the lake or twice among the dead letters",
        Stats::get(&stats.duplicates)
    );
    Ok(())
}

/// Prints the lag as CloudWatch Embedded Metric Format on stdout (awslogs ships it; CloudWatch
/// makes it a metric the service scales on) every `interval` until `stop`.
async fn emit_lag_metric(group: String, interval: std::time::Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => println!("{}", metrics::emf_lag_line(&group, Utc::now().timestamp_millis())),
            _ = stop.cancelled() => return,
        }
    }
}

fn describe_lake(location: &LakeLocation) -> String {
    match location {
        LakeLocation::Local(directory) => directory.display().to_string(),
        LakeLocation::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
    }
}

fn print_summary(
    config: &Config,
    report: &RunReport,
    stats: &Stats,
    simulator: Option<&SimulatorStats>,
) {
    let events = Stats::get(&stats.events);
    let seconds = report.elapsed.as_secs_f64().max(1e-3);
    println!(
        "classpulse run finished ({:?}) in {seconds:.1} s",
        report.ending
    );
    if let Some(sim) = simulator {
        println!(
            "  simulator      {} classes, {} events generated, {} sent twice, {} delayed, {} corrupted",
            SimulatorStats::get(&sim.classes),
            SimulatorStats::get(&sim.events),
            SimulatorStats::get(&sim.duplicates),
            SimulatorStats::get(&sim.delayed),
            SimulatorStats::get(&sim.corrupted),
        );
    }
    println!(
        "  events in      {events} valid from {} messages ({:.0} events/s)",
        Stats::get(&stats.messages),
        events as f64 / seconds
    );
    let reasons: Vec<String> = stats
        .rejected_by_reason()
        .iter()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    println!(
        "  rejected       {} ({})",
        stats.rejected_total(),
        if reasons.is_empty() {
            "none".into()
        } else {
            reasons.join(", ")
        }
    );
    let lake = describe_lake(&config.lake.location);
    println!(
        "  lake           {} events in {} Parquet objects, {} bytes, under {lake}/events",
        Stats::get(&stats.lake_records),
        Stats::get(&stats.lake_objects),
        Stats::get(&stats.lake_bytes),
    );
    println!(
        "  dead letters   {} in {} objects, under {lake}/dead-letters",
        Stats::get(&stats.dead_letter_records),
        Stats::get(&stats.dead_letter_objects),
    );
    println!(
        "  aggregates     {} classes final, {} result objects under {lake}/aggregates",
        Stats::get(&stats.classes_final),
        Stats::get(&stats.aggregate_objects),
    );
    println!(
        "  duplicates     {} left out of the lake and the aggregates",
        Stats::get(&stats.duplicates),
    );
    println!(
        "  late           {} in the lake with late = true, left out of the aggregates",
        Stats::get(&stats.late),
    );
    if let Some(class) = stats
        .top_class
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        let board = |leaders: &[classpulse::aggregate::output::Leader], unit: &str| {
            leaders
                .iter()
                .filter(|l| l.value > 0.0)
                .take(3)
                .enumerate()
                .map(|(rank, leader)| {
                    let name = leader
                        .alias
                        .as_deref()
                        .or(leader.member_id.as_deref())
                        .unwrap_or("?");
                    format!("{}. {name} {:.1}{unit}", rank + 1, leader.value)
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let boards: Vec<String> = [
            ("effort", board(&class.leaderboard_effort, " pts")),
            ("work", board(&class.leaderboard_work, " kJ")),
            ("treadmill", board(&class.leaderboard_treadmill, " m")),
            ("rower", board(&class.leaderboard_rower, " m")),
            ("bike", board(&class.leaderboard_bike, " m")),
        ]
        .into_iter()
        .filter(|(_, shown)| !shown.is_empty())
        .map(|(name, shown)| format!("{name} {shown}"))
        .collect();
        println!(
            "  top class      {}:{} ({} members, {} off the boards): {}",
            class.studio_id,
            class.class_id,
            class.members,
            class.leaderboard_hidden,
            if boards.is_empty() {
                "no board".to_owned()
            } else {
                boards.join("; ")
            },
        );
        println!(
            "                 {:.0} kcal from heart rate, {:.0} kcal on the machines, {:.0} kJ of work, training load {:.0}",
            class.calories_hr, class.calories, class.work_kj, class.trimp,
        );
    }
    let sources: Vec<u64> = stats.hr_max_sources.iter().map(Stats::get).collect();
    if sources.iter().sum::<u64>() > 0 {
        println!(
            "  heart maximum  manual {}, measured {}, observed {}, age formula {}, default {}; raised by a class {}",
            sources[0],
            sources[1],
            sources[2],
            sources[3],
            sources[4],
            Stats::get(&stats.hr_max_raised),
        );
    }
    let committed: Vec<String> = report
        .committed
        .iter()
        .map(|(partition, next)| format!("{partition}@{next}"))
        .collect();
    println!("  committed      {}", committed.join(" "));
}
