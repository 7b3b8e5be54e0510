//! Label and field selectors, with the syntax of `labels.Parse` and `fields.ParseSelector`.

use crate::util::dotted_string;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Requirement>);

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("unbalanced ')' in selector {s:?}"));
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in selector {s:?}"));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn parse_set(rest: &str, whole: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            format!("unable to parse requirement: {whole:?}: expected '(' value list ')'")
        })?;
    let vals: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if let Some(bad) = vals.iter().find(|v| !valid_value(v)) {
        return Err(format!(
            "unable to parse requirement: {whole:?}: invalid label value {bad:?}"
        ));
    }
    Ok(vals)
}

fn parse_requirement(raw: &str) -> Result<Requirement, String> {
    let r = raw.trim();
    let bad_key = |k: &str| format!("unable to parse requirement: {r:?}: invalid label key {k:?}");
    if let Some(k) = r.strip_prefix('!') {
        let k = k.trim();
        return if valid_key(k) {
            Ok(Requirement {
                key: k.into(),
                op: Op::NotExists,
            })
        } else {
            Err(bad_key(k))
        };
    }
    // Set-based: `key in (...)`, `key notin (...)`.
    let words: Vec<&str> = r.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let rest = words[1].trim_start();
        for (word, is_in) in [("notin", false), ("in", true)] {
            if let Some(after) = rest.strip_prefix(word) {
                if after.starts_with(|c: char| c == '(' || c.is_whitespace()) {
                    let key = words[0];
                    if !valid_key(key) {
                        return Err(bad_key(key));
                    }
                    let vals = parse_set(after, r)?;
                    let op = if is_in { Op::In(vals) } else { Op::NotIn(vals) };
                    return Ok(Requirement {
                        key: key.into(),
                        op,
                    });
                }
            }
        }
    }
    for (tok, mk) in [
        ("!=", (|v: String| Op::NotEq(v)) as fn(String) -> Op),
        ("==", |v| Op::Eq(v)),
        ("=", |v| Op::Eq(v)),
    ] {
        if let Some((k, v)) = r.split_once(tok) {
            let (k, v) = (k.trim(), v.trim());
            if !valid_key(k) {
                return Err(bad_key(k));
            }
            if !valid_value(v) {
                return Err(format!(
                    "unable to parse requirement: {r:?}: invalid label value {v:?}"
                ));
            }
            return Ok(Requirement {
                key: k.into(),
                op: mk(v.into()),
            });
        }
    }
    for (tok, gt) in [(">", true), ("<", false)] {
        if let Some((k, v)) = r.split_once(tok) {
            let k = k.trim();
            if !valid_key(k) {
                return Err(bad_key(k));
            }
            let n: i64 = v.trim().parse().map_err(|_| {
                format!("unable to parse requirement: {r:?}: for 'gt', 'lt' operators, the value must be an integer")
            })?;
            return Ok(Requirement {
                key: k.into(),
                op: if gt { Op::Gt(n) } else { Op::Lt(n) },
            });
        }
    }
    if valid_key(r) {
        return Ok(Requirement {
            key: r.into(),
            op: Op::Exists,
        });
    }
    Err(bad_key(r))
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        split_top_level(s)?
            .into_iter()
            .map(parse_requirement)
            .collect::<Result<_, _>>()
            .map(LabelSelector)
    }

    pub fn matches_labels(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        self.0.iter().all(|req| {
            let val = labels.and_then(|l| l.get(&req.key)).and_then(Value::as_str);
            match &req.op {
                Op::Exists => val.is_some(),
                Op::NotExists => val.is_none(),
                Op::Eq(v) => val == Some(v.as_str()),
                Op::NotEq(v) => val != Some(v.as_str()),
                Op::In(vs) => val.is_some_and(|x| vs.iter().any(|v| v == x)),
                Op::NotIn(vs) => !val.is_some_and(|x| vs.iter().any(|v| v == x)),
                Op::Gt(n) => val
                    .and_then(|x| x.parse::<i64>().ok())
                    .is_some_and(|x| x > *n),
                Op::Lt(n) => val
                    .and_then(|x| x.parse::<i64>().ok())
                    .is_some_and(|x| x < *n),
            }
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.is_empty()
            || self.matches_labels(obj.pointer("/metadata/labels").and_then(Value::as_object))
    }
}

/// A parsed `fieldSelector`: `path=value`, `path==value`, `path!=value`, comma-separated.
/// Any dotted path is accepted (the real server allows only a per-kind list).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut reqs = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let (path, eq, val) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            };
            let path = path.trim();
            if path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(format!("invalid field selector path {path:?} in {s:?}"));
            }
            reqs.push((path.to_string(), eq, val.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0
            .iter()
            .all(|(path, eq, val)| (dotted_string(obj, path) == *val) == *eq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels}, "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn label_operators() {
        let p = pod(json!({"app": "web", "tier": "front", "ver": "3"}));
        for (sel, want) in [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("tier in (front, back)", true),
            ("tier notin (front,back)", false),
            ("tier notin (back)", true),
            ("missing notin (back)", true),
            ("missing in (back)", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("ver>2", true),
            ("ver<2", false),
            ("app in (web),!missing,tier", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&p),
                want,
                "selector {sel:?}"
            );
        }
        assert!(!LabelSelector::parse("app")
            .unwrap()
            .matches(&json!({"metadata": {}})));
    }

    #[test]
    fn label_parse_errors() {
        for bad in [
            "app in (a",
            "app=we b",
            "=x",
            "a b c",
            "ver>x",
            "app in a,b",
        ] {
            assert!(
                LabelSelector::parse(bad).is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn field_selectors() {
        let p = pod(json!({}));
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&p);
        assert!(m("metadata.name=p"));
        assert!(m("metadata.namespace==ns,spec.nodeName=n1"));
        assert!(!m("spec.nodeName!=n1"));
        assert!(m("spec.nodeName!=n2"));
        assert!(m("spec.missing="));
        assert!(FieldSelector::parse("spec.nodeName").is_err());
        assert!(FieldSelector::parse("spec..x=1").is_err());
    }

    proptest! {
        // Equality and inequality on the same key are always complementary.
        #[test]
        fn eq_and_neq_complement(key in "[a-z][a-z0-9.-]{0,10}", val in "[a-z0-9]{0,8}", present in proptest::option::of("[a-z0-9]{0,8}")) {
            let labels = match &present { Some(v) => json!({key.clone(): v}), None => json!({}) };
            let p = pod(labels);
            let eq = LabelSelector::parse(&format!("{key}={val}")).unwrap().matches(&p);
            let ne = LabelSelector::parse(&format!("{key}!={val}")).unwrap().matches(&p);
            prop_assert_ne!(eq, ne);
            let inn = LabelSelector::parse(&format!("{key} in ({val})")).unwrap().matches(&p);
            let notin = LabelSelector::parse(&format!("{key} notin ({val})")).unwrap().matches(&p);
            prop_assert_eq!(inn, eq);
            prop_assert_eq!(notin, ne);
        }
    }
}
