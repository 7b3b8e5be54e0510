//! Leaving the node: when the mesh is removed, the agent takes the plugin out of the CNI
//! config, releases every pod it captured (each pod's namespace ends up exactly as before
//! enrollment, and ztunnel gets `del_pod`), removes the node's probe-SNAT table, the plugin
//! binary and its own socket.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::cluster::ClusterPod;
use super::{install, netns_lookup, Agent};
use crate::redirect;

/// What [`Agent::uninstall_node`] did.
#[derive(Debug, Default)]
pub struct Uninstalled {
    /// Conflists the plugin was removed from.
    pub conflists: Vec<PathBuf>,
    /// UIDs of the pods released.
    pub released: Vec<String>,
    /// Namespaces of this node's pods whose redirection an earlier agent left behind.
    pub swept: Vec<PathBuf>,
}

impl Agent {
    /// Whether the cluster view is complete (always, for a file source).
    pub fn view_loaded(&self) -> bool {
        self.lock().view_loaded
    }

    /// Stops capturing (the reconciler and ADD capture nothing from now on) and releases
    /// every captured pod. Returns their UIDs.
    pub fn release_all(&self) -> Vec<String> {
        let mut st = self.lock();
        st.stopping = true;
        let mut uids: Vec<String> = st.captured.keys().cloned().collect();
        uids.sort();
        for uid in &uids {
            self.release(&mut st, uid);
        }
        uids
    }

    /// Removes Ambit from this node: the plugin from every conflist of the CNI conf dir
    /// first (so no new pod asks for capture), then every captured pod, the probe-SNAT table,
    /// and the plugin binary from the CNI bin dir. `cni_dirs` (conf dir, bin dir) is `None`
    /// when the agent does not manage the CNI config (`--no-install`). Steps that fail are
    /// logged and the others still run.
    pub fn uninstall_node(&self, cni_dirs: Option<(&Path, &Path)>) -> Uninstalled {
        let mut done = Uninstalled::default();
        if let Some((conf_dir, _)) = cni_dirs {
            match install::remove_chained(conf_dir) {
                Ok(changed) => {
                    info!(files = ?changed, "removed the plugin from the CNI config");
                    done.conflists = changed;
                }
                Err(e) => warn!(error = %e, "removing the plugin from the CNI config failed"),
            }
        }
        self.set_installed(false);
        done.released = self.release_all();
        info!(pods = ?done.released, "released every captured pod");
        done.swept = self.sweep_redirection();
        match crate::probes::remove(&self.opts.host_netns) {
            Ok(()) => info!(
                table = crate::probes::HOST_TABLE,
                "removed the probe SNAT table"
            ),
            Err(e) => warn!(error = %e, "removing the probe SNAT table failed"),
        }
        if let Some((_, bin_dir)) = cni_dirs {
            match install::uninstall_binary(bin_dir) {
                Ok(()) => info!(dir = %bin_dir.display(), "removed the plugin binary"),
                Err(e) => warn!(error = %e, "removing the plugin binary failed"),
            }
        }
        // The plugin is gone from every conflist, so nothing dials this socket any more.
        match std::fs::remove_file(&self.opts.plugin_socket) {
            Ok(()) => {
                info!(socket = %self.opts.plugin_socket.display(), "removed the plugin socket")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(error = %e, "removing the plugin socket failed"),
        }
        done
    }

    /// Removes Ambit's redirection from the namespace of every other pod of this node that
    /// still has it, so removing the mesh leaves no rule behind even for pods this agent
    /// never captured (an earlier agent did, and their namespace lost its label while no
    /// agent ran). Only namespaces holding a pod IP of this node are touched.
    fn sweep_redirection(&self) -> Vec<PathBuf> {
        let pods: Vec<ClusterPod> = {
            let st = self.lock();
            st.view
                .pods
                .iter()
                .filter(|p| p.node == self.opts.node && !p.host_network)
                .cloned()
                .collect()
        };
        let mut swept = vec![];
        for pod in pods {
            let Some(ip) = pod.ips.first() else { continue };
            let Some(path) =
                netns_lookup::find_by_ip_scoped(*ip, self.opts.netns_prefix.as_deref())
            else {
                continue;
            };
            if !redirect::is_applied(&path).unwrap_or(false) {
                continue;
            }
            let name = format!("{}/{}", pod.namespace, pod.name);
            match redirect::remove(&path, &self.opts.redirect) {
                Ok(()) => {
                    info!(pod = %name, netns = %path.display(), "removed redirection left by an earlier agent");
                    swept.push(path);
                }
                Err(e) => warn!(pod = %name, error = %e, "removing leftover redirection failed"),
            }
        }
        swept
    }
}
