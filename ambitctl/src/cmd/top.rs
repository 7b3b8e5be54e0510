//! `ambitctl top` (alias `traffic`): live per-service traffic from two scrapes of the proxies'
//! Prometheus metrics.
//!
//! HTTP services (behind a waypoint): request rate, success rate (non-5xx) and p99 latency
//! from `ambit_requests_total` and `ambit_request_duration_milliseconds`. Every service or
//! workload ztunnel carried: connection rate and byte rate from `ambit_tcp_*`. A connection
//! between two nodes is counted by both ends (reporter `source` and `destination`, and a
//! waypoint in between reports it too); `top` takes whichever reporter saw more, so meshed
//! and plaintext callers are both counted once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::ctx::Ctx;
use crate::error::{usage, CliError, Result};
use crate::output::{print_structured, Format, Table};
use crate::prom::{self, Sample};
use crate::targets::{fetch, Endpoint};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  ambitctl top                       # refresh every 2 s until Ctrl-C
  ambitctl top --interval 5s
  ambitctl top --once -o json        # one interval, machine-readable
  ambitctl top --metrics 10.0.0.7:15020 --once")]
pub struct TopArgs {
    /// Time between the two scrapes a rate is computed from (and between refreshes).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Print one table after one interval and exit.
    #[arg(long)]
    pub once: bool,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceTraffic {
    pub service: String,
    pub protocol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<f64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    interval_seconds: f64,
    endpoints: usize,
    services: Vec<ServiceTraffic>,
    errors: Vec<String>,
}

type Key = Vec<String>;

fn delta(a: &BTreeMap<Key, f64>, b: &BTreeMap<Key, f64>) -> BTreeMap<Key, f64> {
    b.iter()
        .map(|(k, v)| {
            let old = a.get(k).copied().unwrap_or(0.0);
            (k.clone(), if *v >= old { v - old } else { *v })
        })
        .collect()
}

/// Service name of an L4 sample: the Service when traffic was addressed to one, else the
/// destination workload as `namespace/name`.
fn l4_keyed(m: BTreeMap<Key, f64>) -> BTreeMap<(String, String), f64> {
    // key = [reporter, destination_service, destination_workload_namespace, destination_workload]
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let svc = if !k[1].is_empty() {
            k[1].clone()
        } else if !k[3].is_empty() {
            format!("{}/{}", k[2], k[3])
        } else {
            "unknown".to_string()
        };
        *out.entry((svc, k[0].clone())).or_insert(0.0) += v;
    }
    out
}

/// Per-service traffic over `secs` seconds between scrapes `a` and `b` (all endpoints merged).
pub fn compute(a: &[Sample], b: &[Sample], secs: f64) -> Vec<ServiceTraffic> {
    let mut out: BTreeMap<String, ServiceTraffic> = BTreeMap::new();
    let by = ["destination_service", "response_code"];
    let req = delta(
        &prom::sum_by(a, "ambit_requests_total", &by),
        &prom::sum_by(b, "ambit_requests_total", &by),
    );
    for (k, n) in &req {
        let e = out.entry(k[0].clone()).or_insert_with(|| ServiceTraffic {
            service: k[0].clone(),
            protocol: "HTTP".into(),
            requests_per_second: Some(0.0),
            ..Default::default()
        });
        *e.requests_per_second.get_or_insert(0.0) += n / secs;
        let ok = if k[1].starts_with('5') { 0.0 } else { *n };
        *e.success_rate.get_or_insert(0.0) += ok;
    }
    for e in out.values_mut() {
        let total = e.requests_per_second.unwrap_or(0.0) * secs;
        e.success_rate = (total > 0.0).then(|| e.success_rate.unwrap_or(0.0) / total);
    }
    let h = "ambit_request_duration_milliseconds";
    let ha = prom::buckets_by(a, h, &["destination_service"]);
    for (k, after) in prom::buckets_by(b, h, &["destination_service"]) {
        let d = prom::bucket_delta(ha.get(&k), &after);
        if let Some(e) = out.get_mut(&k[0]) {
            e.p99_ms = prom::histogram_quantile(0.99, &d);
        }
    }
    let l4 = [
        "reporter",
        "destination_service",
        "destination_workload_namespace",
        "destination_workload",
    ];
    let conns = l4_keyed(delta(
        &prom::sum_by(a, "ambit_tcp_connections_opened_total", &l4),
        &prom::sum_by(b, "ambit_tcp_connections_opened_total", &l4),
    ));
    let mut bytes = BTreeMap::new();
    for name in [
        "ambit_tcp_sent_bytes_total",
        "ambit_tcp_received_bytes_total",
    ] {
        for (k, v) in l4_keyed(delta(
            &prom::sum_by(a, name, &l4),
            &prom::sum_by(b, name, &l4),
        )) {
            *bytes.entry(k).or_insert(0.0) += v;
        }
    }
    let services: std::collections::BTreeSet<String> = conns
        .keys()
        .chain(bytes.keys())
        .map(|(s, _)| s.clone())
        .collect();
    for svc in services {
        // The side that saw more (see the module docs).
        let side = |m: &BTreeMap<(String, String), f64>| {
            m.iter()
                .filter(|((s, _), _)| *s == svc)
                .map(|(_, v)| *v)
                .fold(0.0, f64::max)
        };
        let e = out.entry(svc.clone()).or_insert_with(|| ServiceTraffic {
            service: svc.clone(),
            protocol: "TCP".into(),
            ..Default::default()
        });
        e.connections_per_second = Some(side(&conns) / secs);
        e.bytes_per_second = Some(side(&bytes) / secs);
    }
    out.into_values().collect()
}

async fn scrape_all(
    client: Option<&kube::Client>,
    eps: &[Endpoint],
) -> Vec<std::result::Result<Vec<Sample>, String>> {
    let mut out = vec![];
    for ep in eps {
        let r = match fetch(client, ep, "/metrics").await {
            Ok(text) => prom::parse(&text).map_err(|e| format!("{}: {e}", ep.describe())),
            Err(e) => Err(e.to_string()),
        };
        out.push(r);
    }
    out
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

fn render(services: &[ServiceTraffic]) -> String {
    let mut t = Table::new(&[
        "SERVICE", "PROTO", "RPS", "SUCCESS", "P99", "CONN/S", "BYTES/S",
    ]);
    for s in services {
        t.row(vec![
            s.service.clone(),
            s.protocol.clone(),
            opt(s.requests_per_second, |v| format!("{v:.1}")),
            opt(s.success_rate, |v| format!("{:.1}%", v * 100.0)),
            opt(s.p99_ms, |v| format!("{v:.1}ms")),
            opt(s.connections_per_second, |v| format!("{v:.1}")),
            opt(s.bytes_per_second, |v| format!("{v:.0}")),
        ]);
    }
    t.render()
}

pub async fn run(ctx: &Ctx, args: TopArgs) -> Result<()> {
    let client = ctx.optional_client().await;
    let targets = ctx.targets(client.as_ref()).await?;
    let mut eps: Vec<Endpoint> = targets
        .nodes
        .iter()
        .filter_map(|n| n.metrics.clone())
        .collect();
    eps.extend(targets.waypoints.iter().filter_map(|w| w.metrics.clone()));
    eps.extend(targets.extra_metrics.iter().cloned());
    if eps.is_empty() {
        return Err(usage(
            "no metrics endpoints known: start the sandbox (`ambitctl local up`), point at a cluster, or pass --metrics ADDR",
        ));
    }
    let mut before = scrape_all(client.as_ref(), &eps).await;
    let mut t0 = Instant::now();
    loop {
        tokio::time::sleep(args.interval).await;
        let after = scrape_all(client.as_ref(), &eps).await;
        let secs = t0.elapsed().as_secs_f64();
        t0 = Instant::now();
        let (mut a, mut b, mut errors, mut ok) = (vec![], vec![], vec![], 0);
        for (x, y) in before.iter().zip(&after) {
            match (x, y) {
                (Ok(x), Ok(y)) => {
                    a.extend(x.iter().cloned());
                    b.extend(y.iter().cloned());
                    ok += 1;
                }
                (Err(e), _) | (_, Err(e)) => errors.push(e.clone()),
            }
        }
        if ok == 0 {
            return Err(CliError::Unreachable(format!(
                "no metrics endpoint answered: {}",
                errors.join("; ")
            )));
        }
        let services = compute(&a, &b, secs);
        match ctx.format() {
            Format::Table => {
                if !args.once {
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", render(&services));
                for e in &errors {
                    eprintln!("warning: {e}");
                }
            }
            f => print_structured(
                f,
                &Report {
                    interval_seconds: secs,
                    endpoints: ok,
                    services,
                    errors,
                },
            ),
        }
        if args.once {
            return Ok(());
        }
        before = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_and_tcp_services_from_two_scrapes() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let mut a =
            prom::parse(&std::fs::read_to_string(format!("{dir}/waypoint-metrics-1.txt")).unwrap())
                .unwrap();
        let mut b =
            prom::parse(&std::fs::read_to_string(format!("{dir}/waypoint-metrics-2.txt")).unwrap())
                .unwrap();
        let zt = |n: u32, src: u32| {
            format!(
                "ambit_tcp_connections_opened_total{{reporter=\"source\",destination_service=\"db.data.svc\",destination_workload=\"db-0\",destination_workload_namespace=\"data\"}} {src}\n\
                 ambit_tcp_connections_opened_total{{reporter=\"destination\",destination_service=\"\",destination_workload=\"db-0\",destination_workload_namespace=\"data\"}} {n}\n\
                 ambit_tcp_sent_bytes_total{{reporter=\"source\",destination_service=\"db.data.svc\"}} {}\n",
                src * 100
            )
        };
        a.extend(prom::parse(&zt(5, 10)).unwrap());
        b.extend(prom::parse(&zt(25, 30)).unwrap());
        let s = compute(&a, &b, 2.0);
        let reviews = s.iter().find(|x| x.service.starts_with("reviews")).unwrap();
        assert_eq!(reviews.protocol, "HTTP");
        assert_eq!(reviews.requests_per_second, Some(100.0));
        assert!((reviews.success_rate.unwrap() - 0.95).abs() < 1e-9);
        assert_eq!(reviews.p99_ms, Some(50.0));
        let ratings = s.iter().find(|x| x.service.starts_with("ratings")).unwrap();
        assert_eq!(
            (ratings.requests_per_second, ratings.success_rate),
            (Some(0.0), None)
        );
        let db = s.iter().find(|x| x.service == "db.data.svc").unwrap();
        assert_eq!(
            (
                db.protocol.as_str(),
                db.connections_per_second,
                db.bytes_per_second
            ),
            ("TCP", Some(10.0), Some(1000.0))
        );
        let by_workload = s.iter().find(|x| x.service == "data/db-0").unwrap();
        assert_eq!(by_workload.connections_per_second, Some(10.0));
        assert!(render(&s).contains("95.0%"));
    }
}
