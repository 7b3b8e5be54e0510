//! SPIFFE identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

/// Trust domain used when none is configured, as in Istio and Kubernetes.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// A workload identity in Ambit's (and Istio's) SPIFFE layout.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("identity {0:?} does not start with \"spiffe://\"; expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    MissingScheme(String),
    #[error("identity {id:?}: invalid trust domain {domain:?}: {why}")]
    BadTrustDomain {
        id: String,
        domain: String,
        why: &'static str,
    },
    #[error("identity {0:?}: path must be /ns/<namespace>/sa/<service-account>")]
    BadPath(String),
    #[error("identity {id:?}: invalid {what} {value:?}: {why}")]
    BadSegment {
        id: String,
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

impl Identity {
    /// Builds an identity from parts, validating each.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        let id = Identity {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        };
        let shown = id.to_string();
        validate_trust_domain(&shown, trust_domain)?;
        validate_segment(&shown, "namespace", namespace)?;
        validate_segment(&shown, "service account", service_account)?;
        Ok(id)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

fn validate_trust_domain(id: &str, domain: &str) -> Result<(), IdentityError> {
    let bad = |why| IdentityError::BadTrustDomain {
        id: id.to_string(),
        domain: domain.to_string(),
        why,
    };
    if domain.is_empty() {
        return Err(bad("it is empty"));
    }
    if domain.len() > 255 {
        return Err(bad("it is longer than 255 characters"));
    }
    // SPIFFE: trust domains are lowercase letters, digits, '.', '-' and '_' only.
    if !domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(bad(
            "only lowercase letters, digits, '.', '-' and '_' are allowed",
        ));
    }
    Ok(())
}

fn validate_segment(id: &str, what: &'static str, value: &str) -> Result<(), IdentityError> {
    let bad = |why| IdentityError::BadSegment {
        id: id.to_string(),
        what,
        value: value.to_string(),
        why,
    };
    if value.is_empty() {
        return Err(bad("it is empty"));
    }
    if value == "." || value == ".." {
        return Err(bad("'.' and '..' are not allowed as path segments"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(bad("only letters, digits, '.', '-' and '_' are allowed"));
    }
    Ok(())
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdentityError::MissingScheme(s.to_string()))?;
        let (domain, path) = rest
            .split_once('/')
            .ok_or_else(|| IdentityError::BadPath(s.to_string()))?;
        validate_trust_domain(s, domain)?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["ns", ns, "sa", sa] => {
                validate_segment(s, "namespace", ns)?;
                validate_segment(s, "service account", sa)?;
                Ok(Identity {
                    trust_domain: domain.to_string(),
                    namespace: ns.to_string(),
                    service_account: sa.to_string(),
                })
            }
            _ => Err(IdentityError::BadPath(s.to_string())),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let s = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
        let id: Identity = s.parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-productpage");
        assert_eq!(id.to_string(), s);
        assert_eq!(
            Identity::new("cluster.local", "default", "bookinfo-productpage").unwrap(),
            id
        );
    }

    #[test]
    fn rejects_malformed() {
        let cases = [
            ("cluster.local/ns/a/sa/b", "does not start with"),
            ("spiffe://cluster.local", "path must be"),
            ("spiffe://cluster.local/ns/a/sa", "path must be"),
            ("spiffe://cluster.local/ns/a/sa/b/extra", "path must be"),
            (
                "spiffe://cluster.local/ns//sa/b",
                "namespace \"\": it is empty",
            ),
            ("spiffe://cluster.local/ns/a/sa/..", "'.' and '..'"),
            ("spiffe://Cluster.Local/ns/a/sa/b", "lowercase"),
            ("spiffe:///ns/a/sa/b", "trust domain \"\""),
            ("spiffe://td/ns/a b/sa/c", "only letters"),
            ("spiffe://td/pod/a/sa/c", "path must be"),
        ];
        for (input, want) in cases {
            let err = input.parse::<Identity>().unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err} should contain {want}");
        }
    }
}
