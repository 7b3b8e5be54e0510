#![allow(dead_code)]
use std::sync::Arc;
use std::time::Duration;

use ambit_core::ca::CertificateAuthority;
use ambit_core::certs::{CertManager, CertSlot, LocalCa};
use ambit_core::Identity;

pub fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

pub fn ca(trust_domain: &str) -> Arc<CertificateAuthority> {
    Arc::new(CertificateAuthority::generate(trust_domain, Duration::from_secs(3600)).unwrap())
}

pub fn manager(ca: &Arc<CertificateAuthority>, ttl: Duration) -> Arc<CertManager> {
    CertManager::new(Arc::new(LocalCa {
        ca: ca.clone(),
        leaf_ttl: ttl,
        extra_roots: vec![],
    }))
}

pub async fn slot(ca: &Arc<CertificateAuthority>, identity: &str) -> Arc<CertSlot> {
    manager(ca, Duration::from_secs(3600))
        .slot(&id(identity))
        .await
        .unwrap()
}
