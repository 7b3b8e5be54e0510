//! The command-line half of mode selection: the control-plane flags both proxies take, and
//! the helpers that load file mode's local CA.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ca::{CaError, CertificateAuthority};
use crate::control::{ControlError, Endpoint};
use crate::identity::{Identity, IdentityError};

#[derive(Debug, thiserror::Error)]
pub enum ModeError {
    #[error("--control-plane takes config and {issued} from the operator; drop {clash}")]
    Clash { issued: &'static str, clash: String },
    #[error(transparent)]
    OperatorIdentity(#[from] IdentityError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("reading {what} from {}", path.display())]
    ReadPem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the mesh CA")]
    Ca(#[source] CaError),
}

/// Stream mode's flags. The defaults and help suit ztunnel; a binary whose mounts differ
/// overrides `root_cert`/`token_file` with `#[command(mut_arg(..))]` (the waypoint does).
#[derive(clap::Args, Debug, Clone)]
pub struct ControlPlaneArgs {
    /// The operator's control plane (`host:port`, usually ambit-operator.ambit-system.svc:15012):
    /// config stream and CA. Excludes --config/--ca-cert/--ca-key.
    #[arg(long, env = "AMBIT_CONTROL_PLANE")]
    pub control_plane: Option<String>,
    /// The mesh root certificate the control plane's certificate must chain to (stream mode;
    /// from ConfigMap ambit-ca-root-cert).
    #[arg(
        long,
        env = "AMBIT_ROOT_CERT",
        default_value = "/var/run/secrets/ambit/ca/root-cert.pem"
    )]
    pub root_cert: PathBuf,
    /// Projected ServiceAccount token sent to the control plane (stream mode; re-read per connection).
    #[arg(
        long,
        env = "AMBIT_TOKEN_FILE",
        default_value = "/var/run/secrets/ambit/tokens/token"
    )]
    pub token_file: PathBuf,
    /// SPIFFE ID the control plane must present (default: the operator's in --trust-domain).
    #[arg(long)]
    pub operator_identity: Option<Identity>,
}

impl ControlPlaneArgs {
    /// The control plane to use, or `None` without `--control-plane` (file mode).
    ///
    /// `file_flags` are the binary's file-mode flags with whether each was given: any given
    /// one clashes with `--control-plane`. `issued` names what the operator's CA issues to
    /// this binary, for that error. A missing root or token fails here, at startup, because
    /// retrying would not fix them.
    pub fn endpoint(
        &self,
        trust_domain: &str,
        file_flags: &[(&str, bool)],
        issued: &'static str,
    ) -> Result<Option<Endpoint>, ModeError> {
        let Some(address) = &self.control_plane else {
            return Ok(None);
        };
        let clash: Vec<&str> = file_flags.iter().filter(|f| f.1).map(|f| f.0).collect();
        if !clash.is_empty() {
            return Err(ModeError::Clash {
                issued,
                clash: clash.join(", "),
            });
        }
        let operator_identity = match &self.operator_identity {
            Some(id) => id.clone(),
            None => crate::control::operator_identity(trust_domain)?,
        };
        let endpoint = Endpoint {
            address: address.clone(),
            root_cert: self.root_cert.clone(),
            operator_identity,
            token_file: self.token_file.clone(),
            connect_timeout: Duration::from_secs(10),
        };
        crate::control::tls::read_roots(&endpoint.root_cert)?;
        endpoint.token()?;
        Ok(Some(endpoint))
    }
}

/// Reads a PEM file; `what` names it in the error.
pub fn read_pem(path: &Path, what: &'static str) -> Result<String, ModeError> {
    std::fs::read_to_string(path).map_err(|source| ModeError::ReadPem {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// File mode's local mesh CA, from its certificate and PKCS#8 key files.
pub fn local_ca(
    trust_domain: &str,
    ca_cert: &Path,
    ca_key: &Path,
) -> Result<CertificateAuthority, ModeError> {
    CertificateAuthority::from_pem(
        trust_domain,
        &read_pem(ca_cert, "CA certificate")?,
        &read_pem(ca_key, "CA key")?,
    )
    .map_err(ModeError::Ca)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cp: ControlPlaneArgs,
    }

    fn cli(extra: &[&str]) -> ControlPlaneArgs {
        Cli::try_parse_from(std::iter::once(&"proxy").chain(extra))
            .unwrap()
            .cp
    }

    #[test]
    fn no_control_plane_is_file_mode_and_file_flags_clash_with_it() {
        let none = cli(&[]).endpoint("cluster.local", &[("--config", true)], "x");
        assert!(matches!(none, Ok(None)), "{none:?}");
        let e = cli(&["--control-plane", "op:15012"])
            .endpoint(
                "cluster.local",
                &[("--config", true), ("--ca-cert", false), ("--ca-key", true)],
                "certificates",
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--control-plane takes config and certificates from the operator; drop --config, --ca-key"
        );
    }

    #[test]
    fn pem_and_ca_errors_name_the_file() {
        let e = local_ca(
            "cluster.local",
            Path::new("/nonexistent/ca.pem"),
            Path::new("/nonexistent/ca.key"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "reading CA certificate from /nonexistent/ca.pem"
        );
        let dir = std::env::temp_dir().join(format!("ambit-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
        std::fs::write(&cert, "not a certificate").unwrap();
        std::fs::write(&key, "not a key").unwrap();
        let e = local_ca("cluster.local", &cert, &key).unwrap_err();
        assert!(matches!(e, ModeError::Ca(_)), "{e:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
