//! Capturing a pod (ztunnel's listeners first, then the in-pod redirection and the probe
//! SNAT) and releasing it (the other way round).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::Path;

use ambit_core::inpod_proto::{AgentClient, InpodError};
use tracing::{info, warn};

use super::cluster::ClusterPod;
use super::{failure, pod_info, Agent, AttachmentKey, Captured, Failure, State};
use crate::redirect;

impl Agent {
    /// Runs `f` against ztunnel, reconnecting (and replaying) once if the connection broke.
    pub(super) fn with_ztunnel(
        &self,
        st: &mut State,
        f: impl Fn(&AgentClient) -> Result<(), InpodError>,
    ) -> Result<(), Failure> {
        for attempt in 0..2 {
            self.ensure_ztunnel(st)
                .map_err(|m| failure("ztunnel_unreachable", m))?;
            let client = st.ztunnel.as_ref().expect("ensured");
            match f(client) {
                Ok(()) => return Ok(()),
                Err(InpodError::Rejected { message, .. }) => {
                    return Err(failure(
                        "ztunnel_refused",
                        format!("ztunnel refused: {message}"),
                    ))
                }
                Err(e) if attempt == 0 => {
                    warn!(error = %e, "ztunnel connection broke; reconnecting");
                    st.ztunnel = None;
                }
                Err(e) => {
                    st.ztunnel = None;
                    return Err(failure("ztunnel_connection_lost", e.to_string()));
                }
            }
        }
        unreachable!("the loop returns")
    }

    pub(super) fn capture(
        &self,
        st: &mut State,
        pod: &ClusterPod,
        netns: &Path,
        ips: &[IpAddr],
        attachment: Option<AttachmentKey>,
    ) -> Result<(), Failure> {
        let result = self.try_capture(st, pod, netns, ips, attachment);
        if let Err(f) = &result {
            self.metrics.fail(f.reason);
        }
        self.metrics.enrolled_pods.set(st.captured.len() as i64);
        result
    }

    fn try_capture(
        &self,
        st: &mut State,
        pod: &ClusterPod,
        netns: &Path,
        ips: &[IpAddr],
        attachment: Option<AttachmentKey>,
    ) -> Result<(), Failure> {
        let file = File::open(netns).map_err(|e| {
            failure(
                "netns_unavailable",
                format!("opening pod netns {}: {e}", netns.display()),
            )
        })?;
        let captured = Captured {
            info: pod_info(pod, ips),
            attachment,
            netns: file,
        };
        if captured.info.ips.is_empty() {
            return Err(failure(
                "no_ip",
                format!("pod {}/{} has no IP yet", pod.namespace, pod.name),
            ));
        }
        // Listeners first: traffic is never redirected to a port nobody listens on.
        self.with_ztunnel(st, |z| z.add_pod(&captured.info, captured.netns.as_fd()))?;
        let path = captured.netns_path();
        if let Err(e) = redirect::apply(&path, &self.opts.redirect) {
            let _ = self.with_ztunnel(st, |z| z.del_pod(&captured.info.uid));
            return Err(failure(
                "redirect_failed",
                format!(
                    "installing redirection for {}/{}: {e}",
                    pod.namespace, pod.name
                ),
            ));
        }
        self.add_probe_snat(st, &captured);
        info!(pod = %captured.info.uid, "pod captured");
        st.captured.insert(captured.info.uid.clone(), captured);
        Ok(())
    }

    /// Lets kubelet probes reach the captured pod (see [`crate::probes`]).
    pub(super) fn add_probe_snat(&self, st: &State, captured: &Captured) {
        let (Some(ip), Some(probe)) = (captured.ipv4(), self.opts.redirect.probe_source_v4) else {
            return;
        };
        let host = &self.opts.host_netns;
        // Adding the pod's element fails when the node's table is missing (first pod, or
        // removed by someone): install the table with every captured pod then.
        let result = crate::probes::add_pod(host, ip).or_else(|_| {
            let mut all: Vec<Ipv4Addr> = st.captured.values().filter_map(Captured::ipv4).collect();
            all.push(ip);
            // The pod may be listed already (taken over from a previous agent).
            all.sort();
            all.dedup();
            crate::probes::apply(host, probe, &all)
        });
        if let Err(e) = result {
            warn!(pod = %captured.info.uid, error = %e, "kubelet probe SNAT not installed");
        }
    }

    pub(super) fn release(&self, st: &mut State, uid: &str) {
        let Some(c) = st.captured.remove(uid) else {
            return;
        };
        // Redirection off first, then the listeners.
        if let Err(e) = redirect::remove(&c.netns_path(), &self.opts.redirect) {
            warn!(pod = %uid, error = %e, "removing redirection failed");
        }
        if let Some(ip) = c.ipv4() {
            let _ = crate::probes::remove_pod(&self.opts.host_netns, ip);
        }
        if let Err(f) = self.with_ztunnel(st, |z| z.del_pod(uid)) {
            // A disconnected ztunnel drops the pod at the next snapshot.
            warn!(pod = %uid, error = %f.message, "telling ztunnel to release the pod failed");
        }
        self.metrics.enrolled_pods.set(st.captured.len() as i64);
        info!(pod = %uid, "pod released");
    }
}
