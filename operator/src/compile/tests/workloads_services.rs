//! Workloads, services and waypoint assignment.

use ambit_core::meshconfig::{MtlsMode, ServicePort, WaypointRef};
use serde_json::json;

use super::super::fixtures::*;
use super::super::*;
use super::bookinfo;

#[test]
fn workloads_are_the_live_pods_of_enrolled_namespaces() {
    let mut s = bookinfo();
    s.pods.push(patch(
        pod("bookinfo", "done", "10.0.0.3", json!({})),
        json!({"status": {"phase": "Succeeded"}}),
    ));
    s.pods.push(patch(
        pod("bookinfo", "no-ip", "", json!({})),
        json!({"status": {"phase": "Pending"}}),
    ));
    s.pods.push(patch(
        pod("bookinfo", "host", "192.168.1.5", json!({})),
        json!({"spec": {"hostNetwork": true}}),
    ));
    s.pods.push(pod(
        "bookinfo",
        "opted-out",
        "10.0.0.4",
        json!({"ambit.dev/dataplane-mode": "none"}),
    ));
    s.pods.push(patch(
        pod("bookinfo", "starting", "10.0.0.5", json!({})),
        json!({"status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]}}),
    ));
    let c = compile(&s);
    let names: Vec<&str> = c.config.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["opted-out", "reviews-v1", "reviews-v2", "starting"]);

    let w = &c.config.workloads[1];
    assert_eq!(w.namespace, "bookinfo");
    assert_eq!(w.service_account, "sa-reviews-v1");
    assert_eq!(w.uid.as_deref(), Some("uid-reviews-v1"));
    assert_eq!(w.ip.to_string(), "10.0.0.1");
    assert_eq!(w.node, "node-1");
    assert_eq!(w.labels["version"], "v1");
    assert!(w.captured && w.healthy);
    assert_eq!(w.mtls_mode, Some(MtlsMode::Permissive));

    assert!(
        !c.config.workloads[0].captured,
        "opted-out pod is listed uncaptured"
    );
    assert!(
        !c.config.workloads[3].healthy,
        "not Ready means not healthy"
    );
}

#[test]
fn pods_without_a_service_account_use_default() {
    let mut s = bookinfo();
    s.pods = vec![patch(
        pod("bookinfo", "a", "10.0.0.1", json!({})),
        json!({"spec": {"serviceAccountName": null}}),
    )];
    assert_eq!(compile(&s).config.workloads[0].service_account, "default");
}

#[test]
fn namespaces_the_cni_excludes_are_not_enrolled() {
    let mut s = bookinfo();
    s.meshes = vec![mesh(json!({"cni": {"excludeNamespaces": ["bookinfo"]}}))];
    let c = compile(&s);
    assert!(c.config.workloads.is_empty());
    assert!(c.config.services.is_empty());
}

#[test]
fn a_terminating_pod_yields_its_ip_to_the_live_pod_reusing_it() {
    let mut s = bookinfo();
    s.pods = vec![
        patch(
            pod("bookinfo", "a-old", "10.0.0.7", json!({})),
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
        ),
        pod("bookinfo", "b-new", "10.0.0.7", json!({})),
    ];
    let c = compile(&s);
    let names: Vec<&str> = c.config.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["b-new"]);
}

#[test]
fn a_terminating_pod_is_not_healthy_even_while_still_ready() {
    let mut s = bookinfo();
    s.pods = vec![
        patch(
            pod("bookinfo", "going", "10.0.0.7", json!({})),
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
        ),
        pod("bookinfo", "staying", "10.0.0.8", json!({})),
    ];
    let c = compile(&s);
    let health: Vec<(&str, bool)> = c
        .config
        .workloads
        .iter()
        .map(|w| (w.name.as_str(), w.healthy))
        .collect();
    assert_eq!(health, [("going", false), ("staying", true)]);
}

#[test]
fn services_have_vips_tcp_ports_and_resolved_target_ports() {
    let mut s = bookinfo();
    s.services.push(svc(
        "bookinfo",
        "named",
        "10.96.0.11",
        json!({"app": "reviews"}),
        json!([
            {"name": "web", "port": 80, "targetPort": "http"},
            {"name": "admin", "port": 81, "targetPort": "no-such-port"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "plain", "port": 82}
        ]),
    ));
    s.services.push(patch(
        svc(
            "bookinfo",
            "headless",
            "None",
            json!({"app": "reviews"}),
            json!([{"port": 80}]),
        ),
        json!({"spec": {"clusterIPs": ["None"]}}),
    ));
    let c = compile(&s);
    let names: Vec<(&str, &str)> = c
        .config
        .services
        .iter()
        .map(|s| (s.namespace.as_str(), s.name.as_str()))
        .collect();
    assert_eq!(
        names,
        [("bookinfo", "named"), ("bookinfo", "reviews")],
        "legacy and headless left out"
    );
    let named = &c.config.services[0];
    assert_eq!(named.vips[0].to_string(), "10.96.0.11");
    assert_eq!(
        named.ports,
        [
            ServicePort {
                port: 80,
                target_port: Some(8080)
            },
            ServicePort {
                port: 82,
                target_port: None
            },
        ]
    );
    assert_eq!(named.selector["app"], "reviews");
    assert_eq!(
        c.config.services[1].ports,
        [ServicePort {
            port: 9080,
            target_port: Some(8080)
        }]
    );
}

#[test]
fn service_waypoint_comes_from_the_service_label_else_the_namespace() {
    let mut s = bookinfo();
    s.namespaces[0] = patch(
        s.namespaces[0].clone(),
        json!({"metadata": {"labels": {"ambit.dev/use-waypoint": "ns-wp"}}}),
    );
    s.waypoints = vec![
        waypoint("bookinfo", "ns-wp", "Services"),
        waypoint("bookinfo", "svc-wp", "All"),
        waypoint("bookinfo", "pods-only", "Workloads"),
    ];
    let labelled = |name: &str, ip: &str, wp: &str| {
        patch(
            svc(
                "bookinfo",
                name,
                ip,
                json!({"app": name}),
                json!([{"port": 80}]),
            ),
            json!({"metadata": {"labels": {"ambit.dev/use-waypoint": wp}}}),
        )
    };
    s.services.extend([
        labelled("own", "10.96.1.1", "svc-wp"),
        labelled("opt-out", "10.96.1.2", "none"),
        labelled("missing", "10.96.1.3", "no-such-waypoint"),
        labelled("workloads-only", "10.96.1.4", "pods-only"),
        // The waypoint's own Service (named like the Waypoint) never goes through a waypoint.
        svc(
            "bookinfo",
            "ns-wp",
            "10.96.1.5",
            json!({"gateway": "ns-wp"}),
            json!([{"port": 15008}]),
        ),
    ]);
    let c = compile(&s);
    let wp = |name: &str| {
        c.config
            .services
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .waypoint
            .clone()
            .map(|w| w.name)
    };
    assert_eq!(wp("reviews").as_deref(), Some("ns-wp"));
    assert_eq!(wp("own").as_deref(), Some("svc-wp"));
    assert_eq!(wp("opt-out"), None);
    assert_eq!(wp("missing"), None);
    assert_eq!(wp("workloads-only"), None);
    assert_eq!(wp("ns-wp"), None);
}

#[test]
fn workload_waypoint_only_from_waypoints_that_serve_workloads() {
    let mut s = bookinfo();
    s.namespaces[0] = patch(
        s.namespaces[0].clone(),
        json!({"metadata": {"labels": {"ambit.dev/use-waypoint": "wp"}}}),
    );
    s.waypoints = vec![waypoint("bookinfo", "wp", "All")];
    s.services.push(svc(
        "bookinfo",
        "wp",
        "10.96.1.5",
        json!({"gateway": "wp"}),
        json!([{"port": 15008}]),
    ));
    s.pods.push(pod(
        "bookinfo",
        "wp-pod",
        "10.0.0.50",
        json!({"gateway": "wp"}),
    ));
    let c = compile(&s);
    let w = |name: &str| {
        c.config
            .workloads
            .iter()
            .find(|w| w.name == name)
            .unwrap()
            .waypoint
            .clone()
    };
    assert_eq!(
        w("reviews-v1"),
        Some(WaypointRef {
            name: "wp".into(),
            namespace: "bookinfo".into()
        })
    );
    assert_eq!(
        w("wp-pod"),
        None,
        "a waypoint's own pods never loop through it"
    );

    s.waypoints = vec![waypoint("bookinfo", "wp", "Services")];
    assert_eq!(compile(&s).config.workloads[0].waypoint, None);
}
