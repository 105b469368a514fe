//! A hub killed in the middle of a burst neither loses nor duplicates a
//! run (a federation of its own: it kills the hub).

use std::collections::BTreeMap;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams};
use tekfed_api::FederatedTaskRun;
use tekfed_api::runs::RunPhase;
use tekfed_runtime::connect::tekton_resource;
use tekfed_testbed::federation::{create_task_runs, federate, run_phases, wait_all_succeeded};
use tekfed_testbed::{HUB, TestBed, eventually};

const WAIT: Duration = Duration::from_secs(240);

#[tokio::test]
async fn killing_the_hub_mid_burst_loses_and_duplicates_nothing() {
    const RUNS: usize = 300;
    let bed = TestBed::start(3).await.unwrap();
    federate(&bed, &[]).await.unwrap();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("restart", &[HUB]).await.unwrap();
    let api: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), &ns);
    let creating = {
        let (hub, ns) = (hub.clone(), ns.clone());
        tokio::spawn(async move { create_task_runs(&hub, &ns, RUNS, None).await })
    };
    // Kill the hub (SIGTERM then SIGKILL) once some runs are decided and
    // many are not, then start a new one.
    eventually("a third of the runs to be scheduled", WAIT, || {
        let api = api.clone();
        async move {
            let decided = run_phases(&api)
                .await
                .iter()
                .filter(|(_, p, _)| p.is_some_and(|p| p != RunPhase::Queued))
                .count();
            (decided >= RUNS / 3).then_some(())
        }
    })
    .await;
    bed.stop("tekfed-hub");
    bed.start_hub("tekfed-hub", &["--heartbeat-grace", "30"])
        .unwrap();
    creating.await.unwrap();
    wait_all_succeeded(&api, "every run to succeed after the restart", WAIT).await;
    assert_eq!(run_phases(&api).await.len(), RUNS);
    let mut per_uid: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for member in bed.members() {
        let member_api: Api<DynamicObject> = Api::namespaced_with(
            bed.client(&member).await.unwrap(),
            &ns,
            &tekton_resource("TaskRun"),
        );
        for run in member_api.list(&ListParams::default()).await.unwrap().items {
            let uid = run
                .labels()
                .get("tekfed.io/federated-uid")
                .cloned()
                .unwrap_or_default();
            per_uid.entry(uid).or_default().push(member.clone());
        }
    }
    assert_eq!(
        per_uid.len(),
        RUNS,
        "member runs for {} federated runs, expected {RUNS}",
        per_uid.len()
    );
    let duplicated: Vec<_> = per_uid
        .iter()
        .filter(|(_, members)| members.len() > 1)
        .collect();
    assert!(
        duplicated.is_empty(),
        "runs created more than once: {duplicated:?}"
    );
}
