use proptest::prelude::*;

use super::*;
use crate::control::resources::tests::config;
use crate::control::resources::{canonical, delta_between};

fn update(from: &ResourceSet, to: &ResourceSet, full: bool) -> Update {
    let d = if full {
        delta_between(&ResourceSet::default(), to)
    } else {
        delta_between(from, to)
    };
    Update {
        version: 1,
        full,
        upserts: d.upserts,
        removes: d.removes,
    }
}

fn held(cfg: &MeshConfig) -> Held {
    let resources = ResourceSet::from_config(cfg).unwrap();
    let config = Arc::new(resources.to_config().unwrap());
    Held { resources, config }
}

proptest! {
    #[test]
    fn edits_and_rebuilds_agree(a in config(), b in config(), same_globals: bool) {
        let mut b = b;
        if same_globals {
            b.trust_domain = a.trust_domain.clone();
            b.default_mtls_mode = a.default_mtls_mode;
        }
        let from = held(&a);
        let to = ResourceSet::from_config(&b).unwrap();
        let u = update(&from.resources, &to, false);
        let want = canonical(&b).unwrap();
        // A globals change always rebuilds; edits are tested whenever they are equal.
        prop_assert!(!same_globals || !u.upserts.iter().any(|r| r.key == GLOBALS));
        if same_globals {
            let mut h = from.clone();
            let cfg = h.edit(&u, &mut Vec::new()).unwrap();
            prop_assert_eq!(&h.resources, &to);
            prop_assert_eq!(&cfg, &want);
        }
        let mut h = from.clone();
        let cfg = h.apply(&u, |_| Ok(())).unwrap();
        prop_assert_eq!(&h.resources, &to);
        prop_assert_eq!(&*cfg, &want);
        prop_assert_eq!(&*h.config, &want);
        let mut h = from.clone();
        let cfg = h.apply(&update(&from.resources, &to, true), |_| Ok(())).unwrap();
        prop_assert_eq!(&h.resources, &to);
        prop_assert_eq!(&*cfg, &want);
        // Refused: nothing changes, whichever path the update took.
        let mut h = from.clone();
        let err = h.apply(&u, |_| Err("no".into())).unwrap_err();
        prop_assert_eq!(err.to_string(), "no");
        prop_assert_eq!(&h.resources, &from.resources);
        prop_assert_eq!(&h.config, &from.config);
    }
}

#[test]
fn a_resource_under_the_wrong_kind_is_refused_and_nothing_changes() {
    let mut cfg = MeshConfig::default();
    for n in 0..20 {
        cfg.policies.push(crate::meshconfig::PolicySpec {
            name: format!("p{n}"),
            namespace: "ns".into(),
            selector: Default::default(),
            action: crate::meshconfig::PolicyAction::Deny,
            rules: vec![],
        });
    }
    let mut from = held(&cfg);
    let before = from.clone();
    // A valid removal first, then a bad upsert: the removal is undone too.
    let bad = Resource::new("policies", "workloads/ns/a".into(), serde_json::json!({}));
    let u = Update {
        version: 2,
        full: false,
        upserts: vec![bad],
        removes: vec!["policies/ns/p3".into()],
    };
    let err = from.apply(&u, |_| Ok(())).unwrap_err();
    assert!(err.to_string().contains("does not match its key"), "{err}");
    assert_eq!(from.config, before.config);
    assert_eq!(from.resources, before.resources);
}

#[test]
fn an_unknown_kind_is_refused_with_what_to_do() {
    let mut from = held(&MeshConfig::default());
    let u = Update {
        version: 2,
        full: true,
        upserts: vec![Resource::new(
            "gateways",
            "gateways/ns/g".into(),
            serde_json::json!({"name": "g"}),
        )],
        removes: vec![],
    };
    let err = from.apply(&u, |_| Ok(())).unwrap_err();
    assert!(err.to_string().contains("upgrade the proxy"), "{err}");
}
