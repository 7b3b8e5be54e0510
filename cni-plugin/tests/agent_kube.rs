//! The node agent fed by the Kubernetes watch (apisim), with real ztunnels, the real plugin
//! binary and pods in network namespaces: running pods follow their namespace's label,
//! opted-out, excluded and other nodes' pods are left alone, and a new pod is captured by
//! the time CNI ADD returns.
mod kube_harness;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use ambit_testkit::mesh::metric_sum;
use kube_harness::*;

fn mtls_inbound(m: &ambit_testkit::mesh::Mesh, node: usize) -> f64 {
    metric_sum(
        &m.metrics(node),
        "ambit_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
        ],
    )
}

/// Runs the real plugin as a container runtime does; returns whether ADD succeeded.
fn cni_add(m: &ambit_testkit::mesh::Mesh, pod: usize) -> (bool, String) {
    let add = m.cni_add(
        pod,
        Command::new(env!("CARGO_BIN_EXE_ambit-cni")),
        &plugin_socket(m, m.pod(pod).pod.node),
        "closed",
    );
    let mut child = { add.command }.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(add.stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn pods_follow_namespace_labels_from_the_api_server_and_add_captures_at_once() {
    let (m, pods) = agent_mesh(
        "cnikube",
        2,
        &[
            (0, "a", "mesh"),
            (1, "b", "mesh"),
            (0, "p", "plain"),
            (0, "o", "mesh"),
            (0, "x", "infra"),
            (0, "n", "mesh"),
        ],
    );
    let [a, b, p, o, x, n] = pods[..] else {
        unreachable!()
    };
    let pristine: Vec<String> = (0..pods.len()).map(|i| dump(&m, i)).collect();
    let api = Api::start();
    api.namespace("mesh", &[(MODE, "ambient")]);
    api.namespace("plain", &[]);
    api.namespace("infra", &[(MODE, "ambient")]);
    let uid_a = api.pod(&m, a, &[], false);
    let uid_b = api.pod(&m, b, &[], false);
    let uid_p = api.pod(&m, p, &[], false);
    api.pod(&m, o, &[(MODE, "none")], false);
    api.pod(&m, x, &[], false);
    let _app = serve(&m, b, 8080);

    let agent0 = api.start_agent(&m, 0, &["infra"]);
    let agent1 = api.start_agent(&m, 1, &["infra"]);
    agent0.set_installed(true);
    assert!(
        eventually(Duration::from_secs(15), || agent0.captured()
            == [uid_a.clone()]
            && agent1.captured() == [uid_b.clone()]),
        "node 0 captures only a, node 1 only b: {:?} {:?}",
        agent0.captured(),
        agent1.captured()
    );
    assert!(eventually(Duration::from_secs(5), || agent0
        .ready()
        .is_ok()));
    assert_ne!(dump(&m, a), pristine[a], "a's redirection is installed");
    assert_eq!(
        served(&m, 0),
        std::slice::from_ref(&uid_a),
        "ztunnel serves a"
    );
    let before = mtls_inbound(&m, 1);
    assert_eq!(
        call(&m, a, m.ip(b).into(), 8080, "over mtls").unwrap(),
        "over mtls"
    );
    assert!(mtls_inbound(&m, 1) > before, "a -> b is mutual TLS");
    for (pod, why) in [(o, "opted out"), (x, "excluded namespace"), (p, "plain")] {
        assert_eq!(dump(&m, pod), pristine[pod], "{why}: left alone");
    }

    // Labelling the plain namespace captures its running pod, without a restart.
    api.namespace("plain", &[(MODE, "ambient")]);
    assert!(
        eventually(Duration::from_secs(10), || agent0
            .captured()
            .contains(&uid_p)),
        "{:?}",
        agent0.captured()
    );
    let before = mtls_inbound(&m, 1);
    assert_eq!(
        call(&m, p, m.ip(b).into(), 8080, "meshed").unwrap(),
        "meshed"
    );
    assert!(mtls_inbound(&m, 1) > before, "p -> b is mutual TLS now");

    // Removing the label releases it, leaving its namespace exactly as before.
    api.namespace("plain", &[]);
    assert!(eventually(Duration::from_secs(10), || !agent0
        .captured()
        .contains(&uid_p)));
    assert_eq!(dump(&m, p), pristine[p]);
    assert_eq!(
        call(&m, p, m.ip(b).into(), 8080, "released").unwrap(),
        "released"
    );

    // A new pod: in the API before the runtime's ADD (no IP yet), captured when ADD returns.
    let uid_n = api.pod(&m, n, &[], true);
    let (ok, out) = cni_add(&m, n);
    assert!(ok, "ADD failed: {out}");
    assert!(
        agent0.captured().contains(&uid_n),
        "{:?}",
        agent0.captured()
    );
    assert_ne!(dump(&m, n), pristine[n]);
    let before = mtls_inbound(&m, 1);
    assert_eq!(call(&m, n, m.ip(b).into(), 8080, "new").unwrap(), "new");
    assert!(mtls_inbound(&m, 1) > before);

    // Through all of it, the opted-out and excluded pods were never touched.
    let mut want = vec![uid_a, uid_n];
    want.sort();
    assert_eq!(agent0.captured(), want);
    assert_eq!(dump(&m, o), pristine[o]);
    assert_eq!(dump(&m, x), pristine[x]);
}

#[test]
fn the_daemonset_tells_removal_from_a_restart() {
    use ambit_cni::agent::kube_source::{client, daemonset_state, DaemonSetState};
    let api = Api::start();
    let state = || {
        api.rt.block_on(async {
            let c = client(Some(&api.url())).await.unwrap();
            daemonset_state(c, "ambit-system", "ambit-node-agent").await
        })
    };
    api.agent_daemonset();
    assert_eq!(state().unwrap(), DaemonSetState::Running);
    let store = api.server.store();
    let delete = || {
        store.delete(
            "apps/v1",
            "DaemonSet",
            Some("ambit-system"),
            "ambit-node-agent",
        )
    };
    delete().unwrap();
    assert!(
        matches!(state().unwrap(), DaemonSetState::Removed(why) if why.contains("being deleted")),
        "a DaemonSet held by a finalizer is terminating"
    );
    // Drop the finalizer: the DaemonSet is gone.
    let mut ds = store
        .get(
            "apps/v1",
            "DaemonSet",
            Some("ambit-system"),
            "ambit-node-agent",
        )
        .unwrap();
    ds["metadata"]["finalizers"] = serde_json::json!([]);
    store.upsert(ds).unwrap();
    assert!(matches!(state().unwrap(), DaemonSetState::Removed(why) if why.contains("gone")));
}
