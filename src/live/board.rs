//! The board: the newest record of every class on the walls, and a channel per studio that
//! tells its walls of each newer one. The screen server fills it from the live topic; the
//! embedded default fills it straight from the aggregate stage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::record::Version;

/// Records a wall may fall behind by before it is sent each class's newest instead.
pub const WALL_QUEUE: usize = 16;

/// One record as the walls get it: its JSON as published, and what orders it.
#[derive(Debug)]
pub struct Shown {
    /// The class.
    pub class_id: Box<str>,
    /// Its place in the class's sequence.
    pub version: Version,
    /// Whether it is the class's last.
    pub is_final: bool,
    /// The record, as published.
    pub json: Bytes,
    /// When it was published (epoch milliseconds), for the age at send.
    pub published_ms: i64,
}

/// The fields of a record the board reads.
#[derive(Deserialize)]
struct Head {
    studio_id: Box<str>,
    class_id: Box<str>,
    version: Version,
    #[serde(rename = "final")]
    is_final: bool,
}

/// Why a record was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// Not a live record.
    #[error("not a live record: {0}")]
    Malformed(String),
    /// The board has this version of the class or a newer one.
    #[error("not newer than the version shown")]
    NotNewer,
}

struct Current {
    shown: Arc<Shown>,
    /// When the class's final record came.
    final_at: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    /// By studio, then class.
    studios: HashMap<Box<str>, HashMap<Box<str>, Current>>,
    /// The walls of each studio.
    walls: HashMap<Box<str>, broadcast::Sender<Arc<Shown>>>,
}

/// The newest record of every class (cloning shares it).
#[derive(Clone)]
pub struct Board {
    inner: Arc<Mutex<Inner>>,
    keep_final: Duration,
}

impl Board {
    /// An empty board that forgets a class `keep_final` after its final record.
    pub fn new(keep_final: Duration) -> Board {
        Board {
            inner: Arc::default(),
            keep_final,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes `json`, a record published at `published_ms`, if it is newer than the class's
    /// record on the board, and tells the studio's walls.
    pub fn offer(&self, json: Bytes, published_ms: i64) -> Result<Arc<Shown>, Refused> {
        let head: Head =
            serde_json::from_slice(&json).map_err(|error| Refused::Malformed(error.to_string()))?;
        let shown = Arc::new(Shown {
            class_id: head.class_id,
            version: head.version,
            is_final: head.is_final,
            json,
            published_ms,
        });
        let mut inner = self.lock();
        let classes = inner.studios.entry(head.studio_id.clone()).or_default();
        if classes
            .get(&shown.class_id)
            .is_some_and(|current| current.shown.version >= shown.version)
        {
            return Err(Refused::NotNewer);
        }
        classes.insert(
            shown.class_id.clone(),
            Current {
                shown: Arc::clone(&shown),
                final_at: shown.is_final.then(Instant::now),
            },
        );
        if let Some(walls) = inner.walls.get(&head.studio_id) {
            // No receiver: no wall is open.
            let _ = walls.send(Arc::clone(&shown));
        }
        Ok(shown)
    }

    /// The studio's classes now (by class id) and a receiver of every newer record, taken
    /// together so that nothing falls between them.
    pub fn watch(&self, studio_id: &str) -> (Vec<Arc<Shown>>, broadcast::Receiver<Arc<Shown>>) {
        let mut inner = self.lock();
        let receiver = inner
            .walls
            .entry(studio_id.into())
            .or_insert_with(|| broadcast::channel(WALL_QUEUE).0)
            .subscribe();
        let mut now: Vec<Arc<Shown>> = inner
            .studios
            .get(studio_id)
            .map(|classes| classes.values().map(|c| Arc::clone(&c.shown)).collect())
            .unwrap_or_default();
        now.sort_by(|a, b| a.class_id.cmp(&b.class_id));
        (now, receiver)
    }

    /// The class's record now.
    pub fn current(&self, studio_id: &str, class_id: &str) -> Option<Arc<Shown>> {
        let inner = self.lock();
        let current = inner.studios.get(studio_id)?.get(class_id)?;
        Some(Arc::clone(&current.shown))
    }

    /// Whether the board knows the studio (any class of it within the lookback).
    pub fn knows_studio(&self, studio_id: &str) -> bool {
        self.lock().studios.contains_key(studio_id)
    }

    /// Forgets classes final for longer than the board keeps them, and the channels of
    /// studios no wall watches; returns the classes held.
    pub fn forget_old(&self) -> usize {
        let keep = self.keep_final;
        let mut inner = self.lock();
        inner.studios.retain(|_, classes| {
            classes.retain(|_, current| current.final_at.is_none_or(|at| at.elapsed() < keep));
            !classes.is_empty()
        });
        inner.walls.retain(|_, walls| walls.receiver_count() > 0);
        inner.studios.values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(class: &str, epoch: u32, position: u64, is_final: bool) -> Bytes {
        Bytes::from(format!(
            r#"{{"studio_id":"s1","class_id":"{class}","version":[{epoch},{position}],"final":{is_final},"members":[]}}"#
        ))
    }

    #[tokio::test]
    async fn only_newer_versions_are_taken_and_told() {
        let board = Board::new(Duration::from_secs(60));
        board.offer(record("c1", 0, 10, false), 0).unwrap();
        let (now, mut walls) = board.watch("s1");
        assert_eq!(now.len(), 1);
        assert_eq!(
            board.offer(record("c1", 0, 10, false), 0).unwrap_err(),
            Refused::NotNewer
        );
        assert_eq!(
            board.offer(record("c1", 0, 8, false), 0).unwrap_err(),
            Refused::NotNewer
        );
        board.offer(record("c1", 1, 0, false), 0).unwrap();
        assert_eq!(walls.recv().await.unwrap().version, Version(1, 0));
        assert!(walls.try_recv().is_err());
        assert!(matches!(
            board.offer(Bytes::from_static(b"{}"), 0),
            Err(Refused::Malformed(_))
        ));
        assert_eq!(board.current("s1", "c1").unwrap().version, Version(1, 0));
        assert!(board.current("s1", "c2").is_none());
        assert!(board.current("s2", "c1").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_class_is_forgotten_after_the_time_kept() {
        let board = Board::new(Duration::from_secs(600));
        board.offer(record("c1", 0, 21, true), 0).unwrap();
        board.offer(record("c2", 0, 20, false), 0).unwrap();
        assert_eq!(board.forget_old(), 2);
        tokio::time::advance(Duration::from_secs(601)).await;
        assert_eq!(board.forget_old(), 1);
        assert!(board.current("s1", "c1").is_none());
        assert!(board.knows_studio("s1"));
    }
}
