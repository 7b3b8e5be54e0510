//! Policy evaluation, including how L7 conditions are handled at L4.

use super::*;
use crate::config::MeshConfig;
use crate::state::ProxyState;

fn state(policies: &str) -> ProxyState {
    let yaml = format!(
        "workloads:\n  - {{name: b, namespace: prod, ip: 10.0.0.2, node: n, labels: {{app: b}}}}\npolicies:\n{policies}"
    );
    let cfg: MeshConfig = serde_yaml::from_str(&yaml).unwrap();
    ProxyState::build(&cfg).unwrap()
}

fn check(s: &ProxyState, who: Option<&str>, ip: &str, port: u16) -> Result<(), Denied> {
    let id: Option<Identity> = who.map(|w| w.parse().unwrap());
    let dst = s.workload(&"10.0.0.2".parse().unwrap()).unwrap();
    authorize(
        &s.policies,
        dst,
        &Connection {
            src_identity: id.as_ref(),
            src_ip: ip.parse().unwrap(),
            dst_port: port,
        },
    )
}

const FRONT: &str = "spiffe://cluster.local/ns/web/sa/frontend";
const OTHER: &str = "spiffe://cluster.local/ns/dev/sa/tool";

#[test]
fn no_policy_allows_everything() {
    let s = state("  []\n");
    assert!(check(&s, None, "1.2.3.4", 80).is_ok());
}

#[test]
fn allow_policy_admits_only_matches() {
    let s = state(&format!(
        "  - name: allow-front\n    namespace: prod\n    selector: {{app: b}}\n    action: ALLOW\n    rules:\n      - from: [{{principals: ['{FRONT}']}}]\n        to: [{{ports: [8080]}}]\n"
    ));
    assert!(check(&s, Some(FRONT), "10.1.0.1", 8080).is_ok());
    assert!(check(&s, Some(FRONT), "10.1.0.1", 9090).is_err());
    assert!(check(&s, Some(OTHER), "10.1.0.1", 8080).is_err());
    assert!(
        check(&s, None, "10.1.0.1", 8080).is_err(),
        "plaintext has no principal"
    );
}

#[test]
fn deny_wins_over_allow() {
    let s = state(
        "  - {name: allow-all, namespace: prod, action: ALLOW, rules: [{}]}\n  - name: deny-dev\n    namespace: prod\n    action: DENY\n    rules: [{from: [{namespaces: [dev]}]}]\n");
    assert!(check(&s, Some(FRONT), "10.1.0.1", 80).is_ok());
    let denied = check(&s, Some(OTHER), "10.1.0.1", 80).unwrap_err();
    assert_eq!(denied.by, "prod/deny-dev");
}

#[test]
fn negations_wildcards_and_ip_blocks() {
    let s = state(
        "  - name: deny-outsiders\n    namespace: ambit-system\n    action: DENY\n    rules:\n      - from: [{notPrincipals: ['spiffe://cluster.local/ns/web/*'], notIpBlocks: ['10.1.0.0/16']}]\n",
    );
    assert!(
        check(&s, Some(FRONT), "192.168.1.1", 80).is_ok(),
        "principal exempts"
    );
    assert!(
        check(&s, Some(OTHER), "10.1.2.3", 80).is_ok(),
        "ip block exempts"
    );
    assert!(check(&s, Some(OTHER), "192.168.1.1", 80).is_err());
    assert!(
        check(&s, None, "192.168.1.1", 80).is_err(),
        "plaintext matches notPrincipals"
    );
}

#[test]
fn empty_allow_policy_denies_all_and_selector_scopes() {
    let s = state("  - {name: lockdown, namespace: prod, action: ALLOW}\n");
    assert!(check(&s, Some(FRONT), "10.1.0.1", 80).is_err());
    let s = state("  - {name: lockdown, namespace: prod, selector: {app: other}, action: ALLOW}\n");
    assert!(
        check(&s, Some(FRONT), "10.1.0.1", 80).is_ok(),
        "not selected"
    );
}

#[test]
fn allow_rule_with_l7_conditions_never_matches_at_l4() {
    // Without `methods` the first rule would admit FRONT on 8080.
    let s = state(&format!(
        "  - name: allow-get\n    namespace: prod\n    action: ALLOW\n    rules:\n      - from: [{{principals: ['{FRONT}']}}]\n        to: [{{ports: [8080], methods: [GET]}}]\n      - from: [{{principals: ['{OTHER}']}}]\n"
    ));
    let denied = check(&s, Some(FRONT), "10.1.0.1", 8080).unwrap_err();
    assert_eq!(denied.by, "no ALLOW policy matched");
    assert!(
        check(&s, Some(OTHER), "10.1.0.1", 8080).is_ok(),
        "the policy's L4-only rule still admits"
    );
    // One L7 entry in `to` is enough, whatever the field, even beside an L4-only entry.
    for field in [
        "methods",
        "notMethods",
        "paths",
        "notPaths",
        "hosts",
        "notHosts",
    ] {
        let s = state(&format!(
            "  - name: p\n    namespace: prod\n    action: ALLOW\n    rules: [{{to: [{{ports: [8080]}}, {{{field}: [x]}}]}}]\n"
        ));
        assert!(
            check(&s, Some(FRONT), "10.1.0.1", 8080).is_err(),
            "{field} must make the ALLOW rule unmatchable"
        );
    }
    let dump = serde_json::to_value(&s.policies).unwrap();
    assert_eq!(dump[0]["rules"][0]["neverMatches"], true, "{dump}");
}

#[test]
fn deny_rule_with_l7_conditions_denies_on_its_l4_part() {
    let s = state(
        "  - name: deny-dev-post\n    namespace: prod\n    action: DENY\n    rules:\n      - from: [{namespaces: [dev]}]\n        to: [{ports: [8080], methods: [POST], paths: ['/admin*']}]\n",
    );
    let denied = check(&s, Some(OTHER), "10.1.0.1", 8080).unwrap_err();
    assert_eq!(
        denied.by, "prod/deny-dev-post",
        "any method, any path: denied"
    );
    assert!(
        check(&s, Some(OTHER), "10.1.0.1", 9090).is_ok(),
        "the L4 port condition still applies"
    );
    assert!(
        check(&s, Some(FRONT), "10.1.0.1", 8080).is_ok(),
        "the L4 source condition still applies"
    );
    // Only L7 conditions: the L4 rest is "any", so it denies everything it selects.
    let s = state("  - {name: deny-hosts, namespace: prod, action: DENY, rules: [{to: [{notHosts: [a.example]}]}]}\n");
    assert!(check(&s, Some(FRONT), "10.1.0.1", 80).is_err());
    assert!(check(&s, None, "10.1.0.1", 80).is_err());
    let dump = serde_json::to_value(&s.policies).unwrap();
    assert_eq!(dump[0]["rules"][0]["hasL7"], true, "{dump}");
    assert!(dump[0]["rules"][0].get("neverMatches").is_none(), "{dump}");
}

#[test]
fn bad_policy_input_is_reported() {
    let cfg: MeshConfig = serde_yaml::from_str(
        "policies:\n  - {name: p, namespace: n, action: DENY, rules: [{from: [{ipBlocks: ['10.0.0.0/33']}]}]}\n",
    )
    .unwrap();
    let err = ProxyState::build(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("policies[0] (n/p)") && err.contains("10.0.0.0/33"),
        "{err}"
    );
    assert_eq!(
        Pattern::parse("a*b").unwrap_err(),
        PolicyError::BadPattern("a*b".into())
    );
}
