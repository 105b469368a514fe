//! Clusters with `maxConcurrentRuns` never take more runs at once; the rest
//! waits, saying why (a federation of its own: it changes member capacity).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::json;
use tekfed_api::runs::RunPhase;
use tekfed_api::{FederatedTaskRun, MemberCluster};
use tekfed_runtime::connect::tekton_resource;
use tekfed_testbed::federation::{create_task_runs, federate, run_phases, wait_all_succeeded};
use tekfed_testbed::{HUB, POLL_INTERVAL, TestBed, eventually};

const WAIT: Duration = Duration::from_secs(240);

fn is_running(run: &DynamicObject) -> bool {
    run.data["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Succeeded"))
        .is_some_and(|c| c["status"] == "Unknown" && c["reason"] == "Running")
}

#[tokio::test]
async fn max_concurrent_runs_is_never_exceeded_and_the_rest_waits() {
    const MAX: usize = 5;
    const RUNS: usize = 30;
    let bed = TestBed::start(2).await.unwrap();
    federate(&bed, &[]).await.unwrap();
    let hub = bed.client(HUB).await.unwrap();
    let clusters: Api<MemberCluster> = Api::all(hub.clone());
    for member in bed.members() {
        clusters
            .patch(
                &member,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"maxConcurrentRuns": MAX}})),
            )
            .await
            .unwrap();
    }
    let ns = bed.namespace("capacity", &[HUB]).await.unwrap();

    // Sample what runs on each member while the runs go through.
    let stop = Arc::new(AtomicBool::new(false));
    let peak: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let mut samplers = Vec::new();
    for member in bed.members() {
        let api: Api<DynamicObject> = Api::all_with(
            bed.client(&member).await.unwrap(),
            &tekton_resource("TaskRun"),
        );
        let (stop, peak) = (stop.clone(), peak.clone());
        samplers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(list) = api.list(&ListParams::default()).await {
                    let running = list.items.iter().filter(|r| is_running(r)).count();
                    let mut peak = peak.lock().unwrap();
                    let entry = peak.entry(member.clone()).or_default();
                    *entry = (*entry).max(running);
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }));
    }

    create_task_runs(&hub, &ns, RUNS, Some("2s")).await;
    let api: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), &ns);
    // While both clusters are full, the rest waits, saying why.
    let queued = eventually("runs to queue behind full clusters", WAIT, || {
        let api = api.clone();
        async move {
            let queued: Vec<_> = run_phases(&api)
                .await
                .into_iter()
                .filter(|(_, p, _)| *p == Some(RunPhase::Queued))
                .collect();
            (queued.len() >= RUNS - 2 * MAX - 2).then_some(queued)
        }
    })
    .await;
    assert!(
        queued
            .iter()
            .all(|(_, _, reason)| reason.as_deref() == Some("AllClustersFull")),
        "{queued:?}"
    );
    wait_all_succeeded(&api, "every run to succeed", WAIT).await;
    stop.store(true, Ordering::Relaxed);
    for s in samplers {
        s.await.unwrap();
    }
    let peak = peak.lock().unwrap().clone();
    assert_eq!(peak.len(), 2, "{peak:?}");
    for (member, running) in &peak {
        assert!(
            *running <= MAX,
            "{member} ran {running} at once, over its maxConcurrentRuns {MAX}"
        );
        assert!(
            *running >= 2,
            "{member} never ran more than {running} at once: the sampling saw nothing"
        );
    }
    eprintln!("FIGURES capacity: peak running per member {peak:?} (max {MAX})");
}
