//! Records aggregated by the Kinesis Producer Library (KPL): one Kinesis record holding many
//! user records, each with its own partition key.
//!
//! The format (the KPL's `aggregation-format.md`): the 4 magic bytes `F3 89 9A C2`, a protobuf
//! `AggregatedRecord`, then the MD5 digest of the protobuf bytes. A record that does not start
//! with the magic, or whose digest or protobuf does not check out, is an ordinary record (as the
//! KCL treats it): its bytes go to the decoder unchanged, which dead-letters them if they are not
//! events.

use bytes::Bytes;
use md5::{Digest, Md5};
use prost::Message;

/// The first bytes of an aggregated record.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

/// `AggregatedRecord` of the KPL's `messages.proto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AggregatedRecord {
    /// Partition keys, referred to by index.
    #[prost(string, repeated, tag = "1")]
    pub partition_key_table: Vec<String>,
    /// Explicit hash keys, referred to by index.
    #[prost(string, repeated, tag = "2")]
    pub explicit_hash_key_table: Vec<String>,
    /// The user records.
    #[prost(message, repeated, tag = "3")]
    pub records: Vec<UserRecord>,
}

/// `Record` of the KPL's `messages.proto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserRecord {
    /// Index into `partition_key_table`.
    #[prost(uint64, required, tag = "1")]
    pub partition_key_index: u64,
    /// Index into `explicit_hash_key_table`.
    #[prost(uint64, optional, tag = "2")]
    pub explicit_hash_key_index: Option<u64>,
    /// The payload.
    #[prost(bytes = "bytes", required, tag = "3")]
    pub data: Bytes,
    /// Tags (unused by classpulse; kept so the message parses).
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<Tag>,
}

/// `Tag` of the KPL's `messages.proto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Tag {
    /// Tag key.
    #[prost(string, required, tag = "1")]
    pub key: String,
    /// Tag value.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// One user record: its partition key and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// The user record's partition key (the Kinesis record's own, if not aggregated).
    pub partition_key: Bytes,
    /// The payload.
    pub data: Bytes,
}

/// The user records in one Kinesis record, in order: the record itself when it is not a valid
/// KPL aggregate.
pub fn deaggregate(partition_key: &str, data: Bytes) -> Vec<Unpacked> {
    match parse(&data) {
        Some(aggregate) => aggregate
            .records
            .into_iter()
            .map(|record| Unpacked {
                partition_key: aggregate
                    .partition_key_table
                    .get(record.partition_key_index as usize)
                    .map(|key| Bytes::copy_from_slice(key.as_bytes()))
                    .unwrap_or_else(|| Bytes::copy_from_slice(partition_key.as_bytes())),
                data: record.data,
            })
            .collect(),
        None => vec![Unpacked {
            partition_key: Bytes::copy_from_slice(partition_key.as_bytes()),
            data,
        }],
    }
}

/// The aggregate in `data`, if it is one (magic, digest and protobuf all valid, and at least
/// one record).
fn parse(data: &Bytes) -> Option<AggregatedRecord> {
    if data.len() < MAGIC.len() + DIGEST_LEN || data[..MAGIC.len()] != MAGIC {
        return None;
    }
    let body = data.slice(MAGIC.len()..data.len() - DIGEST_LEN);
    let digest = &data[data.len() - DIGEST_LEN..];
    if Md5::digest(&body).as_slice() != digest {
        return None;
    }
    let aggregate = AggregatedRecord::decode(body).ok()?;
    (!aggregate.records.is_empty()).then_some(aggregate)
}

/// Aggregates `records` (partition key, payload) as the KPL does; for tests, benchmarks and the
/// load generator.
pub fn aggregate(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut keys: Vec<String> = Vec::new();
    let mut user_records = Vec::with_capacity(records.len());
    for (key, data) in records {
        let index = match keys.iter().position(|known| known == key) {
            Some(index) => index,
            None => {
                keys.push((*key).to_owned());
                keys.len() - 1
            }
        };
        user_records.push(UserRecord {
            partition_key_index: index as u64,
            explicit_hash_key_index: None,
            data: Bytes::copy_from_slice(data),
            tags: Vec::new(),
        });
    }
    let body = AggregatedRecord {
        partition_key_table: keys,
        explicit_hash_key_table: Vec::new(),
        records: user_records,
    }
    .encode_to_vec();
    let mut out = Vec::with_capacity(MAGIC.len() + body.len() + DIGEST_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&body);
    out.extend_from_slice(&Md5::digest(&body));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_aggregate_unpacks_in_order_with_each_records_key() {
        let packed = aggregate(&[("s1:c1", b"{\"a\":1}"), ("s2:c9", b"[]"), ("s1:c1", b"x")]);
        let unpacked = deaggregate("outer", Bytes::from(packed));
        let got: Vec<(&[u8], &[u8])> = unpacked
            .iter()
            .map(|u| (u.partition_key.as_ref(), u.data.as_ref()))
            .collect();
        assert_eq!(
            got,
            vec![
                (&b"s1:c1"[..], &b"{\"a\":1}"[..]),
                (b"s2:c9", b"[]"),
                (b"s1:c1", b"x")
            ]
        );
    }

    #[test]
    fn a_plain_record_is_passed_through() {
        let unpacked = deaggregate("s1:c1", Bytes::from_static(b"{\"event_id\":\"e\"}"));
        assert_eq!(unpacked.len(), 1);
        assert_eq!(unpacked[0].data.as_ref(), b"{\"event_id\":\"e\"}");
        assert_eq!(unpacked[0].partition_key.as_ref(), b"s1:c1");
    }

    #[test]
    fn a_damaged_aggregate_is_passed_through_whole() {
        let mut packed = aggregate(&[("k", b"one"), ("k", b"two")]);
        let middle = packed.len() / 2;
        packed[middle] ^= 0xFF; // the digest no longer matches
        let unpacked = deaggregate("k", Bytes::from(packed.clone()));
        assert_eq!(unpacked.len(), 1);
        assert_eq!(unpacked[0].data.as_ref(), &packed[..]);
        // Magic alone, too short for a digest.
        assert_eq!(deaggregate("k", Bytes::from_static(&MAGIC)).len(), 1);
    }

    proptest! {
        #[test]
        fn aggregate_then_deaggregate_is_identity(
            records in proptest::collection::vec(("[a-z:0-9]{1,12}", proptest::collection::vec(any::<u8>(), 0..200)), 1..40)
        ) {
            let borrowed: Vec<(&str, &[u8])> = records.iter().map(|(k, d)| (k.as_str(), d.as_slice())).collect();
            let unpacked = deaggregate("outer", Bytes::from(aggregate(&borrowed)));
            prop_assert_eq!(unpacked.len(), records.len());
            for (got, (key, data)) in unpacked.iter().zip(&records) {
                prop_assert_eq!(got.partition_key.as_ref(), key.as_bytes());
                prop_assert_eq!(got.data.as_ref(), data.as_slice());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_are_never_lost(data in proptest::collection::vec(any::<u8>(), 0..300), magic in any::<bool>()) {
            let mut bytes = if magic { MAGIC.to_vec() } else { Vec::new() };
            bytes.extend_from_slice(&data);
            let unpacked = deaggregate("k", Bytes::from(bytes.clone()));
            prop_assert!(!unpacked.is_empty());
        }
    }
}
