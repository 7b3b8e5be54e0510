//! L7 authorization with Istio's semantics: any matching DENY policy refuses; then, if any ALLOW
//! policy applies to the destination, one of them must match; otherwise the request is allowed.
//!
//! A policy applies to a request when it lives in the destination's namespace and its selector
//! is empty or included in the destination's labels (the Service's selector for a Service, the
//! pod's labels for a workload).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_core::meshconfig::{DestinationSpec, PolicyAction, PolicySpec, SourceSpec};

/// What a request offers to the policies.
pub struct Request<'a> {
    pub principal: &'a str,
    pub namespace: &'a str,
    pub src_ip: Option<IpAddr>,
    pub port: u16,
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
}

#[derive(Debug, thiserror::Error)]
#[error("policy {policy}: {problem}")]
pub struct PolicyError {
    pub policy: String,
    pub problem: String,
}

/// `*`, `prefix*`, `*suffix` or exact, as Istio matches strings.
fn glob(pattern: &str, v: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(p) = pattern.strip_suffix('*') {
        return v.starts_with(p);
    }
    if let Some(s) = pattern.strip_prefix('*') {
        return v.ends_with(s);
    }
    pattern == v
}

fn cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, len.parse::<u8>().ok()?),
        None => {
            let ip: IpAddr = s.parse().ok()?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

fn in_cidr(block: &str, ip: IpAddr) -> bool {
    let Some((net, len)) = cidr(block) else {
        return false;
    };
    let bits = |ip: IpAddr| -> u128 {
        match ip {
            // Left-aligned, so the prefix length counts from the top for both families.
            IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
            IpAddr::V6(v) => u128::from(v),
        }
    };
    if net.is_ipv4() != ip.is_ipv4() {
        return false;
    }
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    bits(net) & mask == bits(ip) & mask
}

/// Empty list: no constraint. Otherwise any pattern must match.
fn any(list: &[String], v: &str, f: fn(&str, &str) -> bool) -> bool {
    list.is_empty() || list.iter().any(|p| f(p, v))
}
fn none(list: &[String], v: &str, f: fn(&str, &str) -> bool) -> bool {
    !list.iter().any(|p| f(p, v))
}
fn method_eq(p: &str, v: &str) -> bool {
    p.eq_ignore_ascii_case(v) || p == "*"
}
fn host_eq(p: &str, v: &str) -> bool {
    // Hosts compare case-insensitively, with or without the port.
    let v = v.to_ascii_lowercase();
    let p = p.to_ascii_lowercase();
    glob(&p, &v) || v.rsplit_once(':').is_some_and(|(h, _)| glob(&p, h))
}

fn source_matches(s: &SourceSpec, r: &Request) -> bool {
    let ip_ok = |blocks: &[String]| match r.src_ip {
        Some(ip) => blocks.iter().any(|b| in_cidr(b, ip)),
        None => false,
    };
    any(&s.principals, r.principal, glob)
        && none(&s.not_principals, r.principal, glob)
        && any(&s.namespaces, r.namespace, glob)
        && none(&s.not_namespaces, r.namespace, glob)
        && (s.ip_blocks.is_empty() || ip_ok(&s.ip_blocks))
        && !ip_ok(&s.not_ip_blocks)
}

fn destination_matches(d: &DestinationSpec, r: &Request) -> bool {
    (d.ports.is_empty() || d.ports.contains(&r.port))
        && !d.not_ports.contains(&r.port)
        && any(&d.methods, r.method, method_eq)
        && none(&d.not_methods, r.method, method_eq)
        && any(&d.paths, r.path, glob)
        && none(&d.not_paths, r.path, glob)
        && any(&d.hosts, r.host, host_eq)
        && none(&d.not_hosts, r.host, host_eq)
}

fn policy_matches(p: &PolicySpec, r: &Request) -> bool {
    p.rules.iter().any(|rule| {
        (rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, r)))
            && (rule.to.is_empty() || rule.to.iter().any(|d| destination_matches(d, r)))
    })
}

/// Rejects policies whose addresses cannot be parsed (so they don't silently match nothing).
pub fn validate(p: &PolicySpec) -> Result<(), PolicyError> {
    for rule in &p.rules {
        for s in &rule.from {
            if let Some(bad) = s
                .ip_blocks
                .iter()
                .chain(&s.not_ip_blocks)
                .find(|b| cidr(b).is_none())
            {
                return Err(PolicyError {
                    policy: format!("{}/{}", p.namespace, p.name),
                    problem: format!("ipBlocks entry {bad:?} is not an address or CIDR"),
                });
            }
        }
    }
    Ok(())
}

/// `Err(reason)` when refused: `denied_by_policy` (a DENY matched) or `not_allowed` (no ALLOW did).
pub fn authorize(
    policies: &[PolicySpec],
    dst_namespace: &str,
    dst_labels: &BTreeMap<String, String>,
    r: &Request,
) -> Result<(), (&'static str, String)> {
    let applicable = policies.iter().filter(|p| {
        p.namespace == dst_namespace && p.selector.iter().all(|(k, v)| dst_labels.get(k) == Some(v))
    });
    let mut allows = 0;
    let mut allowed = false;
    for p in applicable {
        match p.action {
            PolicyAction::Deny if policy_matches(p, r) => {
                return Err(("denied_by_policy", format!("{}/{}", p.namespace, p.name)));
            }
            PolicyAction::Deny => {}
            PolicyAction::Allow => {
                allows += 1;
                allowed |= policy_matches(p, r);
            }
        }
    }
    if allows > 0 && !allowed {
        return Err(("not_allowed", String::new()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(yaml: &str) -> Vec<PolicySpec> {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn req<'a>(principal: &'a str, method: &'a str, path: &'a str) -> Request<'a> {
        Request {
            principal,
            namespace: "shop",
            src_ip: Some("10.20.1.10".parse().unwrap()),
            port: 80,
            method,
            path,
            host: "api.shop:80",
        }
    }

    const ADMIN: &str = "spiffe://cluster.local/ns/shop/sa/admin";
    const USER: &str = "spiffe://cluster.local/ns/shop/sa/user";

    #[test]
    fn istio_semantics() {
        let p = policies(&format!(
            r#"
- name: public
  namespace: shop
  action: ALLOW
  rules: [{{to: [{{methods: [GET], paths: ["/public*"]}}]}}]
- name: admins
  namespace: shop
  action: ALLOW
  rules: [{{from: [{{principals: ["{ADMIN}"]}}], to: [{{paths: ["/admin*"]}}]}}]
- name: no-delete
  namespace: shop
  action: DENY
  rules: [{{to: [{{methods: [DELETE]}}]}}]
- name: elsewhere
  namespace: other
  action: DENY
  rules: [{{}}]
"#
        ));
        let labels = BTreeMap::new();
        let check = |r: Request| authorize(&p, "shop", &labels, &r).map_err(|e| e.0);
        assert_eq!(check(req(USER, "GET", "/public/x")), Ok(()));
        assert_eq!(check(req(USER, "POST", "/admin")), Err("not_allowed"));
        assert_eq!(check(req(ADMIN, "POST", "/admin")), Ok(()));
        assert_eq!(
            check(req(ADMIN, "DELETE", "/admin")),
            Err("denied_by_policy")
        );
        // No policy in a namespace: everything is allowed.
        assert!(authorize(&p, "empty", &labels, &req(USER, "DELETE", "/")).is_ok());
    }

    #[test]
    fn ip_blocks_hosts_and_validation() {
        let p = policies(
            r#"
- name: lan
  namespace: shop
  selector: {app: api}
  action: ALLOW
  rules: [{from: [{ipBlocks: ["10.20.0.0/16"]}], to: [{hosts: ["api.shop"]}]}]
"#,
        );
        let api: BTreeMap<_, _> = [("app".to_string(), "api".to_string())].into();
        assert!(authorize(&p, "shop", &api, &req(USER, "GET", "/")).is_ok());
        let mut r = req(USER, "GET", "/");
        r.src_ip = Some("10.30.0.1".parse().unwrap());
        assert!(authorize(&p, "shop", &api, &r).is_err());
        // The selector scopes the policy: another workload is unaffected.
        assert!(authorize(&p, "shop", &BTreeMap::new(), &r).is_ok());
        let mut bad = p[0].clone();
        bad.rules[0].from[0].ip_blocks = vec!["10.0.0.0/99".into()];
        assert!(validate(&bad).is_err());
    }
}
