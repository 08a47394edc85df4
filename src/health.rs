//! Readiness of each component, for `/readyz`: sources connected, sinks writable.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Shared readiness board. Components register on start and report as they go.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Component name to `None` (ready) or the reason it is not.
    components: Arc<Mutex<BTreeMap<&'static str, Option<String>>>>,
}

impl Health {
    /// A board with no components (ready).
    pub fn new() -> Health {
        Health::default()
    }

    /// Marks `component` ready.
    pub fn ready(&self, component: &'static str) {
        self.set(component, None);
    }

    /// Marks `component` not ready, with a reason for operators.
    pub fn not_ready(&self, component: &'static str, reason: impl Into<String>) {
        self.set(component, Some(reason.into()));
    }

    fn set(&self, component: &'static str, state: Option<String>) {
        let mut components = self
            .components
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        components.insert(component, state);
    }

    /// Whether every component is ready, and a line per component.
    pub fn report(&self) -> (bool, String) {
        let components = self
            .components
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let all_ready = components.values().all(Option::is_none);
        let lines = components
            .iter()
            .map(|(name, state)| match state {
                None => format!("{name}: ready\n"),
                Some(reason) => format!("{name}: not ready: {reason}\n"),
            })
            .collect();
        (all_ready, lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_component_not_ready_makes_the_process_not_ready() {
        let health = Health::new();
        health.ready("lake");
        health.not_ready("source", "broker unreachable");
        let (ready, text) = health.report();
        assert!(!ready);
        assert!(
            text.contains("source: not ready: broker unreachable"),
            "{text}"
        );
        health.ready("source");
        assert!(health.report().0);
    }
}
