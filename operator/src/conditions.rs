//! kstatus conditions (`Ready`, `Reconciling`, `Stalled`) computed from the outcome of one
//! reconciliation, and any other condition from its typed [`Value`]. Pure: the caller supplies
//! the clock, and a condition whose status did not change keeps its `lastTransitionTime`, so an
//! unchanged outcome yields an identical list and no status write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::error::Error;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// The status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }

    /// Whether `condition` has this status.
    pub fn of(self, condition: &Condition) -> bool {
        condition.status == self.as_str()
    }
}

/// What a reconciliation decides about one condition; [`condition`] adds the bookkeeping
/// (type, generation, transition time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub status: Status,
    pub reason: String,
    pub message: String,
}

impl Value {
    pub fn new(status: Status, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// False for `error`: its reason, and its message, which says what to do.
    pub fn failed(error: &Error) -> Self {
        Self::new(Status::False, error.reason(), error.to_string())
    }
}

/// Where a resource stands after a reconciliation, in kstatus terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The desired state is in place.
    Ready,
    /// Not there yet; the operator is working on it or retrying on its own.
    Reconciling,
    /// Not there, and it will not get there until a user changes something.
    Stalled,
}

/// The outcome of one reconciliation: its phase, with a CamelCase reason and a message that
/// says what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub phase: Phase,
    pub reason: String,
    pub message: String,
}

impl Outcome {
    /// The outcome of a reconciliation that failed with `error`: `Stalled` when a user has to
    /// act, otherwise `Reconciling` (the operator retries by itself).
    pub fn failed(error: &Error) -> Self {
        Self {
            phase: if error.needs_user_action() {
                Phase::Stalled
            } else {
                Phase::Reconciling
            },
            reason: error.reason().into(),
            message: error.to_string(),
        }
    }
}

/// Whether the status shows `condition_type` True for the object's current `generation`: the
/// spec of this generation had been applied. A change found afterwards was made behind the
/// operator's back (drift), not by the user, whose edits move the generation. A status whose
/// last pass at this generation failed does not count: the change it finds now is the user's
/// edit finally applied.
pub fn held_at_generation(
    conditions: &[Condition],
    condition_type: &str,
    observed_generation: Option<i64>,
    generation: Option<i64>,
) -> bool {
    observed_generation.is_some()
        && observed_generation == generation
        && conditions
            .iter()
            .any(|c| c.type_ == condition_type && Status::True.of(c))
}

/// The three kstatus conditions for `outcome`, carrying over `lastTransitionTime` from
/// `previous` wherever a condition's status is unchanged. Other condition types in `previous`
/// (the AuditConsumer's per-stage conditions) are kept as they are.
pub fn kstatus(
    previous: &[Condition],
    generation: Option<i64>,
    outcome: &Outcome,
    now: &Time,
) -> Vec<Condition> {
    let status_of = |phase: Phase| {
        if outcome.phase == phase {
            Status::True
        } else {
            Status::False
        }
    };
    let desired = [
        (READY, status_of(Phase::Ready)),
        (RECONCILING, status_of(Phase::Reconciling)),
        (STALLED, status_of(Phase::Stalled)),
    ];
    let mut conditions: Vec<Condition> = previous
        .iter()
        .filter(|c| !desired.iter().any(|(type_, _)| c.type_ == *type_))
        .cloned()
        .collect();
    for (type_, status) in desired {
        let value = Value::new(status, &outcome.reason, &outcome.message);
        conditions.push(condition(previous, type_, value, generation, now));
    }
    conditions
}

/// The condition `type_` with `value`, for `generation`. It keeps the `lastTransitionTime` of
/// its namesake in `previous` while its status stays the same.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    value: Value,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && value.status.of(c))
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: value.status.as_str().to_owned(),
        reason: value.reason,
        message: value.message,
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn drift_needs_the_current_generation_to_have_been_applied() {
        let ready = kstatus(&[], Some(3), &outcome(Phase::Ready, "StreamReady"), &at(1));
        let failed = kstatus(
            &[],
            Some(3),
            &outcome(Phase::Reconciling, "NatsUnreachable"),
            &at(1),
        );
        assert!(held_at_generation(&ready, "Ready", Some(3), Some(3)));
        assert!(
            !held_at_generation(&ready, "Ready", Some(2), Some(3)),
            "a newer spec"
        );
        assert!(
            !held_at_generation(&failed, "Ready", Some(3), Some(3)),
            "never applied"
        );
        assert!(!held_at_generation(&[], "Ready", None, None));
    }

    fn outcome(phase: Phase, reason: &str) -> Outcome {
        Outcome {
            phase,
            reason: reason.to_owned(),
            message: format!("{reason} happened"),
        }
    }

    fn find<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
        conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn ready_sets_exactly_one_true_condition() {
        let conditions = kstatus(&[], Some(3), &outcome(Phase::Ready, "StreamReady"), &at(10));
        assert_eq!(find(&conditions, READY).status, "True");
        assert_eq!(find(&conditions, RECONCILING).status, "False");
        assert_eq!(find(&conditions, STALLED).status, "False");
        assert!(conditions.iter().all(|c| c.observed_generation == Some(3)));
        assert!(conditions.iter().all(|c| c.reason == "StreamReady"));
    }

    #[test]
    fn unchanged_outcome_is_identical_including_timestamps() {
        let first = kstatus(&[], Some(1), &outcome(Phase::Ready, "StreamReady"), &at(10));
        let second = kstatus(
            &first,
            Some(1),
            &outcome(Phase::Ready, "StreamReady"),
            &at(99),
        );
        assert_eq!(first, second);
    }

    #[test]
    fn transition_time_moves_only_for_conditions_that_flip() {
        let ready = kstatus(&[], Some(1), &outcome(Phase::Ready, "StreamReady"), &at(10));
        let stalled = kstatus(
            &ready,
            Some(2),
            &outcome(Phase::Stalled, "StreamExists"),
            &at(20),
        );
        assert_eq!(find(&stalled, READY).last_transition_time, at(20));
        assert_eq!(find(&stalled, STALLED).last_transition_time, at(20));
        // Reconciling stayed False: its transition time is the first one.
        assert_eq!(find(&stalled, RECONCILING).last_transition_time, at(10));
        assert_eq!(find(&stalled, READY).reason, "StreamExists");
    }

    #[test]
    fn foreign_condition_types_are_kept() {
        let foreign = Condition {
            type_: "Custom".into(),
            status: "True".into(),
            reason: "Because".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: at(1),
        };
        let conditions = kstatus(
            std::slice::from_ref(&foreign),
            Some(1),
            &outcome(Phase::Reconciling, "NatsUnreachable"),
            &at(5),
        );
        assert_eq!(conditions.len(), 4);
        assert!(conditions.contains(&foreign));
        assert_eq!(find(&conditions, RECONCILING).status, "True");
    }
}
