//! Tenant safety at the hub (issue 14): what cannot work, or is not the
//! writer's to write, is refused at admission or neutralised by the hub,
//! with a message that says why, and nothing is made on any member. Each
//! test walks a table of cases against a real federation (hub, three
//! members, their agents) and prints one line per case.
//!
//! - names too long for the labels and namespaces derived from them, and
//!   lists over their bounds, refused at admission;
//! - a scheduled run's `onClusterLost` frozen;
//! - an agent's hub identity writing only its own cluster's report fields,
//!   never the hub's revoke fields, and reporting bounded load;
//! - a tenant unable to forge where a run goes, even with `update` on
//!   `federatedtaskruns/status`;
//! - a template too large to carry failing before anything is made;
//! - member kubeconfig Secrets the hub must not use (`http://`,
//!   `proxy-url`, impersonation, no CA) refused, naming the problem;
//! - a member answering every request with an HTML 500 reported by its
//!   HTTP code, its body nowhere in the MemberCluster's status or Events.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tekfed_api::admission::{FROZEN_MESSAGE, REVOKE_FIELDS_MESSAGE};
use tekfed_api::runs::RunPhase;
use tekfed_api::{
    FederatedPipeline, FederatedPipelineRun, FederatedStepAction, FederatedTask, FederatedTaskRun,
    MemberCluster, MemberReport, RunAssignment, cluster_namespace,
};
use tekfed_runtime::connect::tekton_resource;
use tekfed_testbed::federation::{HUB_NAMESPACE, run_federation};
use tekfed_testbed::{HUB, TestBed, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(90);

/// One line per case, in the test's output (`--nocapture`) and its
/// failure report.
fn report(group: &str, case: &str, outcome: &str) {
    println!("hostile_hub {group:<10} {case:<62} {outcome}");
}

fn resource(kind: &str) -> ApiResource {
    match kind {
        "FederatedTaskRun" => ApiResource::erase::<FederatedTaskRun>(&()),
        "FederatedPipelineRun" => ApiResource::erase::<FederatedPipelineRun>(&()),
        "FederatedTask" => ApiResource::erase::<FederatedTask>(&()),
        "FederatedPipeline" => ApiResource::erase::<FederatedPipeline>(&()),
        "FederatedStepAction" => ApiResource::erase::<FederatedStepAction>(&()),
        "MemberCluster" => ApiResource::erase::<MemberCluster>(&()),
        other => panic!("no resource for {other}"),
    }
}

fn api(client: &Client, kind: &str, ns: &str) -> Api<DynamicObject> {
    match kind {
        "MemberCluster" => Api::all_with(client.clone(), &resource(kind)),
        _ => Api::namespaced_with(client.clone(), ns, &resource(kind)),
    }
}

fn task_template() -> Value {
    json!({"spec": {"taskSpec": {"steps": [{"name": "build", "image": "busybox", "script": "make"}]}}})
}

/// A valid spec of `kind`, with `patch` merged in (RFC 7386).
fn spec(kind: &str, patch: Value) -> Value {
    let mut spec = match kind {
        "MemberCluster" => json!({"secretRef": {"name": "nowhere"}}),
        _ => {
            json!({"template": task_template(), "placement": {"clusters": [{"name": "member-1"}]}})
        }
    };
    json_patch::merge(&mut spec, &patch);
    spec
}

/// What a client made of a request: `Ok` when the server accepted it,
/// else `(HTTP code, message)`.
fn answer<T>(result: Result<T, kube::Error>) -> Result<T, (u16, String)> {
    result.map_err(|e| match e {
        kube::Error::Api(s) => (s.code, s.message.clone()),
        other => (0, format!("no answer from the API server: {other}")),
    })
}

/// Check that `result` is a refusal with `code` whose message contains
/// every one of `says`; `Ok(line)` to report, `Err(why not)`.
fn expect_refusal<T>(
    result: Result<T, kube::Error>,
    code: u16,
    says: &[&str],
) -> Result<String, String> {
    match answer(result) {
        Ok(_) => Err("accepted".into()),
        Err((got, message)) if got == code && says.iter().all(|s| message.contains(s)) => {
            Ok(format!("refused {got}: {}", shorten(&message)))
        }
        Err((got, message)) => Err(format!(
            "refused {got} (expected {code} naming {says:?}): {message}"
        )),
    }
}

fn shorten(message: &str) -> String {
    let mut line: String = message.chars().take(150).collect();
    if line.len() < message.len() {
        line.push('…');
    }
    line
}

/// Fail the test with every failed case, after all were tried.
fn assert_cases(group: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{group}: {} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..Default::default()
    }
}

/// An object of `kind` named `name` in `ns` (ignored for MemberCluster).
fn object(kind: &str, name: &str, ns: &str, spec: Value) -> DynamicObject {
    let mut object = DynamicObject::new(name, &resource(kind));
    if kind != "MemberCluster" {
        object.metadata.namespace = Some(ns.to_owned());
    }
    object.data = json!({"spec": spec});
    object
}

#[tokio::test]
async fn names_and_lists_that_cannot_work_are_refused_at_admission() {
    let bed = run_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("admission", &[HUB]).await.unwrap();
    let n = |c: char, len: usize| c.to_string().repeat(len);
    let expressions = |count: usize, values: usize| {
        let expression = json!({"key": "tekfed.io/test-member", "operator": "In",
                                "values": (0..values).map(|i| format!("v{i}")).collect::<Vec<_>>()});
        json!({"placement": {"clusters": null, "clusterSelector": {"matchExpressions": vec![expression; count]}}})
    };
    let labels = |count: usize| {
        let map: BTreeMap<String, String> =
            (0..count).map(|i| (format!("k{i}"), "v".into())).collect();
        json!({"placement": {"clusters": null, "clusterSelector": {"matchLabels": map}}})
    };
    let clusters = |count: usize| {
        let list: Vec<Value> = (0..count)
            .map(|i| json!({"name": format!("m{i}")}))
            .collect();
        json!({"placement": {"clusters": list}})
    };
    let tolerations = |count: usize| json!({"placement": {"tolerations": vec![json!({"key": "k", "operator": "Exists"}); count]}});
    let overrides = |count: usize, ops: usize| {
        let op = json!({"op": "replace", "path": "/spec/taskSpec/steps/0/image", "value": "x"});
        let entry = json!({"clusterName": "member-1", "clusterOverrides": vec![op; ops]});
        json!({"overrides": vec![entry; count]})
    };
    let name_rule = ["metadata.name", "at most 63 characters", "label value"];
    let cluster_rule = [
        "metadata.name",
        "at most 40 characters",
        "tekfed-cluster-<name>",
    ];
    // (case, kind, name, spec patch, what the refusal names; empty: accepted)
    let cases: Vec<(&str, &str, String, Value, Vec<&str>)> = vec![
        (
            "FederatedTaskRun named with 64 characters",
            "FederatedTaskRun",
            n('a', 64),
            json!({}),
            name_rule.to_vec(),
        ),
        (
            "FederatedPipelineRun named with 64 characters",
            "FederatedPipelineRun",
            n('b', 64),
            json!({}),
            name_rule.to_vec(),
        ),
        (
            "FederatedTask named with 64 characters",
            "FederatedTask",
            n('c', 64),
            json!({}),
            name_rule.to_vec(),
        ),
        (
            "FederatedPipeline named with 64 characters",
            "FederatedPipeline",
            n('d', 64),
            json!({}),
            name_rule.to_vec(),
        ),
        (
            "FederatedStepAction named with 64 characters",
            "FederatedStepAction",
            n('e', 64),
            json!({}),
            name_rule.to_vec(),
        ),
        (
            "FederatedTaskRun named with 63 characters (control)",
            "FederatedTaskRun",
            n('f', 63),
            json!({}),
            vec![],
        ),
        (
            "MemberCluster named with 48 characters",
            "MemberCluster",
            n('g', 48),
            json!({}),
            cluster_rule.to_vec(),
        ),
        (
            "MemberCluster named with 41 characters",
            "MemberCluster",
            n('h', 41),
            json!({}),
            cluster_rule.to_vec(),
        ),
        (
            "MemberCluster named with a dot",
            "MemberCluster",
            "member.one".into(),
            json!({}),
            cluster_rule.to_vec(),
        ),
        (
            "MemberCluster named with 40 characters (control)",
            "MemberCluster",
            n('i', 40),
            json!({}),
            vec![],
        ),
        (
            "33 matchExpressions in a cluster selector",
            "FederatedTaskRun",
            "selector-expressions".into(),
            expressions(33, 1),
            vec!["spec.placement.clusterSelector.matchExpressions", "32"],
        ),
        (
            "257 values in one matchExpression",
            "FederatedTask",
            "selector-values".into(),
            expressions(1, 257),
            vec![
                "spec.placement.clusterSelector.matchExpressions[0].values",
                "256",
            ],
        ),
        (
            "65 matchLabels in a cluster selector",
            "FederatedPipelineRun",
            "selector-labels".into(),
            labels(65),
            vec!["spec.placement.clusterSelector.matchLabels", "64"],
        ),
        (
            "a selector at every bound (control)",
            "FederatedTaskRun",
            "selector-at-bounds".into(),
            expressions(32, 256),
            vec![],
        ),
        (
            "64 matchLabels (control)",
            "FederatedPipeline",
            "labels-at-bound".into(),
            labels(64),
            vec![],
        ),
        (
            "1001 placement clusters",
            "FederatedTaskRun",
            "many-clusters".into(),
            clusters(1001),
            vec!["spec.placement.clusters", "1000"],
        ),
        (
            "65 tolerations",
            "FederatedTask",
            "many-tolerations".into(),
            tolerations(65),
            vec!["spec.placement.tolerations", "64"],
        ),
        (
            "1001 overrides",
            "FederatedPipelineRun",
            "many-overrides".into(),
            overrides(1001, 1),
            vec!["spec.overrides", "1000"],
        ),
        (
            "101 operations in one override",
            "FederatedTaskRun",
            "many-operations".into(),
            overrides(1, 101),
            vec!["spec.overrides[0].clusterOverrides", "100"],
        ),
    ];
    let mut failures = Vec::new();
    for (case, kind, name, patch, says) in cases {
        let created = api(&hub, kind, &ns)
            .create(&dry_run(), &object(kind, &name, &ns, spec(kind, patch)))
            .await;
        let outcome = if says.is_empty() {
            answer(created)
                .map(|_| "accepted".to_owned())
                .map_err(|(code, message)| format!("refused {code}: {message}"))
        } else {
            expect_refusal(created, 422, &says)
        };
        match outcome {
            Ok(line) => report("admission", case, &line),
            Err(why) => {
                report("admission", case, &format!("FAILED: {}", shorten(&why)));
                failures.push(format!("{case}: {why}"));
            }
        }
    }
    assert_cases("admission", failures);
}

#[tokio::test]
async fn a_scheduled_run_keeps_its_on_cluster_lost() {
    let bed = run_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("frozen-lost", &[HUB]).await.unwrap();
    let runs = api(&hub, "FederatedTaskRun", &ns);
    runs.create(
        &PostParams::default(),
        &object(
            "FederatedTaskRun",
            "scheduled",
            &ns,
            spec("FederatedTaskRun", json!({})),
        ),
    )
    .await
    .unwrap();
    let phase = eventually("the run to be scheduled", WAIT, || {
        let runs = runs.clone();
        async move {
            let run = runs.get("scheduled").await.ok()?;
            let phase = run.data["status"]["phase"].as_str()?.to_owned();
            (phase != "Queued").then_some(phase)
        }
    })
    .await;
    let mut failures = Vec::new();
    for (case, value) in [
        (
            "onClusterLost Fail → Reschedule after scheduling",
            json!("Reschedule"),
        ),
        ("onClusterLost removed after scheduling", Value::Null),
    ] {
        let patch = json!({"spec": {"onClusterLost": value}});
        let result = runs
            .patch("scheduled", &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        // Removing a defaulted field defaults it again: no change, accepted.
        let outcome = if value.is_null() {
            answer(result)
                .map_err(|(code, m)| format!("refused {code}: {m}"))
                .and_then(|run| match run.data["spec"]["onClusterLost"].as_str() {
                    Some("Fail") => Ok("accepted, still Fail (the default)".to_owned()),
                    other => Err(format!("onClusterLost is now {other:?}")),
                })
        } else {
            expect_refusal(result, 422, &[FROZEN_MESSAGE])
        };
        match outcome {
            Ok(line) => report("frozen", &format!("{case} ({phase})"), &line),
            Err(why) => {
                report("frozen", case, &format!("FAILED: {}", shorten(&why)));
                failures.push(format!("{case}: {why}"));
            }
        }
    }
    let stored = runs.get("scheduled").await.unwrap();
    assert_eq!(stored.data["spec"]["onClusterLost"], "Fail");
    assert_cases("frozen", failures);
    runs.delete("scheduled", &DeleteParams::default())
        .await
        .unwrap();
}

/// A client for `user`, impersonated by the bed's admin.
async fn impersonating(bed: &TestBed, user: &str) -> Client {
    let mut config = bed.config(HUB).await.unwrap();
    config.auth_info.impersonate = Some(user.to_owned());
    Client::try_from(config).unwrap()
}

/// A client with an agent's narrow hub identity (`tekfed-agent-<cluster>`).
async fn agent_client(bed: &TestBed, cluster: &str) -> Client {
    let path = bed.agent_identity(cluster).await.unwrap();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// A `RunAssignment` for a run that does not exist, made by the admin in
/// `cluster`'s namespace, with `status` written as the hub would.
async fn assignment(
    hub: &Client,
    cluster: &str,
    name: &str,
    kind: &str,
    status: Value,
) -> Api<RunAssignment> {
    let api: Api<RunAssignment> = Api::namespaced(hub.clone(), &cluster_namespace(cluster));
    let record: RunAssignment = serde_json::from_value(json!({
        "apiVersion": "tekfed.io/v1alpha1", "kind": "RunAssignment",
        "metadata": {"name": name},
        "spec": {"cluster": cluster, "run": {"kind": kind, "namespace": "nowhere", "name": name, "uid": name}},
    }))
    .unwrap();
    let _ = api.delete(name, &DeleteParams::default()).await;
    eventually("the old record to go", WAIT, || {
        let api = api.clone();
        async move { api.get_opt(name).await.ok()?.is_none().then_some(()) }
    })
    .await;
    api.create(&PostParams::default(), &record).await.unwrap();
    if !status.is_null() {
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .unwrap();
    }
    api
}

#[tokio::test]
async fn an_agent_writes_only_its_own_report_fields() {
    let bed = run_federation();
    let hub = bed.client(HUB).await.unwrap();
    // Records no agent acts on: revoked ones (never released), and a
    // PipelineRun's (released only once the hub made the run held there).
    let revoked =
        json!({"revoked": true, "revokedReason": "Drained", "revokedTime": "2026-01-01T00:00:00Z"});
    let mine = assignment(
        &hub,
        "member-1",
        "hostile-revoked",
        "TaskRun",
        revoked.clone(),
    )
    .await;
    assignment(&hub, "member-1", "hostile-open", "PipelineRun", Value::Null).await;
    let theirs = assignment(
        &hub,
        "member-2",
        "hostile-theirs",
        "TaskRun",
        revoked.clone(),
    )
    .await;
    // A Role bound too widely: member-1's agent also in member-2's namespace.
    let other_ns = cluster_namespace("member-2");
    let misbound: RoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "misbound-agent-member-1", "namespace": other_ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tekfed-agent"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "tekfed-agent-member-1"}],
    }))
    .unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(hub.clone(), &other_ns);
    bindings
        .patch(
            "misbound-agent-member-1",
            &PatchParams::apply("tekfed-tests").force(),
            &Patch::Apply(&misbound),
        )
        .await
        .unwrap();
    // RBAC is cached: wait until the agent may read member-2's records.
    let agent = agent_client(bed, "member-1").await;
    let agent_mine: Api<RunAssignment> =
        Api::namespaced(agent.clone(), &cluster_namespace("member-1"));
    let agent_theirs: Api<RunAssignment> = Api::namespaced(agent.clone(), &other_ns);
    eventually("the mis-bound Role to take effect", WAIT, || {
        let api = agent_theirs.clone();
        async move { api.get("hostile-theirs").await.ok() }
    })
    .await;
    let reports: Api<MemberReport> = Api::namespaced(agent.clone(), &cluster_namespace("member-1"));

    let status = |s: Value| Patch::Merge(json!({"status": s}));
    let params = PatchParams::default();
    let mut failures = Vec::new();
    let mut check = |case: &str, outcome: Result<String, String>| match outcome {
        Ok(line) => report("agent", case, &line),
        Err(why) => {
            report("agent", case, &format!("FAILED: {}", shorten(&why)));
            failures.push(format!("{case}: {why}"));
        }
    };
    check(
        "agent sets revoked: false on its revoked record",
        expect_refusal(
            agent_mine
                .patch_status(
                    "hostile-revoked",
                    &params,
                    &status(json!({"revoked": false})),
                )
                .await,
            422,
            &["status.revoked", "stays true"],
        ),
    );
    check(
        "agent removes the revoke fields of its revoked record",
        expect_refusal(
            agent_mine
                .patch_status(
                    "hostile-revoked",
                    &params,
                    &status(json!({"revoked": null, "revokedReason": null, "revokedTime": null})),
                )
                .await,
            422,
            &[
                "status.revoked",
                "status.revokedReason",
                "status.revokedTime",
            ],
        ),
    );
    check(
        "agent rewrites revokedReason of its revoked record",
        expect_refusal(
            agent_mine
                .patch_status(
                    "hostile-revoked",
                    &params,
                    &status(json!({"revokedReason": "Mine"})),
                )
                .await,
            422,
            &["status.revokedReason"],
        ),
    );
    check(
        "agent releases its revoked record",
        expect_refusal(
            agent_mine
                .patch_status(
                    "hostile-revoked",
                    &params,
                    &status(json!({"released": true})),
                )
                .await,
            422,
            &["a revoked assignment cannot be released"],
        ),
    );
    check(
        "agent sets revokedReason on an unrevoked record",
        expect_refusal(
            agent_mine
                .patch_status(
                    "hostile-open",
                    &params,
                    &status(json!({"revokedReason": "Drained"})),
                )
                .await,
            403,
            &[REVOKE_FIELDS_MESSAGE],
        ),
    );
    check(
        "agent revokes its own record",
        expect_refusal(
            agent_mine
                .patch_status("hostile-open", &params, &status(json!({"revoked": true})))
                .await,
            403,
            &[REVOKE_FIELDS_MESSAGE],
        ),
    );
    check(
        "agent reports phase on its own record (control)",
        answer(
            agent_mine
                .patch_status(
                    "hostile-open",
                    &params,
                    &status(json!({"phase": "Running", "observedTime": "2026-01-01T00:00:01Z"})),
                )
                .await,
        )
        .map(|_| "accepted".to_owned())
        .map_err(|(code, m)| format!("refused {code}: {m}")),
    );
    check(
        "agent writes another cluster's record (Role bound too widely)",
        expect_refusal(
            agent_theirs
                .patch_status(
                    "hostile-theirs",
                    &params,
                    &status(json!({"phase": "Running"})),
                )
                .await,
            403,
            &[
                "tekfed-agent-member-1",
                "may not write the records of cluster member-2",
            ],
        ),
    );
    for (case, load) in [
        (
            "agent reports running: 9223372036854775807",
            json!({"running": i64::MAX}),
        ),
        ("agent reports running: -1", json!({"running": -1})),
        (
            "agent reports pending: 1000001",
            json!({"pending": 1_000_001}),
        ),
        (
            "agent reports cpuAllocatableMillis: 2^62",
            json!({"cpuAllocatableMillis": 1_i64 << 62}),
        ),
    ] {
        let field = load.as_object().unwrap().keys().next().unwrap().clone();
        check(
            case,
            expect_refusal(
                reports
                    .patch_status("member-1", &params, &status(json!({"load": load})))
                    .await,
                422,
                &[&format!("status.load.{field}")],
            ),
        );
    }
    check(
        "agent reports total.running: 9223372036854775807",
        expect_refusal(
            reports
                .patch_status(
                    "member-1",
                    &params,
                    &status(json!({"total": {"running": i64::MAX}})),
                )
                .await,
            422,
            &["status.total.running"],
        ),
    );
    let stored = mine.get("hostile-revoked").await.unwrap().status.unwrap();
    assert_eq!(
        (
            stored.revoked,
            stored.revoked_reason.as_deref(),
            stored.released
        ),
        (Some(true), Some("Drained"), None),
        "the revoked record is as the hub left it"
    );
    let untouched = theirs.get("hostile-theirs").await.unwrap().status.unwrap();
    assert_eq!(untouched.phase, None);
    assert_cases("agent", failures);

    bindings
        .delete("misbound-agent-member-1", &DeleteParams::default())
        .await
        .unwrap();
    for (api, name) in [
        (&mine, "hostile-revoked"),
        (&mine, "hostile-open"),
        (&theirs, "hostile-theirs"),
    ] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
}

#[tokio::test]
async fn only_the_hub_writes_where_a_run_goes() {
    let bed = run_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("forge", &[HUB]).await.unwrap();
    let tenant_user = format!("tenant-of-{ns}");
    // The tenant may do anything to runs in its namespace, status included,
    // and may update any run's status and any MemberCluster's, cluster-wide:
    // still not the hub's decisions.
    let role: Role = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "tenant", "namespace": ns},
        "rules": [{"apiGroups": ["tekfed.io"], "resources": ["federatedtaskruns", "federatedtaskruns/status"], "verbs": ["*"]}],
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "tenant", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": tenant_user}],
    }))
    .unwrap();
    let cluster_role: ClusterRole = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": tenant_user},
        "rules": [{"apiGroups": ["tekfed.io"], "resources": ["federatedtaskruns/status", "memberclusters/status"], "verbs": ["get", "update", "patch"]}],
    }))
    .unwrap();
    let cluster_binding: ClusterRoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": tenant_user},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": tenant_user},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": tenant_user}],
    }))
    .unwrap();
    let pp = PostParams::default();
    Api::<Role>::namespaced(hub.clone(), &ns)
        .create(&pp, &role)
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(hub.clone(), &ns)
        .create(&pp, &binding)
        .await
        .unwrap();
    Api::<ClusterRole>::all(hub.clone())
        .create(&pp, &cluster_role)
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(hub.clone())
        .create(&pp, &cluster_binding)
        .await
        .unwrap();

    // member-3 cordoned: the tenant's run, placed there, waits.
    let clusters: Api<MemberCluster> = Api::all(hub.clone());
    let cordon = |on: bool| Patch::Merge(json!({"spec": {"unschedulable": on}}));
    clusters
        .patch("member-3", &PatchParams::default(), &cordon(true))
        .await
        .unwrap();

    let tenant = impersonating(bed, &tenant_user).await;
    let runs = api(&tenant, "FederatedTaskRun", &ns);
    let placed = spec(
        "FederatedTaskRun",
        json!({"placement": {"clusters": [{"name": "member-3"}]}}),
    );
    runs.create(
        &pp,
        &object("FederatedTaskRun", "wants-member-3", &ns, placed),
    )
    .await
    .expect("the tenant may create its run");
    // The hub may write it: it queues the run on the cordoned cluster.
    eventually("the hub to queue the run (AllCordoned)", WAIT, || {
        let runs = runs.clone();
        async move {
            let run = runs.get("wants-member-3").await.ok()?;
            let conditions = run.data["status"]["conditions"].as_array()?.clone();
            conditions
                .iter()
                .any(|c| c["type"] == "Scheduled" && c["reason"] == "AllCordoned")
                .then_some(())
        }
    })
    .await;

    let mut failures = Vec::new();
    let forged = json!({"status": {"phase": "Scheduled", "cluster": "member-3", "scheduledTime": "2026-01-01T00:00:00Z"}});
    let says = ["tekfed hub only", &tenant_user, "verb decide"];
    let outcomes = [
        (
            "tenant forges status.cluster: member-3 (cordoned), merge patch",
            expect_refusal(
                runs.patch_status(
                    "wants-member-3",
                    &PatchParams::default(),
                    &Patch::Merge(&forged),
                )
                .await,
                403,
                &says,
            ),
        ),
        (
            "tenant forges status.phase: Succeeded",
            expect_refusal(
                runs.patch_status(
                    "wants-member-3",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
                )
                .await,
                403,
                &says,
            ),
        ),
        (
            "tenant marks member-3 schedulable in its MemberCluster status",
            expect_refusal(
                api(&tenant, "MemberCluster", "")
                    .patch_status(
                        "member-3",
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"schedulable": true}})),
                    )
                    .await,
                403,
                &says,
            ),
        ),
    ];
    for (case, outcome) in outcomes {
        match outcome {
            Ok(line) => report("hub-status", case, &line),
            Err(why) => {
                report("hub-status", case, &format!("FAILED: {}", shorten(&why)));
                failures.push(format!("{case}: {why}"));
            }
        }
    }
    let run = runs.get("wants-member-3").await.unwrap();
    assert_eq!(
        run.data["status"]["phase"], "Queued",
        "{:?}",
        run.data["status"]
    );
    assert!(run.data["status"]["cluster"].is_null());
    assert!(
        nothing_on_members(bed, "TaskRun", &ns, "wants-member-3").await,
        "a TaskRun was made on a member"
    );
    assert_cases("hub-status", failures);

    clusters
        .patch("member-3", &PatchParams::default(), &cordon(false))
        .await
        .unwrap();
    runs.delete("wants-member-3", &DeleteParams::default())
        .await
        .unwrap();
    let dp = DeleteParams::default();
    Api::<ClusterRoleBinding>::all(hub.clone())
        .delete(&tenant_user, &dp)
        .await
        .unwrap();
    Api::<ClusterRole>::all(hub.clone())
        .delete(&tenant_user, &dp)
        .await
        .unwrap();
}

/// No Tekton `kind` named `name` in `ns` on any member.
async fn nothing_on_members(bed: &TestBed, kind: &str, ns: &str, name: &str) -> bool {
    for member in bed.members() {
        let api: Api<DynamicObject> = Api::namespaced_with(
            bed.client(&member).await.unwrap(),
            ns,
            &tekton_resource(kind),
        );
        if api.get_opt(name).await.ok().flatten().is_some() {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn a_template_too_large_to_carry_fails_before_anything_is_made() {
    let bed = run_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("too-large", &[HUB]).await.unwrap();
    let runs = api(&hub, "FederatedTaskRun", &ns);
    let script = "x".repeat(600 * 1024);
    let template = json!({"spec": {"taskSpec": {"steps": [{"name": "build", "image": "busybox", "script": script}]}}});
    let placed = spec(
        "FederatedTaskRun",
        json!({"template": template, "placement": {"clusters": [{"name": "member-1"}, {"name": "member-2"}]}}),
    );
    let created = runs
        .create(
            &PostParams::default(),
            &object("FederatedTaskRun", "huge", &ns, placed),
        )
        .await
        .unwrap();
    let uid = created.uid().unwrap();
    let run = eventually("the run to fail", WAIT, || {
        let runs = runs.clone();
        async move {
            let run = runs.get("huge").await.ok()?;
            (run.data["status"]["phase"] == "Failed").then_some(run)
        }
    })
    .await;
    let conditions = run.data["status"]["conditions"].as_array().unwrap();
    let succeeded = conditions
        .iter()
        .find(|c| c["type"] == "Succeeded")
        .unwrap();
    let message = succeeded["message"].as_str().unwrap_or_default();
    assert_eq!(succeeded["reason"], "TemplateTooLarge", "{succeeded}");
    assert!(message.contains("524288 bytes"), "{message}");
    assert!(
        message.contains("spec.template is 6"),
        "the size is given: {message}"
    );
    assert!(run.data["status"]["cluster"].is_null());
    // Nothing anywhere, and nothing later either: a run created after it
    // goes through the same dispatcher and run controller to the end.
    let control = spec(
        "FederatedTaskRun",
        json!({"template": {"spec": {"taskSpec": {"steps": [{"name": "build", "image": "busybox", "script": "true"}]}}},
               "placement": {"clusters": [{"name": "member-1"}]}}),
    );
    runs.create(
        &PostParams::default(),
        &object("FederatedTaskRun", "after-huge", &ns, control),
    )
    .await
    .unwrap();
    eventually("a run created after it to succeed", WAIT, || {
        let runs = runs.clone();
        async move {
            let run = runs.get("after-huge").await.ok()?;
            (run.data["status"]["phase"] == "Succeeded").then_some(())
        }
    })
    .await;
    let assignments: Api<RunAssignment> = Api::all(hub.clone());
    let records = assignments.list(&ListParams::default()).await.unwrap();
    assert!(
        !records.items.iter().any(|r| r.spec.run.uid == uid),
        "a RunAssignment was made for the refused run"
    );
    assert!(
        nothing_on_members(bed, "TaskRun", &ns, "huge").await,
        "a TaskRun was made on a member"
    );
    let phase: Option<RunPhase> = serde_json::from_value(run.data["status"]["phase"].clone()).ok();
    report(
        "template",
        "a 600 KiB template, placed on member-1 and member-2",
        &format!("{phase:?} (TemplateTooLarge): {}", shorten(message)),
    );
    runs.delete("huge", &DeleteParams::default()).await.unwrap();
}

/// The bed's kubeconfig of member-3 as JSON, for a case to change.
fn member_kubeconfig(bed: &TestBed) -> Value {
    serde_saphyr::from_str(&bed.cluster_kubeconfig("member-3").unwrap()).unwrap()
}

/// Wait until `name` is `Reachable=False`: `(reason, message)`.
async fn unreachable(hub: &Client, name: &str) -> (String, String) {
    let clusters: Api<MemberCluster> = Api::all(hub.clone());
    eventually(
        &format!("MemberCluster {name} to be Reachable=False"),
        WAIT,
        || {
            let clusters = clusters.clone();
            async move {
                let mc = clusters.get(name).await.ok()?;
                mc.status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Reachable" && c.status == "False")
                    .map(|c| (c.reason, c.message))
            }
        },
    )
    .await
}

async fn unregister(hub: &Client, name: &str) {
    let _ = Api::<MemberCluster>::all(hub.clone())
        .delete(name, &DeleteParams::default())
        .await;
    let _ = Api::<Secret>::namespaced(hub.clone(), HUB_NAMESPACE)
        .delete(&format!("{name}-kubeconfig"), &DeleteParams::default())
        .await;
}

#[tokio::test]
async fn member_kubeconfigs_the_hub_must_not_use_are_refused() {
    let bed = run_federation();
    let hub = bed.client(HUB).await.unwrap();
    let server = member_kubeconfig(bed)["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap()
        .to_owned();
    let plain = server.replacen("https://", "http://", 1);
    // (case, MemberCluster, change to member-3's kubeconfig, reason, what the message names)
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, &str, Edit, &str, &str)> = vec![
        (
            "server http://",
            "plain-http",
            Box::new(move |k| k["clusters"][0]["cluster"]["server"] = json!(plain)),
            "KubeconfigInsecure",
            "not https://",
        ),
        (
            "proxy-url set",
            "via-proxy",
            Box::new(|k| k["clusters"][0]["cluster"]["proxy-url"] = json!("http://127.0.0.1:3128")),
            "KubeconfigInvalid",
            "proxy-url",
        ),
        (
            "as: system:admin",
            "impersonating",
            Box::new(|k| {
                for user in k["users"].as_array_mut().unwrap() {
                    user["user"]["as"] = json!("system:admin");
                }
            }),
            "KubeconfigInvalid",
            "impersonates",
        ),
        (
            "as-groups: [system:masters]",
            "impersonating-groups",
            Box::new(|k| {
                for user in k["users"].as_array_mut().unwrap() {
                    user["user"]["as-groups"] = json!(["system:masters"]);
                }
            }),
            "KubeconfigInvalid",
            "impersonates",
        ),
        (
            "no certificate-authority-data",
            "no-ca",
            Box::new(|k| {
                k["clusters"][0]["cluster"]
                    .as_object_mut()
                    .unwrap()
                    .remove("certificate-authority-data");
            }),
            "KubeconfigInsecure",
            "no certificate-authority-data",
        ),
    ];
    let mut failures = Vec::new();
    for (_, name, edit, ..) in &cases {
        let mut kubeconfig = member_kubeconfig(bed);
        edit(&mut kubeconfig);
        let text = serde_saphyr::to_string(&kubeconfig).unwrap();
        bed.register_member_with(name, &text, BTreeMap::new())
            .await
            .unwrap();
    }
    for (case, name, _, reason, says) in &cases {
        // Refused before any connection: a kubeconfig the hub used would
        // reach member-3, already joined, and read DuplicateCluster.
        let (got, message) = unreachable(&hub, name).await;
        if got == *reason && message.contains(says) {
            report(
                "kubeconfig",
                case,
                &format!("Reachable=False {got}: {}", shorten(&message)),
            );
        } else {
            report(
                "kubeconfig",
                case,
                &format!("FAILED: {got}: {}", shorten(&message)),
            );
            failures.push(format!(
                "{case}: expected {reason} naming {says:?}, got {got}: {message}"
            ));
        }
    }
    for (_, name, ..) in &cases {
        unregister(&hub, name).await;
    }
    assert_cases("kubeconfig", failures);
}

/// A member "API server" that answers every request, on every path, with
/// HTTP 500 and an HTML page holding `marker`, over TLS with a CA of its
/// own. Returns its URL, the CA (PEM), and the requests it saw (`METHOD path`).
async fn hostile_server(marker: &str) -> (String, String, Arc<Mutex<Vec<String>>>) {
    let pki = tekfed_testbed::pki::Pki::generate().unwrap();
    let certs = CertificateDer::pem_slice_iter(pki.serving.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(pki.serving.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let body = format!(
        "<!DOCTYPE html><html><head><title>500</title></head><body>\n<h1>Internal Server Error</h1>\n<p>{marker}</p>\n<script>steal(document.cookie)</script>\n</body></html>\n"
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let requests = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, body, requests) = (acceptor.clone(), body.clone(), requests.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                requests.lock().unwrap().push(line);
                let answer = format!(
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (url, pki.ca_pem, seen)
}

#[tokio::test]
async fn a_member_answering_html_500_is_reported_without_its_body() {
    let bed = run_federation();
    let hub = bed.client(HUB).await.unwrap();
    let marker = format!("tekfed-marker-{}", std::process::id());
    let (url, ca, seen) = hostile_server(&marker).await;
    let b64 = |text: &str| {
        serde_json::to_value(k8s_openapi::ByteString(text.as_bytes().to_vec())).unwrap()
    };
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "hostile",
        "clusters": [{"name": "hostile", "cluster": {"server": url, "certificate-authority-data": b64(&ca)}}],
        "users": [{"name": "hub", "user": {"token": "a-token-the-server-never-checks"}}],
        "contexts": [{"name": "hostile", "context": {"cluster": "hostile", "user": "hub"}}],
    });
    let name = "hostile-500";
    bed.register_member_with(
        name,
        &serde_saphyr::to_string(&kubeconfig).unwrap(),
        BTreeMap::new(),
    )
    .await
    .unwrap();
    let (reason, message) = unreachable(&hub, name).await;
    // Probed again since: the answer is the same each time.
    let asked = seen.lock().unwrap().len();
    eventually("the hub to probe the server again", WAIT, || {
        let more = seen.lock().unwrap().len() > asked;
        async move { more.then_some(()) }
    })
    .await;
    let mc = Api::<MemberCluster>::all(hub.clone())
        .get(name)
        .await
        .unwrap();
    let status = serde_json::to_string(&mc.status).unwrap();
    let events = Api::<Event>::all(hub.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let leaking: Vec<String> = events
        .items
        .iter()
        .filter(|e| serde_json::to_string(e).unwrap().contains(&marker))
        .map(|e| e.name_any())
        .collect();
    let requests = seen.lock().unwrap().clone();
    report(
        "member",
        "a member answering every request with HTML and HTTP 500",
        &format!("Reachable=False {reason}: {}", shorten(&message)),
    );
    unregister(&hub, name).await;
    assert!(!requests.is_empty(), "the hub never asked the server");
    assert!(
        requests.iter().all(|r| r.starts_with("GET ")),
        "the hub wrote to a member that does not work: {requests:?}"
    );
    assert!(message.contains("HTTP 500"), "{message}");
    assert!(message.contains("not shown"), "{message}");
    assert!(
        !status.contains(&marker),
        "the body reached the status: {status}"
    );
    assert!(!status.contains("<html"), "{status}");
    assert!(leaking.is_empty(), "the body reached Events {leaking:?}");
}
