//! `verify --report-file`: the check's outcome as one JSON object, for a scheduled run whose
//! operator reads it as the container's termination message. Kubernetes keeps only
//! [`LIMIT`] bytes of that, so the object is built to fit: the counts always, the problem
//! findings as many as fit, and how many were left out.

use std::time::SystemTime;

use serde::Serialize;

pub use crate::termination::LIMIT;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `complete`, `unwitnessed` or `problems`.
    pub verdict: &'static str,
    pub since: Option<String>,
    /// The end of the window: what the next incremental check passes as `--since`.
    pub verified_through: String,
    pub segments: usize,
    pub chains: usize,
    pub complete: usize,
    pub unwitnessed: usize,
    pub problems: usize,
    pub rejected_heads: usize,
    pub missing_segments: u64,
    /// Problems found that the check was told to accept.
    #[serde(skip_serializing_if = "is_zero")]
    pub accepted: usize,
    /// The problem lines exactly as printed.
    pub findings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub findings_omitted: Option<usize>,
}

impl Report {
    /// As JSON of at most `limit` bytes: findings are kept in order while they fit.
    pub fn to_json(mut self, limit: usize) -> String {
        let findings = std::mem::take(&mut self.findings);
        // Measured with the widest omitted count it could carry, so that the count added
        // at the end never makes it overflow.
        self.findings_omitted = Some(findings.len());
        let mut length = json(&self).len();
        let mut kept = 0;
        for finding in &findings {
            let cost = json(finding).len() + usize::from(kept > 0);
            if length + cost > limit {
                break;
            }
            length += cost;
            kept += 1;
        }
        let omitted = findings.len() - kept;
        self.findings_omitted = (omitted > 0).then_some(omitted);
        self.findings = findings;
        self.findings.truncate(kept);
        json(&self)
    }
}

fn is_zero(count: &usize) -> bool {
    *count == 0
}

/// The report of a check that could not be made, with its message cut to fit `limit`.
pub fn failed(message: &str, limit: usize) -> String {
    #[derive(Serialize)]
    struct Failed<'a> {
        verdict: &'static str,
        error: &'a str,
    }
    let mut end = message.len();
    loop {
        let text = json(&Failed {
            verdict: "failed",
            error: &message[..end],
        });
        if text.len() <= limit || end == 0 {
            return text;
        }
        // Escapes make the JSON longer than the text: cut by the excess and measure again.
        end = end.saturating_sub(text.len() - limit);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
    }
}

/// RFC 3339 in whole seconds when the time has no fraction, else with nanoseconds.
pub fn rfc3339(at: SystemTime) -> String {
    let whole = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .is_ok_and(|since| since.subsec_nanos() == 0);
    if whole {
        humantime::format_rfc3339_seconds(at).to_string()
    } else {
        humantime::format_rfc3339_nanos(at).to_string()
    }
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("a report always serializes")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn report(findings: usize) -> Report {
        Report {
            verdict: "problems",
            since: Some("2026-12-04T10:00:00Z".into()),
            verified_through: "2026-12-04T11:00:00Z".into(),
            segments: 12,
            chains: 2,
            problems: 1,
            complete: 1,
            missing_segments: 2,
            findings: (0..findings)
                .map(|n| format!("chain=c/p/t finding=missing positions={n}"))
                .collect(),
            ..Report::default()
        }
    }

    #[test]
    fn the_report_is_camel_case_json_with_null_for_no_since() {
        let text = Report {
            since: None,
            ..report(1)
        }
        .to_json(LIMIT);
        assert_eq!(
            text,
            r#"{"verdict":"problems","since":null,"verifiedThrough":"2026-12-04T11:00:00Z","segments":12,"chains":2,"complete":1,"unwitnessed":0,"problems":1,"rejectedHeads":0,"missingSegments":2,"findings":["chain=c/p/t finding=missing positions=0"]}"#
        );
    }

    #[test]
    fn findings_are_kept_while_they_fit_and_the_rest_counted() {
        for count in [0, 10, 50, 1000] {
            let text = report(count).to_json(LIMIT);
            assert!(text.len() <= LIMIT, "{count}: {} bytes", text.len());
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            let kept = value["findings"].as_array().unwrap().len();
            let omitted = value
                .get("findingsOmitted")
                .map_or(0, |n| n.as_u64().unwrap() as usize);
            assert_eq!(kept + omitted, count);
            assert_eq!(omitted > 0, count == 1000, "{count}");
        }
        // One finding longer than everything: omitted, not cut.
        let mut huge = report(0);
        huge.findings = vec!["x".repeat(LIMIT)];
        let value: serde_json::Value = serde_json::from_str(&huge.to_json(LIMIT)).unwrap();
        assert_eq!(value["findingsOmitted"], 1);
    }

    #[test]
    fn a_failure_says_why_within_the_limit() {
        assert_eq!(
            failed("the archive cannot be used", LIMIT),
            r#"{"verdict":"failed","error":"the archive cannot be used"}"#
        );
        let long = failed(&"\"é".repeat(LIMIT), LIMIT);
        assert!(long.len() <= LIMIT);
        assert!(serde_json::from_str::<serde_json::Value>(&long).is_ok());
    }

    #[test]
    fn times_are_rfc3339() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_379_300);
        assert_eq!(rfc3339(at), "2026-12-04T10:15:00Z");
        assert_eq!(
            rfc3339(at + Duration::from_millis(5)),
            "2026-12-04T10:15:00.005000000Z"
        );
    }
}
