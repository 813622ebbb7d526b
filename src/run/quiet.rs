//! The part of a run a restart does not need: a poll that changed nothing
//! moves only these fields, so the store may keep them in memory instead
//! of rewriting the record (issue 10: quiet polls).

use super::Run;
use crate::time::Timestamp;

/// The fields a quiet transition changes. A store that keeps a quiet save
/// in memory lays this over the durable record on every read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietState {
    pub polls: u32,
    pub updated_at: Timestamp,
    pub due_at: Option<Timestamp>,
    pub poll_at: Option<Timestamp>,
}

impl Run {
    /// This run's quiet fields.
    pub fn quiet_state(&self) -> QuietState {
        QuietState {
            polls: self.polls,
            updated_at: self.updated_at,
            due_at: self.due_at,
            poll_at: self.poll_at,
        }
    }

    /// Lays quiet fields kept in memory over this (durable) record.
    pub fn with_quiet(mut self, q: QuietState) -> Run {
        self.polls = q.polls;
        self.updated_at = q.updated_at;
        self.due_at = q.due_at;
        self.poll_at = q.poll_at;
        self
    }

    /// Whether `self` differs from `before` (the run as the step loaded
    /// it) in its quiet fields only: then a restart needs nothing of the
    /// change, and [`crate::store::Store::save_quiet`] may keep it in memory.
    pub fn changed_only_quietly(&self, before: &Run) -> bool {
        let q = before.quiet_state();
        self.clone().with_quiet(q) == *before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{RunId, RunSpec};

    #[test]
    fn only_quiet_fields_are_quiet() {
        let now = Timestamp(1_000);
        let before = Run::accepted(RunId::new(), RunSpec::example(), now, Timestamp(9_000));
        let mut after = before.clone();
        after.polls += 1;
        after.updated_at = Timestamp(2_000);
        after.due_at = Some(Timestamp(3_000));
        after.poll_at = Some(Timestamp(3_000));
        assert!(after.changed_only_quietly(&before));
        after.failures = 1;
        assert!(!after.changed_only_quietly(&before));
        let q = before.quiet_state();
        let back = after.clone().with_quiet(q);
        assert_eq!(back.quiet_state(), q);
    }
}
