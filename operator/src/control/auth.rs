//! Who is calling: proxies present their projected ServiceAccount token as a bearer token,
//! which a [`TokenReviewer`] turns into a [`Caller`] (through the API server's TokenReview in
//! a cluster, from a table in tests). Answers are cached briefly, keyed by a hash of the token.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ambit_core::certs::BoxFuture;

/// An authenticated proxy: its pod's namespace and service account, and (for projected
/// tokens bound to a pod) the pod and node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
    pub pod: Option<String>,
    pub node: Option<String>,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service_account)?;
        if let Some(pod) = &self.pod {
            write!(f, " (pod {pod}")?;
            if let Some(node) = &self.node {
                write!(f, " on node {node}")?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

impl Caller {
    /// From a Kubernetes username `system:serviceaccount:<ns>:<sa>`.
    pub fn from_username(
        username: &str,
        pod: Option<String>,
        node: Option<String>,
    ) -> Result<Self, ReviewError> {
        let parts: Vec<&str> = username.split(':').collect();
        match parts.as_slice() {
            ["system", "serviceaccount", ns, sa] if !ns.is_empty() && !sa.is_empty() => {
                Ok(Caller {
                    namespace: ns.to_string(),
                    service_account: sa.to_string(),
                    pod,
                    node,
                })
            }
            _ => Err(ReviewError::Invalid(format!(
                "token belongs to {username:?}, not a ServiceAccount"
            ))),
        }
    }
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    /// The token is not valid (401).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The reviewer could not answer (503: retry later).
    #[error("token review unavailable: {0}")]
    Unavailable(String),
}

pub trait TokenReviewer: Send + Sync + 'static {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, ReviewError>>;
}

/// A fixed token table (tests, the sandbox). Tokens can be added and revoked at run time.
#[derive(Default)]
pub struct StaticReviewer {
    tokens: RwLock<HashMap<String, Caller>>,
}

impl StaticReviewer {
    pub fn insert(&self, token: &str, caller: Caller) {
        self.tokens
            .write()
            .expect("tokens lock")
            .insert(token.to_string(), caller);
    }
    pub fn revoke(&self, token: &str) {
        self.tokens.write().expect("tokens lock").remove(token);
    }
}

impl TokenReviewer for StaticReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, ReviewError>> {
        let found = self.tokens.read().expect("tokens lock").get(token).cloned();
        Box::pin(async move {
            found.ok_or_else(|| ReviewError::Invalid("token is not known to the mesh".into()))
        })
    }
}

/// Caches another reviewer's answers (positive and negative) for `ttl`, keyed by a keyed
/// hash of the token, so tokens are not kept in memory and a reconnect storm does not turn
/// into a TokenReview storm. Unavailability is not cached.
pub struct CachedReviewer {
    inner: Arc<dyn TokenReviewer>,
    ttl: Duration,
    hasher: RandomState,
    cache: Mutex<HashMap<u64, CacheEntry>>,
}

type CacheEntry = (Instant, Result<Caller, ReviewError>);

/// Cache entries beyond which expired ones are swept.
const SWEEP_AT: usize = 4096;

impl CachedReviewer {
    pub fn new(inner: Arc<dyn TokenReviewer>, ttl: Duration) -> Self {
        Self {
            inner,
            ttl,
            hasher: RandomState::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }
}

impl TokenReviewer for CachedReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, ReviewError>> {
        Box::pin(async move {
            let key = self.hasher.hash_one(token);
            let now = Instant::now();
            if let Some((at, answer)) = self.cache.lock().expect("cache lock").get(&key) {
                if now.duration_since(*at) < self.ttl {
                    return answer.clone();
                }
            }
            let answer = self.inner.review(token).await;
            if !matches!(answer, Err(ReviewError::Unavailable(_))) {
                let mut cache = self.cache.lock().expect("cache lock");
                if cache.len() >= SWEEP_AT {
                    let ttl = self.ttl;
                    cache.retain(|_, (at, _)| now.duration_since(*at) < ttl);
                }
                cache.insert(key, (now, answer.clone()));
            }
            answer
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(StaticReviewer, AtomicUsize);
    impl TokenReviewer for Counting {
        fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, ReviewError>> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.review(token)
        }
    }

    #[test]
    fn usernames_parse() {
        let c = Caller::from_username("system:serviceaccount:ambit-system:ztunnel", None, None)
            .unwrap();
        assert_eq!(
            (c.namespace.as_str(), c.service_account.as_str()),
            ("ambit-system", "ztunnel")
        );
        for bad in ["admin", "system:serviceaccount:ns", "system:node:n1:x"] {
            assert!(Caller::from_username(bad, None, None).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn answers_are_cached_until_the_ttl() {
        let inner = Arc::new(Counting(StaticReviewer::default(), AtomicUsize::new(0)));
        let caller = Caller::from_username("system:serviceaccount:a:b", None, None).unwrap();
        inner.0.insert("t", caller.clone());
        let cached = CachedReviewer::new(inner.clone(), Duration::from_millis(300));
        assert_eq!(cached.review("t").await.unwrap(), caller);
        assert!(cached.review("nope").await.is_err());
        inner.0.revoke("t");
        // Still cached: no second review.
        assert_eq!(cached.review("t").await.unwrap(), caller);
        assert!(cached.review("nope").await.is_err());
        assert_eq!(inner.1.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            cached.review("t").await.is_err(),
            "revocation is seen after the TTL"
        );
        assert_eq!(inner.1.load(Ordering::SeqCst), 3);
    }
}
