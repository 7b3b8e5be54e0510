//! What an authenticated caller may do: a ztunnel gets certificates only for identities of
//! pods on its own node and subscribes to its node's config; a waypoint gets only its own
//! identity and subscribes to its own config; nobody else gets anything.

use std::collections::BTreeSet;
use std::sync::RwLock;

use ambit_core::control::proto::Target;
use ambit_core::Identity;

use super::auth::Caller;

/// Which pods run where (the operator's pod cache implements it).
pub trait WorkloadIndex: Send + Sync + 'static {
    /// Whether a pod running as `namespace`/`service_account` is scheduled on `node`.
    fn identity_on_node(&self, namespace: &str, service_account: &str, node: &str) -> bool;
}

/// An in-memory index (tests and the sandbox).
#[derive(Default)]
pub struct StaticIndex {
    pods: RwLock<BTreeSet<(String, String, String)>>,
}

impl StaticIndex {
    pub fn add(&self, namespace: &str, service_account: &str, node: &str) {
        self.pods.write().expect("index lock").insert((
            namespace.into(),
            service_account.into(),
            node.into(),
        ));
    }
    pub fn remove(&self, namespace: &str, service_account: &str, node: &str) {
        self.pods.write().expect("index lock").remove(&(
            namespace.into(),
            service_account.into(),
            node.into(),
        ));
    }
}

impl WorkloadIndex for StaticIndex {
    fn identity_on_node(&self, namespace: &str, service_account: &str, node: &str) -> bool {
        self.pods.read().expect("index lock").contains(&(
            namespace.into(),
            service_account.into(),
            node.into(),
        ))
    }
}

/// A refusal (403) with a message naming what was refused and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Denied(pub String);

#[derive(Clone, Debug)]
pub struct Authorizer {
    /// The ztunnel DaemonSet's namespace and service account.
    pub ztunnel_namespace: String,
    pub ztunnel_service_account: String,
}

impl Default for Authorizer {
    fn default() -> Self {
        Self {
            ztunnel_namespace: "ambit-system".into(),
            ztunnel_service_account: "ztunnel".into(),
        }
    }
}

impl Authorizer {
    fn is_ztunnel(&self, c: &Caller) -> bool {
        c.namespace == self.ztunnel_namespace && c.service_account == self.ztunnel_service_account
    }

    fn ztunnel_node<'c>(&self, c: &'c Caller) -> Result<&'c str, Denied> {
        c.node.as_deref().ok_or_else(|| {
            Denied(format!(
                "ztunnel {c} presented a token not bound to a node; mount a projected ServiceAccount token"
            ))
        })
    }

    pub fn may_sign(
        &self,
        caller: &Caller,
        identity: &Identity,
        index: &dyn WorkloadIndex,
    ) -> Result<(), Denied> {
        if self.is_ztunnel(caller) {
            let node = self.ztunnel_node(caller)?;
            if index.identity_on_node(identity.namespace(), identity.service_account(), node) {
                return Ok(());
            }
            return Err(Denied(format!(
                "no pod with identity {identity} is scheduled on node {node}, so its ztunnel may not get that certificate"
            )));
        }
        if caller.namespace == identity.namespace()
            && caller.service_account == identity.service_account()
        {
            return Ok(());
        }
        Err(Denied(format!(
            "{caller} may only get a certificate for its own identity, not {identity}"
        )))
    }

    pub fn may_subscribe(&self, caller: &Caller, target: &Target) -> Result<(), Denied> {
        let allowed = match target {
            Target::Node(node) => {
                self.is_ztunnel(caller) && self.ztunnel_node(caller)? == node.as_str()
            }
            Target::Waypoint { namespace, name } => {
                !self.is_ztunnel(caller)
                    && caller.namespace == *namespace
                    && caller.service_account == *name
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(Denied(format!(
                "{caller} may not subscribe to the config of {target}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(ns: &str, sa: &str, node: Option<&str>) -> Caller {
        Caller {
            namespace: ns.into(),
            service_account: sa.into(),
            pod: Some("p".into()),
            node: node.map(Into::into),
        }
    }

    #[test]
    fn ztunnels_sign_for_their_node_only() {
        let index = StaticIndex::default();
        index.add("prod", "web", "n1");
        let a = Authorizer::default();
        let zt = caller("ambit-system", "ztunnel", Some("n1"));
        let web = Identity::new("cluster.local", "prod", "web").unwrap();
        assert!(a.may_sign(&zt, &web, &index).is_ok());
        let other = caller("ambit-system", "ztunnel", Some("n2"));
        let err = a.may_sign(&other, &web, &index).unwrap_err().0;
        assert!(
            err.contains("spiffe://cluster.local/ns/prod/sa/web") && err.contains("n2"),
            "{err}"
        );
        assert!(a
            .may_sign(&caller("ambit-system", "ztunnel", None), &web, &index)
            .is_err());
        // A waypoint: only itself, whatever the index says.
        let wp = caller("prod", "wp", None);
        assert!(a
            .may_sign(
                &wp,
                &Identity::new("cluster.local", "prod", "wp").unwrap(),
                &index
            )
            .is_ok());
        assert!(a.may_sign(&wp, &web, &index).is_err());
    }

    #[test]
    fn subscriptions_follow_the_caller() {
        let a = Authorizer::default();
        let zt = caller("ambit-system", "ztunnel", Some("n1"));
        assert!(a.may_subscribe(&zt, &"node/n1".parse().unwrap()).is_ok());
        assert!(a.may_subscribe(&zt, &"node/n2".parse().unwrap()).is_err());
        assert!(a
            .may_subscribe(&zt, &"waypoint/ambit-system/ztunnel".parse().unwrap())
            .is_err());
        let wp = caller("prod", "wp", None);
        assert!(a
            .may_subscribe(&wp, &"waypoint/prod/wp".parse().unwrap())
            .is_ok());
        assert!(a
            .may_subscribe(&wp, &"waypoint/prod/other".parse().unwrap())
            .is_err());
        assert!(a.may_subscribe(&wp, &"node/n1".parse().unwrap()).is_err());
    }
}
