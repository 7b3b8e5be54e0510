//! L4 authorization with Istio's AuthorizationPolicy semantics: a matching DENY wins; if any
//! ALLOW policy selects the workload, one must match; with no policy, everything is allowed.
//! Principal and namespace conditions need an mTLS identity: plaintext never matches them
//! (and always satisfies their `not*` forms).
//!
//! L7 conditions (`methods`, `paths`, `hosts` and their `not*` forms) are for a waypoint;
//! ztunnel cannot see them and handles them as Istio's ztunnel does, failing closed both
//! ways: in an ALLOW policy a rule with any of them never matches, in a DENY policy they are
//! dropped and the rule's L4 rest decides.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_core::Identity;
use serde::Serialize;

use crate::config::{PolicyAction, PolicySpec};
use crate::state::Workload;

/// Policies in this namespace apply to every workload in the mesh.
pub const ROOT_NAMESPACE: &str = "ambit-system";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error("ipBlocks entry {0:?} is not an address or CIDR (e.g. 10.0.0.0/8)")]
    BadCidr(String),
    #[error("pattern {0:?}: '*' may only appear alone, at the start or at the end")]
    BadPattern(String),
}

#[derive(Clone, Debug)]
enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

/// Shown as written in the config (`*`, `prefix*`, `*suffix`, exact).
impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Pattern::Any => s.serialize_str("*"),
            Pattern::Exact(x) => s.serialize_str(x),
            Pattern::Prefix(x) => s.collect_str(&format_args!("{x}*")),
            Pattern::Suffix(x) => s.collect_str(&format_args!("*{x}")),
        }
    }
}

impl Pattern {
    fn parse(s: &str) -> Result<Self, PolicyError> {
        let p = if s == "*" {
            Pattern::Any
        } else if let Some(rest) = s.strip_suffix('*') {
            Pattern::Prefix(rest.to_string())
        } else if let Some(rest) = s.strip_prefix('*') {
            Pattern::Suffix(rest.to_string())
        } else {
            Pattern::Exact(s.to_string())
        };
        match &p {
            Pattern::Prefix(x) | Pattern::Suffix(x) | Pattern::Exact(x) if x.contains('*') => {
                Err(PolicyError::BadPattern(s.to_string()))
            }
            _ => Ok(p),
        }
    }
    fn matches(&self, v: &str) -> bool {
        match self {
            Pattern::Any => !v.is_empty(),
            Pattern::Exact(x) => v == x,
            Pattern::Prefix(x) => v.starts_with(x.as_str()),
            Pattern::Suffix(x) => v.ends_with(x.as_str()),
        }
    }
}

#[derive(Clone, Debug)]
struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}/{}", self.addr, self.len))
    }
}

impl Cidr {
    fn parse(s: &str) -> Result<Self, PolicyError> {
        let bad = || PolicyError::BadCidr(s.to_string());
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (
                a.parse::<IpAddr>().map_err(|_| bad())?,
                l.parse::<u8>().map_err(|_| bad())?,
            ),
            None => {
                let a: IpAddr = s.parse().map_err(|_| bad())?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(bad());
        }
        Ok(Self { addr, len })
    }
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.len as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.len as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Source {
    principals: Vec<Pattern>,
    not_principals: Vec<Pattern>,
    namespaces: Vec<Pattern>,
    not_namespaces: Vec<Pattern>,
    ip_blocks: Vec<Cidr>,
    not_ip_blocks: Vec<Cidr>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Ports {
    ports: Vec<u16>,
    not_ports: Vec<u16>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    from: Vec<Source>,
    to: Vec<Ports>,
    /// The rule named L7 conditions (shown in the config dump: why a rule behaves as it does).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    has_l7: bool,
    /// An ALLOW rule with L7 conditions: ztunnel can't prove them, so it never allows.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    never_matches: bool,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledPolicy {
    pub name: String,
    pub namespace: String,
    pub selector: BTreeMap<String, String>,
    pub action: PolicyAction,
    rules: Vec<Rule>,
}

/// What L4 authorization looks at.
#[derive(Clone, Copy, Debug)]
pub struct Connection<'a> {
    /// `None` for plaintext.
    pub src_identity: Option<&'a Identity>,
    pub src_ip: IpAddr,
    pub dst_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    /// `namespace/name` of the deciding policy, or why no ALLOW matched.
    pub by: String,
}

fn patterns(v: &[String]) -> Result<Vec<Pattern>, PolicyError> {
    v.iter().map(|s| Pattern::parse(s)).collect()
}
fn cidrs(v: &[String]) -> Result<Vec<Cidr>, PolicyError> {
    v.iter().map(|s| Cidr::parse(s)).collect()
}

/// A positive list: empty means "no condition"; otherwise the value must match one entry.
fn positive(list: &[Pattern], value: Option<&str>) -> bool {
    list.is_empty() || value.is_some_and(|v| list.iter().any(|p| p.matches(v)))
}
/// A negative list: the value must match none (an absent value matches none).
fn negative(list: &[Pattern], value: Option<&str>) -> bool {
    value.is_none_or(|v| !list.iter().any(|p| p.matches(v)))
}

impl Source {
    fn matches(&self, c: &Connection) -> bool {
        let principal = c.src_identity.map(|i| i.to_string());
        let namespace = c.src_identity.map(|i| i.namespace());
        positive(&self.principals, principal.as_deref())
            && negative(&self.not_principals, principal.as_deref())
            && positive(&self.namespaces, namespace)
            && negative(&self.not_namespaces, namespace)
            && (self.ip_blocks.is_empty() || self.ip_blocks.iter().any(|b| b.contains(c.src_ip)))
            && !self.not_ip_blocks.iter().any(|b| b.contains(c.src_ip))
    }
}

impl Rule {
    fn matches(&self, c: &Connection) -> bool {
        !self.never_matches
            && (self.from.is_empty() || self.from.iter().any(|s| s.matches(c)))
            && (self.to.is_empty()
                || self.to.iter().any(|t| {
                    (t.ports.is_empty() || t.ports.contains(&c.dst_port))
                        && !t.not_ports.contains(&c.dst_port)
                }))
    }
}

impl CompiledPolicy {
    pub fn compile(spec: &PolicySpec) -> Result<Self, PolicyError> {
        let rules = spec
            .rules
            .iter()
            .map(|r| {
                let has_l7 = r.to.iter().any(|t| t.has_l7());
                Ok(Rule {
                    has_l7,
                    never_matches: has_l7 && spec.action == PolicyAction::Allow,
                    from: r
                        .from
                        .iter()
                        .map(|f| {
                            Ok(Source {
                                principals: patterns(&f.principals)?,
                                not_principals: patterns(&f.not_principals)?,
                                namespaces: patterns(&f.namespaces)?,
                                not_namespaces: patterns(&f.not_namespaces)?,
                                ip_blocks: cidrs(&f.ip_blocks)?,
                                not_ip_blocks: cidrs(&f.not_ip_blocks)?,
                            })
                        })
                        .collect::<Result<_, PolicyError>>()?,
                    to: r
                        .to
                        .iter()
                        .map(|t| Ports {
                            ports: t.ports.clone(),
                            not_ports: t.not_ports.clone(),
                        })
                        .collect(),
                })
            })
            .collect::<Result<_, PolicyError>>()?;
        Ok(Self {
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            selector: spec.selector.clone(),
            action: spec.action,
            rules,
        })
    }

    fn applies_to(&self, w: &Workload) -> bool {
        (self.namespace == ROOT_NAMESPACE || self.namespace == w.namespace)
            && self
                .selector
                .iter()
                .all(|(k, v)| w.labels.get(k) == Some(v))
    }

    fn matches(&self, c: &Connection) -> bool {
        self.rules.iter().any(|r| r.matches(c))
    }
}

/// Decides whether `conn` may reach `dst`.
pub fn authorize(
    policies: &[CompiledPolicy],
    dst: &Workload,
    conn: &Connection,
) -> Result<(), Denied> {
    let mut any_allow = false;
    for p in policies.iter().filter(|p| p.applies_to(dst)) {
        match p.action {
            PolicyAction::Deny if p.matches(conn) => {
                return Err(Denied {
                    by: format!("{}/{}", p.namespace, p.name),
                })
            }
            PolicyAction::Deny => {}
            PolicyAction::Allow => any_allow = true,
        }
    }
    if !any_allow {
        return Ok(());
    }
    let allowed = policies
        .iter()
        .filter(|p| p.action == PolicyAction::Allow && p.applies_to(dst))
        .any(|p| p.matches(conn));
    if allowed {
        Ok(())
    } else {
        Err(Denied {
            by: "no ALLOW policy matched".to_string(),
        })
    }
}

#[cfg(test)]
mod tests;
