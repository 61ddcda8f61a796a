//! The state of an AuditStream's sources and mirror: observed with one `STREAM.INFO` request
//! (I/O), turned into `status.sources` and the condition `SourcesActive` (pure).
//!
//! The request is made raw, not through the client's typed stream info, because the typed
//! one drops what tells sources apart and what went wrong: each source's `external` prefix
//! (two sources of one name in two domains are two sources) and its `error`.

use std::time::Duration;

use async_nats::jetstream::{self, response::Response};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use serde::Deserialize;

use crate::{
    conditions::{self, Status, Value},
    crd::stream::{AuditStreamStatus, SourceStatus},
};

/// The condition about sources, on an AuditStream with sources or a mirror only.
pub const SOURCES_ACTIVE: &str = "SourcesActive";

/// One source (or the mirror) as `STREAM.INFO` reports it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ObservedSource {
    pub name: String,
    #[serde(default)]
    pub lag: u64,
    /// Nanoseconds since NATS last heard from it; negative when never.
    #[serde(default = "never")]
    pub active: i64,
    #[serde(default)]
    pub external: Option<ObservedExternal>,
    #[serde(default)]
    pub error: Option<ObservedError>,
}

fn never() -> i64 {
    -1
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ObservedExternal {
    #[serde(default)]
    pub api: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ObservedError {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub description: String,
}

/// The sources and the mirror of one stream.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Observed {
    #[serde(default)]
    pub sources: Vec<ObservedSource>,
    #[serde(default)]
    pub mirror: Option<ObservedSource>,
}

/// Asks NATS for the state of stream `name`'s sources and mirror (I/O).
pub async fn observe(js: &jetstream::Context, name: &str) -> Result<Observed, String> {
    let response: Response<Observed> = js
        .request(format!("STREAM.INFO.{name}"), &())
        .await
        .map_err(|e| e.to_string())?;
    match response {
        Response::Ok(observed) => Ok(observed),
        Response::Err { error } => Err(error.to_string()),
    }
}

/// `status.sources` from what was observed (pure): an inactive source keeps the
/// `inactiveSince` of `previous` while it stays inactive, so that an unchanged state writes
/// nothing.
pub fn source_statuses(
    observed: &Observed,
    previous: &[SourceStatus],
    inactive_after: Duration,
    now: Timestamp,
) -> Vec<SourceStatus> {
    let mirror = observed.mirror.iter().map(|m| (m, true));
    let sources = observed.sources.iter().map(|s| (s, false));
    mirror
        .chain(sources)
        .map(|(source, is_mirror)| {
            let origin = origin_of(source);
            let silent = u64::try_from(source.active).ok().map(Duration::from_nanos);
            let active = silent.is_some_and(|silent| silent <= inactive_after);
            let inactive_since = (!active).then(|| {
                previous
                    .iter()
                    .find(|p| p.name == source.name && p.origin == origin && !p.active)
                    .and_then(|p| p.inactive_since.clone())
                    .unwrap_or_else(|| {
                        let since = silent
                            .and_then(|silent| now.checked_sub(silent).ok())
                            .unwrap_or(now);
                        Timestamp::from_second(since.as_second())
                            .unwrap_or(since)
                            .to_string()
                    })
            });
            SourceStatus {
                name: source.name.clone(),
                origin,
                mirror: is_mirror,
                active,
                inactive_since,
                lag: source.lag,
                error: source
                    .error
                    .as_ref()
                    .map(|e| format!("{} (code {})", e.description, e.code)),
            }
        })
        .collect()
}

/// Where a source lives, as `status.sources[].origin` says it.
fn origin_of(source: &ObservedSource) -> String {
    match source.external.as_ref().map(|e| e.api.as_str()) {
        None | Some("") => "local".to_owned(),
        Some(api) => match api
            .strip_prefix("$JS.")
            .and_then(|rest| rest.strip_suffix(".API"))
        {
            Some(domain) if !domain.contains('.') => format!("domain {domain}"),
            _ => format!("api {api}"),
        },
    }
}

/// `SourcesActive` for `statuses` (pure): False naming every source inactive for longer than
/// `inactive_after` or in error, True otherwise.
pub fn sources_condition(statuses: &[SourceStatus], inactive_after: Duration) -> Value {
    let down: Vec<String> = statuses
        .iter()
        .filter(|s| !s.active || s.error.is_some())
        .map(|s| {
            let what = if s.mirror { "mirror" } else { "source" };
            let mut text = format!("{what} {} ({})", s.name, s.origin);
            if let Some(since) = &s.inactive_since {
                text.push_str(&format!(" inactive since {since}"));
            }
            if let Some(error) = &s.error {
                text.push_str(&format!(": {error}"));
            }
            text.push_str(&format!(", lag {}", s.lag));
            text
        })
        .collect();
    if down.is_empty() {
        let lag: u64 = statuses.iter().map(|s| s.lag).sum();
        return Value::new(
            Status::True,
            "SourcesActive",
            format!(
                "{} source(s) active, {lag} message(s) behind in all",
                statuses.len()
            ),
        );
    }
    Value::new(
        Status::False,
        "SourceInactive",
        format!(
            "{}; NATS has not heard from it within {} (is the leaf node's link up, and does this account import its API?); see the runbook AuditStreamSourceInactive",
            down.join("; "),
            crate::duration::format(inactive_after)
        ),
    )
}

/// Writes `statuses` and their condition into `status`, or removes both when the stream has
/// no sources (`None`); keeps both as they were when they could not be observed (`Some(Err)`).
pub fn set_sources(
    previous: &AuditStreamStatus,
    status: &mut AuditStreamStatus,
    observed: Option<Result<Vec<SourceStatus>, String>>,
    inactive_after: Duration,
    now: &Time,
) {
    status.conditions.retain(|c| c.type_ != SOURCES_ACTIVE);
    match observed {
        None => status.sources.clear(),
        Some(Err(_)) => {
            status.sources = previous.sources.clone();
            let kept = previous
                .conditions
                .iter()
                .find(|c| c.type_ == SOURCES_ACTIVE);
            status.conditions.extend(kept.cloned());
        }
        Some(Ok(statuses)) => {
            let value = sources_condition(&statuses, inactive_after);
            let generation = status.observed_generation;
            status.conditions.push(conditions::condition(
                &previous.conditions,
                SOURCES_ACTIVE,
                value,
                generation,
                now,
            ));
            status.sources = statuses;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(json: serde_json::Value) -> Observed {
        serde_json::from_value(json).unwrap()
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn each_source_is_told_apart_by_where_it_lives() {
        let seen = observed(serde_json::json!({
            "sources": [
                {"name": "EVENTS", "lag": 0, "active": 900_000_000, "external": {"api": "$JS.spoke-a.API"}},
                {"name": "EVENTS", "lag": 42, "active": 3_000_000_000i64, "external": {"api": "$JS.spoke-b.API", "deliver": ""}},
                {"name": "LOCAL", "lag": 0, "active": 1}
            ]
        }));
        let now = Timestamp::from_second(1_796_083_200).unwrap();
        let statuses = source_statuses(&seen, &[], MINUTE, now);
        let origins: Vec<(&str, &str, bool, u64)> = statuses
            .iter()
            .map(|s| (s.name.as_str(), s.origin.as_str(), s.active, s.lag))
            .collect();
        assert_eq!(
            origins,
            [
                ("EVENTS", "domain spoke-a", true, 0),
                ("EVENTS", "domain spoke-b", true, 42),
                ("LOCAL", "local", true, 0)
            ]
        );
        let condition = sources_condition(&statuses, MINUTE);
        assert_eq!(condition.status, Status::True);
        assert!(
            condition.message.contains("42 message(s) behind"),
            "{condition:?}"
        );
    }

    #[test]
    fn a_silent_source_turns_the_condition_false_and_keeps_its_since() {
        let seen = observed(serde_json::json!({
            "sources": [{"name": "EVENTS", "lag": 7, "active": 90_000_000_000i64,
                         "external": {"api": "$JS.spoke-a.API"},
                         "error": {"code": 503, "description": "no responders"}}]
        }));
        let now = Timestamp::from_second(1_796_083_200).unwrap();
        let statuses = source_statuses(&seen, &[], MINUTE, now);
        assert!(!statuses[0].active);
        assert_eq!(
            statuses[0].inactive_since.as_deref(),
            Some("2026-11-30T23:58:30Z")
        );
        assert_eq!(
            statuses[0].error.as_deref(),
            Some("no responders (code 503)")
        );
        let condition = sources_condition(&statuses, MINUTE);
        assert_eq!(condition.status, Status::False);
        assert!(
            condition
                .message
                .starts_with("source EVENTS (domain spoke-a) inactive since 2026-11-30T23:58:30Z: no responders (code 503), lag 7"),
            "{condition:?}"
        );
        // Later, still silent: the same since, so the status does not change.
        let later = now.checked_add(Duration::from_secs(30)).unwrap();
        assert_eq!(source_statuses(&seen, &statuses, MINUTE, later), statuses);
    }

    #[test]
    fn a_mirror_comes_first_and_a_never_seen_source_is_inactive() {
        let seen = observed(serde_json::json!({
            "mirror": {"name": "HUB", "lag": 3, "active": -1, "external": {"api": "$JS.hub.API"}}
        }));
        let now = Timestamp::from_second(1_796_083_200).unwrap();
        let statuses = source_statuses(&seen, &[], MINUTE, now);
        assert!(statuses[0].mirror && !statuses[0].active);
        assert_eq!(
            statuses[0].inactive_since.as_deref(),
            Some("2026-12-01T00:00:00Z")
        );
    }
}
