//! The node agent's readiness only reports the ztunnel connection: probing it never
//! reconnects (a reconnect replays every pod to ztunnel, which a kubelet probe every few
//! seconds must not cause); the reconciler and plugin requests reconnect.
mod common;

use std::time::{Duration, Instant};

use ambit_cni::agent::Agent;
use ambit_cni::agent_proto::{call, AgentResponse, PluginRequest};
use common::*;

#[test]
fn readiness_reports_the_ztunnel_connection_without_reconnecting() {
    let mut m = mesh("cniready", 1);
    m.omit_netns = true;
    m.write_config().unwrap();
    std::fs::write(m.dir.join("cluster.json"), "{}").unwrap();
    let socket = cni::plugin_socket(&m, 0);
    // A resync far beyond the test: only the first reconcile runs on its own.
    let agent = Agent::start(cni::agent_options(&m, 0, Duration::from_secs(3600))).unwrap();
    agent.set_installed(true);
    assert!(eventually(Duration::from_secs(5), || agent
        .ready()
        .is_err_and(|why| why.contains("ztunnel is not reachable"))));

    // ztunnel comes up: probing readiness does not connect to it.
    let opts = m.agent_mode_opts(0);
    m.start_ztunnel_with(0, opts).unwrap();
    let until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < until {
        let ready = agent.ready();
        assert!(ready.is_err(), "readiness connected to ztunnel by itself");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!agent.ztunnel_connected());

    // A plugin STATUS (or the next resync) reconnects; readiness reports it.
    let status = call(&socket, &PluginRequest::Status, Duration::from_secs(5)).unwrap();
    assert_eq!(status, AgentResponse::Ok);
    assert_eq!(agent.ready(), Ok(()));

    // ztunnel goes away: readiness says so, still without trying to reconnect.
    m.stop_ztunnel(0);
    assert!(eventually(Duration::from_secs(5), || agent
        .ready()
        .is_err_and(|why| why.contains("closed the in-pod connection"))));
    assert!(agent.ztunnel_connected(), "nothing reconnected or reset it");
}
