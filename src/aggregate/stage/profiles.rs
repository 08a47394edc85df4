//! Member profiles bound to members' class state: when a member first appears in a class, and
//! after a restore for every member still without one. A lookup never waits; members whose
//! profile is not known yet wait here and are tried again every tick, their class counting on
//! meanwhile (zones are cut when a result is rendered, so nothing counted is lost).

use super::{AggregateStage, Owned};
use crate::aggregate::output::ClassResult;
use crate::metrics;
use crate::profile::source::Profiles;

/// Binds the profile of every waiting member of `owned` that is known now; forgets members
/// whose class is no longer open here or who have one.
pub(super) fn bind_profiles(profiles: &Profiles, owned: &mut Owned) {
    let before = owned.waiting.len();
    let state = &mut owned.state;
    owned.waiting.retain(|(key, member)| {
        if !state.wants_profile(key, member) {
            return false;
        }
        match profiles.lookup(member) {
            Some(profile) => {
                state.bind_profile(key, member, profile);
                false
            }
            None => true,
        }
    });
    owned.dirty |= owned.waiting.len() != before;
}

impl AggregateStage {
    /// Binds the profiles that became known since the last tick, and reports how many
    /// members wait.
    pub(super) fn bind_waiting(&mut self) {
        let Some(profiles) = &self.profiles else {
            return;
        };
        let mut waiting = 0;
        for owned in self.partitions.values_mut() {
            bind_profiles(profiles, owned);
            waiting += owned.waiting.len();
        }
        metrics::set_profiles_waiting(waiting);
    }

    /// Members of a partition taken up that have no profile (a restored state, an inherited
    /// class) wait for one.
    pub(super) fn wait_for_unbound(&mut self, partition: &crate::ack::PartitionId) {
        if self.profiles.is_none() {
            return;
        }
        if let Some(owned) = self.partitions.get_mut(partition) {
            owned.waiting = owned.state.unbound_members();
        }
    }

    /// Keeps the maximums a final class raised for the members' next classes here.
    pub(super) fn record_raised(&self, result: &ClassResult) {
        let Some(profiles) = &self.profiles else {
            return;
        };
        for member in &result.members {
            if let Some(bpm) = member.hr_max_observed {
                profiles.record_raised(&member.member_id, bpm);
            }
        }
    }
}
