//! The `tekfed-hub` Helm chart ships copies of `api/manifests/`: each CRD
//! in its `crds/` folder, and the admission policies as a template (wrapped
//! in `admissionPolicies.enabled`). A copy that differs from the manifests
//! would install a schema the hub does not expect.

use std::path::Path;

/// What `api/examples/crdgen.rs` wraps the admission policies in.
const POLICIES_HEAD: &str = "{{- if .Values.admissionPolicies.enabled }}\n";
const POLICIES_TAIL: &str = "{{- end }}\n";

fn yaml_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_hub_chart_ships_the_committed_crds_and_policies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifests = root.join("manifests");
    let chart = root.join("../charts/tekfed-hub");
    let mut stale = Vec::new();
    let mut expected_crds = Vec::new();
    for file in yaml_files(&manifests) {
        let source = std::fs::read_to_string(manifests.join(&file)).unwrap();
        let (copy, wanted) = if file == "admission-policies.yaml" {
            (
                format!("templates/{file}"),
                format!("{POLICIES_HEAD}{source}{POLICIES_TAIL}"),
            )
        } else {
            expected_crds.push(file.clone());
            (format!("crds/{file}"), source)
        };
        match std::fs::read_to_string(chart.join(&copy)) {
            Ok(text) if text == wanted => {}
            Ok(_) => stale.push(format!(
                "charts/tekfed-hub/{copy} differs from api/manifests/{file}"
            )),
            Err(e) => stale.push(format!("charts/tekfed-hub/{copy}: {e}")),
        }
    }
    for extra in yaml_files(&chart.join("crds"))
        .into_iter()
        .filter(|f| !expected_crds.contains(f))
    {
        stale.push(format!(
            "charts/tekfed-hub/crds/{extra} is not in api/manifests/"
        ));
    }
    assert!(
        stale.is_empty(),
        "the tekfed-hub chart's CRDs are stale; run `make crds` and commit the result:\n  {}",
        stale.join("\n  ")
    );
}

#[test]
fn the_agent_chart_ships_the_member_guard_join_installs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = tekfed_api::guard::CHART_TEMPLATE;
    let text = std::fs::read_to_string(root.join(path)).unwrap_or_default();
    assert!(
        text == tekfed_api::guard::chart_template(),
        "{path} differs from tekfed_api::guard; run `make crds` and commit the result"
    );
}
