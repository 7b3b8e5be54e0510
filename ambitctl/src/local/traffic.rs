//! Demo requests from the sandbox's client pod to a Service VIP, several in flight, tallied
//! by the reviews version that answered. `local up` shows the mesh with them (while the
//! nodes' interfaces are captured); `local traffic` measures a canary split with them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ambit_testkit::{contains, tcp_payloads_to_port, Capture, NetNs};
use serde_json::{json, Value};

use super::apps::vip;
use crate::demo_app::get_json;

/// Strings only the demo app's answers contain: seen on a node's wire means plaintext.
const MARKERS: [&str; 2] = ["William Shakespeare", "Absolutely fun and entertaining"];

/// Which Service the client calls; either way the answer names the reviews version.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// productpage, which calls details and reviews (the whole app's path).
    Productpage,
    /// reviews directly.
    Reviews,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Productpage => "productpage",
            Target::Reviews => "reviews",
        }
    }
    pub fn url(self) -> String {
        match self {
            Target::Productpage => format!("http://{}/productpage", vip("productpage")),
            Target::Reviews => format!("http://{}/reviews/0", vip("reviews")),
        }
    }
    fn reviews_version(self, answer: &Value) -> Option<String> {
        let v = match self {
            Target::Productpage => &answer["reviews"]["version"],
            Target::Reviews => &answer["version"],
        };
        v.as_str().map(String::from)
    }
}

#[derive(Default, Debug)]
pub struct Tally {
    pub ok: u64,
    pub failed: u64,
    /// Reviews version → answers.
    pub by_version: BTreeMap<String, u64>,
    pub last_error: Option<String>,
}

impl Tally {
    fn record(&mut self, target: Target, r: anyhow::Result<Value>) {
        match r {
            Ok(v) => {
                self.ok += 1;
                if let Some(ver) = target.reviews_version(&v) {
                    *self.by_version.entry(ver).or_default() += 1;
                }
            }
            Err(e) => {
                self.failed += 1;
                self.last_error = Some(format!("{e:#}"));
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        for (v, n) in other.by_version {
            *self.by_version.entry(v).or_default() += n;
        }
        self.last_error = other.last_error.or(self.last_error.take());
    }

    /// Share of `version` among the answers that named one, in percent.
    pub fn percent(&self, version: &str) -> f64 {
        let total: u64 = self.by_version.values().sum();
        if total == 0 {
            return 0.0;
        }
        let n = self.by_version.get(version).copied().unwrap_or(0);
        // Two decimals are plenty for a split and keep the JSON readable.
        (n as f64 * 10_000.0 / total as f64).round() / 100.0
    }

    /// `{"ok", "failed", "lastError", "reviews": {"v1": {"count", "percent"}, ...}}`
    pub fn json(&self) -> Value {
        let reviews: serde_json::Map<String, Value> = self
            .by_version
            .iter()
            .map(|(v, n)| (v.clone(), json!({"count": n, "percent": self.percent(v)})))
            .collect();
        json!({"ok": self.ok, "failed": self.failed, "lastError": self.last_error,
               "reviews": reviews})
    }
}

/// `requests` GETs of `target` from inside `client_netns`, `concurrency` in flight at a time,
/// each on its own connection (the mesh, not the client, pools and encrypts).
pub fn send(
    client_netns: &Path,
    target: Target,
    requests: u64,
    concurrency: usize,
) -> anyhow::Result<Tally> {
    ambit_core::netns::run_in_thread(client_netns, move || {
        // One thread, entered into the pod's namespace: every socket of this runtime is the pod's.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let url = Arc::new(target.url());
            let next = Arc::new(AtomicU64::new(0));
            let mut workers = tokio::task::JoinSet::new();
            for _ in 0..concurrency.max(1) {
                let (url, next) = (url.clone(), next.clone());
                workers.spawn(async move {
                    let mut t = Tally::default();
                    while next.fetch_add(1, Ordering::Relaxed) < requests {
                        t.record(target, get_json(&url).await);
                    }
                    t
                });
            }
            let mut all = Tally::default();
            while let Some(t) = workers.join_next().await {
                all.merge(t?);
            }
            Ok::<_, anyhow::Error>(all)
        })
    })?
}

/// `requests` through productpage with every node's interfaces captured: the answers, and
/// what the wire carried between the nodes.
pub fn shown(client_netns: &Path, nodes: &[NetNs], requests: u64) -> anyhow::Result<Value> {
    let captures = nodes
        .iter()
        .map(Capture::start)
        .collect::<Result<Vec<_>, _>>()?;
    let tally = send(client_netns, Target::Productpage, requests, 4);
    let frames: Vec<Vec<u8>> = captures.into_iter().flat_map(Capture::stop).collect();
    let tally = tally?;
    let plaintext = MARKERS.iter().any(|m| contains(&frames, m.as_bytes()));
    let mut requests = tally.json();
    requests["target"] = json!(Target::Productpage.url());
    Ok(json!({
        "requests": requests,
        "wire": {"framesCaptured": frames.len(), "plaintextSeen": plaintext,
                 "hboneSegments": tcp_payloads_to_port(&frames, 15008).len(),
                 "checkedFor": MARKERS},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_versions_and_failures_and_merges() {
        let mut a = Tally::default();
        for v in ["v1", "v1", "v1", "v2"] {
            a.record(Target::Productpage, Ok(json!({"reviews": {"version": v}})));
        }
        let mut b = Tally::default();
        b.record(Target::Reviews, Ok(json!({"version": "v2"})));
        b.record(Target::Reviews, Err(anyhow::anyhow!("refused")));
        a.merge(b);
        assert_eq!((a.ok, a.failed), (5, 1));
        assert_eq!(a.percent("v1"), 60.0);
        assert_eq!(a.percent("v2"), 40.0);
        assert_eq!(a.percent("v3"), 0.0);
        let j = a.json();
        assert_eq!(j["reviews"]["v2"]["count"], 2);
        assert_eq!(j["lastError"], "refused");
    }

    #[test]
    fn an_answer_without_a_version_counts_as_ok_but_in_no_share() {
        let mut t = Tally::default();
        t.record(Target::Productpage, Ok(json!({"reviews": "unavailable"})));
        assert_eq!(t.ok, 1);
        assert!(t.by_version.is_empty());
        assert_eq!(t.percent("v1"), 0.0);
    }
}
