//! classpulse killed again and again while events are produced, restarted each time.

use std::time::Duration;

use classpulse::decode::RawMessage;
use rand::{Rng, SeedableRng};

use crate::common::backends::*;
use crate::common::*;
use crate::PARTITIONS;

/// Enough lives to die in every phase of a run: joining, mid-batch, flushing, checkpointing,
/// committing.
const KILLS: usize = 20;

/// Where the events go and how a classpulse reading them is started.
enum Target {
    Kafka {
        topic: String,
    },
    Kinesis {
        client: aws_sdk_kinesis::Client,
        stream: String,
    },
}

impl Target {
    /// How long a life lasts before its SIGKILL, in ms: long enough to get to work (a Kafka
    /// member joins its group in well under a second here; a Kinesis task first waits for the
    /// dead one's 1 s leases to expire).
    fn life_ms(&self) -> std::ops::Range<u64> {
        match self {
            Target::Kafka { .. } => 300..3_000,
            Target::Kinesis { .. } => 2_500..5_000,
        }
    }

    async fn produce(&self, messages: &[RawMessage]) {
        match self {
            Target::Kafka { topic } => {
                produce(topic, messages, PARTITIONS).await;
            }
            Target::Kinesis { client, stream } => put_messages(client, stream, messages, 0).await,
        }
    }

    /// The lake folder of an hour its members compact during the run, if they do.
    fn compacted_hour(&self) -> Option<&'static str> {
        match self {
            Target::Kafka { .. } => Some("dt=2026-11-25/hour=23"),
            Target::Kinesis { .. } => None,
        }
    }

    /// A member of `group` (a consumer group, or a Kinesis application) writing into `lake`,
    /// whose classes end by the wall-clock idle rule once the stream is drained. The rule must
    /// not fire during the chaos (a class gone quiet for longer is final, and its later events
    /// late, unlike in the clean run): 8 s for Kafka; 20 s for Kinesis, where a new life first
    /// waits for the dead one's leases to expire.
    fn member(&self, lake: &std::path::Path, group: &str) -> std::process::Command {
        match self {
            Target::Kafka { topic } => {
                // Each hour is compacted a second after it is over: kills land in
                // compactions too.
                let mut command = finalising_kafka_member(lake, topic, group);
                command.env("CLASSPULSE_LAKE_COMPACT_AFTER", "1s");
                command
            }
            Target::Kinesis { stream, .. } => {
                let mut command = kinesis_member(lake, stream, group);
                command
                    .env("CLASSPULSE_CLASS_IDLE_TIMEOUT", "20s")
                    // A killed task's leases are taken after this: short, so lives overlap
                    // with reading.
                    .env("CLASSPULSE_KINESIS_LEASE_DURATION", "1s");
                command
            }
        }
    }
}

/// Produces `messages` in `KILLS` chunks, one before each of `KILLS` lives that each end by
/// SIGKILL at a random moment, then lets a last life finish. Compares the lake and the
/// aggregates with a clean run of one member on the same stream.
async fn crash_loop(target: &Target, messages: &[RawMessage], groups: [String; 2]) {
    let (events, _) = decode_all(messages);
    let expected: std::collections::BTreeSet<String> =
        events.iter().map(|e| e.event_id.to_string()).collect();
    let classes = class_count(messages);
    let [group, clean_group] = groups;
    let seed: u64 = rand::random();
    eprintln!("kill schedule seed {seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);

    // Each life lasts a random time: some die starting up, some mid-batch, some during a
    // flush, a checkpoint or a commit (every 200 ms each here).
    let chaos = tempfile::tempdir().unwrap();
    let chunks: Vec<&[RawMessage]> = messages.chunks(messages.len() / KILLS + 1).collect();
    for life in 0..KILLS {
        if let Some(chunk) = chunks.get(life) {
            target.produce(chunk).await;
        }
        let running = Running::start(&mut target.member(chaos.path(), &group));
        tokio::time::sleep(Duration::from_millis(rng.random_range(target.life_ms()))).await;
        running.signal("KILL");
        let (code, _, _) =
            tokio::task::spawn_blocking(move || running.wait(Duration::from_secs(10)))
                .await
                .unwrap();
        assert_eq!(code, None, "life {life} was killed by the signal");
    }
    for chunk in chunks.iter().skip(KILLS) {
        target.produce(chunk).await;
    }
    // A last life runs to the end.
    run_until_final(
        &mut target.member(chaos.path(), &group),
        chaos.path(),
        classes,
    )
    .await;

    // The same stream, one member, never killed.
    let clean = tempfile::tempdir().unwrap();
    run_until_final(
        &mut target.member(clean.path(), &clean_group),
        clean.path(),
        classes,
    )
    .await;

    // Rows per event id exactly as in the clean run: nothing missing, nothing twice. (A
    // producer retry beyond the allowed lateness is kept, flagged late, in both.)
    let chaos_ids = lake_ids(chaos.path());
    let clean_ids = lake_ids(clean.path());
    let missing = expected
        .iter()
        .filter(|id| !chaos_ids.contains_key(*id))
        .count();
    let extra: Vec<(&String, &u32)> = chaos_ids
        .iter()
        .filter(|(id, n)| clean_ids.get(*id).is_none_or(|clean| *n > clean))
        .collect();
    eprintln!(
        "{KILLS} kills: {} events, {missing} missing, {} in the lake more often than in a clean run",
        expected.len(),
        extra.len()
    );
    assert_eq!(missing, 0, "events lost");
    assert!(
        extra.is_empty(),
        "rows written twice: {:?}",
        &extra[..extra.len().min(5)]
    );
    assert_eq!(chaos_ids, clean_ids);
    assert_same_aggregates(chaos.path(), clean.path());
    if let Some(hour) = target.compacted_hour() {
        for lake in [chaos.path(), clean.path()] {
            let objects = files_under(&lake.join("events").join(hour), ".parquet");
            assert!(
                objects.len() <= PARTITIONS as usize,
                "the hour that is over is an object a partition: {objects:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kills_of_a_kafka_member_lose_nothing_duplicate_nothing_and_keep_aggregates_exact() {
    require(KAFKA);
    let (admin, topic) = create_topic(PARTITIONS).await;
    // Across midnight: the day's last hour is compacted while the next one is read.
    let messages = simulated_messages(21, "2026-11-25T23:58:30Z").await;
    let target = Target::Kafka {
        topic: topic.clone(),
    };
    crash_loop(
        &target,
        &messages,
        [unique_name("crash"), unique_name("clean")],
    )
    .await;
    admin
        .delete_topics(&[&topic], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();
}

/// Kills cut a class's run of events at random places; its finality by event time must not
/// depend on where (shard 1 carries a class whose backlog arrives a minute behind the
/// partition's clock): see `PartitionState::last_class`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kills_of_a_kinesis_task_lose_nothing_duplicate_nothing_and_keep_aggregates_exact() {
    require(KINESIS);
    require(DYNAMODB);
    let client = kinesis_client(KINESIS).await;
    let stream = create_stream(&client, PARTITIONS).await;
    let messages = simulated_messages(22, "2026-11-26T00:00:00Z").await;
    let target = Target::Kinesis {
        client: client.clone(),
        stream: stream.clone(),
    };
    let groups = [unique_name("crash"), unique_name("clean")];
    crash_loop(&target, &messages, groups.clone()).await;
    delete_stream(&client, &stream).await;
    let dynamodb = dynamodb_client().await;
    for lease_table in &groups {
        delete_table(&dynamodb, lease_table).await;
    }
}
