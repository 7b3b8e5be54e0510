//! The waypoint's command line against what the operator renders for its Deployment, and the
//! exactly-one-mode rule as a user of the binary sees it. No root needed.

use std::process::Command;
use std::time::Duration;

use ambit_core::ca::CertificateAuthority;
use ambit_operator::crd::mesh::MeshSpec;
use ambit_operator::crd::waypoint::WaypointSpec;
use ambit_operator::render::dataplane::ControlPlane;
use ambit_waypoint::cli::{mode, Args};
use ambit_waypoint::ConfigMode;
use clap::Parser;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

fn rendered_args() -> Vec<String> {
    let spec: WaypointSpec = serde_yaml::from_str("accessLog: true\n").unwrap();
    let mesh: MeshSpec = serde_yaml::from_str("trustDomain: example.org\n").unwrap();
    let owner = OwnerReference {
        api_version: "ambit.dev/v1alpha1".into(),
        kind: "Waypoint".into(),
        name: "wp".into(),
        uid: "u1".into(),
        ..Default::default()
    };
    let cp = ControlPlane {
        namespace: "mesh-ops".into(),
        address: "ambit-operator.mesh-ops.svc:15012".into(),
    };
    let objects =
        ambit_operator::render::waypoint::render("wp", "shop", &spec, &mesh, "PEM", &cp, &owner);
    let pod = objects.deployment.spec.unwrap().template.spec.unwrap();
    pod.containers[0].args.clone().unwrap()
}

#[test]
fn the_args_the_operator_renders_select_stream_mode() {
    let args = rendered_args();
    let parsed = Args::try_parse_from(std::iter::once("waypoint".to_string()).chain(args.clone()))
        .unwrap_or_else(|e| panic!("the waypoint refuses the rendered args {args:?}: {e}"));
    // Stream mode was chosen: it reads the root certificate at the rendered path.
    let e = format!(
        "{:#}",
        mode(&parsed).err().expect("no root cert in the test env")
    );
    assert!(e.contains("/var/run/secrets/ambit/ca/root-cert.pem"), "{e}");

    // With the mounted files present, the endpoint is what the operator rendered.
    let dir = std::env::temp_dir().join(format!("wp-cli-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = CertificateAuthority::generate("example.org", Duration::from_secs(3600)).unwrap();
    std::fs::write(dir.join("root.pem"), ca.root_pem()).unwrap();
    std::fs::write(dir.join("token"), "t\n").unwrap();
    let local: Vec<String> = args
        .iter()
        .map(|a| match a.split_once('=') {
            Some(("--root-cert", _)) => format!("--root-cert={}", dir.join("root.pem").display()),
            Some(("--token-file", _)) => format!("--token-file={}", dir.join("token").display()),
            _ => a.clone(),
        })
        .collect();
    let parsed =
        Args::try_parse_from(std::iter::once("waypoint".to_string()).chain(local)).unwrap();
    let (config, _, _) = mode(&parsed).unwrap();
    let ConfigMode::ControlPlane { endpoint } = config else {
        panic!("file mode selected")
    };
    assert_eq!(endpoint.address, "ambit-operator.mesh-ops.svc:15012");
    assert_eq!(
        endpoint.operator_identity.to_string(),
        "spiffe://example.org/ns/mesh-ops/sa/ambit-operator"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_binary_requires_exactly_one_mode() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_waypoint"))
            .args(["--name", "wp", "--namespace", "shop"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&[]);
    assert!(e.contains("give either --control-plane HOST:PORT"), "{e}");
    let e = run(&["--control-plane", "op:15012", "--config", "m.yaml"]);
    assert!(e.contains("drop --config"), "{e}");
    let e = run(&[
        "--control-plane",
        "op:15012",
        "--root-cert",
        "/nonexistent/root.pem",
    ]);
    assert!(e.contains("/nonexistent/root.pem"), "{e}");
}
