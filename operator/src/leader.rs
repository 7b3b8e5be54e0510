//! Leader election over a `coordination.k8s.io/v1` Lease, with client-go's semantics, so two
//! operator replicas never reconcile at once.
//!
//! Expiry is judged by when *this* replica last saw the lease record change (not by comparing
//! the holder's clock with ours), so clock skew between nodes can't make two leaders. Writes
//! carry the resourceVersion they read: two candidates racing for an expired lease can't both
//! win, the API server refuses the second with a conflict.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

/// Timings (client-go's defaults).
#[derive(Clone, Debug)]
pub struct LeaseTimings {
    /// How long a lease stays valid after its last renewal.
    pub lease_duration: Duration,
    /// A leader that can't renew for this long steps down.
    pub renew_deadline: Duration,
    /// How often candidates retry and leaders renew.
    pub retry_period: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        LeaseTimings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

pub struct LeaderElector {
    api: Api<Lease>,
    lease_name: String,
    holder: String,
    timings: LeaseTimings,
    /// The last lease record seen (holder, renew time) and when we saw it change.
    observed: Option<(Option<String>, Option<Timestamp>, Instant)>,
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, lease_name: &str, holder: &str, timings: LeaseTimings) -> Self {
        LeaderElector {
            api,
            lease_name: lease_name.to_string(),
            holder: holder.to_string(),
            timings,
            observed: None,
        }
    }

    /// One round: acquires the lease if it is free or expired, renews it if we hold it.
    /// `Ok(true)` means we are the leader until at least the lease duration from now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.lease_name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.lease_name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec_acquired(now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone();
        let renewed = spec.renew_time.as_ref().map(|t| t.0);
        let changed = match &self.observed {
            Some((h, r, _)) => *h != holder || *r != renewed,
            None => true,
        };
        if changed {
            self.observed = Some((holder.clone(), renewed, Instant::now()));
        }
        let observed_at = self
            .observed
            .as_ref()
            .map(|o| o.2)
            .unwrap_or_else(Instant::now);
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(self.timings.lease_duration);
        let ours = holder.as_deref() == Some(self.holder.as_str());
        let free = holder.as_deref().is_none_or(str::is_empty);
        if !ours && !free && observed_at.elapsed() < duration {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(if ours {
            LeaseSpec {
                renew_time: Some(MicroTime(now)),
                lease_duration_seconds: Some(self.timings.lease_duration.as_secs() as i32),
                ..spec
            }
        } else {
            self.spec_acquired(now, transitions + 1)
        });
        match self
            .api
            .replace(&self.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                if !ours {
                    info!(lease = %self.lease_name, previous = ?holder, "acquired leadership");
                }
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn spec_acquired(&self, now: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(self.timings.lease_duration.as_secs() as i32),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Gives the lease up (on clean shutdown), so the other replica takes over at once instead
    /// of waiting for expiry.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.lease_name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.holder.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        lease.spec = Some(spec);
        self.api
            .replace(&self.lease_name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }

    /// Runs the election until `stop` fires, publishing whether we lead. A leader that cannot
    /// renew within the renew deadline publishes `false` (callers stop reconciling then).
    pub async fn run(mut self, leading: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        let mut last_renewed: Option<Instant> = None;
        loop {
            let result = self.try_acquire_or_renew().await;
            let now_leading = match result {
                Ok(true) => {
                    last_renewed = Some(Instant::now());
                    true
                }
                Ok(false) => false,
                Err(error) => {
                    warn!(lease = %self.lease_name, %error, "leader election: API call failed");
                    last_renewed.is_some_and(|t| t.elapsed() < self.timings.renew_deadline)
                }
            };
            if !now_leading {
                last_renewed = None;
            }
            leading.send_if_modified(|v| std::mem::replace(v, now_leading) != now_leading);
            tokio::select! {
                _ = tokio::time::sleep(self.timings.retry_period) => {}
                _ = stop.changed() => {
                    if *leading.borrow() {
                        if let Err(error) = self.release().await {
                            warn!(%error, "could not release the leader lease; the other replica waits for it to expire");
                        }
                    }
                    leading.send_replace(false);
                    return;
                }
            }
        }
    }
}
