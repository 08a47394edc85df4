//! The aggregate state of one source partition: its open classes, the classes already final,
//! its event-time clock and the position it includes. This is the unit that is checkpointed,
//! restored when the partition is assigned again, and handed between tasks.
//!
//! Every decision about an event depends only on the events before it in the partition (and
//! their arrival timestamps, which the source stores with them), never on batch boundaries or
//! the wall clock, so a replay from a checkpoint decides exactly as the first run did. The one
//! wall-clock decision, finalising a class that stopped receiving events, is recorded in the
//! checkpoint before its result is written.

use std::collections::BTreeMap;
use std::sync::Arc;

use hashbrown::HashMap;

use serde::{Deserialize, Serialize};

use super::checkpoint::{self, CheckpointError};
use super::class::{ClassState, SeenIds};
use super::directory::{Place, Role};
use super::output::{ClassResult, Outgoing};
use super::Rules;
use crate::event::{fingerprint, PerformanceEvent, Verdict};
use crate::profile::Profile;

/// How long (in arrival time on the partition) the verdict of an event left out is kept for
/// replays: a replay starts at the committed position, which trails the newest read by the
/// lake's object age and the checkpoint interval (minutes), never by an hour.
pub const REPLAY_MEMORY_MS: i64 = 3_600_000;

/// Why a class became final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Trigger {
    /// The partition's event time passed the class's last event by the idle timeout.
    EventTime,
    /// No event for the idle timeout of wall-clock time, with the partition read to its end.
    Idle,
    /// A bounded source ended.
    EndOfInput,
}

impl Trigger {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::EventTime => "event_time",
            Trigger::Idle => "idle",
            Trigger::EndOfInput => "end_of_input",
        }
    }
}

/// What happened to the events of one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Counted in the aggregates.
    pub counted: u64,
    /// Left out as duplicates.
    pub duplicate: u64,
    /// Left out as late.
    pub late: u64,
    /// At or below the restored position: already in the state.
    pub replayed: u64,
}

/// A class final here, remembered for the dedup horizon after its last event: its events are
/// late, and those whose ids it wrote already are duplicates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalClass {
    /// Its newest (capped) event time; for a class met only past the horizon, that event's.
    pub last_ms: i64,
    /// Whether ids of the class may be held outside this state, as
    /// [`ClassState::stored_ids`]: always, once the class is final and sealed.
    pub stored_ids: bool,
    /// The ids of the late events written for it since the last seal.
    pub late: SeenIds,
}

/// Late events of one class, judged so only because the state does not hold their ids,
/// while the class's ids may be held elsewhere ([`ClassState::stored_ids`]): the stage looks
/// for them in the class's segments ([`super::segment`]) and makes those found duplicates
/// ([`PartitionState::confirm_duplicates`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unconfirmed {
    /// The studio.
    pub studio_id: Arc<str>,
    /// The class.
    pub class_id: Arc<str>,
    /// The events, by index in the slice given to [`PartitionState::apply`].
    pub events: Vec<usize>,
}

/// A class that became final, with its result.
#[derive(Debug, Clone)]
pub struct Finalised {
    /// Why.
    pub trigger: Trigger,
    /// The result written for it.
    pub result: ClassResult,
}

/// One partition's aggregate state.
#[derive(Debug)]
pub struct PartitionState {
    /// `stream/partition`, written into results.
    pub name: String,
    /// Last position whose events are in the state.
    pub position: Option<u64>,
    /// Newest capped event time on the partition minus the watermark delay.
    pub clock_ms: i64,
    /// Open classes by `studio_id:class_id`.
    pub classes: HashMap<String, ClassState>,
    /// Final classes by `studio_id:class_id`.
    pub finalised: BTreeMap<String, FinalClass>,
    /// What the classes final here write once the checkpoint that records it is durable.
    pub outbox: Vec<Outgoing>,
    /// Events judged duplicate or late, by position: (event id hash, late, arrival ms). A
    /// replay of positions the state already includes gives them the same verdict again, so
    /// the lake leaves out the same duplicates (their first copy may be in the replay, too).
    pub left_out: BTreeMap<u64, Vec<(u128, bool, i64)>>,
    /// The class of the last event applied (`studio_id:class_id`). A run of one class's
    /// events starts where the class changes in the partition, wherever batches, restores and
    /// sweeps cut it, so finality by event time is decided at the same events every time.
    pub last_class: Option<String>,
    /// Classes due here whose result waits for the parts other partitions counted
    /// ([`super::directory`]); their events are late meanwhile, as for any final class.
    pub closing: BTreeMap<String, (ClassState, Trigger)>,
    /// This partition in the class directory; `None`: classes never move (tests of one
    /// partition), and a due class is final at once.
    pub place: Option<Place>,
    /// Roles the stage claimed for classes the next batch meets for the first time.
    pub roles: HashMap<String, Role>,
    /// Parts of classes handed to their home since the last call of
    /// [`PartitionState::take_handed_over`].
    handed_over: u64,
    /// Late events of the last [`PartitionState::apply`] that the stage confirms.
    unconfirmed: Vec<Unconfirmed>,
    /// Members the last [`PartitionState::apply`] met first in a class, by class key: their
    /// profiles are for the stage to bind.
    unbound: Vec<(String, Box<str>)>,
}

impl PartitionState {
    /// An empty state.
    pub fn new(name: String) -> PartitionState {
        PartitionState {
            name,
            position: None,
            clock_ms: i64::MIN,
            classes: HashMap::new(),
            finalised: BTreeMap::new(),
            outbox: Vec::new(),
            left_out: BTreeMap::new(),
            last_class: None,
            closing: BTreeMap::new(),
            place: None,
            roles: HashMap::new(),
            handed_over: 0,
            unconfirmed: Vec::new(),
            unbound: Vec::new(),
        }
    }

    /// Takes over the classes of `parent` (the last state of a partition this one continues,
    /// a Kinesis parent shard) whose partition key `studio_id:class_id` hashes into
    /// `hash_range` (MD5, as Kinesis routes records): open classes go on here, final ones stay
    /// final. Returns how many open classes came over.
    pub fn inherit(&mut self, parent: PartitionState, hash_range: (u128, u128)) -> usize {
        use md5::{Digest, Md5};
        let ours = |key: &str| {
            let hash = u128::from_be_bytes(Md5::digest(key.as_bytes()).into());
            (hash_range.0..=hash_range.1).contains(&hash)
        };
        self.clock_ms = self.clock_ms.max(parent.clock_ms);
        let before = self.classes.len();
        self.classes
            .extend(parent.classes.into_iter().filter(|(key, _)| ours(key)));
        self.closing
            .extend(parent.closing.into_iter().filter(|(key, _)| ours(key)));
        self.finalised
            .extend(parent.finalised.into_iter().filter(|(key, _)| ours(key)));
        // Segments the parent sealed and may not have written: they are written from here.
        self.outbox
            .extend(parent.outbox.into_iter().filter(|outgoing| match outgoing {
                Outgoing::Ids {
                    studio_id,
                    class_id,
                    ..
                } => ours(&format!("{studio_id}:{class_id}")),
                _ => false,
            }));
        self.classes.len() - before
    }

    /// Whether `key` (`studio_id:class_id`) is met here for the first time: it needs a role.
    pub fn is_new_class(&self, key: &str) -> bool {
        !self.classes.contains_key(key)
            && !self.finalised.contains_key(key)
            && !self.roles.contains_key(key)
    }

    /// Whether an event time is past the dedup horizon on the partition's clock: a class
    /// not known here whose event is that old is long final (or never ran in time), and its
    /// events are late rather than a new class.
    pub fn past_horizon(&self, event_time_ms: i64, rules: &Rules) -> bool {
        event_time_ms < self.clock_ms.saturating_sub(rules.dedup_horizon_ms)
    }

    /// The verdict a replayed event (at or below the restored position) had when first
    /// judged.
    fn replayed_verdict(&self, event: &PerformanceEvent) -> Verdict {
        let Some(left_out) = self.left_out.get(&event.offset) else {
            return Verdict::Counted;
        };
        let id_hash = fingerprint(&event.event_id);
        match left_out.iter().find(|(hash, _, _)| *hash == id_hash) {
            Some((_, true, _)) => Verdict::Late,
            Some((_, false, _)) => Verdict::Duplicate,
            None => Verdict::Counted,
        }
    }

    /// Judges and counts `events` (consecutive events of the partition ending at
    /// `last_offset`), setting each one's [`Verdict`]. Returns what became of them and the
    /// classes the events' clock made final on the way.
    pub fn apply(
        &mut self,
        events: &mut [PerformanceEvent],
        last_offset: u64,
        rules: &Rules,
        wall_ms: i64,
    ) -> (Tally, Vec<Finalised>) {
        let mut tally = Tally::default();
        let mut finalised = Vec::new();
        let mut key = String::new();
        self.unconfirmed.clear();
        self.unbound.clear();
        let total = events.len();
        // Events come in runs of one class (a message is one class's): the class is looked up
        // once per run.
        let mut rest = events;
        while !rest.is_empty() {
            let run_length = rest
                .iter()
                .position(|e| !same_class(e, &rest[0]))
                .unwrap_or(rest.len());
            let (run, tail) = std::mem::take(&mut rest).split_at_mut(run_length);
            rest = tail;
            let run = self.give_replayed_verdicts(run, &mut tally);
            let Some(first) = run.first() else {
                continue;
            };
            let start = total - rest.len() - run.len();
            key.clear();
            key.push_str(&first.studio_id);
            key.push(':');
            key.push_str(&first.class_id);
            finalised.extend(self.start_run(&key, first, rules, wall_ms));
            self.count_run(&key, run, start, rules, wall_ms, &mut tally);
        }
        if self.position.is_none_or(|position| last_offset > position) {
            self.position = Some(last_offset);
        }
        self.forget_old_verdicts();
        (tally, finalised)
    }

    /// Gives the events of `run` at or below the restored position, which the state already
    /// includes, the verdict they had when first judged (for the sinks), and returns the rest.
    fn give_replayed_verdicts<'a>(
        &self,
        run: &'a mut [PerformanceEvent],
        tally: &mut Tally,
    ) -> &'a mut [PerformanceEvent] {
        let replayed = run
            .iter()
            .take_while(|e| self.position.is_some_and(|position| e.offset <= position))
            .count();
        tally.replayed += replayed as u64;
        let (replay, rest) = run.split_at_mut(replayed);
        for event in replay {
            event.verdict = self.replayed_verdict(event);
        }
        rest
    }

    /// Where a run of class `key` starts (`first` its first event): the class becomes final
    /// first if the partition's clock has passed its idle timeout, and a class met for the
    /// first time opens. Whether a class is final by event time is checked where its run starts
    /// in the partition (the previous event was another class's, even in an earlier batch),
    /// never where a batch happens to cut a run: a class whose backlog arrives behind the
    /// partition's clock gets the same verdicts however it is read.
    fn start_run(
        &mut self,
        key: &str,
        first: &PerformanceEvent,
        rules: &Rules,
        wall_ms: i64,
    ) -> Option<Finalised> {
        let mut finalised = None;
        if self.last_class.as_deref() != Some(key) {
            self.last_class = Some(key.to_owned());
            let due = self.classes.get(key).is_some_and(|class| {
                self.clock_ms
                    >= class
                        .max_time_ms
                        .saturating_add(rules.class_idle_timeout_ms)
            });
            if due {
                finalised = self.finalise(key, Trigger::EventTime, rules);
            }
        }
        if !self.classes.contains_key(key) && !self.finalised.contains_key(key) {
            if self.past_horizon(first.event_time_ms, rules) {
                // Never a new class whose result would replace the real one's.
                self.roles.remove(key);
                self.finalised.insert(
                    key.to_owned(),
                    FinalClass {
                        last_ms: first.event_time_ms,
                        stored_ids: true,
                        late: SeenIds::default(),
                    },
                );
            } else {
                self.open_class(key, first, wall_ms);
            }
        }
        finalised
    }

    /// Opens class `key` at its first event here, in the role the class directory gave it.
    fn open_class(&mut self, key: &str, first: &PerformanceEvent, wall_ms: i64) {
        let mut class = ClassState::new(&first.studio_id, &first.class_id, wall_ms);
        match self.roles.remove(key) {
            Some(Role::Closed(_)) => {
                // Final at its home already: this part comes too late to count, and the
                // home sealed the class's ids.
                let class = FinalClass {
                    last_ms: first.event_time_ms,
                    stored_ids: true,
                    late: SeenIds::default(),
                };
                self.finalised.insert(key.to_owned(), class);
            }
            Some(Role::Visitor(home)) => {
                // The home holds ids of the class, and seals them.
                class.home = Some(home);
                class.stored_ids = true;
                self.classes.insert(key.to_owned(), class);
            }
            Some(Role::Home) | None => {
                self.classes.insert(key.to_owned(), class);
            }
        }
    }

    /// Judges and counts a run of class `key`'s events (`start` the index of the first in
    /// [`PartitionState::apply`]'s slice), remembering the verdict of each one left out, and
    /// moves the partition's clock. The events of a class closing or final are late, or
    /// duplicates of ids it wrote.
    fn count_run(
        &mut self,
        key: &str,
        run: &mut [PerformanceEvent],
        start: usize,
        rules: &Rules,
        wall_ms: i64,
        tally: &mut Tally,
    ) {
        /// Where the run's class is.
        enum Target<'a> {
            Open(&'a mut ClassState),
            Closing(&'a mut ClassState),
            Final(&'a mut FinalClass),
        }
        let mut target = if let Some(class) = self.classes.get_mut(key) {
            Target::Open(class)
        } else if let Some((class, _)) = self.closing.get_mut(key) {
            Target::Closing(class)
        } else {
            match self.finalised.get_mut(key) {
                Some(class) => Target::Final(class),
                None => unreachable!("a run's class is open or final once the run starts"),
            }
        };
        let (studio_id, class_id) = (Arc::clone(&run[0].studio_id), Arc::clone(&run[0].class_id));
        let mut unconfirmed = Vec::new();
        for (i, event) in run.iter_mut().enumerate() {
            let id = fingerprint(&event.event_id);
            let (mut verdict, stored_ids) = match &mut target {
                Target::Open(class) => {
                    let members = class.members.len();
                    let verdict = judge(class, event, id, rules);
                    if class.members.len() > members {
                        self.unbound
                            .push((key.to_owned(), Box::from(&*event.member_id)));
                    }
                    class.observe(event, rules);
                    class.last_seen_wall_ms = wall_ms;
                    (verdict, class.stored_ids)
                }
                Target::Closing(class) => (late_unless_held(&mut class.seen, id), class.stored_ids),
                Target::Final(class) => (late_unless_held(&mut class.late, id), class.stored_ids),
            };
            if verdict == Verdict::Late {
                // Its id may have left the state already, in a segment not yet written: a
                // duplicate then, its id not held again.
                if self
                    .outbox
                    .iter()
                    .any(|outgoing| outgoing.holds_id(&studio_id, &class_id, id))
                {
                    verdict = Verdict::Duplicate;
                    match &mut target {
                        Target::Open(class) | Target::Closing(class) => {
                            class.seen.forget_retired(id)
                        }
                        Target::Final(class) => class.late.forget_retired(id),
                    }
                } else if stored_ids {
                    unconfirmed.push(start + i);
                }
            }
            match verdict {
                Verdict::Counted => tally.counted += 1,
                Verdict::Duplicate => tally.duplicate += 1,
                Verdict::Late => tally.late += 1,
            }
            if verdict != Verdict::Counted {
                self.left_out.entry(event.offset).or_default().push((
                    id,
                    verdict == Verdict::Late,
                    event.arrival_ms,
                ));
            }
            event.verdict = verdict;
            let capped = event
                .event_time_ms
                .min(event.arrival_ms.saturating_add(rules.max_clock_skew_ms));
            self.clock_ms = self
                .clock_ms
                .max(capped.saturating_sub(rules.watermark_delay_ms));
        }
        if !unconfirmed.is_empty() {
            self.unconfirmed.push(Unconfirmed {
                studio_id,
                class_id,
                events: unconfirmed,
            });
        }
    }

    /// The members the last [`PartitionState::apply`] met first in a class: `(class key,
    /// member id)`, for [`PartitionState::bind_profile`].
    pub fn take_unbound(&mut self) -> Vec<(String, Box<str>)> {
        std::mem::take(&mut self.unbound)
    }

    /// Every member of an open or closing class without a profile (after a restore).
    pub fn unbound_members(&self) -> Vec<(String, Box<str>)> {
        let open = self.classes.iter();
        let closing = self.closing.iter().map(|(key, (class, _))| (key, class));
        open.chain(closing)
            .flat_map(|(key, class)| {
                class
                    .members
                    .iter()
                    .filter(|(_, member)| member.profile.is_none())
                    .map(|(member_id, _)| (key.clone(), member_id.clone()))
            })
            .collect()
    }

    /// Whether member `member_id` of class `key` is open or closing here without a profile.
    pub fn wants_profile(&self, key: &str, member_id: &str) -> bool {
        self.class_ref(key)
            .and_then(|class| class.members.get(member_id))
            .is_some_and(|member| member.profile.is_none())
    }

    /// Binds `profile` to member `member_id` of class `key` if it has none yet: from now on
    /// every result of the class uses it. Returns whether it was bound.
    pub fn bind_profile(&mut self, key: &str, member_id: &str, profile: Profile) -> bool {
        let class = match self.classes.get_mut(key) {
            Some(class) => Some(class),
            None => self.closing.get_mut(key).map(|(class, _)| class),
        };
        let Some(class) = class else {
            return false;
        };
        match class.members.get_mut(member_id) {
            Some(member) if member.profile.is_none() => {
                member.profile = Some(profile);
                class.changed = true;
                true
            }
            _ => false,
        }
    }

    fn class_ref(&self, key: &str) -> Option<&ClassState> {
        self.classes
            .get(key)
            .or_else(|| self.closing.get(key).map(|(class, _)| class))
    }

    /// The late events of the last [`PartitionState::apply`] whose ids may be in their
    /// classes' segments.
    pub fn take_unconfirmed(&mut self) -> Vec<Unconfirmed> {
        std::mem::take(&mut self.unconfirmed)
    }

    /// Makes duplicates of late events whose ids the stage found in their class's segments,
    /// and lets go of the ids they left in their class (a segment holds them already):
    /// `found` indexes `events`, the slice given to [`PartitionState::apply`].
    pub fn confirm_duplicates(
        &mut self,
        events: &mut [PerformanceEvent],
        found: &[usize],
        tally: &mut Tally,
    ) {
        for &index in found {
            let event = &mut events[index];
            if event.verdict != Verdict::Late {
                continue;
            }
            event.verdict = Verdict::Duplicate;
            tally.late -= 1;
            tally.duplicate += 1;
            let id = fingerprint(&event.event_id);
            if let Some(entry) = self
                .left_out
                .get_mut(&event.offset)
                .and_then(|entries| entries.iter_mut().find(|(hash, _, _)| *hash == id))
            {
                entry.1 = false;
            }
            let key = format!("{}:{}", event.studio_id, event.class_id);
            let held = if let Some(class) = self.classes.get_mut(&key) {
                Some(&mut class.seen)
            } else if let Some((class, _)) = self.closing.get_mut(&key) {
                Some(&mut class.seen)
            } else {
                self.finalised.get_mut(&key).map(|class| &mut class.late)
            };
            if let Some(held) = held {
                held.forget_retired(id);
            }
        }
    }

    /// Forgets verdicts older than any replay can reach. Arrival times grow with positions
    /// (the broker stamps them), so the oldest are first.
    fn forget_old_verdicts(&mut self) {
        let newest = self
            .left_out
            .last_key_value()
            .and_then(|(_, entries)| entries.iter().map(|(_, _, arrival)| *arrival).max());
        let Some(newest) = newest else {
            return;
        };
        while let Some(entry) = self.left_out.first_entry() {
            if entry
                .get()
                .iter()
                .all(|(_, _, arrival)| *arrival < newest - REPLAY_MEMORY_MS)
            {
                entry.remove();
            } else {
                break;
            }
        }
    }

    /// Finalises classes whose time is up, compacts the rest, and forgets final classes long
    /// past. A class's time is up by the partition's event time, or by the wall clock once it
    /// has had no event for the idle timeout while the partition was read to its end:
    /// `at_end` is the wall-clock span `(since, until)` over which the source vouched for being
    /// at the end, `None` if it is not there (a backlog, a starved or paused partition, a
    /// broker away). Only vouched time counts, so a class never becomes final by the wall clock
    /// while its events may be waiting unread.
    pub fn sweep(&mut self, rules: &Rules, at_end: Option<(i64, i64)>) -> Vec<Finalised> {
        let mut due = Vec::new();
        for (key, class) in &mut self.classes {
            // The class of the run in progress is judged where its next run starts, as
            // `apply` does (else a sweep between two batches of one run would end it early).
            let mid_run = self.last_class.as_deref() == Some(key.as_str());
            if !mid_run
                && self.clock_ms
                    >= class
                        .max_time_ms
                        .saturating_add(rules.class_idle_timeout_ms)
            {
                due.push((key.clone(), Trigger::EventTime));
            } else if at_end.is_some_and(|(since, until)| {
                until - since.max(class.last_seen_wall_ms) >= rules.class_idle_timeout_ms
            }) {
                due.push((key.clone(), Trigger::Idle));
            } else {
                class.compact(rules);
            }
        }
        due.sort();
        let finalised = due
            .into_iter()
            .filter_map(|(key, trigger)| self.finalise(&key, trigger, rules))
            .collect();
        // A class whose late ids are not sealed yet is kept until they are.
        let horizon = self.clock_ms.saturating_sub(rules.dedup_horizon_ms);
        self.finalised
            .retain(|_, class| class.last_ms >= horizon || !class.late.is_empty());
        finalised
    }

    /// Seals into segments (outbox entries) the ids the state should no longer hold: an open
    /// class's retired ids once it has `seal_at` of them ([`super::segment::SEAL_AT`] in the
    /// stage), and those of late events written for final classes. Called before each
    /// checkpoint; returns whether it sealed any.
    pub fn seal_ids(&mut self, seal_at: usize) -> bool {
        let before = self.outbox.len();
        for class in self.classes.values_mut() {
            if class.seen.retired_len() >= seal_at {
                class.stored_ids = true;
                self.outbox.push(Outgoing::Ids {
                    studio_id: class.studio_id.clone(),
                    class_id: class.class_id.clone(),
                    ids: class.seen.take_retired(),
                });
            }
        }
        for (key, class) in &mut self.finalised {
            if !class.late.is_empty() {
                class.stored_ids = true;
                let (studio_id, class_id) = key.split_once(':').unwrap_or((key, ""));
                self.outbox.push(Outgoing::Ids {
                    studio_id: studio_id.into(),
                    class_id: class_id.into(),
                    ids: class.late.take_all(),
                });
            }
        }
        self.outbox.len() > before
    }

    /// Finalises every open class (a bounded source ended).
    pub fn finalise_all(&mut self, rules: &Rules) -> Vec<Finalised> {
        let mut keys: Vec<String> = self.classes.keys().cloned().collect();
        keys.sort();
        keys.iter()
            .filter_map(|key| self.finalise(key, Trigger::EndOfInput, rules))
            .collect()
    }

    /// Ends a class here. A part of a class whose home is another partition is handed over
    /// (into the outbox, written after the checkpoint); a class of this home waits in
    /// `closing` for the stage to bring the other parts ([`PartitionState::close`]); without
    /// a directory the result is rendered at once. Either way the class's later events here
    /// are late.
    // Once per class: kept out of line, so that `apply`'s per-event loop stays small.
    #[cold]
    fn finalise(&mut self, key: &str, trigger: Trigger, rules: &Rules) -> Option<Finalised> {
        let mut class = self
            .classes
            .remove(key)
            .unwrap_or_else(|| unreachable!("finalising a class that is not open"));
        let remembered = FinalClass {
            last_ms: class.max_time_ms,
            stored_ids: class.stored_ids,
            late: SeenIds::default(),
        };
        self.finalised.insert(key.to_owned(), remembered);
        match (&self.place, class.home) {
            (Some(place), Some(_)) => {
                self.outbox.push(Outgoing::Part {
                    key: place.part_key(&class.studio_id, &class.class_id),
                    body: checkpoint::encode_part(&self.name, &class),
                });
                // Sealed here too: a copy arriving here before the home's result is found.
                self.seal_all_ids(key, &mut class);
                self.handed_over += 1;
                None
            }
            (Some(_), None) => {
                self.closing.insert(key.to_owned(), (class, trigger));
                None
            }
            (None, _) => Some(self.render(class, trigger, rules)),
        }
    }

    /// Finalises a closing class with the parts other partitions handed over (`None` if it
    /// is not closing here). Returns its result and whether every part merged exactly.
    pub fn close(
        &mut self,
        key: &str,
        parts: Vec<ClassState>,
        rules: &Rules,
    ) -> Option<(Finalised, bool)> {
        let (mut class, trigger) = self.closing.remove(key)?;
        let mut exact = true;
        for part in parts {
            exact &= class.merge(part, rules);
        }
        if let Some(place) = &self.place {
            let first_ms = class.first_event_ms;
            let (key, body) = place.home_final(&class.studio_id, &class.class_id, first_ms);
            let finalised = self.render(class, trigger, rules);
            // After the result: a visitor that reads it treats its part as late.
            self.outbox.push(Outgoing::HomeFinal { key, body });
            return Some((finalised, exact));
        }
        Some((self.render(class, trigger, rules), exact))
    }

    /// Parts handed over since the last call.
    pub fn take_handed_over(&mut self) -> u64 {
        std::mem::take(&mut self.handed_over)
    }

    fn render(&mut self, mut class: ClassState, trigger: Trigger, rules: &Rules) -> Finalised {
        class.seal_all(rules);
        let result = class.result(rules, &self.name, true);
        self.outbox.push(Outgoing::Result(Box::new(result.clone())));
        let key = format!("{}:{}", class.studio_id, class.class_id);
        self.seal_all_ids(&key, &mut class);
        Finalised { trigger, result }
    }

    /// Seals every id class `key` (final) holds into a segment.
    fn seal_all_ids(&mut self, key: &str, class: &mut ClassState) {
        if class.seen.is_empty() {
            return;
        }
        if let Some(remembered) = self.finalised.get_mut(key) {
            remembered.stored_ids = true;
        }
        self.outbox.push(Outgoing::Ids {
            studio_id: class.studio_id.clone(),
            class_id: class.class_id.clone(),
            ids: class.seen.take_all(),
        });
    }

    /// Reads a part written by a visitor: the partition that counted it, and its state.
    pub fn decode_part(bytes: &[u8]) -> Result<(String, ClassState), CheckpointError> {
        checkpoint::decode_part(bytes)
    }

    /// Live results of the open classes that counted an event since the last call.
    pub fn take_changed(&mut self, rules: &Rules) -> Vec<ClassResult> {
        let mut results = Vec::new();
        for class in self.classes.values_mut().filter(|class| class.changed) {
            class.changed = false;
            results.push(class.result(rules, &self.name, false));
        }
        results
    }

    /// The results of every class counted here that counted an event since its last live
    /// record, each with its watermark; a visitor's part is left out (its home publishes the
    /// class).
    pub fn take_unpublished(&mut self, rules: &Rules) -> Vec<(ClassResult, i64)> {
        let mut results = Vec::new();
        for class in self.classes.values_mut().filter(|class| class.unpublished) {
            class.unpublished = false;
            if class.home.is_none() {
                results.push((
                    class.result(rules, &self.name, false),
                    class.watermark_ms(rules),
                ));
            }
        }
        results
    }

    /// Leaves out the members `erased` names (the erasure list): their state in open and
    /// closing classes, their lines and leaderboard places in results waiting in the outbox.
    /// Returns how many member states and results it changed.
    pub fn forget(&mut self, erased: &mut dyn FnMut(&str) -> bool) -> usize {
        let mut changed = 0;
        let classes = self.classes.values_mut();
        let closing = self.closing.values_mut().map(|(class, _)| class);
        for class in classes.chain(closing) {
            let before = class.members.len();
            class.members.retain(|member_id, _| !erased(member_id));
            changed += before - class.members.len();
        }
        for outgoing in &mut self.outbox {
            if let Outgoing::Result(result) = outgoing {
                changed += usize::from(crate::erasure::rewrite::class_result(result, erased));
            }
        }
        changed
    }

    /// Live results of every open class (tests compare them with the final ones).
    #[cfg(test)]
    pub fn live_results(&self, rules: &Rules) -> Vec<ClassResult> {
        let mut results: Vec<ClassResult> = self
            .classes
            .values()
            .map(|class| class.result(rules, &self.name, false))
            .collect();
        results.sort_by(|a, b| {
            (&a.summary.studio_id, &a.summary.class_id)
                .cmp(&(&b.summary.studio_id, &b.summary.class_id))
        });
        results
    }

    /// Rough heap bytes held.
    pub fn approx_bytes(&self) -> usize {
        self.classes
            .values()
            .map(ClassState::approx_bytes)
            .sum::<usize>()
            + self
                .closing
                .values()
                .map(|(class, _)| class.approx_bytes())
                .sum::<usize>()
            + self
                .finalised
                .values()
                .map(|class| 64 + class.late.approx_bytes())
                .sum::<usize>()
            + self.left_out.len() * 72
            + self
                .outbox
                .iter()
                .map(Outgoing::approx_bytes)
                .sum::<usize>()
    }

    /// Serialises the state ([`checkpoint::encode`]).
    pub fn encode(&self) -> Vec<u8> {
        checkpoint::encode(self)
    }

    /// Restores a state written by [`PartitionState::encode`] of this build or an earlier
    /// one ([`checkpoint::decode`]). Wall-clock idle times restart at `wall_ms`.
    pub fn decode(bytes: &[u8], wall_ms: i64) -> Result<PartitionState, CheckpointError> {
        checkpoint::decode(bytes, wall_ms)
    }
}

fn same_class(a: &PerformanceEvent, b: &PerformanceEvent) -> bool {
    (Arc::ptr_eq(&a.class_id, &b.class_id) || a.class_id == b.class_id)
        && (Arc::ptr_eq(&a.studio_id, &b.studio_id) || a.studio_id == b.studio_id)
}

/// A duplicate if the class holds the id (however old the event); else late if it is older
/// than the class's lateness limit (held from now on: it lands once); else counted.
fn judge(class: &mut ClassState, event: &PerformanceEvent, id: u128, rules: &Rules) -> Verdict {
    if class.seen.contains(id) {
        return Verdict::Duplicate;
    }
    if event.event_time_ms < class.lateness_limit_ms(rules) {
        class.seen.insert_retired(id);
        return Verdict::Late;
    }
    class.add(event, id);
    Verdict::Counted
}

/// The verdict of an event for a class that counts nothing more: a duplicate if `seen`
/// holds its id, else late, and held from now on.
fn late_unless_held(seen: &mut SeenIds, id: u128) -> Verdict {
    if seen.contains(id) {
        Verdict::Duplicate
    } else {
        seen.insert_retired(id);
        Verdict::Late
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::reference::event;
    use crate::event::{EventType, Metrics};

    fn sample(id: &str, offset: u64) -> PerformanceEvent {
        let metrics = Metrics {
            bpm: Some(150.0),
            ..Metrics::default()
        };
        let time = 1_764_090_000_000 + offset as i64 * 4_000;
        event(id, "m1", time, EventType::HeartRate, metrics, offset)
    }

    /// Two members' heart-rate samples in one class, and one member's in another.
    fn two_members() -> Vec<PerformanceEvent> {
        let mut events: Vec<PerformanceEvent> =
            (0..6).map(|i| sample(&format!("a{i}"), i)).collect();
        for event in events.iter_mut().skip(3) {
            event.member_id = "m2".into();
        }
        let mut other = sample("b0", 6);
        other.class_id = Arc::from("class-2");
        events.push(other);
        events
    }

    #[test]
    fn an_erased_member_leaves_open_classes_and_waiting_results() {
        let rules = Rules::default();
        let mut state = PartitionState::new("events/0".to_owned());
        state.apply(&mut two_members(), 6, &rules, 0);
        assert_eq!(state.forget(&mut |member| member == "m9"), 0);
        assert_eq!(
            state.forget(&mut |member| member == "m1"),
            2,
            "m1 in two open classes"
        );
        let members: Vec<&str> = state
            .classes
            .values()
            .flat_map(|class| class.members.keys().map(|id| &**id))
            .collect();
        assert_eq!(members, ["m2"]);

        // Results waiting in the outbox lose the member too, with their places on the boards.
        let mut state = PartitionState::new("events/0".to_owned());
        state.apply(&mut two_members(), 6, &rules, 0);
        state.finalise_all(&rules);
        let results = |state: &PartitionState| -> Vec<ClassResult> {
            state
                .outbox
                .iter()
                .filter_map(|o| match o {
                    Outgoing::Result(result) => Some((**result).clone()),
                    _ => None,
                })
                .collect()
        };
        assert!(results(&state)
            .iter()
            .any(|r| r.members.iter().any(|m| &*m.member_id == "m1")));
        assert_eq!(state.forget(&mut |member| member == "m1"), 2);
        for result in results(&state) {
            assert!(result.members.iter().all(|m| &*m.member_id != "m1"));
            let json = serde_json::to_string(&result.summary).unwrap();
            assert!(!json.contains("\"m1\""), "{json}");
            assert_eq!(result.summary.members, result.members.len() as u64);
        }
        assert_eq!(
            state.forget(&mut |member| member == "m1"),
            0,
            "nothing left to forget"
        );
    }

    /// A class whose backlog arrives in a burst behind its partition's clock: read in one
    /// batch, split in two with a sweep between, or restored from a checkpoint mid-burst, its
    /// events get the same verdicts.
    #[test]
    fn finality_by_event_time_does_not_depend_on_where_batches_cut_a_run() {
        let rules = Rules {
            class_idle_timeout_ms: 20_000,
            ..Rules::default()
        };
        let t0 = 1_764_090_000_000;
        let events = || -> Vec<PerformanceEvent> {
            let mut events = Vec::new();
            // Class-2 runs a minute ahead and sets the partition's clock.
            for i in 0..10 {
                let mut ahead = sample(&format!("x{i}"), i);
                ahead.class_id = Arc::from("class-2");
                ahead.event_time_ms = t0 + 60_000 + i as i64 * 1_000;
                events.push(ahead);
            }
            // Class-1's backlog: 30 events, 2 s apart, from the minute before.
            for i in 0..30 {
                let mut behind = sample(&format!("b{i}"), 10 + i);
                behind.event_time_ms = t0 + i as i64 * 2_000;
                events.push(behind);
            }
            events
        };
        let verdicts = |events: &[PerformanceEvent]| -> Vec<Verdict> {
            events.iter().map(|e| e.verdict).collect()
        };
        let mut whole = events();
        let mut state = PartitionState::new("events/0".to_owned());
        state.apply(&mut whole, 39, &rules, 0);

        let mut split = events();
        let mut state = PartitionState::new("events/0".to_owned());
        let (first, second) = split.split_at_mut(15);
        state.apply(first, 14, &rules, 0);
        state.sweep(&rules, None);
        let mut restored = PartitionState::decode(&state.encode(), 0).unwrap();
        restored.apply(second, 39, &rules, 0);
        assert_eq!(verdicts(&split), verdicts(&whole));
        assert!(
            verdicts(&whole).iter().all(|v| *v == Verdict::Counted),
            "one run: the backlog is counted"
        );
    }

    /// A child shard takes over exactly the classes whose key hashes into its range, open
    /// ones open (with the ids they counted) and final ones final.
    #[test]
    fn a_child_partition_inherits_the_classes_in_its_hash_range() {
        use md5::{Digest, Md5};
        let rules = Rules::default();
        let mut parent = PartitionState::new("events/0".to_owned());
        let mut events: Vec<PerformanceEvent> =
            (0..4).map(|i| sample(&format!("a{i}"), i)).collect();
        for (i, e) in events.iter_mut().enumerate().skip(2) {
            e.class_id = Arc::from("class-2");
            e.event_id = format!("b{i}").into();
        }
        parent.apply(&mut events, 3, &rules, 0);
        parent
            .finalised
            .insert("studio-1:class-9".to_owned(), FinalClass::default());
        let hash = |key: &str| u128::from_be_bytes(Md5::digest(key.as_bytes()).into());
        let (one, two) = (hash("studio-1:class-1"), hash("studio-1:class-2"));
        // A range holding class-1 and not class-2.
        let range = if one < two {
            (0, one)
        } else {
            (one, u128::MAX)
        };
        let mut child = PartitionState::new("events/2".to_owned());
        assert_eq!(
            child.inherit(PartitionState::decode(&parent.encode(), 0).unwrap(), range),
            1
        );
        assert!(child.classes.contains_key("studio-1:class-1"));
        assert!(!child.classes.contains_key("studio-1:class-2"));
        assert_eq!(child.clock_ms, parent.clock_ms);
        assert_eq!(
            child.finalised.contains_key("studio-1:class-9"),
            (range.0..=range.1).contains(&hash("studio-1:class-9"))
        );
        // A retry of an event the parent counted is a duplicate in the child.
        let mut retry = vec![sample("a1", 10)];
        let (tally, _) = child.apply(&mut retry, 10, &rules, 0);
        assert_eq!(tally.duplicate, 1);
    }

    /// A parent whose class became final sealed its ids into a segment it may not have
    /// written: the child that takes the class over writes it, and finds a late copy there.
    #[test]
    fn a_child_partition_takes_over_the_ids_its_parent_sealed() {
        let rules = Rules::default();
        let mut parent = PartitionState::new("events/0".to_owned());
        let mut events: Vec<PerformanceEvent> =
            (0..4).map(|i| sample(&format!("a{i}"), i)).collect();
        parent.apply(&mut events, 3, &rules, 0);
        parent.finalise_all(&rules);
        assert!(parent
            .outbox
            .iter()
            .any(|o| matches!(o, Outgoing::Ids { ids, .. } if ids.len() == 4)));
        let mut child = PartitionState::new("events/2".to_owned());
        child.inherit(
            PartitionState::decode(&parent.encode(), 0).unwrap(),
            (0, u128::MAX),
        );
        assert!(child
            .outbox
            .iter()
            .any(|o| matches!(o, Outgoing::Ids { ids, .. } if ids.len() == 4)));
        let mut late = vec![sample("a2", 20), sample("new", 21)];
        let (tally, _) = child.apply(&mut late, 21, &rules, 0);
        assert_eq!((tally.duplicate, tally.late), (1, 1));
        assert_eq!(late[0].verdict, Verdict::Duplicate);
    }

    /// A visitor that handed its part over seals the ids it counted, so a copy that still
    /// comes to it is a duplicate, whether the segment is in its outbox or already written.
    #[test]
    fn a_visitor_finds_copies_of_the_part_it_handed_over() {
        let rules = Rules::default();
        let mut visitor = PartitionState::new("events/1".to_owned());
        visitor.place = Some(Place::of("kafka", "events", 1));
        visitor
            .roles
            .insert("studio-1:class-1".to_owned(), Role::Visitor(0));
        let mut events: Vec<PerformanceEvent> =
            (0..4).map(|i| sample(&format!("v{i}"), i)).collect();
        visitor.apply(&mut events, 3, &rules, 0);
        visitor.finalise_all(&rules);
        assert_eq!(visitor.take_handed_over(), 1);
        let mut copy = vec![sample("v1", 10)];
        visitor.apply(&mut copy, 10, &rules, 0);
        assert_eq!(copy[0].verdict, Verdict::Duplicate);
        // Written: the copy is looked for in the class's segments.
        visitor.outbox.clear();
        let mut copy = vec![sample("v2", 11)];
        visitor.apply(&mut copy, 11, &rules, 0);
        assert_eq!(copy[0].verdict, Verdict::Late);
        let unconfirmed = visitor.take_unconfirmed();
        assert_eq!(unconfirmed.len(), 1);
        assert_eq!(unconfirmed[0].events, [0]);
    }

    /// A final class costs the checkpoint its memory only (its ids are sealed): far under
    /// 2 KB, however many events it had.
    #[test]
    fn a_final_class_adds_little_to_the_checkpoint() {
        let rules = Rules::default();
        let mut state = PartitionState::new("events/0".to_owned());
        let empty = state.encode().len();
        let classes = 100;
        for class in 0..classes {
            let mut events: Vec<PerformanceEvent> = (0..500)
                .map(|i| {
                    let mut e = sample(&format!("class-{class}-{i}"), class * 500 + i);
                    e.class_id = Arc::from(format!("class-{class}"));
                    e
                })
                .collect();
            let last = events.last().unwrap().offset;
            state.apply(&mut events, last, &rules, 0);
        }
        let sealed_ids = |outbox: &[Outgoing]| -> usize {
            outbox
                .iter()
                .map(|o| match o {
                    Outgoing::Ids { ids, .. } => ids.len(),
                    _ => 0,
                })
                .sum()
        };
        state.finalise_all(&rules);
        assert_eq!(sealed_ids(&state.outbox), classes as usize * 500);
        // The checkpoint after the one that wrote them.
        state.outbox.clear();
        state.left_out.clear();
        let per_class = (state.encode().len() - empty) / classes as usize;
        assert!(per_class < 2_048, "{per_class} bytes a final class");
        assert_eq!(state.finalised.len(), classes as usize);
    }

    #[test]
    fn a_replay_gives_left_out_events_their_first_verdict() {
        let rules = Rules::default();
        let mut state = PartitionState::new("events/0".to_owned());
        // Offset 3 repeats the event of offset 1 (a producer retry).
        let mut first: Vec<PerformanceEvent> = [("a", 0), ("b", 1), ("c", 2), ("b", 3), ("d", 4)]
            .iter()
            .map(|(id, offset)| sample(id, *offset))
            .collect();
        let (tally, _) = state.apply(&mut first, 4, &rules, 0);
        assert_eq!((tally.counted, tally.duplicate), (4, 1));
        let verdicts: Vec<Verdict> = first.iter().map(|e| e.verdict).collect();

        // Restored from its checkpoint, the state meets positions 1..=4 again (the committed
        // position was 1): both copies of "b" are in the replay, and only the second is left
        // out, as the first time.
        let mut restored = PartitionState::decode(&state.encode(), 0).unwrap();
        let mut replay: Vec<PerformanceEvent> = first[1..]
            .iter()
            .map(|e| sample(&e.event_id, e.offset))
            .collect();
        let (tally, _) = restored.apply(&mut replay, 4, &rules, 0);
        assert_eq!(tally.replayed, 4);
        let replayed: Vec<Verdict> = replay.iter().map(|e| e.verdict).collect();
        assert_eq!(replayed, verdicts[1..].to_vec());
        assert_eq!(replayed[2], Verdict::Duplicate);
    }
}
