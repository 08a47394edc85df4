//! A partition's history for checkpoint tests: one run of events with every kind of state a
//! checkpoint holds (open classes, a class closing at its home, a part handed to another
//! home, results waiting in the outbox, duplicates and late events remembered for replays),
//! cut at a fixed point where the state is checkpointed.
//!
//! `tests/fixtures/checkpoints/v{N}.postcard.zst` is the checkpoint at that point as format
//! `N` wrote it; the tests of [`super::checkpoint`] restore every one of them and compare the
//! run's results with a run from scratch.

use std::sync::Arc;

use super::directory::{Place, Role};
use super::partition::PartitionState;
use super::reference::event;
use super::Rules;
use crate::event::{EventType, Metrics, PerformanceEvent};
use crate::profile::{Profile, SetBy, Sex};

/// The partition's name in results.
pub const PARTITION: &str = "events/0";

/// The directory of fixture checkpoints.
pub fn directory() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoints")
}

/// The rules of the run: a short idle timeout, so that classes become final inside it.
pub fn rules() -> Rules {
    Rules {
        class_idle_timeout_ms: 120_000,
        allowed_lateness_ms: 60_000,
        ..Rules::default()
    }
}

const T0: i64 = 1_764_090_000_000;

/// An event of `class` (in studio-1) at `seconds` after the start.
fn at(
    class: &str,
    id: &str,
    member: &str,
    seconds: i64,
    kind: EventType,
    offset: u64,
) -> PerformanceEvent {
    let metrics = match kind {
        EventType::HeartRate => Metrics {
            bpm: Some(120.0 + (seconds % 60) as f64),
            ..Metrics::default()
        },
        EventType::Treadmill => Metrics {
            speed_kph: Some(9.5),
            distance_m: Some(seconds as f64 * 2.6),
            calories: Some(seconds as f64 * 0.2),
            ..Metrics::default()
        },
        _ => Metrics {
            exercise: Some("squat".into()),
            reps: Some(10),
            weight_kg: Some(40.0),
            ..Metrics::default()
        },
    };
    let mut event = event(id, member, T0 + seconds * 1_000, kind, metrics, offset);
    event.class_id = Arc::from(class);
    event
}

/// The whole run, in partition order (offsets 0, 1, ...), and where it is cut.
pub fn events() -> (Vec<PerformanceEvent>, usize) {
    let mut events: Vec<PerformanceEvent> = Vec::new();
    let mut cut = 0;
    let mut push = |class: &str, id: String, member: &str, seconds: i64, kind: EventType| {
        let offset = events.len() as u64;
        events.push(at(class, &id, member, seconds, kind, offset));
        events.len()
    };
    // Three classes at once: class-1 (home here), class-2 (a visitor of partition 1's class),
    // class-4 (home here, still closing at the cut).
    for step in 0..30 {
        let s = step * 4;
        push(
            "class-1",
            format!("c1-hr-a-{step}"),
            "m1",
            s,
            EventType::HeartRate,
        );
        push(
            "class-1",
            format!("c1-hr-b-{step}"),
            "m2",
            s + 1,
            EventType::HeartRate,
        );
        push(
            "class-1",
            format!("c1-tm-{step}"),
            "m1",
            s + 2,
            EventType::Treadmill,
        );
        push(
            "class-2",
            format!("c2-hr-{step}"),
            "m3",
            s,
            EventType::HeartRate,
        );
        push(
            "class-4",
            format!("c4-fw-{step}"),
            "m4",
            s + 3,
            EventType::FreeWeights,
        );
    }
    // A producer retry (a duplicate) and an event far behind its class (late).
    push(
        "class-1",
        "c1-hr-a-27".into(),
        "m1",
        108,
        EventType::HeartRate,
    );
    push(
        "class-4",
        "c4-old".into(),
        "m4",
        -600,
        EventType::FreeWeights,
    );
    // class-3 starts well after the others: its clock makes them due.
    for step in 0..20 {
        cut = push(
            "class-3",
            format!("c3-hr-{step}"),
            "m5",
            600 + step * 5,
            EventType::HeartRate,
        );
    }
    for step in 20..40 {
        push(
            "class-3",
            format!("c3-hr-{step}"),
            "m5",
            600 + step * 5,
            EventType::HeartRate,
        );
        push(
            "class-3",
            format!("c3-tm-{step}"),
            "m6",
            600 + step * 5,
            EventType::Treadmill,
        );
    }
    // A retry of an event before the cut, and one of a class final before it.
    push("class-3", "c3-hr-3".into(), "m5", 615, EventType::HeartRate);
    push(
        "class-1",
        "c1-hr-a-29".into(),
        "m1",
        116,
        EventType::HeartRate,
    );
    (events, cut)
}

/// A fresh state of the fixture's partition: in the class directory as partition 0.
pub fn state() -> PartitionState {
    let mut state = PartitionState::new(PARTITION.to_owned());
    prepare(&mut state);
    state
}

/// What the stage sets on a state it creates or restores.
pub fn prepare(state: &mut PartitionState) {
    state.place = Some(Place::of("kafka", "events", 0));
}

/// Runs `events` (consecutive, from the partition's order) into `state` as the stage would
/// between two checkpoints: the roles claimed for new classes, the batch applied, m1's
/// profile bound, a sweep,
/// the closing of class-1 once it is due (its visitors handed nothing), and the ids sealed.
pub fn apply(state: &mut PartitionState, events: &[PerformanceEvent]) {
    apply_in(state, events, 37, &mut |_| {});
}

/// [`apply`] in batches of `batch_size` events, `after` called at the end of each batch.
pub fn apply_in(
    state: &mut PartitionState,
    events: &[PerformanceEvent],
    batch_size: usize,
    after: &mut dyn FnMut(&mut PartitionState),
) {
    let rules = rules();
    for class in ["class-1", "class-3", "class-4"] {
        let key = format!("studio-1:{class}");
        if state.is_new_class(&key) {
            state.roles.insert(key, Role::Home);
        }
    }
    if state.is_new_class("studio-1:class-2") {
        state
            .roles
            .insert("studio-1:class-2".into(), Role::Visitor(1));
    }
    for batch in events.chunks(batch_size) {
        let mut batch = batch.to_vec();
        let last = batch.last().map_or(0, |e| e.offset);
        state.apply(&mut batch, last, &rules, 0);
        for (key, member) in state.take_unbound() {
            if &*member == "m1" {
                state.bind_profile(&key, &member, profile_of_m1());
            }
        }
        state.sweep(&rules, None);
        if state.closing.contains_key("studio-1:class-1") {
            state.close("studio-1:class-1", Vec::new(), &rules);
        }
        state.seal_ids(super::segment::SEAL_AT);
        after(state);
    }
}

/// The profile bound to m1 when the stage meets them (the others have none): every field
/// set, and a maximum equal to the default, so that results of formats before profiles
/// existed are the same but for the fields naming it.
pub fn profile_of_m1() -> Profile {
    Profile {
        birth_year: Some(1961),
        sex: Some(Sex::Female),
        weight_kg: Some(64.5),
        resting_hr: Some(58),
        hr_max: Some((190, SetBy::Manual)),
        hr_max_observed: Some(185),
        alias: Some("Ann K.".into()),
        leaderboard: true,
    }
}

/// Ends the run: every class final, the closing ones closed.
pub fn finish(state: &mut PartitionState) {
    let rules = rules();
    state.finalise_all(&rules);
    let closing: Vec<String> = state.closing.keys().cloned().collect();
    for key in closing {
        state.close(&key, Vec::new(), &rules);
    }
}

/// The final result of the fixture's class-1, where m1 has an alias (for the live record's
/// tests).
pub fn final_result_with_alias() -> super::output::ClassResult {
    let mut state = state();
    let (events, _) = events();
    apply(&mut state, &events);
    finish(&mut state);
    state
        .outbox
        .iter()
        .find_map(|outgoing| match outgoing {
            super::output::Outgoing::Result(result)
                if result.members.iter().any(|m| m.alias.is_some()) =>
            {
                Some((**result).clone())
            }
            _ => None,
        })
        .expect("a final class with m1 in it")
}
