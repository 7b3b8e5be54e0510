//! The config stream over real TLS on loopback: full state, deltas, ACK/NACK, resume,
//! coalescing, dead peers, server restarts.
mod control_common;

use std::sync::Arc;
use std::time::Duration;

use ambit_core::control::proto::{ClientMessage, Subscribe, Target};
use ambit_core::control::resources::ResourceSet;
use ambit_core::control::{ConfigStream, StreamOptions};
use control_common::*;

const WAIT: Duration = Duration::from_secs(10);

fn n1() -> Target {
    "node/n1".parse().unwrap()
}

#[tokio::test]
async fn subscribe_gets_full_state_then_only_deltas() {
    let env = Env::start("stream-delta").await;
    env.publisher
        .publish(&n1(), &config(&["a", "b", "c"]))
        .unwrap();
    let mut s = RawStream::subscribe(&env.endpoint(ZTUNNEL_N1), subscribe("node/n1")).await;
    let first = s.update(WAIT).await.expect("initial state");
    assert!(first.full);
    let mut k = keys(&first);
    k.sort();
    assert_eq!(
        k,
        [
            "globals",
            "workloads/prod/a",
            "workloads/prod/b",
            "workloads/prod/c"
        ]
    );
    s.tell(ClientMessage::Ack {
        version: first.version,
    });
    // The server records the ACK.
    let acked = async {
        loop {
            if env
                .publisher
                .proxies()
                .iter()
                .any(|p| p.acked_version == Some(first.version))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, acked)
        .await
        .expect("ACK recorded");
    assert_eq!(env.publisher.proxies()[0].proxy, "ambit-system/ztunnel-n1");

    // Change b, drop c: exactly that travels.
    let mut next = config(&["a", "b"]);
    std::sync::Arc::make_mut(&mut next.workloads[1]).healthy = false;
    let v2 = env.publisher.publish(&n1(), &next).unwrap();
    assert!(v2 > first.version);
    let u = s.update(WAIT).await.expect("delta");
    assert_eq!((u.version, u.full), (v2, false));
    assert_eq!(keys(&u), ["workloads/prod/b"]);
    assert_eq!(u.removes, ["workloads/prod/c"]);
    // Publishing the same state again sends nothing.
    s.tell(ClientMessage::Ack { version: v2 });
    assert_eq!(env.publisher.publish(&n1(), &next).unwrap(), v2);
    assert!(s.update(Duration::from_millis(500)).await.is_none());
}

#[tokio::test]
async fn other_nodes_config_is_forbidden() {
    let env = Env::start("stream-forbidden").await;
    match RawStream::open(&env.endpoint(ZTUNNEL_N1), subscribe("node/n2")).await {
        Opened::Refused(403, body) => assert!(body.contains("node/n2"), "{body}"),
        Opened::Refused(s, b) => panic!("{s} {b}"),
        Opened::Stream(_) => panic!("ztunnel of n1 subscribed to n2"),
    }
    match RawStream::open(&env.endpoint("bogus"), subscribe("node/n1")).await {
        Opened::Refused(status, _) => assert_eq!(status, 401),
        Opened::Stream(_) => panic!("bad token subscribed"),
    }
    // A waypoint gets its own config.
    let wp: Target = "waypoint/prod/wp".parse().unwrap();
    env.publisher.publish(&wp, &config(&["x"])).unwrap();
    let mut s = RawStream::subscribe(&env.endpoint(WAYPOINT), subscribe("waypoint/prod/wp")).await;
    assert!(s.update(WAIT).await.is_some());
}

#[tokio::test]
async fn nack_is_recorded_and_the_next_ack_clears_it() {
    let env = Env::start("stream-nack").await;
    env.publisher.publish(&n1(), &config(&["a"])).unwrap();
    let mut s = RawStream::subscribe(&env.endpoint(ZTUNNEL_N1), subscribe("node/n1")).await;
    let u1 = s.update(WAIT).await.unwrap();
    s.tell(ClientMessage::Ack {
        version: u1.version,
    });
    let v2 = env
        .publisher
        .publish(&n1(), &config(&["a", "bad"]))
        .unwrap();
    let u2 = s.update(WAIT).await.unwrap();
    assert_eq!(u2.version, v2);
    s.tell(ClientMessage::Nack {
        version: v2,
        error: "workload bad is invalid".into(),
    });
    let recorded = async {
        while env.publisher.nacks().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, recorded)
        .await
        .expect("NACK recorded");
    let nack = &env.publisher.nacks()[0];
    assert_eq!((nack.version, nack.target.as_str()), (v2, "node/n1"));
    assert!(nack.error.contains("bad is invalid"));
    // Not re-sent: the proxy already said no to it.
    assert!(s.update(Duration::from_millis(500)).await.is_none());
    // The next state is a delta from what the proxy still holds (v1), not from v2.
    let v3 = env.publisher.publish(&n1(), &config(&["a", "c"])).unwrap();
    let u3 = s.update(WAIT).await.unwrap();
    assert_eq!(u3.version, v3);
    assert_eq!(keys(&u3), ["workloads/prod/c"]);
    assert!(
        u3.removes.is_empty(),
        "bad was never held: {:?}",
        u3.removes
    );
    s.tell(ClientMessage::Ack { version: v3 });
    let cleared = async {
        while !env.publisher.nacks().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, cleared)
        .await
        .expect("ACK clears the NACK record");
    let text = metrics_text(&env.metrics);
    assert!(
        text.contains("ambit_control_config_messages_total{type=\"nack\"} 1"),
        "{text}"
    );
    assert!(text.contains("ambit_control_connected_proxies 1"), "{text}");
}

#[tokio::test]
async fn reconnect_with_known_resources_gets_only_the_difference() {
    let env = Env::start("stream-resume").await;
    let held = ResourceSet::from_config(&config(&["a", "b", "c"])).unwrap();
    env.publisher
        .publish(&n1(), &config(&["a", "c", "d"]))
        .unwrap();
    let sub = Subscribe {
        target: n1(),
        known: held.versions(),
        last_version: Some(1),
    };
    let mut s = RawStream::subscribe(&env.endpoint(ZTUNNEL_N1), sub).await;
    let u = s.update(WAIT).await.unwrap();
    assert!(!u.full);
    assert_eq!(keys(&u), ["workloads/prod/d"]);
    assert_eq!(u.removes, ["workloads/prod/b"]);
    // Up to date already: an empty update tells the version.
    let sub = Subscribe {
        target: n1(),
        known: ResourceSet::from_config(&config(&["a", "c", "d"]))
            .unwrap()
            .versions(),
        last_version: None,
    };
    let mut s = RawStream::subscribe(&env.endpoint(ZTUNNEL_N1), sub).await;
    let u = s.update(WAIT).await.unwrap();
    assert!(u.upserts.is_empty() && u.removes.is_empty());
    assert_eq!(Some(u.version), env.publisher.version(&n1()));
}

#[tokio::test]
async fn a_slow_proxy_gets_coalesced_updates() {
    let env = Env::start("stream-slow").await;
    env.publisher.publish(&n1(), &config(&["a"])).unwrap();
    let mut s = RawStream::subscribe(&env.endpoint(ZTUNNEL_N1), subscribe("node/n1")).await;
    let u1 = s.update(WAIT).await.unwrap();
    // The proxy does not ACK; 50 states get published meanwhile.
    let mut last = 0;
    let mut names = vec!["a".to_string()];
    for i in 0..50 {
        names.push(format!("w{i}"));
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        last = env.publisher.publish(&n1(), &config(&refs)).unwrap();
    }
    assert!(
        s.update(Duration::from_millis(500)).await.is_none(),
        "nothing is sent while an update is unacknowledged"
    );
    s.tell(ClientMessage::Ack {
        version: u1.version,
    });
    let u = s.update(WAIT).await.unwrap();
    assert_eq!(u.version, last, "only the latest state is sent");
    assert_eq!(u.upserts.len(), 50);
    s.tell(ClientMessage::Ack { version: u.version });
    assert!(s.update(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn a_silent_proxy_is_dropped() {
    let mut env = Env::start_with("stream-dead", Duration::from_millis(600)).await;
    env.publisher.publish(&n1(), &config(&["a"])).unwrap();
    let mut s = RawStream::subscribe(&env.endpoint(ZTUNNEL_N1), subscribe("node/n1")).await;
    assert!(s.update(WAIT).await.is_some());
    assert_eq!(env.publisher.proxies().len(), 1);
    // No ACK, no heartbeat from us: the server gives up after the peer timeout.
    assert!(
        s.ended(Duration::from_secs(10)).await,
        "server kept a silent proxy"
    );
    assert!(env.publisher.proxies().is_empty());
    env.stop();
}

#[tokio::test]
async fn client_validates_acks_and_resumes_across_server_restarts() {
    let mut env = Env::start_with("stream-restart", Duration::from_secs(2)).await;
    env.publisher.publish(&n1(), &config(&["a", "b"])).unwrap();
    let mut opts = StreamOptions::new(env.endpoint(ZTUNNEL_N1), n1());
    opts.validate = Arc::new(|cfg| match cfg.workloads.iter().find(|w| w.name == "bad") {
        Some(_) => Err("workload bad is not allowed here".into()),
        None => Ok(()),
    });
    opts.heartbeat = Duration::from_millis(300);
    opts.peer_timeout = Duration::from_secs(2);
    opts.backoff_max = Duration::from_millis(500);
    let stream = ConfigStream::connect(opts).await;
    let mut rx = stream.config.clone();
    assert_eq!(rx.borrow().workloads.len(), 2);

    // Rejected by the validator: NACKed, the old config stays, the server knows.
    env.publisher
        .publish(&n1(), &config(&["a", "b", "bad"]))
        .unwrap();
    let mut status = stream.status.clone();
    tokio::time::timeout(WAIT, status.wait_for(|s| s.rejected == 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rx.borrow().workloads.len(), 2);
    tokio::time::timeout(WAIT, async {
        while env.publisher.nacks().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert!(env.publisher.nacks()[0].error.contains("not allowed"));

    // The server goes away: the last good config stays in force.
    env.stop();
    tokio::time::timeout(WAIT, status.wait_for(|s| !s.connected))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(rx.borrow_and_update().workloads.len(), 2);
    assert!(!rx.has_changed().unwrap());

    // A restarted server (empty until reconcilers publish) gets the proxy back, which
    // reports what it holds; the new state arrives.
    env.restart().await;
    let v = env
        .publisher
        .publish(&n1(), &config(&["a", "b", "c"]))
        .unwrap();
    tokio::time::timeout(WAIT, rx.wait_for(|c| c.workloads.len() == 3))
        .await
        .unwrap()
        .unwrap();
    let st = status.borrow().clone();
    assert_eq!(st.version, Some(v));
    assert_eq!(st.subscriptions, 2);
    assert_eq!(st.applied, 2);
    // What it applied is exactly what was published, in canonical order.
    let names: Vec<String> = rx
        .borrow()
        .workloads
        .iter()
        .map(|w| w.name.clone())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
}

#[tokio::test]
async fn nodes_published_together_share_one_version_and_each_get_only_the_change() {
    let env = Env::start("stream-shared").await;
    let nodes: Vec<Target> = ["node/n1", "node/n2"]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    let v1 = env.publisher.publish_set(
        &nodes,
        ResourceSet::from_config(&config(&["a", "b"])).unwrap(),
    );
    let mut s1 = RawStream::subscribe(&env.endpoint(ZTUNNEL_N1), subscribe("node/n1")).await;
    let mut s2 = RawStream::subscribe(&env.endpoint(ZTUNNEL_N2), subscribe("node/n2")).await;
    for s in [&mut s1, &mut s2] {
        let u = s.update(WAIT).await.expect("initial state");
        assert_eq!((u.version, u.full, u.upserts.len()), (v1, true, 3));
        s.tell(ClientMessage::Ack { version: v1 });
    }
    // Let both ACKs land, so the next update is computed from the ACKed version.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut next = config(&["a", "b"]);
    std::sync::Arc::make_mut(&mut next.workloads[0]).healthy = false;
    let v2 = env
        .publisher
        .publish_set(&nodes, ResourceSet::from_config(&next).unwrap());
    assert!(v2 > v1);
    assert_eq!(env.publisher.version(&nodes[0]), Some(v2));
    assert_eq!(env.publisher.version(&nodes[1]), Some(v2));
    for s in [&mut s1, &mut s2] {
        let u = s.update(WAIT).await.expect("delta");
        assert_eq!((u.version, u.full), (v2, false));
        assert_eq!(keys(&u), ["workloads/prod/a"]);
        assert!(u.removes.is_empty());
        s.tell(ClientMessage::Ack { version: v2 });
    }
    // The same state again, to both: nothing new, nothing sent.
    let again = env
        .publisher
        .publish_set(&nodes, ResourceSet::from_config(&next).unwrap());
    assert_eq!(again, v2);
    assert!(s1.update(Duration::from_millis(300)).await.is_none());
    assert!(s2.update(Duration::from_millis(100)).await.is_none());
}
