//! Writes the tekfed CRDs to `api/manifests/` (or the folder given).
//! Run it through `make crds` after changing a type.
//!
//! Writing to `api/manifests/` also writes the `tekfed-hub` Helm chart's
//! copies: each CRD into `charts/tekfed-hub/crds/` as it is, and the
//! admission policies into `charts/tekfed-hub/templates/`, wrapped in
//! `admissionPolicies.enabled` (`api/tests/chart_fresh.rs` checks both),
//! and each chart's RBAC rules (`templates/_rules.tpl`) from
//! `tekfed_api::rbac` (`api/tests/chart_rules_fresh.rs` checks them), and
//! the agent chart's member guard from `tekfed_api::guard`
//! (`api/tests/chart_fresh.rs`).

use std::path::{Path, PathBuf};

/// The chart template's first and last lines around the admission
/// policies; `api/tests/chart_fresh.rs` expects exactly these.
const POLICIES_HEAD: &str = "{{- if .Values.admissionPolicies.enabled }}\n";
const POLICIES_TAIL: &str = "{{- end }}\n";

fn main() -> std::io::Result<()> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let default_dir = crate_dir.join("manifests");
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| default_dir.clone());
    std::fs::create_dir_all(&dir)?;
    let manifests = tekfed_api::manifests::manifests();
    for (file, yaml) in &manifests {
        write(&dir.join(file), yaml)?;
    }
    if dir != default_dir {
        return Ok(());
    }
    let chart = crate_dir.join("../charts/tekfed-hub");
    std::fs::create_dir_all(chart.join("crds"))?;
    for (file, yaml) in &manifests {
        if file == "admission-policies.yaml" {
            let template = format!("{POLICIES_HEAD}{yaml}{POLICIES_TAIL}");
            write(&chart.join("templates").join(file), &template)?;
        } else {
            write(&chart.join("crds").join(file), yaml)?;
        }
    }
    for (path, text) in tekfed_api::rbac::chart_templates() {
        write(&crate_dir.join("..").join(path), &text)?;
    }
    write(
        &crate_dir.join("..").join(tekfed_api::guard::CHART_TEMPLATE),
        &tekfed_api::guard::chart_template(),
    )?;
    Ok(())
}

fn write(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)?;
    println!("wrote {}", path.display());
    Ok(())
}
