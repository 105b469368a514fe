//! Taking members out: `kubectl tekfed drain` during a burst, and a member
//! lost mid-burst (agent and API server stopped). Each test has a
//! federation of its own (hub, three members with Tekton, agents: real
//! processes on real API servers), since both take a member away.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tekfed_api::runs::{RunPhase, RunStatus};
use tekfed_api::tekton::PIPELINE_RUN_PENDING;
use tekfed_api::{
    DRAIN_ANNOTATION, FederatedPipelineRun, FederatedTaskRun, MemberCluster, RunAssignment,
    cluster_namespace,
};
use tekfed_runtime::connect::tekton_resource;
use tekfed_testbed::federation::federate;
use tekfed_testbed::{HUB, TestBed, binary, eventually_logged};

const WAIT: Duration = Duration::from_secs(180);

fn everywhere() -> Value {
    json!({"clusterSelector": {"matchExpressions": [{"key": "tekfed.io/test-member", "operator": "Exists"}]}})
}

/// A federated run of `kind` (`FederatedTaskRun` or `FederatedPipelineRun`)
/// whose steps Tekton runs for `duration_ms` (played by kwok).
fn run_object(kind: &str, ns: &str, name: &str, duration_ms: u64, extra: Value) -> Value {
    let spec = if kind == "FederatedTaskRun" {
        json!({"taskSpec": {"steps": [{"name": "s", "image": "ubuntu", "script": "make"}]}})
    } else {
        json!({"pipelineSpec": {"tasks": [{"name": "t", "taskSpec": {"steps": [{"name": "s", "image": "ubuntu", "script": "make"}]}}]}})
    };
    let mut run = json!({
        "apiVersion": "tekfed.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "template": {
                "metadata": {"annotations": {"tekfed.io/test-duration": format!("{duration_ms}ms")}},
                "spec": spec,
            },
            "placement": everywhere(),
        },
    });
    if let (Some(spec), Some(extra)) = (run["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    run
}

async fn create_task_runs(hub: &Client, ns: &str, prefix: &str, count: usize, duration_ms: u64) {
    let api: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), ns);
    for i in 0..count {
        let run = run_object(
            "FederatedTaskRun",
            ns,
            &format!("{prefix}-{i:03}"),
            duration_ms,
            json!({}),
        );
        api.create(
            &PostParams::default(),
            &serde_json::from_value(run).unwrap(),
        )
        .await
        .unwrap();
    }
}

/// Federated runs by name → status.
async fn statuses<K>(
    api: &Api<K>,
    status: impl Fn(&K) -> Option<RunStatus>,
) -> BTreeMap<String, RunStatus>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|r| (r.name_any(), status(r).unwrap_or_default()))
        .collect()
}

/// Member runs tekfed created for `ns`, all members: uid of the federated
/// run → the members holding a copy, and whether each copy is held.
async fn member_copies(
    bed: &TestBed,
    kind: &str,
    ns: &str,
) -> BTreeMap<String, Vec<(String, bool)>> {
    let mut all: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
    for member in bed.members() {
        let api: Api<DynamicObject> = Api::namespaced_with(
            bed.client(&member).await.unwrap(),
            ns,
            &tekton_resource(kind),
        );
        let Ok(list) = api.list(&ListParams::default()).await else {
            continue;
        };
        for run in list.items {
            let uid = run
                .labels()
                .get("tekfed.io/federated-uid")
                .cloned()
                .unwrap_or_default();
            let held = run.data["spec"]["status"].as_str() == Some(PIPELINE_RUN_PENDING);
            all.entry(uid).or_default().push((member.clone(), held));
        }
    }
    all
}

#[tokio::test]
async fn drain_moves_unstarted_runs_and_waits_for_started_ones() {
    let bed = TestBed::start(3).await.unwrap();
    // A long grace: this is a drain, not a loss.
    federate(&bed, &["--heartbeat-grace", "120"]).await.unwrap();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("drain", &[HUB]).await.unwrap();
    let api: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), &ns);
    let status = |r: &FederatedTaskRun| r.status.clone();

    // 30 long runs start everywhere, some on member-2. They outlast the
    // placing of the short runs below, so member-2's last report (frozen
    // while its agent is paused) and the others' live ones stay alike, and
    // short runs land on member-2 however slowly this machine creates them.
    create_task_runs(&hub, &ns, "long", 30, 45_000).await;
    eventually_logged(&bed, "long runs running on member-2", WAIT, || {
        let api = api.clone();
        async move {
            let running = statuses(&api, status)
                .await
                .values()
                .filter(|s| {
                    s.cluster.as_deref() == Some("member-2") && s.phase == Some(RunPhase::Running)
                })
                .count();
            (running >= 3).then_some(())
        }
    })
    .await;

    // With member-2's agent paused, what lands there next cannot start:
    // 70 more runs, about a third of them held on member-2.
    bed.stop("agent-member-2");
    create_task_runs(&hub, &ns, "short", 70, 500).await;
    // Unstarted: the assignment is not released (a TaskRun released just
    // before the agent stopped has started, whatever the hub last heard).
    let records: Api<RunAssignment> = Api::namespaced(hub.clone(), &cluster_namespace("member-2"));
    let waiting_on_2 = eventually_logged(&bed, "unstarted runs on member-2", WAIT, || {
        let (api, records) = (api.clone(), records.clone());
        async move {
            let all = statuses(&api, status).await;
            let decided = all.values().filter(|s| s.cluster.is_some()).count();
            let waiting: Vec<String> = records
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|r| !r.status.as_ref().is_some_and(|s| s.is_released()))
                .map(|r| r.spec.run.name)
                .collect();
            (decided == 100 && waiting.len() >= 5).then_some(waiting)
        }
    })
    .await;
    println!(
        "{} runs wait on member-2 when the drain begins",
        waiting_on_2.len()
    );

    let drain = tokio::process::Command::new(binary("kubectl-tekfed"))
        .args(["drain", "member-2", "--timeout", "150s", "--kubeconfig"])
        .arg(bed.kubeconfig())
        .args(["--context", HUB])
        .output();
    let drain = tokio::spawn(drain);

    // The hub moves every unstarted run off member-2 while its agent is away.
    eventually_logged(&bed, "the unstarted runs to leave member-2", WAIT, || {
        let (api, waiting_on_2) = (api.clone(), waiting_on_2.clone());
        async move {
            let all = statuses(&api, status).await;
            waiting_on_2
                .iter()
                .all(|n| {
                    all[n].cluster.as_deref() != Some("member-2")
                        && all[n]
                            .attempts
                            .iter()
                            .any(|a| a.cluster == "member-2" && a.reason == "Drained")
                })
                .then_some(())
        }
    })
    .await;
    // The agent comes back: it reports the started runs finishing and
    // releases nothing that moved.
    bed.restart("agent-member-2").unwrap();

    let output = drain.await.unwrap().unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "drain failed: {out}\nhub log: {}",
        bed.log_of("tekfed-hub")
    );
    assert!(out.contains("member-2 cordoned"), "{out}");
    assert!(
        out.contains("draining member-2:") && out.contains("left to move"),
        "progress lines: {out}"
    );
    assert!(out.contains("member-2 drained in"), "{out}");
    assert!(
        out.contains(&format!("{} run(s) moved", waiting_on_2.len())),
        "the summary counts the moves: {out}"
    );
    println!("{out}");

    eventually_logged(&bed, "all 100 runs to succeed", WAIT, || {
        let api = api.clone();
        async move {
            let all = statuses(&api, status).await;
            (all.len() == 100 && all.values().all(|s| s.phase == Some(RunPhase::Succeeded)))
                .then_some(())
        }
    })
    .await;
    let all = statuses(&api, status).await;
    let copies = member_copies(&bed, "TaskRun", &ns).await;
    let mut uids = BTreeMap::new();
    for run in api.list(&ListParams::default()).await.unwrap() {
        uids.insert(run.name_any(), run.uid().unwrap());
    }
    for (name, s) in &all {
        let on = &copies[&uids[name]];
        assert_eq!(on.len(), 1, "{name} ran exactly once: {on:?}");
        assert_eq!(
            Some(&on[0].0),
            s.cluster.as_ref(),
            "{name} ran where its status says"
        );
        if waiting_on_2.contains(name) {
            assert_ne!(on[0].0, "member-2", "{name} moved off member-2");
        }
    }
    // Nothing is left held or waiting on member-2.
    for record in records.list(&ListParams::default()).await.unwrap() {
        let s = record.status.unwrap_or_default();
        assert!(
            s.is_revoked() || s.phase == Some(RunPhase::Succeeded),
            "member-2's assignment {} is left {s:?}",
            record.metadata.name.unwrap_or_default()
        );
    }

    // It stays cordoned until uncordon, which ends the drain.
    let clusters: Api<MemberCluster> = Api::all(hub.clone());
    let mc = clusters.get("member-2").await.unwrap();
    assert!(mc.spec.unschedulable && mc.annotations().contains_key(DRAIN_ANNOTATION));
    let uncordon = std::process::Command::new(binary("kubectl-tekfed"))
        .args(["uncordon", "member-2", "--kubeconfig"])
        .arg(bed.kubeconfig())
        .args(["--context", HUB])
        .output()
        .unwrap();
    assert!(uncordon.status.success());
    let mc = clusters.get("member-2").await.unwrap();
    assert!(!mc.spec.unschedulable && !mc.annotations().contains_key(DRAIN_ANNOTATION));
}

#[tokio::test]
async fn a_lost_member_s_held_runs_move_and_started_ones_fail_or_rerun_as_asked() {
    let bed = TestBed::start(3).await.unwrap();
    // The hub's default. A shorter grace makes this test quicker but, on a
    // loaded machine, declares the live members lost too (their heartbeats
    // arrive late), failing their started runs.
    let grace = 30;
    // Started runs wait this much longer before onClusterLost applies.
    let started_grace = 40;
    federate(
        &bed,
        &[
            "--heartbeat-grace",
            &grace.to_string(),
            "--started-run-grace",
            &started_grace.to_string(),
        ],
    )
    .await
    .unwrap();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("loss", &[HUB]).await.unwrap();
    let api: Api<FederatedPipelineRun> = Api::namespaced(hub.clone(), &ns);
    let status = |r: &FederatedPipelineRun| r.status.clone();
    let clusters: Api<MemberCluster> = Api::all(hub.clone());
    let set_cordon = |name: &'static str, on: bool| {
        let clusters = clusters.clone();
        async move {
            let patch = json!({"spec": {"unschedulable": on}});
            clusters
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };

    // Two long runs start on member-2 (the others cordoned meanwhile): one
    // fails with its cluster, the other asks to be run again elsewhere.
    set_cordon("member-1", true).await;
    set_cordon("member-3", true).await;
    for (name, extra) in [
        ("long-fail", json!({})),
        ("long-reschedule", json!({"onClusterLost": "Reschedule"})),
    ] {
        let run = run_object("FederatedPipelineRun", &ns, name, 15000, extra);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(run).unwrap(),
        )
        .await
        .unwrap();
    }
    eventually_logged(&bed, "the long runs to run on member-2", WAIT, || {
        let api = api.clone();
        async move {
            let all = statuses(&api, status).await;
            all.values()
                .all(|s| {
                    s.cluster.as_deref() == Some("member-2") && s.phase == Some(RunPhase::Running)
                })
                .then_some(())
        }
    })
    .await;
    set_cordon("member-1", false).await;
    set_cordon("member-3", false).await;

    // Member-2's agent stops: what lands there now is created held and
    // never released. Then its API server goes too.
    bed.stop("agent-member-2");
    let agent_stopped = Instant::now();
    let burst: Vec<String> = (0..60).map(|i| format!("burst-{i:02}")).collect();
    for name in &burst {
        let run = run_object("FederatedPipelineRun", &ns, name, 500, json!({}));
        api.create(
            &PostParams::default(),
            &serde_json::from_value(run).unwrap(),
        )
        .await
        .unwrap();
    }
    let member_2: Api<DynamicObject> = Api::namespaced_with(
        bed.client("member-2").await.unwrap(),
        &ns,
        &tekton_resource("PipelineRun"),
    );
    let held_on_2 = eventually_logged(&bed, "held runs on member-2", WAIT, || {
        let (api, member_2, burst) = (api.clone(), member_2.clone(), burst.clone());
        async move {
            let all = statuses(&api, status).await;
            let decided = burst
                .iter()
                .filter(|n| all.get(*n).is_some_and(|s| s.cluster.is_some()))
                .count();
            let held: Vec<String> = member_2
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|r| r.data["spec"]["status"].as_str() == Some(PIPELINE_RUN_PENDING))
                .map(|r| r.name_any())
                .collect();
            (decided == burst.len() && held.len() >= 5).then_some(held)
        }
    })
    .await;
    bed.stop_cluster("member-2");

    // Within the grace and a few seconds, every held run has moved.
    eventually_logged(
        &bed,
        "held runs to move off the lost member-2",
        WAIT,
        || {
            let (api, held_on_2) = (api.clone(), held_on_2.clone());
            async move {
                let all = statuses(&api, status).await;
                held_on_2
                    .iter()
                    .all(|n| {
                        all[n].cluster.as_deref().is_some_and(|c| c != "member-2")
                            && all[n]
                                .attempts
                                .iter()
                                .any(|a| a.cluster == "member-2" && a.reason == "ClusterLost")
                    })
                    .then_some(())
            }
        },
    )
    .await;
    println!(
        "{} held runs moved off member-2 {:.1}s after its agent stopped (heartbeat grace {grace}s)",
        held_on_2.len(),
        agent_stopped.elapsed().as_secs_f64()
    );
    let mc = clusters.get("member-2").await.unwrap();
    let agent = mc
        .status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "AgentReady")
        .unwrap();
    assert_eq!(
        (agent.status.as_str(), agent.reason.as_str()),
        ("False", "HeartbeatLost")
    );

    // The started runs wait out the started-run grace, counted from the
    // loss: then one fails with its cluster, the other runs again elsewhere.
    // (Asserted by the times the hub wrote, not by looking in between.)
    let all = eventually_logged(&bed, "the started runs to leave member-2", WAIT, || {
        let api = api.clone();
        async move {
            let all = statuses(&api, status).await;
            (all["long-fail"].phase == Some(RunPhase::Failed)
                && !all["long-reschedule"].attempts.is_empty())
            .then_some(all)
        }
    })
    .await;
    let failed = &all["long-fail"];
    let condition = failed
        .conditions
        .iter()
        .find(|c| c.type_ == "Succeeded")
        .unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "ClusterLost")
    );
    let waited = condition
        .last_transition_time
        .0
        .duration_since(agent.last_transition_time.0)
        .as_secs_f64();
    assert!(
        waited >= f64::from(started_grace),
        "failed {waited:.1}s after member-2 was lost, within the started-run grace ({started_grace}s)"
    );
    let rerun = &all["long-reschedule"];
    assert_eq!(rerun.attempts.len(), 1, "{rerun:?}");
    assert_eq!(rerun.attempts[0].cluster, "member-2");

    // Member-2 comes back: its agent deletes the held copies of moved runs,
    // cancels the rescheduled run's old copy, and starts nothing moved.
    bed.restart("kube-apiserver (member-2)").unwrap();
    eventually_logged(&bed, "member-2's API server to answer again", WAIT, || {
        let member_2 = member_2.clone();
        async move {
            member_2
                .list(&ListParams::default().limit(1))
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
    bed.restart("agent-member-2").unwrap();
    eventually_logged(
        &bed,
        "every burst run and the rerun to succeed",
        WAIT,
        || {
            let (api, burst) = (api.clone(), burst.clone());
            async move {
                let all = statuses(&api, status).await;
                (burst
                    .iter()
                    .all(|n| all[n].phase == Some(RunPhase::Succeeded))
                    && all["long-reschedule"].phase == Some(RunPhase::Succeeded))
                .then_some(())
            }
        },
    )
    .await;
    let uids: BTreeMap<String, String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.name_any(), r.uid().unwrap()))
        .collect();
    let copies = eventually_logged(
        &bed,
        "held copies of moved runs to be deleted on member-2",
        WAIT,
        || {
            let (bed, ns, uids, held_on_2) = (&bed, ns.clone(), uids.clone(), held_on_2.clone());
            async move {
                let copies = member_copies(bed, "PipelineRun", &ns).await;
                held_on_2
                    .iter()
                    .all(|n| {
                        copies
                            .get(&uids[n])
                            .is_some_and(|c| c.iter().all(|(m, _)| m != "member-2"))
                    })
                    .then_some(copies)
            }
        },
    )
    .await;
    let all = statuses(&api, status).await;
    for name in &burst {
        let on = &copies[&uids[name]];
        assert_eq!(on.len(), 1, "{name} ran exactly once: {on:?}");
        assert_eq!(
            Some(&on[0].0),
            all[name].cluster.as_ref(),
            "{name} ran where its status says"
        );
        assert!(!on[0].1, "{name} is not held");
    }
    // The lost copy of the rescheduled run was cancelled on member-2 (or
    // had finished there before the agent came back); it is not the copy
    // the hub reports.
    let old = member_2.get("long-reschedule").await.unwrap();
    let reason = old.data["status"]["conditions"][0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        old.data["spec"]["status"].as_str() == Some("Cancelled") || reason == "Succeeded",
        "the lost copy: {:?}",
        old.data
    );
    assert_ne!(all["long-reschedule"].cluster.as_deref(), Some("member-2"));
}
