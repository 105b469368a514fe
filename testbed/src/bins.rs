//! Where the built Kubernetes binaries are.
//!
//! `make test` builds them first and passes the folder in
//! `TEKFED_K8S_BIN_DIR`. A bare `cargo test` runs `hack/k8s-bins.sh` itself
//! (it returns at once when the cache is complete), so the tests never run
//! against binaries other than the pinned ones.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::TestBedError;

/// The folder holding `etcd`, `kube-apiserver`, `kubectl`, the member
/// binaries (Tekton, kwok, scheduler, controller-manager) and Tekton's
/// CRDs and config.
pub fn bin_dir() -> Result<PathBuf, TestBedError> {
    if let Some(dir) = std::env::var_os("TEKFED_K8S_BIN_DIR") {
        return check(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/k8s-bins.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| TestBedError::Io {
            what: format!("running {}", script.display()),
            source,
        })?;
    if !output.status.success() {
        return Err(TestBedError::Bins(format!(
            "{} failed ({}); see its messages above",
            script.display(),
            output.status
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default().trim();
    check(PathBuf::from(last))
}

fn check(dir: PathBuf) -> Result<PathBuf, TestBedError> {
    for needed in [
        "etcd",
        "kube-apiserver",
        "kubectl",
        "kube-scheduler",
        "kube-controller-manager",
        "tekton-controller",
        "tekton-webhook",
        "kwok",
        "tekton-crds/stepaction.yaml",
        "tekton-config/config-defaults.yaml",
        "kwok-stages/pod-ready.yaml",
    ] {
        if !dir.join(needed).exists() {
            return Err(TestBedError::Bins(format!(
                "{} has no {needed}; run hack/k8s-bins.sh",
                dir.display()
            )));
        }
    }
    Ok(dir)
}
