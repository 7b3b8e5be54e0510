//! The plugin <-> agent protocol: wire format, `call` and `serve_one`.

mod cni_common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use ambit_cni::agent_proto::{
    call, serve_one, AgentCallError, AgentResponse, Attachment, PluginRequest,
};
use cni_common::{FakeAgent, TempDir};
use serde_json::json;

#[test]
fn wire_format_is_tagged_snake_case() {
    let add = PluginRequest::Add {
        network: "k8s-pod-network".into(),
        container_id: "c1".into(),
        netns: "/var/run/netns/x".into(),
        ifname: "eth0".into(),
        pod_namespace: "demo".into(),
        pod_name: "web-0".into(),
        pod_uid: None,
        ips: vec!["10.0.0.1".parse().unwrap()],
    };
    assert_eq!(
        serde_json::to_value(&add).unwrap(),
        json!({"type":"add","network":"k8s-pod-network","container_id":"c1","netns":"/var/run/netns/x","ifname":"eth0",
               "pod_namespace":"demo","pod_name":"web-0","pod_uid":null,"ips":["10.0.0.1"]})
    );
    // A plugin from before `network` existed still talks to this agent.
    let old: PluginRequest = serde_json::from_value(
        json!({"type":"gc","valid_attachments":[{"containerID":"c1","ifname":"eth0"}]}),
    )
    .unwrap();
    assert!(matches!(old, PluginRequest::Gc { network, .. } if network.is_empty()));
    assert_eq!(
        serde_json::to_value(PluginRequest::Status).unwrap(),
        json!({"type":"status"})
    );
    assert_eq!(
        serde_json::to_value(PluginRequest::Gc {
            network: "k8s-pod-network".into(),
            valid_attachments: vec![Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }]
        })
        .unwrap(),
        json!({"type":"gc","network":"k8s-pod-network","valid_attachments":[{"containerID":"c1","ifname":"eth0"}]})
    );
    assert_eq!(
        serde_json::to_value(AgentResponse::Skipped {
            reason: "host network".into()
        })
        .unwrap(),
        json!({"result":"skipped","reason":"host network"})
    );
    assert_eq!(
        serde_json::to_value(AgentResponse::Captured).unwrap(),
        json!({"result":"captured"})
    );
}

#[test]
fn call_and_serve_one_round_trip() {
    let agent = FakeAgent::answering(AgentResponse::Skipped {
        reason: "opted out".into(),
    });
    let req = PluginRequest::Del {
        container_id: "c1".into(),
        netns: None,
        pod_namespace: None,
        pod_name: None,
    };
    let resp = call(&agent.socket, &req, Duration::from_secs(2)).unwrap();
    assert_eq!(
        resp,
        AgentResponse::Skipped {
            reason: "opted out".into()
        }
    );
    assert_eq!(agent.requests(), vec![req]);
}

#[test]
fn call_errors_are_classified() {
    let dir = TempDir::new("proto");
    let missing = dir.path().join("missing.sock");
    let e = call(&missing, &PluginRequest::Status, Duration::from_secs(1)).unwrap_err();
    assert!(e.is_unreachable(), "{e}");

    // Slow agent: timeout honoured.
    let slow = FakeAgent::start(Duration::from_secs(2), |_| AgentResponse::Ok);
    let t = Instant::now();
    let e = call(
        &slow.socket,
        &PluginRequest::Status,
        Duration::from_millis(200),
    )
    .unwrap_err();
    assert!(matches!(e, AgentCallError::Timeout { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_millis(1000));

    // Garbage answer and closed connection.
    let sock = dir.path().join("raw.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        for answer in [&b"{\"result\":\"maybe\"}\n"[..], b""] {
            let (mut conn, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&conn).read_line(&mut line).unwrap();
            conn.write_all(answer).unwrap();
        }
    });
    let e = call(&sock, &PluginRequest::Status, Duration::from_secs(2)).unwrap_err();
    assert!(matches!(e, AgentCallError::Decode { .. }), "{e}");
    let e = call(&sock, &PluginRequest::Status, Duration::from_secs(2)).unwrap_err();
    assert!(matches!(e, AgentCallError::Closed { .. }), "{e}");
    server.join().unwrap();
}

#[test]
fn serve_one_answers_garbage_with_an_error() {
    let dir = TempDir::new("serve");
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        serve_one(&conn, |_| AgentResponse::Ok)
    });
    let mut client = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    client.write_all(b"{\"type\":\"explode\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(&client).read_line(&mut line).unwrap();
    let resp: AgentResponse = serde_json::from_str(&line).unwrap();
    assert!(
        matches!(
            resp,
            AgentResponse::Error {
                retryable: false,
                ..
            }
        ),
        "{resp:?}"
    );
    assert!(server.join().unwrap().is_err());
}
