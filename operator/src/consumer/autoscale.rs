//! Lag-driven autoscaling (pure): how many pods an autoscaled AuditConsumer should run, from
//! the durable consumer's lag as NATS's JetStream API reports it (answered by the consumer's
//! leader, with the user's credentials; never the monitoring port's guess).
//!
//! The algorithm is the HPA's: `ceil(lag / target)` pods, unchanged within a tolerance,
//! stabilized per direction (scaling up follows the lowest recommendation of its window,
//! scaling down the highest of its), rate-limited per direction (one step per period, of at
//! most `max(pods, percent of current)`), and clamped to `[min, max]`.
//!
//! Safe by construction: the decision starts from the last one (`status.desiredReplicas`,
//! persisted), so an operator restart or a new leader changes nothing by itself; a process
//! that has observed a consumer for less than a direction's window does not move that way
//! (a lost history delays scaling down by one window, it never flaps); and a lag that cannot
//! be trusted (unreadable, or a durable consumer recreated out from under the operator,
//! whose lag counts the whole stream again) holds the last decision.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::{
    crd::consumer::{AutoscalingSettings, ScalingRules},
    duration,
    error::{Error, Result},
};

/// The lag one pod is meant to carry when the spec does not say.
pub const DEFAULT_TARGET_LAG: u64 = 1000;

/// Autoscaling as the spec asks for it, with the defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub min: i32,
    pub max: i32,
    pub target_lag: u64,
    /// A fraction: 0.1 for 10%.
    pub tolerance: f64,
    pub up: Rules,
    pub down: Rules,
}

/// How fast one direction moves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub window: Duration,
    /// Most pods per step (0: only `percent` limits it).
    pub pods: i32,
    pub percent: i32,
    pub period: Duration,
}

impl Policy {
    pub fn new(spec: &AutoscalingSettings) -> Result<Self> {
        let min = spec.min_replicas.unwrap_or(1);
        if !(0..=spec.max_replicas).contains(&min) || spec.max_replicas < 1 {
            return Err(Error::InvalidSpec(format!(
                "spec.autoscaling: minReplicas ({min}) must be between 0 and maxReplicas ({})",
                spec.max_replicas
            )));
        }
        let target_lag = spec
            .target_lag_per_replica
            .map_or(Ok(DEFAULT_TARGET_LAG), u64::try_from)
            .ok()
            .filter(|target| *target > 0)
            .ok_or_else(|| {
                Error::InvalidSpec("spec.autoscaling.targetLagPerReplica must be at least 1".into())
            })?;
        let up = Rules {
            window: Duration::ZERO,
            pods: 4,
            percent: 100,
            period: Duration::from_secs(15),
        };
        let down = Rules {
            window: Duration::from_secs(300),
            pods: 0,
            percent: 100,
            period: Duration::from_secs(15),
        };
        Ok(Self {
            min,
            max: spec.max_replicas,
            target_lag,
            tolerance: f64::from(spec.tolerance_percent.unwrap_or(10).clamp(0, 100)) / 100.0,
            up: rules("scaleUp", spec.scale_up.as_ref(), up)?,
            down: rules("scaleDown", spec.scale_down.as_ref(), down)?,
        })
    }
}

/// `spec`'s rules, each field defaulting to `defaults`'.
fn rules(field: &str, spec: Option<&ScalingRules>, defaults: Rules) -> Result<Rules> {
    let Some(spec) = spec else {
        return Ok(defaults);
    };
    let parse = |name: &str, text: Option<&String>, default: Duration| {
        text.map_or(Ok(default), |text| {
            duration::parse(text)
                .map_err(|e| Error::InvalidSpec(format!("spec.autoscaling.{field}.{name}: {e}")))
        })
    };
    Ok(Rules {
        window: parse(
            "stabilizationWindow",
            spec.stabilization_window.as_ref(),
            defaults.window,
        )?,
        pods: spec.pods.unwrap_or(defaults.pods).max(0),
        percent: spec.percent.unwrap_or(defaults.percent).max(0),
        period: parse("period", spec.period.as_ref(), defaults.period)?,
    })
}

/// A direction of change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    /// The Event reason and `status.autoscaling.lastScaleDirection`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Up => "ScaledUp",
            Self::Down => "ScaledDown",
        }
    }

    pub fn from_reason(reason: &str) -> Option<Self> {
        [Self::Up, Self::Down]
            .into_iter()
            .find(|d| d.reason() == reason)
    }
}

/// Why the lag is not acted on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The durable consumer on NATS was created at `created`, after the one whose lag was
    /// trusted (`trusted`): its lag counts the stream again from its deliver policy. Trusted
    /// again at `until`.
    ConsumerRecreated {
        created: Timestamp,
        trusted: Timestamp,
        until: Timestamp,
    },
}

/// What the autoscaler decided in one pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The pods to run.
    pub replicas: i32,
    /// The pods the previous decision ran.
    pub previous: i32,
    /// The lag this pass observed.
    pub lag: u64,
    /// What the lag alone asks for (after tolerance and clamping), before stabilization and
    /// rate limits.
    pub recommendation: i32,
    /// Why the lag was not acted on, if it was not.
    pub hold: Option<Hold>,
    /// The lag asks for more than `max` pods.
    pub at_maximum: bool,
}

impl Decision {
    pub fn direction(&self) -> Option<Direction> {
        match self.replicas.cmp(&self.previous) {
            std::cmp::Ordering::Greater => Some(Direction::Up),
            std::cmp::Ordering::Less => Some(Direction::Down),
            std::cmp::Ordering::Equal => None,
        }
    }

    /// Why the number of pods changed, for the Event and the status.
    pub fn explanation(&self, policy: &Policy) -> String {
        format!(
            "lag {} (events pending plus acknowledgements pending) for {} pod(s) at a target of {} per pod: {} -> {} pod(s)",
            self.lag, self.previous, policy.target_lag, self.previous, self.replicas
        )
    }
}

/// What this operator process remembers of one consumer's recommendations, for the
/// stabilization windows. Lost on restart, on purpose: see the module's comment.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    /// When this process first observed the consumer.
    pub since: Timestamp,
    /// Recent recommendations, oldest first.
    pub recommendations: VecDeque<(Timestamp, i32)>,
}

impl History {
    pub fn new(since: Timestamp) -> Self {
        Self {
            since,
            recommendations: VecDeque::new(),
        }
    }
}

/// The histories of every autoscaled consumer, by UID.
#[derive(Default)]
pub struct Histories(Mutex<HashMap<String, History>>);

impl Histories {
    /// Runs `f` on `uid`'s history, creating it as of `now` if this process has none.
    pub fn with<T>(&self, uid: &str, now: Timestamp, f: impl FnOnce(&mut History) -> T) -> T {
        let mut histories = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(histories
            .entry(uid.to_owned())
            .or_insert_with(|| History::new(now)))
    }

    pub fn forget(&self, uid: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
    }
}

/// The last change of the number of pods, from the status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastScale {
    pub direction: Direction,
    pub at: Timestamp,
}

/// What the lag alone asks for: `ceil(lag / target)` pods, the current number while the lag
/// per pod is within the tolerance of the target, clamped to `[min, max]`.
pub fn recommend(policy: &Policy, current: i32, lag: u64) -> (i32, bool) {
    let wanted = lag.div_ceil(policy.target_lag);
    let within_tolerance = current > 0 && {
        let ratio = lag as f64 / (f64::from(current) * policy.target_lag as f64);
        (ratio - 1.0).abs() <= policy.tolerance
    };
    let wanted = if within_tolerance {
        i64::from(current)
    } else {
        i64::try_from(wanted).unwrap_or(i64::MAX)
    };
    let at_maximum = wanted > i64::from(policy.max);
    let clamped = wanted.clamp(i64::from(policy.min), i64::from(policy.max));
    (i32::try_from(clamped).unwrap_or(policy.max), at_maximum)
}

/// Whether the durable consumer whose lag is observed is the one trusted before
/// (`trusted`, its creation time as the status recorded it): a consumer created since was
/// recreated outside the operator's decisions, and its lag is not trusted for one
/// scale-down window. `None`: trusted.
pub fn recreated(
    policy: &Policy,
    created: Timestamp,
    trusted: Option<Timestamp>,
    now: Timestamp,
) -> Option<Hold> {
    let trusted = trusted?;
    if created <= trusted {
        return None;
    }
    let window = SignedDuration::try_from(policy.down.window).unwrap_or(SignedDuration::MAX);
    let until = created.checked_add(window).unwrap_or(Timestamp::MAX);
    (now < until).then_some(Hold::ConsumerRecreated {
        created,
        trusted,
        until,
    })
}

/// The decision for one observation of `lag` (or a hold), given the previous decision
/// `current`, this process's `history` (updated), and the last change.
pub fn decide(
    policy: &Policy,
    current: i32,
    lag: u64,
    hold: Option<Hold>,
    history: &mut History,
    last: Option<LastScale>,
    now: Timestamp,
) -> Decision {
    let (recommendation, at_maximum) = recommend(policy, current, lag);
    let decision = |replicas: i32, hold: Option<Hold>| Decision {
        replicas,
        previous: current,
        lag,
        recommendation,
        hold,
        at_maximum,
    };
    if hold.is_some() {
        // Only min and max still apply: they are the user's, not the lag's.
        return decision(current.clamp(policy.min, policy.max), hold);
    }
    history.recommendations.push_back((now, recommendation));
    let keep = policy.up.window.max(policy.down.window);
    while history
        .recommendations
        .front()
        .is_some_and(|(at, _)| elapsed(*at, now) > keep)
    {
        history.recommendations.pop_front();
    }
    let within = |window: Duration| {
        history
            .recommendations
            .iter()
            .filter(move |(at, _)| elapsed(*at, now) <= window)
            .map(|(_, r)| *r)
    };
    let observed = elapsed(history.since, now);
    // A direction whose window this process has not observed for does not move yet.
    let up = if observed < policy.up.window {
        current
    } else {
        within(policy.up.window).min().unwrap_or(current)
    };
    let down = if observed < policy.down.window {
        current
    } else {
        within(policy.down.window).max().unwrap_or(current)
    };
    let stabilized = if up > current {
        up
    } else if down < current {
        down
    } else {
        current
    };
    let limited = rate_limited(policy, current, stabilized, last, now);
    decision(limited.clamp(policy.min, policy.max), None)
}

/// `wanted` within one step of `current`, and no step at all while the last one in the same
/// direction is less than a period ago.
fn rate_limited(
    policy: &Policy,
    current: i32,
    wanted: i32,
    last: Option<LastScale>,
    now: Timestamp,
) -> i32 {
    let (direction, rules) = match wanted.cmp(&current) {
        std::cmp::Ordering::Greater => (Direction::Up, &policy.up),
        std::cmp::Ordering::Less => (Direction::Down, &policy.down),
        std::cmp::Ordering::Equal => return current,
    };
    if last.is_some_and(|last| last.direction == direction && elapsed(last.at, now) < rules.period)
    {
        return current;
    }
    let by_percent = (i64::from(current) * i64::from(rules.percent) + 99) / 100;
    let step = i32::try_from(by_percent.max(i64::from(rules.pods)))
        .unwrap_or(i32::MAX)
        .max(1);
    match direction {
        Direction::Up => wanted.min(current.saturating_add(step)),
        Direction::Down => wanted.max(current.saturating_sub(step)),
    }
}

/// Time from `since` to `now`, zero if `since` is later.
fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + second).unwrap()
    }

    fn policy(yaml: &str) -> Policy {
        Policy::new(&serde_yaml::from_str(yaml).unwrap()).unwrap()
    }

    fn hpa_like() -> Policy {
        policy("{minReplicas: 0, maxReplicas: 10, targetLagPerReplica: 100}")
    }

    /// An operator that has been watching for an hour.
    fn seasoned() -> History {
        History::new(at(-3600))
    }

    #[test]
    fn defaults_are_the_hpa_defaults() {
        let defaults = policy("{maxReplicas: 5}");
        assert_eq!(
            (defaults.min, defaults.max, defaults.target_lag),
            (1, 5, 1000)
        );
        assert!((defaults.tolerance - 0.1).abs() < f64::EPSILON);
        assert_eq!(defaults.up.window, Duration::ZERO);
        assert_eq!((defaults.up.pods, defaults.up.percent), (4, 100));
        assert_eq!(defaults.down.window, Duration::from_secs(300));
        assert_eq!(defaults.down.period, Duration::from_secs(15));
        let custom = policy("{maxReplicas: 5, scaleDown: {stabilizationWindow: 30s}}");
        assert_eq!(custom.down.window, Duration::from_secs(30));
        assert_eq!(
            custom.down.percent, 100,
            "the other fields keep their defaults"
        );
    }

    #[test]
    fn recommendation_is_lag_over_target_within_tolerance_and_bounds() {
        let p = hpa_like();
        assert_eq!(recommend(&p, 1, 0), (0, false));
        assert_eq!(recommend(&p, 0, 1), (1, false));
        assert_eq!(recommend(&p, 2, 450), (5, false));
        // 2 pods at 210: 5% over the target, within 10%: stay.
        assert_eq!(recommend(&p, 2, 210), (2, false));
        assert_eq!(recommend(&p, 2, 5000), (10, true));
        let floor = policy("{minReplicas: 2, maxReplicas: 10, targetLagPerReplica: 100}");
        assert_eq!(recommend(&floor, 3, 0), (2, false));
    }

    #[test]
    fn scales_up_at_once_within_the_rate_limit() {
        let p = hpa_like();
        let mut history = seasoned();
        let d = decide(&p, 1, 5000, None, &mut history, None, at(0));
        // One step: max(4 pods, 100% of 1) = 4 more.
        assert_eq!((d.replicas, d.direction()), (5, Some(Direction::Up)));
        assert!(d.at_maximum);
        let last = Some(LastScale {
            direction: Direction::Up,
            at: at(0),
        });
        let d = decide(&p, 5, 5000, None, &mut history, last, at(5));
        assert_eq!(d.replicas, 5, "no second step within the period");
        let d = decide(&p, 5, 5000, None, &mut history, last, at(15));
        assert_eq!(d.replicas, 10);
    }

    #[test]
    fn scales_from_zero_on_the_first_pending_event() {
        let p = hpa_like();
        let d = decide(&p, 0, 1, None, &mut History::new(at(0)), None, at(0));
        assert_eq!(d.replicas, 1, "even a process that just started");
    }

    #[test]
    fn scales_down_only_after_a_whole_window_of_lower_recommendations() {
        let p = policy(
            "{minReplicas: 0, maxReplicas: 10, targetLagPerReplica: 100, scaleDown: {stabilizationWindow: 60s}}",
        );
        let mut history = seasoned();
        assert_eq!(
            decide(&p, 4, 400, None, &mut history, None, at(0)).replicas,
            4
        );
        assert_eq!(
            decide(&p, 4, 0, None, &mut history, None, at(30)).replicas,
            4
        );
        assert_eq!(
            decide(&p, 4, 0, None, &mut history, None, at(59)).replicas,
            4
        );
        // The 4 of at(0) left the window.
        let d = decide(&p, 4, 0, None, &mut history, None, at(61));
        assert_eq!((d.replicas, d.direction()), (0, Some(Direction::Down)));
    }

    #[test]
    fn a_short_lull_removes_no_pod() {
        let p = policy(
            "{minReplicas: 1, maxReplicas: 10, targetLagPerReplica: 100, scaleDown: {stabilizationWindow: 60s}}",
        );
        let mut history = seasoned();
        for (second, lag) in [(0, 400), (20, 0), (40, 400), (70, 0), (90, 400)] {
            let d = decide(&p, 4, lag, None, &mut history, None, at(second));
            assert_eq!(d.replicas, 4, "at {second}s");
        }
    }

    #[test]
    fn a_new_process_waits_a_window_before_scaling_down() {
        let p = policy(
            "{minReplicas: 0, maxReplicas: 10, targetLagPerReplica: 100, scaleDown: {stabilizationWindow: 60s}}",
        );
        // A restarted operator or a new leader: no history, the persisted decision is 4.
        let mut history = History::new(at(0));
        assert_eq!(
            decide(&p, 4, 0, None, &mut history, None, at(0)).replicas,
            4
        );
        assert_eq!(
            decide(&p, 4, 0, None, &mut history, None, at(59)).replicas,
            4
        );
        assert_eq!(
            decide(&p, 4, 0, None, &mut history, None, at(60)).replicas,
            0
        );
    }

    #[test]
    fn a_hold_keeps_the_last_decision_whatever_the_lag() {
        let p = hpa_like();
        let hold = Hold::ConsumerRecreated {
            created: at(10),
            trusted: at(0),
            until: at(310),
        };
        let mut history = seasoned();
        let d = decide(
            &p,
            2,
            1_000_000,
            Some(hold.clone()),
            &mut history,
            None,
            at(20),
        );
        assert_eq!((d.replicas, d.hold), (2, Some(hold)));
        assert!(
            history.recommendations.is_empty(),
            "a held lag is no recommendation"
        );
    }

    #[test]
    fn a_recreated_consumer_is_held_for_one_scale_down_window() {
        let p = policy("{maxReplicas: 10, scaleDown: {stabilizationWindow: 60s}}");
        assert_eq!(
            recreated(&p, at(0), None, at(1)),
            None,
            "the first one is trusted"
        );
        assert_eq!(recreated(&p, at(0), Some(at(0)), at(1)), None);
        assert!(recreated(&p, at(100), Some(at(0)), at(120)).is_some());
        assert_eq!(recreated(&p, at(100), Some(at(0)), at(160)), None);
    }

    #[test]
    fn scale_down_steps_follow_the_percentage() {
        let p = policy(
            "{minReplicas: 0, maxReplicas: 10, targetLagPerReplica: 100, scaleDown: {stabilizationWindow: 0s, percent: 50}}",
        );
        let mut history = seasoned();
        assert_eq!(
            decide(&p, 8, 0, None, &mut history, None, at(0)).replicas,
            4
        );
        assert_eq!(
            decide(&p, 1, 0, None, &mut history, None, at(0)).replicas,
            0
        );
    }

    #[test]
    fn bounds_changed_by_the_user_apply_at_once() {
        let p = policy("{minReplicas: 3, maxReplicas: 10}");
        let mut history = History::new(at(0));
        assert_eq!(
            decide(&p, 1, 0, None, &mut history, None, at(0)).replicas,
            3
        );
        let p = policy("{minReplicas: 0, maxReplicas: 2}");
        assert_eq!(
            decide(&p, 5, 100_000, None, &mut history, None, at(1)).replicas,
            2
        );
    }

    #[test]
    fn invalid_bounds_are_a_clear_error() {
        let spec: AutoscalingSettings =
            serde_yaml::from_str("{minReplicas: 4, maxReplicas: 2}").unwrap();
        let error = Policy::new(&spec).unwrap_err().to_string();
        assert!(error.contains("minReplicas (4)"), "{error}");
    }
}
