use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::meshconfig::*;

fn workload() -> impl Strategy<Value = WorkloadSpec> {
    (
        "[a-d]{1,2}",
        "ns[12]",
        "sa[ab]",
        any::<u8>(),
        "node-[01]",
        any::<bool>(),
    )
        .prop_map(|(name, namespace, sa, ip, node, captured)| WorkloadSpec {
            name,
            namespace,
            service_account: sa,
            uid: None,
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, ip)),
            node,
            netns: None,
            labels: BTreeMap::from([("app".to_string(), "x".to_string())]),
            captured,
            mtls_mode: None,
            healthy: true,
            waypoint: None,
        })
}

fn service() -> impl Strategy<Value = ServiceSpec> {
    ("[a-c]", "ns[12]", 1u16..4).prop_map(|(name, namespace, port)| ServiceSpec {
        name,
        namespace,
        vips: vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, port as u8))],
        ports: vec![ServicePort {
            port,
            target_port: None,
        }],
        selector: BTreeMap::new(),
        waypoint: None,
    })
}

fn policy() -> impl Strategy<Value = PolicySpec> {
    ("[a-c]", "ns[12]", any::<bool>()).prop_map(|(name, namespace, allow)| PolicySpec {
        name,
        namespace,
        selector: BTreeMap::new(),
        action: if allow {
            PolicyAction::Allow
        } else {
            PolicyAction::Deny
        },
        rules: vec![],
    })
}

pub(crate) fn config() -> impl Strategy<Value = MeshConfig> {
    (
        prop::collection::vec(workload(), 0..8),
        prop::collection::vec(service(), 0..4),
        prop::collection::vec(policy(), 0..4),
        any::<bool>(),
        "(cluster\\.local|td\\.example)",
    )
        .prop_map(|(workloads, services, policies, strict, td)| MeshConfig {
            trust_domain: td,
            default_mtls_mode: if strict {
                MtlsMode::Strict
            } else {
                MtlsMode::Permissive
            },
            workloads: workloads.into_iter().map(Arc::new).collect(),
            services,
            policies,
            ..Default::default()
        })
}

proptest! {
    #[test]
    fn applying_the_delta_yields_the_target(a in config(), b in config()) {
        let sa = ResourceSet::from_config(&a).unwrap();
        let sb = ResourceSet::from_config(&b).unwrap();
        let d = delta(&sa.versions(), &sb);
        let mut held = sa.clone();
        held.apply(&d.upserts, &d.removes, false);
        prop_assert_eq!(&held, &sb);
        prop_assert_eq!(held.to_config().unwrap(), canonical(&b).unwrap());
        // Only what differs travels.
        for r in &d.upserts {
            prop_assert_ne!(sa.0.get(&r.key).map(|x| &x.version), Some(&r.version));
        }
        prop_assert!(delta(&sb.versions(), &sb).is_empty());
    }

    #[test]
    fn canonical_form_round_trips(a in config()) {
        let c = canonical(&a).unwrap();
        prop_assert_eq!(canonical(&c).unwrap(), c.clone());
        // Same elements, maybe reordered.
        prop_assert_eq!(c.workloads.len(), a.workloads.len());
        prop_assert_eq!(c.trust_domain, a.trust_domain);
    }
}

#[test]
fn a_changed_workload_is_the_only_upsert() {
    let mut cfg = MeshConfig {
        trust_domain: "cluster.local".into(),
        ..Default::default()
    };
    let w = |name: &str, ip: u8| WorkloadSpec {
        name: name.into(),
        namespace: "default".into(),
        service_account: "default".into(),
        uid: None,
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, ip)),
        node: "n".into(),
        netns: None,
        labels: BTreeMap::new(),
        captured: true,
        mtls_mode: None,
        healthy: true,
        waypoint: None,
    };
    cfg.workloads = vec![Arc::new(w("a", 1)), Arc::new(w("b", 2))];
    let before = ResourceSet::from_config(&cfg).unwrap();
    assert!(before.0.contains_key("workloads/default/a"));
    assert!(before.0.contains_key(GLOBALS));
    Arc::make_mut(&mut cfg.workloads[1]).healthy = false;
    let d = delta(&before.versions(), &ResourceSet::from_config(&cfg).unwrap());
    let keys: Vec<&str> = d.upserts.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["workloads/default/b"]);
    assert!(d.removes.is_empty());
    // Removing every workload removes them, the globals placeholder keeps the list.
    cfg.workloads.clear();
    let after = ResourceSet::from_config(&cfg).unwrap();
    let d = delta(&before.versions(), &after);
    assert_eq!(d.removes.len(), 2);
    assert_eq!(after.to_config().unwrap(), cfg);
}

#[test]
fn duplicate_keys_are_kept_apart() {
    let cfg = MeshConfig {
        policies: vec![
            PolicySpec {
                name: "p".into(),
                namespace: "n".into(),
                selector: BTreeMap::new(),
                action: PolicyAction::Allow,
                rules: vec![],
            };
            2
        ],
        ..Default::default()
    };
    let set = ResourceSet::from_config(&cfg).unwrap();
    assert!(set.0.contains_key("policies/n/p#2"));
    assert_eq!(set.to_config().unwrap().policies.len(), 2);
}
