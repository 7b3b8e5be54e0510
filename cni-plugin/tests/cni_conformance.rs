//! Conformance-style tests of the real `ambit-cni` binary, invoked the way a
//! container runtime does (env + stdin), against a fake node agent on a Unix
//! socket in a temp dir. No root needed.

mod cni_common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ambit_cni::agent_proto::{AgentResponse, Attachment, PluginRequest};
use cni_common::*;
use serde_json::Value;

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn agent_error(msg: &str) -> AgentResponse {
    AgentResponse::Error {
        message: msg.into(),
        retryable: true,
    }
}

// ---------------------------------------------------------------- VERSION

#[test]
fn version_echoes_each_supported_version() {
    for v in VERSIONS {
        let r = run_plugin(
            &[("CNI_COMMAND", "VERSION")],
            &format!(r#"{{"cniVersion":"{v}"}}"#),
        );
        assert!(r.ok(), "{r:?}");
        let out: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(out["cniVersion"], v);
        assert_eq!(
            out["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }
}

#[test]
fn version_with_empty_stdin_reports_1_1_0() {
    let r = run_plugin(&[("CNI_COMMAND", "VERSION")], "");
    assert!(r.ok(), "{r:?}");
    assert_eq!(
        r.stdout,
        r#"{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#
    );
}

#[test]
fn version_with_malformed_stdin_is_code_6() {
    let r = run_plugin(&[("CNI_COMMAND", "VERSION")], "{nope");
    assert_eq!(r.error_code(), 6, "{r:?}");
}

#[test]
fn unsupported_version_is_code_1_for_every_command() {
    let dir = TempDir::new("unsup");
    for v in ["0.1.0", "0.2.0", "2.0.0", "banana"] {
        for cmd in ["ADD", "CHECK", "DEL", "STATUS", "GC"] {
            let args = cni_args("demo", "web-0");
            let conf = net_conf(
                v,
                &dead_socket(&dir),
                r#""cni.dev/valid-attachments": [],"#,
                Some(&prev_result("1.0.0")),
            );
            let r = run_plugin(&pod_env(cmd, &args), &conf);
            let e = r.error();
            assert_eq!(e["code"], 1, "{cmd} {v}: {r:?}");
            assert_eq!(e["cniVersion"], v, "error echoes the requested version");
            assert!(e["msg"].as_str().unwrap().contains(v), "{e}");
            assert!(e["details"].as_str().unwrap().contains("1.1.0"), "{e}");
        }
    }
}

#[test]
fn commands_newer_than_the_config_version_are_code_1() {
    let dir = TempDir::new("gate");
    let args = cni_args("demo", "web-0");
    for (cmd, v) in [("CHECK", "0.3.1"), ("STATUS", "1.0.0"), ("GC", "1.0.0")] {
        let conf = net_conf(
            v,
            &dead_socket(&dir),
            r#""cni.dev/valid-attachments": [],"#,
            Some(&prev_result(v)),
        );
        let r = run_plugin(&pod_env(cmd, &args), &conf);
        assert_eq!(r.error_code(), 1, "{cmd} at {v}: {r:?}");
        assert!(r.stdout.contains(cmd), "{r:?}");
    }
}

// ---------------------------------------------------------------- ADD

#[test]
fn add_passes_prev_result_through_byte_for_byte_for_every_version() {
    let agent = FakeAgent::answering(AgentResponse::Captured);
    for v in VERSIONS {
        let prev = prev_result(v);
        let args = cni_args("demo", "web-0");
        let r = run_plugin(
            &pod_env("ADD", &args),
            &net_conf(v, &agent.socket, "", Some(&prev)),
        );
        assert!(r.ok(), "{v}: {r:?}");
        assert_eq!(r.stdout, prev, "{v}: stdout must be prevResult verbatim");
    }
    let reqs = agent.requests();
    assert_eq!(reqs.len(), VERSIONS.len());
    for req in reqs {
        assert_eq!(
            req,
            PluginRequest::Add {
                network: "k8s-pod-network".into(),
                container_id: CONTAINER_ID.into(),
                netns: NETNS.into(),
                ifname: "eth0".into(),
                pod_namespace: "demo".into(),
                pod_name: "web-0".into(),
                pod_uid: Some(POD_UID.into()),
                ips: vec![
                    "10.244.0.7".parse::<IpAddr>().unwrap(),
                    "fd00:10:244::7".parse().unwrap()
                ],
            }
        );
    }
}

#[test]
fn add_skipped_by_agent_succeeds() {
    let agent = FakeAgent::answering(AgentResponse::Skipped {
        reason: "namespace not enrolled".into(),
    });
    let prev = prev_result("1.1.0");
    let args = cni_args("plain", "app");
    let r = run_plugin(
        &pod_env("ADD", &args),
        &net_conf("1.1.0", &agent.socket, "", Some(&prev)),
    );
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.stdout, prev);
    assert_eq!(agent.requests().len(), 1);
}

#[test]
fn add_in_excluded_namespace_never_calls_the_agent() {
    let agent = FakeAgent::answering(agent_error("must not be called"));
    let prev = prev_result("1.0.0");
    // Default exclusion (kube-system) and a configured one.
    for (ns, extra) in [
        ("kube-system", ""),
        ("infra", r#""excludeNamespaces": ["infra", "other"],"#),
    ] {
        let args = cni_args(ns, "coredns-1");
        let r = run_plugin(
            &pod_env("ADD", &args),
            &net_conf("1.0.0", &agent.socket, extra, Some(&prev)),
        );
        assert!(r.ok(), "{ns}: {r:?}");
        assert_eq!(r.stdout, prev);
    }
    assert!(agent.requests().is_empty(), "{:?}", agent.requests());
}

#[test]
fn add_without_kubernetes_args_passes_through_without_agent() {
    let agent = FakeAgent::answering(agent_error("must not be called"));
    let prev = prev_result("1.0.0");
    let mut env = pod_env("ADD", "IgnoreUnknown=1");
    env.retain(|(k, _)| *k != "CNI_ARGS");
    let r = run_plugin(&env, &net_conf("1.0.0", &agent.socket, "", Some(&prev)));
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.stdout, prev);
    assert!(r.stderr.contains("not a Kubernetes pod"), "{r:?}");
    assert!(agent.requests().is_empty());
}

#[test]
fn add_without_prev_result_is_code_7() {
    let dir = TempDir::new("noprev");
    let args = cni_args("demo", "web-0");
    for prev in [None, Some("null")] {
        let r = run_plugin(
            &pod_env("ADD", &args),
            &net_conf("1.1.0", &dead_socket(&dir), "", prev),
        );
        let e = r.error();
        assert_eq!(e["code"], 7, "{r:?}");
        assert!(e["msg"]
            .as_str()
            .unwrap()
            .contains("ambit-cni must be chained after the primary CNI plugin"));
    }
}

#[test]
fn add_with_bad_prev_result_ips_is_code_7() {
    let dir = TempDir::new("badips");
    let args = cni_args("demo", "web-0");
    let prev = r#"{"cniVersion":"1.0.0","ips":[{"address":"not-an-ip/24"}]}"#;
    let r = run_plugin(
        &pod_env("ADD", &args),
        &net_conf("1.0.0", &dead_socket(&dir), "", Some(prev)),
    );
    let e = r.error();
    assert_eq!(e["code"], 7);
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .contains("prevResult.ips[0].address"),
        "{e}"
    );
}

// ------------------------------------------------- ADD: failure policy

fn add_with(socket: &std::path::Path, extra: &str) -> (Run, String) {
    let prev = prev_result("1.1.0");
    let args = cni_args("demo", "web-0");
    let r = run_plugin(
        &pod_env("ADD", &args),
        &net_conf("1.1.0", socket, extra, Some(&prev)),
    );
    (r, prev)
}

#[test]
fn agent_error_fails_closed_with_code_11_and_passes_open() {
    let agent = FakeAgent::answering(agent_error("ztunnel is not connected"));
    let (r, _) = add_with(&agent.socket, "");
    let e = r.error();
    assert_eq!(e["code"], 11, "{r:?}");
    let msg = e["msg"].as_str().unwrap();
    assert!(msg.contains("ztunnel is not connected"), "{msg}");
    assert!(
        msg.contains("the pod will be retried by the kubelet"),
        "{msg}"
    );
    assert!(msg.contains("demo/web-0"), "{msg}");
    assert_eq!(e["cniVersion"], "1.1.0");

    let (r, prev) = add_with(&agent.socket, r#""failurePolicy": "open","#);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.stdout, prev);
    assert!(
        r.stderr.contains("pod demo/web-0 started uncaptured")
            && r.stderr
                .contains("the node agent will capture it when it is back"),
        "{r:?}"
    );
}

#[test]
fn agent_down_fails_closed_with_code_11_and_passes_open() {
    let dir = TempDir::new("down");
    let (r, _) = add_with(&dead_socket(&dir), r#""failurePolicy": "closed","#);
    let e = r.error();
    assert_eq!(e["code"], 11, "{r:?}");
    assert!(e["msg"]
        .as_str()
        .unwrap()
        .contains("cannot connect to the node agent"));

    let (r, prev) = add_with(&dead_socket(&dir), r#""failurePolicy": "open","#);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.stdout, prev);
    assert!(r.stderr.contains("started uncaptured"), "{r:?}");
}

#[test]
fn agent_too_slow_fails_closed_with_code_11_and_passes_open() {
    let agent = FakeAgent::start(Duration::from_millis(1500), |_| AgentResponse::Captured);
    let t = Instant::now();
    let (r, _) = add_with(&agent.socket, r#""agentTimeoutMs": 300,"#);
    // net_conf appends its own agentTimeoutMs (500) after `extra`; the last
    // occurrence wins, so the budget is 500 ms.
    assert!(
        t.elapsed() < Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
    let e = r.error();
    assert_eq!(e["code"], 11, "{r:?}");
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .contains("did not answer within 500 ms"),
        "{e}"
    );

    let (r, prev) = add_with(&agent.socket, r#""failurePolicy": "open","#);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.stdout, prev);
    assert!(r.stderr.contains("started uncaptured"), "{r:?}");
}

// ------------------------------------------------------- env and stdin

#[test]
fn missing_required_env_is_code_4_naming_the_variable() {
    let dir = TempDir::new("env");
    let args = cni_args("demo", "web-0");
    let prev = prev_result("1.0.0");
    let conf = net_conf("1.0.0", &dead_socket(&dir), "", Some(&prev));
    for (cmd, required) in [
        ("ADD", &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"][..]),
        ("CHECK", &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"][..]),
        ("DEL", &["CNI_CONTAINERID", "CNI_IFNAME"][..]),
    ] {
        for var in required {
            let mut env = pod_env(cmd, &args);
            env.retain(|(k, _)| k != var);
            let r = run_plugin(&env, &conf);
            let e = r.error();
            assert_eq!(e["code"], 4, "{cmd} without {var}: {r:?}");
            assert!(e["msg"].as_str().unwrap().contains(var), "{e}");
            assert_eq!(e["cniVersion"], "1.0.0");
        }
    }
}

#[test]
fn del_does_not_require_netns() {
    let agent = FakeAgent::answering(AgentResponse::Ok);
    let args = cni_args("demo", "web-0");
    let mut env = pod_env("DEL", &args);
    env.retain(|(k, _)| *k != "CNI_NETNS");
    let r = run_plugin(&env, &net_conf("1.0.0", &agent.socket, "", None));
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.stdout, "");
    assert!(matches!(
        &agent.requests()[..],
        [PluginRequest::Del { netns: None, .. }]
    ));
}

#[test]
fn invalid_env_values_are_code_4_naming_the_variable() {
    let dir = TempDir::new("envbad");
    let prev = prev_result("1.0.0");
    let conf = net_conf("1.0.0", &dead_socket(&dir), "", Some(&prev));
    let good_args = cni_args("demo", "web-0");
    for (var, value) in [
        ("CNI_CONTAINERID", "-starts-with-dash"),
        ("CNI_CONTAINERID", "has space"),
        ("CNI_NETNS", "relative/netns"),
        ("CNI_IFNAME", "eth0-but-far-too-long"),
        ("CNI_IFNAME", "eth/0"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=demo;garbage"),
    ] {
        let mut env = pod_env("ADD", &good_args);
        env.retain(|(k, _)| *k != var);
        env.push((var, value));
        let r = run_plugin(&env, &conf);
        let e = r.error();
        assert_eq!(e["code"], 4, "{var}={value}: {r:?}");
        assert!(e["msg"].as_str().unwrap().contains(var), "{e}");
        assert!(e["details"].as_str().unwrap().contains(value), "{e}");
    }
}

#[test]
fn several_bad_variables_are_all_named() {
    let r = run_plugin(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "x:y")], "{}");
    let e = r.error();
    assert_eq!(e["code"], 4);
    let msg = e["msg"].as_str().unwrap();
    for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
        assert!(msg.contains(var), "{msg}");
    }
}

#[test]
fn missing_or_unknown_command_is_code_4() {
    let r = run_plugin(&[], r#"{"cniVersion":"1.0.0"}"#);
    let e = r.error();
    assert_eq!(e["code"], 4);
    assert!(e["msg"].as_str().unwrap().contains("CNI_COMMAND"));
    assert_eq!(e["cniVersion"], "1.0.0");

    for bad in ["add", "UPDATE", "STATUSX"] {
        let r = run_plugin(&[("CNI_COMMAND", bad)], r#"{"cniVersion":"1.1.0"}"#);
        let e = r.error();
        assert_eq!(e["code"], 4, "{bad}: {r:?}");
        assert!(e["msg"].as_str().unwrap().contains("CNI_COMMAND"));
        assert!(e["details"]
            .as_str()
            .unwrap()
            .contains("ADD, DEL, CHECK, STATUS, GC, VERSION"));
    }
}

#[test]
fn malformed_stdin_is_code_6() {
    let args = cni_args("demo", "web-0");
    for stdin in [
        "",
        "{",
        "not json",
        "[1,2]",
        "\"str\"",
        "{\"cniVersion\":\"1.0.0\"} trailing",
    ] {
        for cmd in ["ADD", "DEL", "CHECK", "STATUS", "GC"] {
            let r = run_plugin(&pod_env(cmd, &args), stdin);
            let e = r.error();
            assert_eq!(e["code"], 6, "{cmd} {stdin:?}: {r:?}");
            assert_eq!(e["cniVersion"], "1.1.0");
        }
    }
}

#[test]
fn invalid_config_fields_are_code_7_or_2() {
    let dir = TempDir::new("conf");
    let args = cni_args("demo", "web-0");
    let prev = prev_result("1.0.0");
    let sock = dead_socket(&dir);
    for (extra, code, key) in [
        (r#""agentTimeoutMs": "fast","#, 7, "agentTimeoutMs"),
        (r#""agentTimeoutMs": 0,"#, 7, "agentTimeoutMs"),
        (
            r#""excludeNamespaces": "kube-system","#,
            7,
            "excludeNamespaces",
        ),
        (r#""failurePolicy": true,"#, 7, "failurePolicy"),
        (r#""failurePolicy": "sometimes","#, 2, "sometimes"),
    ] {
        let conf = net_conf("1.0.0", &sock, extra, Some(&prev))
            .replace(r#""agentTimeoutMs": 500"#, r#""x": 0"#);
        let r = run_plugin(&pod_env("ADD", &args), &conf);
        let e = r.error();
        assert_eq!(e["code"], code, "{extra}: {r:?}");
        assert!(e["msg"].as_str().unwrap().contains(key), "{e}");
    }
    // Required spec fields.
    for missing in ["name", "type", "cniVersion"] {
        let mut v: Value =
            serde_json::from_str(&net_conf("1.0.0", &sock, "", Some(&prev))).unwrap();
        v.as_object_mut().unwrap().remove(missing);
        let r = run_plugin(&pod_env("ADD", &args), &v.to_string());
        let e = r.error();
        assert_eq!(e["code"], 7, "without {missing}: {r:?}");
        assert!(e["msg"].as_str().unwrap().contains(missing));
    }
}

// ---------------------------------------------------------------- DEL

#[test]
fn del_twice_succeeds_with_agent_up_and_down() {
    let agent = FakeAgent::answering(AgentResponse::Ok);
    let args = cni_args("demo", "web-0");
    let prev = prev_result("1.0.0");
    for _ in 0..2 {
        let r = run_plugin(
            &pod_env("DEL", &args),
            &net_conf("1.0.0", &agent.socket, "", Some(&prev)),
        );
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.stdout, "", "DEL prints nothing on success");
    }
    assert_eq!(agent.requests().len(), 2);
    assert_eq!(
        agent.requests()[0],
        PluginRequest::Del {
            container_id: CONTAINER_ID.into(),
            netns: Some(NETNS.into()),
            pod_namespace: Some("demo".into()),
            pod_name: Some("web-0".into()),
        }
    );

    let dir = TempDir::new("deldown");
    for policy in ["closed", "open"] {
        for _ in 0..2 {
            let extra = format!(r#""failurePolicy": "{policy}","#);
            let r = run_plugin(
                &pod_env("DEL", &args),
                &net_conf("1.0.0", &dead_socket(&dir), &extra, Some(&prev)),
            );
            assert!(r.ok(), "{r:?}");
            assert_eq!(r.stdout, "");
            assert!(r.stderr.contains("node agent not told"), "{r:?}");
        }
    }
}

#[test]
fn del_of_unknown_container_succeeds_even_if_the_agent_objects() {
    let agent = FakeAgent::answering(agent_error("unknown container"));
    let r = run_plugin(
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "never-added"),
            ("CNI_IFNAME", "eth0"),
        ],
        &net_conf("0.3.1", &agent.socket, "", None),
    );
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.stdout, "");
}

#[test]
fn del_with_slow_agent_is_bounded() {
    let agent = FakeAgent::start(Duration::from_secs(3), |_| AgentResponse::Ok);
    let args = cni_args("demo", "web-0");
    let conf = net_conf("1.0.0", &agent.socket, "", None)
        .replace(r#""agentTimeoutMs": 500"#, r#""agentTimeoutMs": 60000"#);
    let t = Instant::now();
    let r = run_plugin(&pod_env("DEL", &args), &conf);
    assert!(r.ok(), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
}

// ---------------------------------------------------------------- CHECK

#[test]
fn check_after_add_succeeds() {
    let agent = FakeAgent::start(Duration::ZERO, |req| match req {
        PluginRequest::Add { .. } => AgentResponse::Captured,
        PluginRequest::Check { .. } => AgentResponse::Ok,
        _ => AgentResponse::Error {
            message: "unexpected".into(),
            retryable: false,
        },
    });
    let args = cni_args("demo", "web-0");
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        let prev = prev_result(v);
        let conf = net_conf(v, &agent.socket, "", Some(&prev));
        let add = run_plugin(&pod_env("ADD", &args), &conf);
        assert!(add.ok(), "{add:?}");
        // The runtime hands CHECK the cached ADD result as prevResult.
        let conf = net_conf(v, &agent.socket, "", Some(&add.stdout));
        let check = run_plugin(&pod_env("CHECK", &args), &conf);
        assert!(check.ok(), "{v}: {check:?}");
        assert_eq!(check.stdout, prev);
    }
    let reqs = agent.requests();
    assert!(
        matches!(
            &reqs[1],
            PluginRequest::Check { container_id, netns, pod_namespace, pod_name }
                if container_id == CONTAINER_ID && netns == NETNS && pod_namespace == "demo" && pod_name == "web-0"
        ),
        "{reqs:?}"
    );
}

#[test]
fn check_without_prev_result_fails() {
    let agent = FakeAgent::answering(AgentResponse::Ok);
    let args = cni_args("demo", "web-0");
    let r = run_plugin(
        &pod_env("CHECK", &args),
        &net_conf("1.0.0", &agent.socket, "", None),
    );
    assert_eq!(r.error_code(), 7, "{r:?}");
    assert!(agent.requests().is_empty());
}

#[test]
fn check_with_agent_error_fails_closed() {
    let agent = FakeAgent::answering(agent_error("rules missing in pod netns"));
    let args = cni_args("demo", "web-0");
    let prev = prev_result("1.0.0");
    let r = run_plugin(
        &pod_env("CHECK", &args),
        &net_conf("1.0.0", &agent.socket, "", Some(&prev)),
    );
    let e = r.error();
    assert_eq!(e["code"], 11);
    assert!(e["msg"]
        .as_str()
        .unwrap()
        .contains("rules missing in pod netns"));
}

// ---------------------------------------------------------------- STATUS

#[test]
fn status_reports_agent_availability() {
    let agent = FakeAgent::answering(AgentResponse::Ok);
    let status_env = [("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/opt/cni/bin")];
    let r = run_plugin(&status_env, &net_conf("1.1.0", &agent.socket, "", None));
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.stdout, "");
    assert_eq!(agent.requests(), vec![PluginRequest::Status]);

    let dir = TempDir::new("status");
    let r = run_plugin(
        &status_env,
        &net_conf("1.1.0", &dead_socket(&dir), "", None),
    );
    let e = r.error();
    assert_eq!(e["code"], 50, "{r:?}");
    assert!(e["msg"]
        .as_str()
        .unwrap()
        .starts_with("plugin not available"));
    assert!(e["msg"].as_str().unwrap().contains("cannot connect"));

    let sick = FakeAgent::answering(agent_error("ztunnel not connected"));
    let r = run_plugin(&status_env, &net_conf("1.1.0", &sick.socket, "", None));
    let e = r.error();
    assert_eq!(e["code"], 50);
    assert!(e["msg"].as_str().unwrap().contains("ztunnel not connected"));

    // Fail-open: ADD would still succeed, so the plugin is available.
    let r = run_plugin(
        &status_env,
        &net_conf(
            "1.1.0",
            &dead_socket(&dir),
            r#""failurePolicy": "open","#,
            None,
        ),
    );
    assert!(r.ok(), "{r:?}");
    assert!(r.stderr.contains("warning"), "{r:?}");
}

// ---------------------------------------------------------------- GC

#[test]
fn gc_forwards_valid_attachments() {
    let agent = FakeAgent::answering(AgentResponse::Ok);
    let extra = r#""cni.dev/valid-attachments": [
        {"containerID": "aaa111", "ifname": "eth0"},
        {"containerID": "bbb222", "ifname": "net1"}
    ],"#;
    let r = run_plugin(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        &net_conf("1.1.0", &agent.socket, extra, None),
    );
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.stdout, "");
    assert_eq!(
        agent.requests(),
        vec![PluginRequest::Gc {
            network: "k8s-pod-network".into(),
            valid_attachments: vec![
                Attachment {
                    container_id: "aaa111".into(),
                    ifname: "eth0".into()
                },
                Attachment {
                    container_id: "bbb222".into(),
                    ifname: "net1".into()
                },
            ]
        }]
    );
}

#[test]
fn gc_reports_agent_down_and_missing_list() {
    let dir = TempDir::new("gc");
    let gc_env = [("CNI_COMMAND", "GC")];
    let r = run_plugin(
        &gc_env,
        &net_conf(
            "1.1.0",
            &dead_socket(&dir),
            r#""cni.dev/valid-attachments": [],"#,
            None,
        ),
    );
    assert_eq!(r.error_code(), 11, "{r:?}");

    let agent = FakeAgent::answering(AgentResponse::Ok);
    let r = run_plugin(&gc_env, &net_conf("1.1.0", &agent.socket, "", None));
    let e = r.error();
    assert_eq!(e["code"], 7, "{r:?}");
    assert!(e["msg"]
        .as_str()
        .unwrap()
        .contains("cni.dev/valid-attachments"));
    assert!(
        agent.requests().is_empty(),
        "a missing list is never sent as empty"
    );
}
