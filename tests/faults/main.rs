//! Faults against the real local servers, in one binary: classpulse killed again and again
//! ([`kills`]), hostile input ([`inputs`]), servers that hang or crash mid-run ([`outages`]),
//! and answers slowed, reset and cut short by a proxy ([`proxy`]). Afterwards nothing is
//! missing, nothing is in the lake more often than after a clean run, and the aggregates are
//! byte for byte those of a clean run.

#[path = "../common/mod.rs"]
mod common;

mod inputs;
mod kills;
mod outages;
mod proxy;

use common::backends::*;
use common::*;

/// Partitions of the topics the fault tests make.
const PARTITIONS: i32 = 3;

/// Fails unless the lake on `s3` holds the rows and final aggregates of a member that read
/// `topic` into a local lake without a fault.
async fn assert_same_as_a_clean_run(s3: &PrivateS3, topic: &str, classes: usize) {
    let clean = tempfile::tempdir().unwrap();
    let mut member = finalising_kafka_member(clean.path(), topic, &unique_name("s3-clean"));
    run_until_final(&mut member, clean.path(), classes).await;
    assert_same_lake_rows(&s3.lake(), clean.path());
    // Live results go to the lake only when it is a local directory (on S3 they go to the
    // DynamoDB table): the final ones are compared.
    std::fs::remove_dir_all(clean.path().join("aggregates/live")).unwrap();
    assert_same_aggregates(&s3.lake(), clean.path());
}
