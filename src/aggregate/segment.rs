//! Sealed id segments: the event ids a class wrote to the lake, kept in the store once they
//! leave the state, so that a copy arriving however late is still known for a duplicate.
//!
//! A class's ids stay in its state while they can match an event that is counted (within the
//! lateness horizon). Older ones are *retired*, and retired ids, with those of late events
//! written for the class, go to write-once objects under the class's folder, shared by every
//! partition that counts or counted the class (a class that moved, a Kinesis child):
//!
//! ```text
//! {prefix}/checkpoints/ids/{source}-{stream}/{studio_id}/{class_id}/{partition}-{hash}.ids
//! ```
//!
//! A segment is sealed through the partition's outbox (kept in the checkpoint until written,
//! so a crash cannot lose it) when a class has [`SEAL_AT`] retired ids, when it becomes final
//! (all its ids), and at each checkpoint for the late events of final classes. Its name holds
//! a hash of its content, so a replay that seals the same ids writes the same object and a
//! different cut of ids never overwrites another. A late event whose id the state does not
//! hold is looked up in the class's segments by the stage (one listing and one read of each
//! object per class per burst of late events, cached), and only an exact match makes it a
//! duplicate: decision 0016.
//!
//! The body: `CPID`, the format version (u32), the id count (u64), then the ids (xxh3-128
//! fingerprints of the event ids, [`crate::event::fingerprint`]), ascending, 16 bytes each,
//! all little-endian.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;

use crate::ack::PartitionId;
use crate::store::{sanitize, ObjectWriter};

/// Retired ids of an open class that make a segment (32 KB): fewer objects per class than
/// sealing at every checkpoint, and little held in memory and checkpoints meanwhile.
pub const SEAL_AT: usize = 2_048;

const MAGIC: &[u8; 4] = b"CPID";
const VERSION: u32 = 1;
const HEADER: usize = 4 + 4 + 8;

/// A segment this build cannot read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// Not a segment.
    #[error("not an id segment (no CPID header)")]
    NotASegment,
    /// Of a format this build does not read.
    #[error("id segment format {0}, this build reads {VERSION}")]
    Version(u32),
    /// Cut short or padded.
    #[error("id segment of {bytes} bytes for {count} ids")]
    Length {
        /// Its size.
        bytes: usize,
        /// The ids its header counts.
        count: u64,
    },
    /// Not in ascending order.
    #[error("id segment ids are not ascending")]
    Unsorted,
}

/// The body of a segment of `ids` (ascending).
pub fn encode(ids: &[u128]) -> Vec<u8> {
    debug_assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    let mut body = Vec::with_capacity(HEADER + ids.len() * 16);
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&VERSION.to_le_bytes());
    body.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    for id in ids {
        body.extend_from_slice(&id.to_le_bytes());
    }
    body
}

/// The ids of a segment, ascending.
pub fn decode(body: &[u8]) -> Result<Vec<u128>, SegmentError> {
    if body.len() < HEADER || &body[..4] != MAGIC {
        return Err(SegmentError::NotASegment);
    }
    let version = u32::from_le_bytes(body[4..8].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(SegmentError::Version(version));
    }
    let count = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    let ids = &body[HEADER..];
    if count.checked_mul(16) != Some(ids.len() as u64) {
        return Err(SegmentError::Length {
            bytes: body.len(),
            count,
        });
    }
    let ids: Vec<u128> = ids
        .chunks_exact(16)
        .map(|chunk| u128::from_le_bytes(chunk.try_into().expect("16 bytes")))
        .collect();
    if ids.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(SegmentError::Unsorted);
    }
    Ok(ids)
}

/// The folder of a class's segments (relative to the lake's prefix), for the stream of
/// `partition` read from `writer`'s source kind.
pub fn class_dir(writer: &ObjectWriter, stream: &str, studio_id: &str, class_id: &str) -> String {
    format!(
        "checkpoints/ids/{}-{}/{studio_id}/{class_id}",
        writer.source_kind(),
        sanitize(stream)
    )
}

/// Where `partition` writes a segment of `body` for a class.
pub fn key(
    writer: &ObjectWriter,
    partition: &PartitionId,
    studio_id: &str,
    class_id: &str,
    body: &[u8],
) -> Path {
    let hash = xxhash_rust::xxh3::xxh3_64(body);
    writer.path(&format!(
        "{}/{}-{hash:016x}.ids",
        class_dir(writer, &partition.stream, studio_id, class_id),
        partition.index
    ))
}

/// The segments of a class, by key.
pub async fn list(writer: &ObjectWriter, class_dir: &str) -> object_store::Result<Vec<Path>> {
    let folder = writer.path(class_dir);
    writer
        .store()
        .list(Some(&folder))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
}

/// Reads a segment's body.
pub async fn read(writer: &ObjectWriter, key: &Path) -> object_store::Result<Bytes> {
    writer.store().get(key).await?.bytes().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_segment_reads_back_its_ids(mut ids in prop::collection::btree_set(any::<u128>(), 0..200)) {
            let ids: Vec<u128> = std::mem::take(&mut ids).into_iter().collect();
            prop_assert_eq!(decode(&encode(&ids)).unwrap(), ids);
        }
    }

    #[test]
    fn a_damaged_segment_says_what_is_wrong() {
        let body = encode(&[1, 2, 3]);
        assert_eq!(decode(b"PAR1...."), Err(SegmentError::NotASegment));
        assert_eq!(
            decode(&body[..body.len() - 1]),
            Err(SegmentError::Length {
                bytes: body.len() - 1,
                count: 3
            })
        );
        let mut newer = body.clone();
        newer[4] = 2;
        assert_eq!(decode(&newer), Err(SegmentError::Version(2)));
        let mut unsorted = encode(&[1, 2]);
        unsorted[HEADER] = 9;
        assert_eq!(decode(&unsorted), Err(SegmentError::Unsorted));
        assert_eq!(
            decode(&body[..body.len() - 1]).unwrap_err().to_string(),
            "id segment of 63 bytes for 3 ids"
        );
    }
}
