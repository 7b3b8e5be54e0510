//! A redirection that fails half-way leaves nothing behind. Its own test binary: it points
//! PATH at a failing `nft`, which no other test in the process may see.

use std::os::unix::fs::PermissionsExt;

use ambit_cni::redirect::{apply, dump, is_applied, RedirectConfig, RedirectError};
use ambit_testkit::Topology;

#[test]
fn a_failed_apply_removes_the_rules_and_routes_it_added() {
    let mut topo = Topology::new("redir_atomic", 1).unwrap();
    let pod = topo.add_pod(0, "a").unwrap();
    let path = pod.ns.path();
    let before = dump(&path).unwrap();

    // An `nft` that always fails, first on PATH: the policy routing goes in over netlink,
    // then loading the table fails.
    let dir = std::env::temp_dir().join(format!("ambit-fake-nft-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("nft");
    std::fs::write(&fake, "#!/bin/sh\necho 'fake nft: refusing' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let real_path = std::env::var("PATH").unwrap_or_default();
    std::env::set_var("PATH", format!("{}:{real_path}", dir.display()));
    let result = apply(&path, &RedirectConfig::default());
    std::env::set_var("PATH", &real_path);
    let _ = std::fs::remove_dir_all(&dir);

    let err = result.unwrap_err();
    assert!(
        matches!(&err, RedirectError::Command { stderr, .. } if stderr.contains("fake nft")),
        "{err}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(
        dump(&path).unwrap(),
        before,
        "rules and routes added before the failure must be gone"
    );
    assert!(!is_applied(&path).unwrap());

    // A later attempt with the real nft works as usual.
    apply(&path, &RedirectConfig::default()).unwrap();
    assert!(is_applied(&path).unwrap());
}
