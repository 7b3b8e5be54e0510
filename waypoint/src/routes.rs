//! Compiled routes: regexes built once per config, rule matching, weighted backend choice.

use std::collections::BTreeMap;
use std::sync::Arc;

use ambit_core::meshconfig::route::{
    HeaderMatch, RouteError, RouteRule, RouteSpec, StringMatch, WeightedBackend,
};
use http::request::Parts;
use rand::Rng;
use regex::Regex;

#[derive(Debug)]
enum Str {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl Str {
    fn matches(&self, v: &str) -> bool {
        match self {
            Str::Exact(e) => v == e,
            Str::Prefix(p) => v.starts_with(p.as_str()),
            Str::Regex(r) => r.is_match(v),
        }
    }
}

#[derive(Debug)]
enum HeaderCond {
    Value(Str),
    Present(bool),
}

#[derive(Debug, Default)]
struct Match {
    path: Option<Str>,
    method: Option<http::Method>,
    headers: Vec<(http::HeaderName, HeaderCond)>,
    query: Vec<(String, Str)>,
}

/// A backend as the data path needs it: which Service (and subset) and which port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendRef {
    pub namespace: String,
    pub service: String,
    /// `None`: the port the request was addressed to.
    pub port: Option<u16>,
    pub subset: BTreeMap<String, String>,
}

impl BackendRef {
    fn from_spec(b: &WeightedBackend, route_ns: &str) -> Self {
        Self {
            namespace: b.namespace.clone().unwrap_or_else(|| route_ns.to_string()),
            service: b.service.clone(),
            port: b.port,
            subset: b.subset.clone(),
        }
    }
}

#[derive(Debug)]
pub struct Rule {
    /// `route.rule` for metrics and logs.
    pub label: String,
    matches: Vec<Match>,
    /// (backend, cumulative weight).
    backends: Vec<(BackendRef, u64)>,
    pub spec: RouteRule,
    pub mirror: Option<BackendRef>,
}

#[derive(Debug)]
pub struct CompiledRoute {
    pub key: String,
    pub rules: Vec<Arc<Rule>>,
    /// The route as configured (for the admin config dump).
    pub spec: RouteSpec,
}

fn compile_str(m: &StringMatch, err: &dyn Fn(String) -> RouteError) -> Result<Str, RouteError> {
    Ok(match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), _, _) => Str::Exact(e.clone()),
        (_, Some(p), _) => Str::Prefix(p.clone()),
        (_, _, Some(r)) => Str::Regex(anchored(r).map_err(|e| err(e.to_string()))?),
        _ => return Err(err("no condition".into())),
    })
}

/// Route regexes match the whole value, as in Envoy and Gateway API.
fn anchored(r: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{r})$"))
}

fn compile_header(
    h: &HeaderMatch,
    err: &dyn Fn(String) -> RouteError,
) -> Result<HeaderCond, RouteError> {
    if let Some(p) = h.present {
        return Ok(HeaderCond::Present(p));
    }
    let m = StringMatch {
        exact: h.exact.clone(),
        prefix: h.prefix.clone(),
        regex: h.regex.clone(),
    };
    Ok(HeaderCond::Value(compile_str(&m, err)?))
}

impl CompiledRoute {
    pub fn compile(spec: &RouteSpec) -> Result<Self, RouteError> {
        spec.validate()?;
        let mut rules = vec![];
        for (i, r) in spec.rules.iter().enumerate() {
            let mut matches = vec![];
            for (j, m) in r.matches.iter().enumerate() {
                let err = |field: String| {
                    move |problem: String| RouteError {
                        route: spec.key(),
                        field: field.clone(),
                        problem,
                    }
                };
                let path = match &m.path {
                    Some(p) => Some(compile_str(
                        p,
                        &err(format!("rules[{i}].matches[{j}].path")),
                    )?),
                    None => None,
                };
                let mut headers = vec![];
                for (k, h) in m.headers.iter().enumerate() {
                    let name = http::HeaderName::from_bytes(h.name.as_bytes())
                        .expect("validated header name");
                    let e = err(format!("rules[{i}].matches[{j}].headers[{k}]"));
                    headers.push((name, compile_header(h, &e)?));
                }
                let mut query = vec![];
                for (k, q) in m.query_params.iter().enumerate() {
                    let sm = StringMatch {
                        exact: q.exact.clone(),
                        prefix: None,
                        regex: q.regex.clone(),
                    };
                    let e = err(format!("rules[{i}].matches[{j}].queryParams[{k}]"));
                    query.push((q.name.clone(), compile_str(&sm, &e)?));
                }
                let method = m
                    .method
                    .as_ref()
                    .map(|m| http::Method::from_bytes(m.as_bytes()).expect("validated method"));
                matches.push(Match {
                    path,
                    method,
                    headers,
                    query,
                });
            }
            let mut total = 0u64;
            let backends = r
                .backends
                .iter()
                .filter(|b| b.weight > 0)
                .map(|b| {
                    total += u64::from(b.weight);
                    (BackendRef::from_spec(b, &spec.namespace), total)
                })
                .collect();
            rules.push(Arc::new(Rule {
                label: format!(
                    "{}.{}",
                    spec.name,
                    r.name.clone().unwrap_or_else(|| i.to_string())
                ),
                matches,
                backends,
                mirror: r
                    .mirror
                    .as_ref()
                    .map(|m| BackendRef::from_spec(&m.backend, &spec.namespace)),
                spec: r.clone(),
            }));
        }
        Ok(Self {
            key: spec.key(),
            rules,
            spec: spec.clone(),
        })
    }

    /// The first rule that accepts the request.
    pub fn select(&self, req: &Parts) -> Option<Arc<Rule>> {
        self.rules.iter().find(|r| r.accepts(req)).cloned()
    }
}

fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

impl Match {
    fn accepts(&self, req: &Parts) -> bool {
        if let Some(p) = &self.path {
            if !p.matches(req.uri.path()) {
                return false;
            }
        }
        if self.method.as_ref().is_some_and(|m| *m != req.method) {
            return false;
        }
        let headers_ok = self.headers.iter().all(|(name, cond)| {
            let value = req.headers.get(name).and_then(|v| v.to_str().ok());
            match cond {
                HeaderCond::Present(want) => value.is_some() == *want,
                HeaderCond::Value(s) => value.is_some_and(|v| s.matches(v)),
            }
        });
        let query = req.uri.query().unwrap_or("");
        headers_ok
            && self
                .query
                .iter()
                .all(|(name, s)| query_value(query, name).is_some_and(|v| s.matches(v)))
    }
}

impl Rule {
    fn accepts(&self, req: &Parts) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.accepts(req))
    }

    /// A backend drawn with probability weight / total (None: the route's own Service).
    pub fn choose(&self, rng: &mut impl Rng) -> Option<&BackendRef> {
        let total = self.backends.last()?.1;
        let x = rng.gen_range(0..total);
        self.backends
            .iter()
            .find(|(_, cum)| x < *cum)
            .map(|(b, _)| b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(json: &str) -> CompiledRoute {
        CompiledRoute::compile(&serde_json::from_str(json).unwrap()).unwrap()
    }

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    const R: &str = r#"{"name": "r", "namespace": "ns", "service": {"name": "s", "namespace": "ns"},
      "rules": [
        {"name": "v2", "matches": [
            {"headers": [{"name": "x-user", "regex": "test-.*"}]},
            {"path": {"prefix": "/beta"}, "method": "POST", "queryParams": [{"name": "q", "exact": "1"}]}],
         "backends": [{"service": "s", "subset": {"v": "2"}}]},
        {"matches": [{"headers": [{"name": "x-debug", "present": true}]}], "backends": [{"service": "dbg"}]},
        {"backends": [{"service": "s", "subset": {"v": "1"}, "weight": 90}, {"service": "s", "subset": {"v": "2"}, "weight": 10}]}
      ]}"#;

    #[test]
    fn first_matching_rule_wins() {
        let r = route(R);
        let label = |p: Parts| r.select(&p).unwrap().label.clone();
        assert_eq!(label(parts("GET", "/", &[("x-user", "test-1")])), "r.v2");
        assert_eq!(label(parts("GET", "/", &[("x-user", "xtest-1")])), "r.2");
        assert_eq!(label(parts("POST", "/beta/x?a=b&q=1", &[])), "r.v2");
        assert_eq!(label(parts("POST", "/beta/x?q=2", &[])), "r.2");
        assert_eq!(label(parts("GET", "/beta/x?q=1", &[])), "r.2");
        assert_eq!(label(parts("GET", "/", &[("x-debug", "")])), "r.1");
    }

    #[test]
    fn weighted_choice_is_proportional() {
        let r = route(R);
        let rule = r.select(&parts("GET", "/", &[])).unwrap();
        let mut rng = rand::thread_rng();
        let n = 100_000;
        let v2 = (0..n)
            .filter(|_| rule.choose(&mut rng).unwrap().subset.get("v").unwrap() == "2")
            .count();
        let share = v2 as f64 / n as f64;
        assert!((0.09..0.11).contains(&share), "v2 share {share}");
    }

    #[test]
    fn bad_regex_names_field() {
        let json = R.replace("test-.*", "(unclosed");
        let e = CompiledRoute::compile(&serde_json::from_str(&json).unwrap()).unwrap_err();
        assert!(
            e.to_string()
                .contains("ns/r: rules[0].matches[0].headers[0]"),
            "{e}"
        );
    }
}
