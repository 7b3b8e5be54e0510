//! Step 6 of `local up`: requests from the client pod to Services by VIP while the nodes'
//! interfaces are captured, then what the wire and the ztunnels say about them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use ambit_testkit::{contains, tcp_payloads_to_port, Capture, NetNs};
use serde_json::{json, Value};

use crate::demo_app::get_json;

/// Strings only the demo app's answers contain: seen on a node's wire means plaintext.
const MARKERS: [&str; 2] = ["William Shakespeare", "Absolutely fun and entertaining"];

pub struct Targets {
    pub productpage: SocketAddr,
    pub reviews: SocketAddr,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    by_version: BTreeMap<String, u64>,
    last_error: Option<String>,
}

impl Tally {
    fn json(&self) -> Value {
        json!({"ok": self.ok, "failed": self.failed, "byVersion": self.by_version,
               "lastError": self.last_error})
    }
    fn record(&mut self, r: anyhow::Result<Value>, version: impl Fn(&Value) -> Option<String>) {
        match r {
            Ok(v) => {
                self.ok += 1;
                if let Some(ver) = version(&v) {
                    *self.by_version.entry(ver).or_default() += 1;
                }
            }
            Err(e) => {
                self.failed += 1;
                self.last_error = Some(format!("{e:#}"));
            }
        }
    }
}

/// `requests` GETs to each target from inside `client_netns`, with every node captured.
pub fn run(
    client_netns: &Path,
    nodes: &[NetNs],
    t: &Targets,
    requests: u64,
) -> anyhow::Result<Value> {
    let captures = nodes
        .iter()
        .map(Capture::start)
        .collect::<Result<Vec<_>, _>>()?;
    let (pp, rv) = (t.productpage, t.reviews);
    let tallies = ambit_core::netns::run_in_thread(client_netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let (mut page, mut reviews) = (Tally::default(), Tally::default());
            for _ in 0..requests {
                page.record(get_json(&format!("http://{pp}/productpage")).await, |v| {
                    v["reviews"]["version"].as_str().map(String::from)
                });
                reviews.record(get_json(&format!("http://{rv}/reviews/0")).await, |v| {
                    v["version"].as_str().map(String::from)
                });
            }
            Ok::<_, anyhow::Error>((page, reviews))
        })
    })??;
    let frames: Vec<Vec<u8>> = captures.into_iter().flat_map(Capture::stop).collect();
    let plaintext = MARKERS.iter().any(|m| contains(&frames, m.as_bytes()));
    Ok(json!({
        "productpage": tallies.0.json(),
        "reviews": tallies.1.json(),
        "wire": {"framesCaptured": frames.len(), "plaintextSeen": plaintext,
                 "hboneSegments": tcp_payloads_to_port(&frames, 15008).len(),
                 "checkedFor": MARKERS},
    }))
}
