//! Types shared by several kinds: durations, references, label selectors, conditions.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ValidationError;

/// Go-style durations with whole numbers only (`250ms`, `1h30m`): what both Kubernetes' CEL
/// `duration()` and `humantime` accept, so the API server and the operator agree on every value.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ns|us|ms|s|m|h))+$";

/// A duration written as a string (`10s`, `1h30m`, `250ms`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(pub String);

impl Duration {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// Parses the string; `field` names where it came from, for the error message.
    pub fn parse(&self, field: &str) -> Result<std::time::Duration, ValidationError> {
        let bad = || {
            ValidationError::new(
                field,
                format!(
                    "{:?} is not a duration: write whole numbers with units ns, us, ms, s, m or h, e.g. 10s, 1h30m, 250ms",
                    self.0
                ),
            )
        };
        if !is_go_duration(&self.0) {
            return Err(bad());
        }
        humantime::parse_duration(&self.0).map_err(|_| bad())
    }
}

/// Hand-written matcher for [`DURATION_PATTERN`] (the operator has no regex engine, and the
/// pattern is simple): one or more `<digits><unit>` groups.
fn is_go_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ns", "us", "ms", "s", "m", "h"]
            .into_iter()
            .find(|u| rest.starts_with(u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
        })
    }
}

/// The kinds a `targetRef` can name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TargetKind {
    #[default]
    Service,
}

/// Names a Service in the same namespace as the referring object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// Kind of the target. Only `Service` is supported.
    #[serde(default)]
    pub kind: TargetKind,
    /// Name of the Service, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Selects pods by their labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Pods whose labels include all of these are selected. Empty selects every pod of the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// Status every kind reports: standard conditions and the generation they describe.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommonStatus {
    /// The `metadata.generation` the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard Kubernetes conditions (see each kind for the types it reports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Condition status values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// What a controller wants a condition to say, before timestamps are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionUpdate {
    pub type_: String,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
}

impl ConditionUpdate {
    pub fn new(
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// Sets (adds or replaces) the condition of `update.type_`. `lastTransitionTime` moves to `now`
/// only when the status changes, so `kubectl` shows how long a state has held, not when the
/// controller last looked. Returns whether anything changed (to skip no-op status writes).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    update: ConditionUpdate,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> bool {
    let status = update.status.as_str();
    match conditions.iter_mut().find(|c| c.type_ == update.type_) {
        Some(c) => {
            let before = c.clone();
            if c.status != status {
                c.last_transition_time = Time(now);
                c.status = status.to_string();
            }
            c.reason = update.reason;
            c.message = update.message;
            c.observed_generation = observed_generation;
            *c != before
        }
        None => {
            conditions.push(Condition {
                type_: update.type_,
                status: status.to_string(),
                reason: update.reason,
                message: update.message,
                observed_generation,
                last_transition_time: Time(now),
            });
            true
        }
    }
}

/// The condition of the given type, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn durations_parse_go_style_and_reject_the_rest() {
        assert_eq!(
            Duration::new("1h30m").parse("f").unwrap(),
            std::time::Duration::from_secs(5400)
        );
        assert_eq!(
            Duration::new("250ms").parse("f").unwrap(),
            std::time::Duration::from_millis(250)
        );
        for bad in ["", "10", "1.5s", "10 s", "s", "10days", "-1s", "1h 30m"] {
            let err = Duration::new(bad).parse("spec.timeout").unwrap_err();
            assert_eq!(err.field, "spec.timeout", "{bad}");
            assert!(err.message.contains("not a duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn set_condition_keeps_transition_time_while_status_holds() {
        let mut conds = Vec::new();
        let up = |s, r: &str| ConditionUpdate::new("Ready", s, r, format!("because {r}"));
        assert!(set_condition(
            &mut conds,
            up(ConditionStatus::False, "Pending"),
            Some(1),
            ts(100)
        ));
        // Same status, new reason: message changes, transition time does not.
        assert!(set_condition(
            &mut conds,
            up(ConditionStatus::False, "Waiting"),
            Some(2),
            ts(200)
        ));
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, Time(ts(100)));
        assert_eq!(conds[0].reason, "Waiting");
        assert_eq!(conds[0].observed_generation, Some(2));
        // Identical update: nothing changed.
        assert!(!set_condition(
            &mut conds,
            up(ConditionStatus::False, "Waiting"),
            Some(2),
            ts(300)
        ));
        // Status flips: transition time moves.
        assert!(set_condition(
            &mut conds,
            up(ConditionStatus::True, "Ready"),
            Some(2),
            ts(400)
        ));
        assert_eq!(conds[0].last_transition_time, Time(ts(400)));
        assert_eq!(find_condition(&conds, "Ready").unwrap().status, "True");
        // Other types are added beside, not replaced.
        set_condition(
            &mut conds,
            ConditionUpdate::new("Degraded", ConditionStatus::False, "AsExpected", ""),
            Some(2),
            ts(500),
        );
        assert_eq!(conds.len(), 2);
    }
}
