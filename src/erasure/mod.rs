//! Erasure of members' data on request (GDPR art. 17): the suppression list every stage
//! consults, and the job of `classpulse erase`, which removes what classpulse keeps of them.
//!
//! The list lives in the lake's store, one empty object a member under
//! `{prefix}/_erasure/members/{hash}`, where `hash` is an HMAC-SHA256 of the member id under
//! `CLASSPULSE_ERASURE_KEY` (the first 16 bytes, in hex): a listing names no member. Every task
//! reads the list at start and again every `CLASSPULSE_ERASURE_REFRESH`; from then on the
//! decoder drops the events of members on it ([`Screen`]) and the aggregate stage leaves them
//! out of results. `classpulse erase` ([`job`]) adds members to the list first, then rewrites
//! what the store and the tables already hold ([`rewrite`]). See docs/erasure.md.

pub mod job;
pub mod rewrite;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use hmac::{Hmac, KeyInit, Mac};
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::Sha256;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::event::MEMBER_ID;
use crate::health::Health;
use crate::retry::Backoff;
use crate::store::{self, ObjectWriter};

/// The suppression list's folder in the store.
pub const LIST_FOLDER: &str = "_erasure/members";

/// The key used when `CLASSPULSE_ERASURE_KEY` is unset (a local lake, tests): it keeps ids out
/// of listings only from those who do not have this source.
const BUILT_IN_KEY: &[u8] = b"classpulse erasure list, built-in key";

/// Members remembered per decode stage whether they are on the list, before the memo starts
/// over.
const MEMO_SIZE: usize = 1 << 16;

/// A member id, keyed-hashed as the suppression list holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberHash([u8; 16]);

impl MemberHash {
    /// The name of its object in the list: 32 hex digits.
    pub fn hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Reads [`MemberHash::hex`] back.
    pub fn from_hex(text: &str) -> Option<MemberHash> {
        if text.len() != 32 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(MemberHash(bytes))
    }
}

/// The keyed hash of member ids.
#[derive(Clone)]
pub struct ErasureKey(Hmac<Sha256>);

impl std::fmt::Debug for ErasureKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ErasureKey(****)")
    }
}

impl ErasureKey {
    /// `CLASSPULSE_ERASURE_KEY`, or the built-in key without one.
    pub fn new(key: Option<&str>) -> ErasureKey {
        let key = key.map_or(BUILT_IN_KEY, str::as_bytes);
        ErasureKey(Hmac::new_from_slice(key).expect("HMAC takes a key of any length"))
    }

    /// The hash of `member_id`.
    pub fn hash(&self, member_id: &[u8]) -> MemberHash {
        let mut mac = self.0.clone();
        mac.update(member_id);
        let digest = mac.finalize().into_bytes();
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&digest[..16]);
        MemberHash(hash)
    }
}

/// Checks a member id given to `classpulse erase` by the rule events are validated with.
pub fn check_member_id(member_id: &str) -> Result<(), String> {
    crate::decode::check_field(&MEMBER_ID, member_id).map_err(|rejection| rejection.detail)
}

/// The members on the list, as read at one moment.
#[derive(Debug, Clone)]
pub struct Suppressed {
    key: ErasureKey,
    hashes: HashSet<MemberHash>,
}

impl Suppressed {
    /// A list of `hashes` under `key`.
    pub fn new(key: ErasureKey, hashes: HashSet<MemberHash>) -> Suppressed {
        Suppressed { key, hashes }
    }

    /// Whether no member is on the list (nothing needs hashing).
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Members on the list.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether `member_id` is on the list.
    pub fn holds(&self, member_id: &str) -> bool {
        !self.hashes.is_empty() && self.hashes.contains(&self.key.hash(member_id.as_bytes()))
    }

    /// The key the list is hashed with.
    pub fn key(&self) -> &ErasureKey {
        &self.key
    }
}

/// Reads the list from the store.
pub async fn load(writer: &ObjectWriter, key: &ErasureKey) -> object_store::Result<Suppressed> {
    let hashes = writer
        .store()
        .list(Some(&writer.path(LIST_FOLDER)))
        .try_filter_map(|meta| {
            futures::future::ready(Ok(meta.location.filename().and_then(MemberHash::from_hex)))
        })
        .try_collect()
        .await?;
    Ok(Suppressed::new(key.clone(), hashes))
}

/// Puts `hashes` on the list: an empty object each, so that runs adding members at the same
/// time never overwrite each other's.
pub async fn record(writer: &ObjectWriter, hashes: &[MemberHash]) -> object_store::Result<()> {
    let store = writer.store();
    for hash in hashes {
        let key = writer.path(&format!("{LIST_FOLDER}/{}", hash.hex()));
        store.put(&key, Bytes::new().into()).await?;
    }
    Ok(())
}

/// Health component (readiness) of the list's first read.
const HEALTH: &str = "erasure_list";

/// The list as the running stages see it, read again every refresh interval. Until its first
/// read it is unknown: [`Screen::loaded`] waits for it.
#[derive(Debug, Clone)]
pub struct Suppression {
    list: watch::Receiver<Option<Arc<Suppressed>>>,
    /// Stands in for the list while it is unknown.
    empty: Arc<Suppressed>,
}

impl Suppression {
    /// No member erased.
    pub fn none() -> Suppression {
        Suppression::fixed(Suppressed::new(ErasureKey::new(None), HashSet::new()))
    }

    /// A fixed list (tests, and runs without a lake to read it from).
    pub fn fixed(list: Suppressed) -> Suppression {
        let empty = Arc::new(Suppressed::new(list.key.clone(), HashSet::new()));
        let (sender, receiver) = watch::channel(Some(Arc::new(list)));
        // Dropping the sender leaves the last value readable.
        drop(sender);
        Suppression {
            list: receiver,
            empty,
        }
    }

    /// Reads the list in the background, retrying until the store answers (the task is not
    /// ready meanwhile, and the decoder waits: a task must not count a member's events before
    /// it knows whether they are erased), then again every `refresh` until `shutdown`.
    pub fn start(
        writer: ObjectWriter,
        key: ErasureKey,
        refresh: Duration,
        health: Health,
        shutdown: CancellationToken,
    ) -> Suppression {
        let empty = Arc::new(Suppressed::new(key.clone(), HashSet::new()));
        let (sender, receiver) = watch::channel(None);
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
            let first = loop {
                match load(&writer, &key).await {
                    Ok(list) => break list,
                    Err(error) => {
                        let folder = writer.path(LIST_FOLDER);
                        health.not_ready(
                            HEALTH,
                            format!("{} reading {folder}: {error}", store::classify(&error)),
                        );
                        tracing::warn!(error = %error, attempt = backoff.attempts() + 1, "cannot read the erasure list, retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff.next_delay()) => {}
                        }
                    }
                }
            };
            health.ready(HEALTH);
            if !first.is_empty() {
                tracing::info!(members = first.len(), "erasure list read");
            }
            sender.send_replace(Some(Arc::new(first)));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(refresh) => {}
                }
                match load(&writer, &key).await {
                    Ok(list) => {
                        let changed = sender
                            .borrow()
                            .as_ref()
                            .is_none_or(|known| known.hashes != list.hashes);
                        if changed {
                            tracing::info!(members = list.len(), "erasure list changed");
                            sender.send_replace(Some(Arc::new(list)));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "cannot read the erasure list; the last one read stays in force");
                    }
                }
            }
        });
        Suppression {
            list: receiver,
            empty,
        }
    }

    /// The list now (empty while it is unknown).
    pub fn current(&self) -> Arc<Suppressed> {
        self.list
            .borrow()
            .as_ref()
            .map_or_else(|| Arc::clone(&self.empty), Arc::clone)
    }

    /// Waits until the list has been read once (at once if it has, or if it never will be:
    /// the task reading it stopped).
    pub async fn loaded(&mut self) {
        let _ = self.list.wait_for(Option::is_some).await;
    }
}

/// A stage's view of the list, with the verdicts of the members it has met (hashing each
/// member id once, not once an event).
#[derive(Debug)]
pub struct Screen {
    list: Suppression,
    current: Arc<Suppressed>,
    /// Counts the versions of the list taken up; 0 while no member is on it.
    version: u64,
    memo: HashMap<Box<str>, bool>,
}

impl Screen {
    /// A screen over `list`.
    pub fn new(list: Suppression) -> Screen {
        let current = list.current();
        Screen {
            version: u64::from(!current.is_empty()),
            list,
            current,
            memo: HashMap::new(),
        }
    }

    /// The version of the list taken up: it grows each time [`Screen::refresh`] takes up a
    /// new one; 0 while the list is empty.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Waits until the list has been read once, then takes it up.
    pub async fn loaded(&mut self) {
        self.list.loaded().await;
        self.refresh();
    }

    /// Takes up the list's newest version; returns whether any member is on it.
    pub fn refresh(&mut self) -> bool {
        let newest = self.list.current();
        if !Arc::ptr_eq(&newest, &self.current) {
            self.current = newest;
            self.memo.clear();
            self.version += 1;
        }
        !self.current.is_empty()
    }

    /// Whether `member_id` is erased, by the version of the list the last
    /// [`Screen::refresh`] took.
    pub fn erased(&mut self, member_id: &str) -> bool {
        if self.current.is_empty() {
            return false;
        }
        if let Some(verdict) = self.memo.get(member_id) {
            return *verdict;
        }
        if self.memo.len() >= MEMO_SIZE {
            self.memo.clear();
        }
        let verdict = self.current.holds(member_id);
        self.memo.insert(member_id.into(), verdict);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list_of(members: &[&str]) -> Suppressed {
        let key = ErasureKey::new(Some("a key of sixteen or more"));
        let hashes = members.iter().map(|m| key.hash(m.as_bytes())).collect();
        Suppressed::new(key, hashes)
    }

    #[test]
    fn a_hash_reads_back_from_its_hex() {
        let hash = ErasureKey::new(None).hash(b"m00010004");
        assert_eq!(MemberHash::from_hex(&hash.hex()), Some(hash));
        assert_eq!(hash.hex().len(), 32);
        assert_eq!(MemberHash::from_hex("not hex"), None);
        assert_eq!(MemberHash::from_hex(&"g".repeat(32)), None);
    }

    #[test]
    fn the_hash_depends_on_the_key_and_names_no_member() {
        let (one, other) = (
            ErasureKey::new(Some("one key, sixteen+")),
            ErasureKey::new(Some("another key, 16+")),
        );
        assert_ne!(one.hash(b"m00010004"), other.hash(b"m00010004"));
        assert_ne!(one.hash(b"m00010004"), one.hash(b"m00010005"));
        assert!(!one.hash(b"m00010004").hex().contains("m000"));
    }

    #[test]
    fn the_list_holds_its_members_only() {
        let list = list_of(&["m00010004", "m00020001"]);
        assert!(list.holds("m00010004"));
        assert!(list.holds("m00020001"));
        assert!(!list.holds("m00010005"));
        assert!(!list_of(&[]).holds("m00010004"));
    }

    #[test]
    fn a_screen_takes_up_a_new_list_and_forgets_its_verdicts() {
        let (sender, receiver) = watch::channel(Some(Arc::new(list_of(&[]))));
        let mut screen = Screen::new(Suppression {
            list: receiver,
            empty: Arc::new(list_of(&[])),
        });
        assert!(!screen.refresh());
        assert_eq!(screen.version(), 0);
        assert!(!screen.erased("m00010004"));
        sender.send_replace(Some(Arc::new(list_of(&["m00010004"]))));
        assert!(!screen.erased("m00010004"), "the old list until refreshed");
        assert!(screen.refresh());
        assert_eq!(screen.version(), 1);
        assert!(screen.erased("m00010004"));
        assert!(
            screen.erased("m00010004"),
            "the memo gives the same verdict"
        );
        assert!(!screen.erased("m00010005"));
    }

    #[test]
    fn member_ids_are_checked_by_the_events_rule() {
        assert_eq!(check_member_id("m00010004"), Ok(()));
        let refused = check_member_id("m 0001").unwrap_err();
        assert!(refused.contains("member_id"), "{refused}");
        assert!(check_member_id("").unwrap_err().contains("member_id"));
    }
}
