//! The hub and agents survive their API servers restarting: they reconnect
//! with backoff instead of crashing, report nothing stale as fresh, and
//! runs go on (a federation of its own: it restarts API servers).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use serde_json::json;
use tekfed_api::runs::RunPhase;
use tekfed_api::{FederatedTaskRun, MemberCluster};
use tekfed_testbed::federation::federate;
use tekfed_testbed::{HUB, TestBed, eventually};

const WAIT: Duration = Duration::from_secs(120);

async fn run_to_success(bed: &TestBed, ns: &str, name: &str) {
    let hub = bed.client(HUB).await.unwrap();
    let api: Api<FederatedTaskRun> = Api::namespaced(hub, ns);
    let run: FederatedTaskRun = serde_json::from_value(json!({
        "apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedTaskRun",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "template": {"spec": {"taskSpec": {"steps": [{"name": "s", "image": "ubuntu", "script": "true"}]}}},
            "placement": {"clusters": [{"name": "member-1"}]},
        },
    }))
    .unwrap();
    api.create(&PostParams::default(), &run).await.unwrap();
    eventually(&format!("{name} to succeed"), WAIT, || {
        let api = api.clone();
        async move {
            (api.get(name).await.ok()?.status?.phase == Some(RunPhase::Succeeded)).then_some(())
        }
    })
    .await;
}

/// Wait for a heartbeat from member-1 written after `after`.
async fn fresh_heartbeat(bed: &TestBed, after: Timestamp) {
    let clusters: Api<MemberCluster> = Api::all(bed.client(HUB).await.unwrap());
    eventually(
        "a heartbeat newer than the restart, and Ready",
        WAIT,
        || {
            let clusters = clusters.clone();
            async move {
                let status = clusters.get("member-1").await.ok()?.status?;
                let beat = status.last_heartbeat_time.clone()?.0;
                let ready = status.is_ready();
                (beat > after && ready).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn runs_go_on_after_the_hub_and_member_api_servers_restart() {
    let bed = TestBed::start(1).await.unwrap();
    federate(&bed, &[]).await.unwrap();
    let ns = bed.namespace("restarts", &[HUB]).await.unwrap();
    run_to_success(&bed, &ns, "before").await;

    // The hub's API server goes away and comes back.
    let restarted = Timestamp::now();
    bed.restart("kube-apiserver (hub)").unwrap();
    fresh_heartbeat(&bed, restarted).await;
    run_to_success(&bed, &ns, "after-hub-restart").await;

    // Then the member's.
    let restarted = Timestamp::now();
    bed.restart("kube-apiserver (member-1)").unwrap();
    fresh_heartbeat(&bed, restarted).await;
    run_to_success(&bed, &ns, "after-member-restart").await;

    // The hub and the agent kept running throughout: no crash loop.
    for process in ["tekfed-hub", "agent-member-1"] {
        let log = bed.log_of(process);
        assert!(!log.contains("panicked"), "{process} panicked:\n{log}");
    }
}
