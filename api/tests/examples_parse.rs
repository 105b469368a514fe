//! Every tekfed object in `examples/` reads into the Rust types, so the
//! examples and the code that will reconcile them agree on every field.

use std::path::Path;

use serde_json::Value;
use tekfed_api::{
    FederatedPipeline, FederatedPipelineRun, FederatedStepAction, FederatedTask, FederatedTaskRun,
    MemberCluster, OverrideOperation, PlacementMode,
};

#[test]
fn examples_read_into_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut read = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let parsed = match kind.as_str() {
                "FederatedTask" => serde_json::from_value::<FederatedTask>(doc).map(drop),
                "FederatedPipeline" => serde_json::from_value::<FederatedPipeline>(doc).map(drop),
                "FederatedStepAction" => {
                    serde_json::from_value::<FederatedStepAction>(doc).map(drop)
                }
                "FederatedTaskRun" => serde_json::from_value::<FederatedTaskRun>(doc).map(drop),
                "FederatedPipelineRun" => {
                    serde_json::from_value::<FederatedPipelineRun>(doc).map(drop)
                }
                "MemberCluster" => serde_json::from_value::<MemberCluster>(doc).map(drop),
                _ => continue,
            };
            parsed.unwrap_or_else(|e| panic!("{}: {kind}: {e}", path.display()));
            read += 1;
        }
    }
    assert!(
        read >= 8,
        "read only {read} tekfed objects from {}",
        dir.display()
    );
}

#[test]
fn defaults_follow_kubefed_and_tekton_conventions() {
    let run: FederatedTaskRun = serde_json::from_value(serde_json::json!({
        "apiVersion": "tekfed.io/v1alpha1",
        "kind": "FederatedTaskRun",
        "metadata": {"name": "r"},
        "spec": {
            "template": {"spec": {"taskRef": {"name": "t"}}},
            "placement": {"clusters": [{"name": "a"}]},
            "overrides": [{"clusterName": "a", "clusterOverrides": [{"path": "/spec/timeout", "value": "1h"}]}],
        },
    }))
    .unwrap();
    assert_eq!(run.spec.placement.mode, PlacementMode::One);
    assert_eq!(
        run.spec.overrides[0].cluster_overrides[0].op,
        OverrideOperation::Replace
    );
    // Unknown Tekton fields pass through untouched.
    assert_eq!(run.spec.template.spec["taskRef"]["name"], "t");
}
