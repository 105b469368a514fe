//! Failures the hub must read right, on a federation of its own (hub, two
//! members with the real Tekton, agents: real processes on real API
//! servers):
//! - agents whose clocks are a minute off either way: their members stay
//!   Ready and run, since the hub times heartbeats on its own clock;
//! - a member's API server hung for longer than the grace: the hub sees it
//!   unreachable, but its agent heartbeats on, so the member is not lost;
//! - the hub's API server stopped for longer than the heartbeat grace:
//!   when it is back no member is declared lost and no started run moves
//!   (the grace starts again with the hub's view);
//! - a member that refuses to create a run (an admission policy there, as a
//!   quota or Tekton's webhook would): the run ends `Failed`
//!   `MemberRejected` with the member's words, and its slot is free;
//! - a run cancelled while it waits for a cluster ends at once, having run
//!   nowhere;
//! - every agent silent at once: the hub suspects itself (`Disruption`)
//!   and moves nothing; when they are back the run goes on where it was.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tekfed_api::runs::{RunPhase, RunStatus};
use tekfed_api::{FederatedTaskRun, MemberCluster, MemberReport, cluster_namespace};
use tekfed_runtime::connect::tekton_resource;
use tekfed_testbed::federation::{
    UNANSWERED_WEBHOOK, federate_with, pipeline_run_template, task_run_template, unanswered_webhook,
};
use tekfed_testbed::{HUB, TestBed, eventually_logged};

const WAIT: Duration = Duration::from_secs(180);
const GRACE: u64 = 30;

/// A FederatedTaskRun on `cluster` alone, running for `duration`.
fn run_on(ns: &str, name: &str, cluster: &str, duration: &str) -> FederatedTaskRun {
    serde_json::from_value(json!({
        "apiVersion": "tekfed.io/v1alpha1",
        "kind": "FederatedTaskRun",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "template": task_run_template(Some(duration), json!({})),
            "placement": {"clusters": [{"name": cluster}]},
        },
    }))
    .unwrap()
}

/// The run's status; `None` while the hub's API server does not answer.
async fn status_of(api: &Api<FederatedTaskRun>, name: &str) -> Option<RunStatus> {
    Some(api.get(name).await.ok()?.status.unwrap_or_default())
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Each member's `AgentReady` condition as the hub wrote it.
async fn agent_ready(clusters: &Api<MemberCluster>) -> BTreeMap<String, Condition> {
    clusters
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|mc| {
            let c = condition(&mc.status.clone()?.conditions, "AgentReady")?.clone();
            Some((mc.name_any(), c))
        })
        .collect()
}

/// Member runs in `ns` on every member: (member, name).
async fn member_runs(bed: &TestBed, ns: &str) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for member in bed.members() {
        let api: Api<DynamicObject> = Api::namespaced_with(
            bed.client(&member).await.unwrap(),
            ns,
            &tekton_resource("TaskRun"),
        );
        if let Ok(list) = api.list(&ListParams::default()).await {
            all.extend(
                list.items
                    .into_iter()
                    .map(|r| (member.clone(), r.name_any())),
            );
        }
    }
    all
}

async fn wait_phase(
    bed: &TestBed,
    api: &Api<FederatedTaskRun>,
    name: &str,
    phase: RunPhase,
) -> RunStatus {
    eventually_logged(bed, &format!("{name} to be {phase:?}"), WAIT, || {
        let api = api.clone();
        async move {
            let s = status_of(&api, name).await?;
            (s.phase == Some(phase)).then_some(s)
        }
    })
    .await
}

#[tokio::test]
async fn the_hub_reads_clocks_outages_refusals_and_cancels_right() {
    let bed = TestBed::start(2).await.unwrap();
    // member-1's agent writes times a minute ahead, member-2's a minute behind.
    federate_with(
        &bed,
        &["--heartbeat-grace", &GRACE.to_string()],
        |member| match member {
            "member-1" => vec!["--clock-offset", "60"],
            _ => vec!["--clock-offset", "-60"],
        },
    )
    .await
    .unwrap();
    let hub = bed.client(HUB).await.unwrap();
    let clusters: Api<MemberCluster> = Api::all(hub.clone());
    let ns = bed.namespace("failures", &[HUB]).await.unwrap();
    let api: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), &ns);

    // --- clocks a minute off, a member's and the hub's API servers out past the grace --
    // A run on each member, longer than the grace and the outage.
    for member in bed.members() {
        api.create(
            &PostParams::default(),
            &run_on(&ns, &format!("long-{member}"), &member, "150s"),
        )
        .await
        .unwrap();
    }
    for member in bed.members() {
        wait_phase(&bed, &api, &format!("long-{member}"), RunPhase::Running).await;
    }
    let before = agent_ready(&clusters).await;
    for (member, c) in &before {
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "HeartbeatFresh"),
            "{member}: {c:?}"
        );
    }
    // member-1's API server hangs (SIGSTOP) for longer than the grace. The
    // hub cannot reach it, but its agent, alive and reaching the hub, goes
    // on heartbeating: its heartbeat waits on nothing from the member.
    let reports: Api<MemberReport> = Api::namespaced(hub.clone(), &cluster_namespace("member-1"));
    let paused = "kube-apiserver (member-1)";
    bed.signal(paused, "STOP");
    let (mut beats, mut unreachable) = (BTreeSet::new(), false);
    let until = Instant::now() + Duration::from_secs(GRACE + 10);
    // Sampled once a second for as long as the fault lasts.
    while Instant::now() < until {
        if let Ok(report) = reports.get("member-1").await
            && let Some(t) = report.status.and_then(|s| s.heartbeat_time)
        {
            beats.insert(t.0);
        }
        unreachable |= clusters.get("member-1").await.ok().is_some_and(|mc| {
            mc.status
                .unwrap_or_default()
                .conditions
                .iter()
                .any(|c| c.type_ == "Reachable" && c.status == "False")
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bed.signal(paused, "CONT");
    assert!(unreachable, "the hub saw member-1's API server gone");
    // One a second when nothing waits; a heartbeat that waited for the
    // member's answers (10 s timeouts) made at most one in ten.
    assert!(
        beats.len() >= 10,
        "member-1's agent heartbeated {} times in {} s with its API server hung",
        beats.len(),
        GRACE + 10
    );
    bed.stop("kube-apiserver (hub)");
    // The fault itself: the hub's API server is away for longer than the grace.
    tokio::time::sleep(Duration::from_secs(GRACE + 15)).await;
    bed.restart("kube-apiserver (hub)").unwrap();
    for member in bed.members() {
        let s = wait_phase(&bed, &api, &format!("long-{member}"), RunPhase::Succeeded).await;
        assert_eq!(s.cluster.as_deref(), Some(member.as_str()), "{s:?}");
        assert!(s.attempts.is_empty(), "the run never moved: {s:?}");
    }
    // Never lost: AgentReady has not changed since before the outages.
    let after = agent_ready(&clusters).await;
    for (member, c) in &after {
        assert_eq!(
            (c.status.as_str(), &c.last_transition_time),
            ("True", &before[member].last_transition_time),
            "{member}'s AgentReady changed across the outages: {c:?}"
        );
    }

    // --- a member that refuses runs -------------------------------------------
    // member-1 takes one run at a time; an admission policy there refuses
    // TaskRuns in this namespace, as a quota would.
    clusters
        .patch(
            "member-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maxConcurrentRuns": 1}})),
        )
        .await
        .unwrap();
    let member_1 = bed.client("member-1").await.unwrap();
    let refusal = "the CI quota of this namespace is used up (a test's policy)";
    refuse_runs(&member_1, &ns, refusal).await;
    api.create(
        &PostParams::default(),
        &run_on(&ns, "refused", "member-1", "1s"),
    )
    .await
    .unwrap();
    let refused = wait_phase(&bed, &api, "refused", RunPhase::Failed).await;
    let c = condition(&refused.conditions, "Succeeded").unwrap();
    assert_eq!(c.reason, "MemberRejected", "{c:?}");
    assert!(
        c.message.contains("member-1 refused TaskRun") && c.message.contains(refusal),
        "the member's words: {}",
        c.message
    );
    allow_runs(&member_1, &ns).await;
    // The refused run holds no slot: the next one runs there.
    api.create(
        &PostParams::default(),
        &run_on(&ns, "after", "member-1", "1s"),
    )
    .await
    .unwrap();
    let after = wait_phase(&bed, &api, "after", RunPhase::Succeeded).await;
    assert_eq!(after.cluster.as_deref(), Some("member-1"));

    // --- a run cancelled while it waits -----------------------------------------
    for member in bed.members() {
        clusters
            .patch(
                &member,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"unschedulable": true}})),
            )
            .await
            .unwrap();
    }
    // Once the hub has seen the cordons (its status says so), a new run waits.
    eventually_logged(&bed, "both members unschedulable", WAIT, || {
        let clusters = clusters.clone();
        async move {
            let all = clusters.list(&ListParams::default()).await.ok()?.items;
            all.iter()
                .all(|mc| mc.status.as_ref().and_then(|s| s.schedulable) == Some(false))
                .then_some(())
        }
    })
    .await;
    api.create(
        &PostParams::default(),
        &run_on(&ns, "waiting", "member-2", "1s"),
    )
    .await
    .unwrap();
    wait_phase(&bed, &api, "waiting", RunPhase::Queued).await;
    api.patch(
        "waiting",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"status": "TaskRunCancelled"}}}})),
    )
    .await
    .unwrap();
    let cancelled = wait_phase(&bed, &api, "waiting", RunPhase::Cancelled).await;
    let c = condition(&cancelled.conditions, "Succeeded").unwrap();
    assert_eq!(c.reason, "CancelledInQueue", "{c:?}");
    assert_eq!(cancelled.cluster, None);
    assert!(
        !member_runs(&bed, &ns)
            .await
            .iter()
            .any(|(_, name)| name == "waiting"),
        "a run cancelled in the queue is made nowhere"
    );

    // --- every member silent at once -------------------------------------------
    for member in bed.members() {
        clusters
            .patch(
                &member,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"unschedulable": false}})),
            )
            .await
            .unwrap();
    }
    eventually_logged(&bed, "both members schedulable again", WAIT, || {
        let clusters = clusters.clone();
        async move {
            let all = clusters.list(&ListParams::default()).await.ok()?.items;
            all.iter()
                .all(|mc| mc.status.as_ref().and_then(|s| s.schedulable) == Some(true))
                .then_some(())
        }
    })
    .await;
    // Placed on member-1, where a webhook no one answers fails its create
    // (a 500, tried again): never released, so it has not started and
    // would move off a cluster judged lost.
    let member_1 = bed.client("member-1").await.unwrap();
    let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(member_1);
    webhooks
        .create(&PostParams::default(), &unanswered_webhook(&ns))
        .await
        .unwrap();
    let pipeline: tekfed_api::FederatedPipelineRun = serde_json::from_value(json!({
        "apiVersion": "tekfed.io/v1alpha1",
        "kind": "FederatedPipelineRun",
        "metadata": {"name": "held", "namespace": &ns},
        "spec": {
            "template": pipeline_run_template(Some("1s")),
            "placement": {"clusters": [{"name": "member-1"}]},
        },
    }))
    .unwrap();
    let pipelines: Api<tekfed_api::FederatedPipelineRun> = Api::namespaced(hub.clone(), &ns);
    pipelines
        .create(&PostParams::default(), &pipeline)
        .await
        .unwrap();
    eventually_logged(&bed, "held: placed on member-1", WAIT, || {
        let pipelines = pipelines.clone();
        async move {
            let s = pipelines.get("held").await.ok()?.status?;
            (s.cluster.as_deref() == Some("member-1")).then_some(())
        }
    })
    .await;
    for member in bed.members() {
        bed.stop(&format!("agent-{member}"));
    }
    eventually_logged(&bed, "both members judged in a disruption", WAIT, || {
        let clusters = clusters.clone();
        async move {
            let conditions = agent_ready(&clusters).await;
            (conditions.len() == 2 && conditions.values().all(|c| c.reason == "Disruption"))
                .then_some(())
        }
    })
    .await;
    let status = pipelines
        .get("held")
        .await
        .unwrap()
        .status
        .unwrap_or_default();
    assert_eq!(status.cluster.as_deref(), Some("member-1"), "{status:?}");
    assert!(
        status.attempts.is_empty(),
        "nothing moves in a disruption: {status:?}"
    );
    for member in bed.members() {
        bed.restart(&format!("agent-{member}")).unwrap();
    }
    webhooks
        .delete(UNANSWERED_WEBHOOK, &DeleteParams::default())
        .await
        .unwrap();
    eventually_logged(&bed, "the held run to succeed where it was", WAIT, || {
        let pipelines = pipelines.clone();
        async move {
            let s = pipelines.get("held").await.ok()?.status?;
            (s.phase == Some(RunPhase::Succeeded)).then_some(s)
        }
    })
    .await;
}

/// A ValidatingAdmissionPolicy on a member refusing every TaskRun created in
/// `ns` with `message`.
async fn refuse_runs(member: &Client, ns: &str, message: &str) {
    let policy: Value = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "test-refuse-runs"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["tekton.dev"], "apiVersions": ["*"],
                "operations": ["CREATE"], "resources": ["taskruns"],
            }]},
            "validations": [{"expression": format!("request.namespace != '{ns}'"), "message": message}],
        },
    });
    let binding: Value = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "test-refuse-runs"},
        "spec": {"policyName": "test-refuse-runs", "validationActions": ["Deny"]},
    });
    for (object, plural) in [
        (policy, "validatingadmissionpolicies"),
        (binding, "validatingadmissionpolicybindings"),
    ] {
        let api = admission_api(member, &object, plural);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(object).unwrap(),
        )
        .await
        .unwrap();
    }
    wait_refusing(member, ns, true).await;
}

/// Wait until the member's API server refuses (or admits) a TaskRun in
/// `ns`: a policy takes effect when the server has loaded it. A dry run
/// leaves nothing behind.
async fn wait_refusing(member: &Client, ns: &str, refusing: bool) {
    let probes: Api<DynamicObject> =
        Api::namespaced_with(member.clone(), ns, &tekton_resource("TaskRun"));
    let probe: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
        "metadata": {"name": "probe", "namespace": ns},
        "spec": {"taskSpec": {"steps": [{"name": "s", "image": "busybox"}]}},
    }))
    .unwrap();
    let what = if refusing { "to refuse" } else { "to admit" };
    tekfed_testbed::eventually(&format!("the member's policy {what} TaskRuns"), WAIT, || {
        let (probes, probe) = (probes.clone(), probe.clone());
        async move {
            let refused = matches!(
                probes.create(&PostParams { dry_run: true, ..Default::default() }, &probe).await,
                Err(kube::Error::Api(s)) if s.message.contains("CI quota")
            );
            (refused == refusing).then_some(())
        }
    })
    .await;
}

async fn allow_runs(member: &Client, ns: &str) {
    for plural in [
        "validatingadmissionpolicybindings",
        "validatingadmissionpolicies",
    ] {
        let api: Api<DynamicObject> = Api::all_with(
            member.clone(),
            &kube::discovery::ApiResource {
                group: "admissionregistration.k8s.io".into(),
                version: "v1".into(),
                api_version: "admissionregistration.k8s.io/v1".into(),
                kind: String::new(),
                plural: plural.into(),
            },
        );
        api.delete("test-refuse-runs", &DeleteParams::default())
            .await
            .unwrap();
    }
    wait_refusing(member, ns, false).await;
}

fn admission_api(member: &Client, object: &Value, plural: &str) -> Api<DynamicObject> {
    Api::all_with(
        member.clone(),
        &kube::discovery::ApiResource {
            group: "admissionregistration.k8s.io".into(),
            version: "v1".into(),
            api_version: "admissionregistration.k8s.io/v1".into(),
            kind: object["kind"].as_str().unwrap_or_default().into(),
            plural: plural.into(),
        },
    )
}
