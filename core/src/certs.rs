//! Workload certificates: fetching them from a provider (the operator's CA, or a local CA in
//! tests and the sandbox), holding the current one, and rotating at half-life.
//!
//! Rotation swaps what *new* TLS handshakes use; established connections keep the session
//! they negotiated, so a rotation never drops a live connection.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use tracing::{info, warn};

use crate::ca::{generate_csr, CaError, CertificateAuthority};
use crate::identity::Identity;
use crate::x509::{validity_of, CertParseError};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate authority refused {identity}: {source}")]
    Ca {
        identity: String,
        #[source]
        source: CaError,
    },
    #[error("certificate provider unreachable: {0}")]
    Unavailable(String),
    #[error("issued certificate for {identity} is unusable: {why}")]
    Unusable { identity: String, why: String },
    #[error(transparent)]
    Parse(#[from] CertParseError),
}

/// What a provider returns for a signed CSR.
#[derive(Clone, Debug)]
pub struct SignedCert {
    /// Leaf first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// Trust anchors to verify peers with (several during a root rotation).
    pub roots: Vec<CertificateDer<'static>>,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that signs CSRs: the operator's CA client, or a local CA.
pub trait CertificateProvider: Send + Sync + 'static {
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_der: Vec<u8>,
    ) -> BoxFuture<'a, Result<SignedCert, CertError>>;
}

/// An in-process CA as a provider: used by tests, the sandbox and file-configured ztunnels.
pub struct LocalCa {
    pub ca: Arc<CertificateAuthority>,
    pub leaf_ttl: Duration,
    /// Extra roots to trust besides the CA's own (e.g. during root rotation).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl CertificateProvider for LocalCa {
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_der: Vec<u8>,
    ) -> BoxFuture<'a, Result<SignedCert, CertError>> {
        Box::pin(async move {
            let leaf = self
                .ca
                .sign_csr(&csr_der, identity, self.leaf_ttl)
                .map_err(|source| CertError::Ca {
                    identity: identity.to_string(),
                    source,
                })?;
            let mut roots = vec![self.ca.root_der()];
            roots.extend(self.extra_roots.iter().cloned());
            Ok(SignedCert {
                chain: vec![leaf],
                roots,
            })
        })
    }
}

/// One issued certificate with everything TLS needs prepared once.
pub struct WorkloadCert {
    pub identity: Identity,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub certified_key: Arc<CertifiedKey>,
    pub roots: Arc<RootCertStore>,
    pub root_ders: Vec<CertificateDer<'static>>,
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity.to_string())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WorkloadCert {
    fn build(
        identity: &Identity,
        key_pkcs8: Vec<u8>,
        signed: SignedCert,
    ) -> Result<Self, CertError> {
        let unusable = |why: String| CertError::Unusable {
            identity: identity.to_string(),
            why,
        };
        let leaf = signed
            .chain
            .first()
            .ok_or_else(|| unusable("empty certificate chain".into()))?;
        let got = crate::x509::identity_of(leaf)?;
        if &got != identity {
            return Err(unusable(format!("it carries {got}")));
        }
        let (not_before, not_after) = validity_of(leaf)?;
        let provider = crate::tls::provider();
        let key = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8)))
            .map_err(|e| unusable(format!("private key: {e}")))?;
        let certified_key = Arc::new(CertifiedKey::new(signed.chain.clone(), key));
        let mut roots = RootCertStore::empty();
        for root in &signed.roots {
            roots
                .add(root.clone())
                .map_err(|e| unusable(format!("trust root: {e}")))?;
        }
        let roots = Arc::new(roots);
        let client_verifier = crate::tls::webpki_client_verifier(roots.clone())
            .map_err(|e| unusable(format!("trust roots: {e}")))?;
        Ok(Self {
            identity: identity.clone(),
            not_before,
            not_after,
            certified_key,
            roots,
            root_ders: signed.roots,
            client_verifier,
        })
    }

    /// When to fetch the next certificate: at half of the lifetime.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life / 2
    }

    pub fn is_expired(&self) -> bool {
        SystemTime::now() >= self.not_after
    }
}

/// The live certificate of one identity; TLS configs read it on every handshake.
pub struct CertSlot {
    identity: Identity,
    current: RwLock<Arc<WorkloadCert>>,
}

impl CertSlot {
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
    pub fn current(&self) -> Arc<WorkloadCert> {
        self.current.read().expect("cert lock poisoned").clone()
    }
    /// A slot holding a fixed certificate (tests, and callers that rotate by themselves).
    pub fn fixed(cert: WorkloadCert) -> Arc<Self> {
        Arc::new(Self {
            identity: cert.identity.clone(),
            current: RwLock::new(Arc::new(cert)),
        })
    }
    fn replace(&self, cert: WorkloadCert) {
        *self.current.write().expect("cert lock poisoned") = Arc::new(cert);
    }
}

/// Hands out one shared, self-rotating [`CertSlot`] per identity.
///
/// Slots are reference counted: when the last workload using an identity goes away, its
/// rotation task notices and stops.
pub struct CertManager {
    provider: Arc<dyn CertificateProvider>,
    slots: Mutex<HashMap<Identity, Weak<CertSlot>>>,
    retry_min: Duration,
}

impl CertManager {
    pub fn new(provider: Arc<dyn CertificateProvider>) -> Arc<Self> {
        Arc::new(Self {
            provider,
            slots: Mutex::new(HashMap::new()),
            retry_min: Duration::from_millis(200),
        })
    }

    /// Fetches a certificate for `identity` (a fresh key and CSR) from the provider.
    pub async fn issue(&self, identity: &Identity) -> Result<WorkloadCert, CertError> {
        let (key, csr) = generate_csr(identity).map_err(|source| CertError::Ca {
            identity: identity.to_string(),
            source,
        })?;
        let signed = self.provider.sign(identity, csr).await?;
        WorkloadCert::build(identity, key.serialize_der(), signed)
    }

    /// The slot for `identity`, issuing the first certificate if nobody holds one yet.
    pub async fn slot(self: &Arc<Self>, identity: &Identity) -> Result<Arc<CertSlot>, CertError> {
        if let Some(slot) = self.existing(identity) {
            return Ok(slot);
        }
        let cert = self.issue(identity).await?;
        let mut slots = self.slots.lock().expect("slots lock poisoned");
        // Another task may have raced us while we were issuing; keep the first one.
        if let Some(slot) = slots.get(identity).and_then(Weak::upgrade) {
            return Ok(slot);
        }
        let slot = Arc::new(CertSlot {
            identity: identity.clone(),
            current: RwLock::new(Arc::new(cert)),
        });
        slots.insert(identity.clone(), Arc::downgrade(&slot));
        slots.retain(|_, w| w.strong_count() > 0);
        drop(slots);
        tokio::spawn(rotate(self.clone(), Arc::downgrade(&slot)));
        Ok(slot)
    }

    fn existing(&self, identity: &Identity) -> Option<Arc<CertSlot>> {
        let slots = self.slots.lock().expect("slots lock poisoned");
        slots.get(identity).and_then(Weak::upgrade)
    }

    /// Identities that currently have a live slot, with their current certificate.
    pub fn snapshot(&self) -> Vec<Arc<WorkloadCert>> {
        let slots = self.slots.lock().expect("slots lock poisoned");
        let mut out: Vec<_> = slots
            .values()
            .filter_map(Weak::upgrade)
            .map(|s| s.current())
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }
}

async fn rotate(manager: Arc<CertManager>, slot: Weak<CertSlot>) {
    let mut backoff = manager.retry_min;
    loop {
        let Some(strong) = slot.upgrade() else { return };
        let current = strong.current();
        let identity = strong.identity.clone();
        drop(strong);
        let wait = current
            .refresh_at()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(wait).await;
        if slot.strong_count() == 0 {
            return;
        }
        match manager.issue(&identity).await {
            Ok(cert) => {
                info!(%identity, not_after = ?cert.not_after, "rotated workload certificate");
                backoff = manager.retry_min;
                match slot.upgrade() {
                    Some(s) => s.replace(cert),
                    None => return,
                }
            }
            Err(error) => {
                // Keep serving with the current certificate while it is valid; retry soon.
                warn!(%identity, %error, retry_in = ?backoff, "certificate rotation failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
