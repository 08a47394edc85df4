//! Classes that move between partitions: the stage claims each class a partition meets for the
//! first time in the class directory ([`crate::aggregate::directory`]), and a home partition
//! closes a due class once the parts its visitors counted are handed over.

use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::ack::PartitionId;
use crate::aggregate::directory::{self, Place, Role};
use crate::aggregate::partition::PartitionState;
use crate::metrics;

use super::AggregateStage;

/// How often a closing class looks again for the parts it waits for.
const CLOSING_RECHECK: Duration = Duration::from_secs(5);
/// Class claims in flight at once.
const CLAIMS_AT_ONCE: usize = 16;

impl AggregateStage {
    /// Claims in the class directory the classes `events` meet for the first time on
    /// `partition`, so the state knows whether it is their home ([`directory`]). Retried until
    /// the store answers (the stage is not ready meanwhile).
    pub(super) async fn claim_new_classes(
        &mut self,
        partition: &PartitionId,
        events: &[crate::event::PerformanceEvent],
    ) {
        let Some(owned) = self.partitions.get(partition) else {
            return;
        };
        let Some(place) = owned.state.place.clone() else {
            return;
        };
        let position = owned.state.position;
        let horizon_ms = self.rules.dedup_horizon_ms;
        let mut new: Vec<(String, Box<str>, Box<str>, i64)> = Vec::new();
        let mut previous: Option<(&str, &str)> = None;
        for event in events {
            if position.is_some_and(|p| event.offset <= p) {
                continue;
            }
            let ids = (&*event.studio_id, &*event.class_id);
            if previous == Some(ids) {
                continue;
            }
            previous = Some(ids);
            let key = format!("{}:{}", ids.0, ids.1);
            // Past the horizon a class is late, never claimed (its home record stays).
            if owned.state.is_new_class(&key)
                && !owned.state.past_horizon(event.event_time_ms, &self.rules)
                && !new.iter().any(|(k, ..)| *k == key)
            {
                new.push((key, ids.0.into(), ids.1.into(), event.event_time_ms));
            }
        }
        if new.is_empty() {
            return;
        }
        let mut pending = Vec::with_capacity(new.len());
        for (key, studio, class, first_ms) in new {
            let (this, place) = (&*self, &place);
            pending.push(async move {
                let role = this
                    .retry("claiming a class", || {
                        directory::claim(&this.writer, place, &studio, &class, first_ms, horizon_ms)
                    })
                    .await;
                (key, role)
            });
        }
        let claims: Vec<(String, Role)> = futures::stream::iter(pending)
            .buffer_unordered(CLAIMS_AT_ONCE)
            .collect()
            .await;
        let owned = self.partitions.get_mut(partition).expect("checked above");
        for (key, role) in claims {
            match role {
                Role::Closed(home) => {
                    metrics::record_handoffs("too_late", 1);
                    tracing::warn!(partition = %partition, class = %key, home, "class already final at its home partition: its events here are late");
                }
                Role::Visitor(home) => {
                    tracing::info!(partition = %partition, class = %key, home, "class moved here from its home partition: counting a part to hand over");
                }
                Role::Home => {}
            }
            owned.state.roles.insert(key, role);
        }
    }

    /// Finalises the closing classes whose parts are all handed over (all of them, with what
    /// is there, if `force`: a bounded source ended).
    pub(super) async fn close_classes(&mut self, force: bool) {
        let now = Instant::now();
        /// A closing class to look at: its partition, key, place and ids.
        struct Due {
            partition: PartitionId,
            key: String,
            place: Place,
            studio: Box<str>,
            class: Box<str>,
        }
        let mut due = Vec::new();
        for (partition, owned) in &self.partitions {
            let Some(place) = &owned.state.place else {
                continue;
            };
            for (key, (class, _)) in &owned.state.closing {
                if force || owned.recheck.get(key).is_none_or(|at| *at <= now) {
                    due.push(Due {
                        partition: partition.clone(),
                        key: key.clone(),
                        place: place.clone(),
                        studio: class.studio_id.clone(),
                        class: class.class_id.clone(),
                    });
                }
            }
        }
        let mut finalised = Vec::new();
        for Due {
            partition,
            key,
            place,
            studio,
            class,
        } in due
        {
            let visits = self
                .retry("listing a class's parts", || {
                    directory::visits(&self.writer, &place, &studio, &class)
                })
                .await;
            let missing = visits.missing();
            if !missing.is_empty() && !force {
                let owned = self.partitions.get_mut(&partition).expect("listed above");
                if owned
                    .recheck
                    .insert(key.clone(), now + CLOSING_RECHECK)
                    .is_none()
                {
                    tracing::info!(partition = %partition, class = %key, waiting_for = ?missing, "class due: waiting for the parts counted on other partitions");
                }
                continue;
            }
            let mut parts = Vec::new();
            let mut newer = false;
            for (visitor, part_key) in &visits.parts {
                let body = self
                    .retry("reading a class part", || {
                        directory::read(&self.writer, part_key)
                    })
                    .await;
                match PartitionState::decode_part(&body) {
                    Ok((counted_on, part)) => {
                        tracing::info!(partition = %partition, class = %key, visitor, counted_on, "class part merged");
                        parts.push(part);
                    }
                    // Of a newer build: the class waits for a home that merges it.
                    Err(error) if error.is_newer() && !force => {
                        tracing::error!(partition = %partition, class = %key, key = %part_key, error = %error, "class part of a newer build: the class waits, closing, for a build that merges it");
                        newer = true;
                    }
                    Err(error) => {
                        // Not mergeable by this build: it stays where it is for an operator.
                        tracing::error!(partition = %partition, class = %key, key = %part_key, error = %error, "class part unreadable: the class is final without it");
                    }
                }
            }
            if newer {
                let owned = self.partitions.get_mut(&partition).expect("listed above");
                owned.recheck.insert(key.clone(), now + CLOSING_RECHECK);
                continue;
            }
            let merged = parts.len() as u64;
            let owned = self.partitions.get_mut(&partition).expect("listed above");
            owned.recheck.remove(&key);
            if let Some((result, exact)) = owned.state.close(&key, parts, &self.rules) {
                metrics::record_handoffs(if exact { "merged" } else { "merged_inexact" }, merged);
                if !exact {
                    tracing::warn!(partition = %partition, class = %key, "class parts interleave in time for a member: heart-rate zones merged approximately");
                }
                owned.dirty = true;
                owned.leftovers.extend(
                    directory::leftovers(&visits, &place, &studio, &class)
                        .iter()
                        .map(|relative| self.writer.path(relative)),
                );
                finalised.push(result);
            }
        }
        self.record_finalised(finalised);
    }
}
