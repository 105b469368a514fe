//! `kubectl tekfed join` and `unjoin` on real API servers: the identities
//! join creates are enough for the hub and the agents to run work (nothing
//! here uses the test bed's admin credentials for them), they are no more
//! than that, a second join changes nothing, and unjoin leaves nothing.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tekfed_api::{FederatedTaskRun, MemberCluster, cluster_namespace};
use tekfed_runtime::connect::tekton_resource;
use tekfed_testbed::access;
use tekfed_testbed::federation::{create_task_runs, wait_all_succeeded, wait_condition};
use tekfed_testbed::{HUB, TestBed, eventually_logged, kubectl_tekfed};

const WAIT: Duration = Duration::from_secs(120);

fn tekfed(bed: &TestBed, args: &[&str]) -> (bool, String) {
    let kubeconfig = bed.kubeconfig().to_string_lossy();
    let mut all = args.to_vec();
    all.extend(["--kubeconfig", &kubeconfig]);
    kubectl_tekfed(&all)
}

fn join(bed: &TestBed, member: &str) -> (bool, String) {
    let labels = format!("tekfed.io/test-member={member}");
    tekfed(
        bed,
        &[
            "join",
            member,
            "--cluster-context",
            member,
            "--hub-context",
            HUB,
            "--labels",
            &labels,
        ],
    )
}

async fn can(client: &Client, user: &str, verb: &str, group: &str, resource: &str) -> bool {
    access::may(client, user, access::attributes(verb, group, resource)).await
}

#[tokio::test]
async fn join_twice_runs_work_with_least_privilege_and_unjoin_leaves_nothing() {
    let bed = TestBed::start(2).await.unwrap();
    let members = bed.members();
    bed.start_hub("tekfed-hub", &["--heartbeat-grace", "30"])
        .unwrap();
    let hub = bed.client(HUB).await.unwrap();

    // Bad input is refused up front, saying what to do.
    let (ok, out) = tekfed(
        &bed,
        &[
            "join",
            "Member_1",
            "--cluster-context",
            "member-1",
            "--hub-context",
            HUB,
        ],
    );
    assert!(!ok && out.contains("not a valid member name"), "{out}");
    let (ok, out) = tekfed(
        &bed,
        &[
            "join",
            "member-9",
            "--cluster-context",
            "nope",
            "--hub-context",
            HUB,
        ],
    );
    assert!(
        !ok && out.contains("no context \"nope\"") && out.contains("member-1"),
        "{out}"
    );

    for member in &members {
        let (ok, out) = join(&bed, member);
        assert!(ok, "join {member}: {out}");
        assert!(
            out.contains(&format!("joined {member}")) && out.contains("created"),
            "{out}"
        );
        assert!(
            out.contains("helm upgrade --install"),
            "prints how to install the agent: {out}"
        );
    }
    for member in &members {
        let (ok, out) = join(&bed, member);
        assert!(
            ok && out.contains(&format!("{member} is already joined; nothing changed")),
            "a second join: {out}"
        );
        assert!(
            !out.contains(" created ") && !out.contains(" updated "),
            "{out}"
        );
    }

    // --install-agent adds the agent itself (no kubelet runs it here).
    let (ok, out) = tekfed(
        &bed,
        &[
            "join",
            "member-1",
            "--cluster-context",
            "member-1",
            "--hub-context",
            HUB,
            "--labels",
            "tekfed.io/test-member=member-1",
            "--install-agent",
            "--agent-image",
            "tekfed:test",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "created   member member-1: Deployment tekfed-system/tekfed-agent (tekfed:test)"
        ) && out.contains("created   member member-1: ClusterRole tekfed-agent")
            && out.contains(
                "created   member member-1: Role tekton-pipelines/tekfed-agent-tekton-version"
            )
            && out.contains(
                "created   member member-1: Role tekfed-system/tekfed-agent-leader-election"
            )
            && !out.contains("helm upgrade"),
        "{out}"
    );
    // The same agent the chart installs: leader election on, as the chart's.
    let agent = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(
        bed.client("member-1").await.unwrap(),
        "tekfed-system",
    )
    .get("tekfed-agent")
    .await
    .unwrap();
    let agent = serde_json::to_value(&agent).unwrap();
    let args = &agent["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .is_some_and(|a| a.iter().any(|a| a == "--leader-elect")),
        "{args}"
    );

    // The hub reaches each member with the token join made.
    wait_condition(&bed, &members, "Reachable", WAIT)
        .await
        .unwrap();

    // That identity reaches Tekton objects and namespaces, and a run's
    // ServiceAccounts, ConfigMaps and Secrets by name (to carry them),
    // never listing or watching a Secret.
    let hub_sa = "system:serviceaccount:tekfed-system:tekfed-hub";
    for member in &members {
        let m = bed.client(member).await.unwrap();
        for verb in ["list", "watch"] {
            assert!(
                !can(&m, hub_sa, verb, "", "secrets").await,
                "{member}: {verb} secrets"
            );
        }
        for verb in ["get", "create", "patch", "delete"] {
            for resource in ["secrets", "configmaps", "serviceaccounts"] {
                assert!(
                    can(&m, hub_sa, verb, "", resource).await,
                    "{member}: {verb} {resource}"
                );
            }
        }
        assert!(
            can(&m, hub_sa, "create", "tekton.dev", "stepactions").await,
            "{member}: stepactions"
        );
        assert!(!can(&m, hub_sa, "list", "", "pods").await, "{member}: pods");
        assert!(
            !can(
                &m,
                hub_sa,
                "create",
                "rbac.authorization.k8s.io",
                "clusterroles"
            )
            .await
        );
        assert!(can(&m, hub_sa, "create", "tekton.dev", "pipelineruns").await);
        assert!(can(&m, hub_sa, "create", "", "namespaces").await);
    }
    // The agent's hub identity touches its own cluster's namespace only.
    let agent_1 = "system:serviceaccount:tekfed-system:tekfed-agent-member-1";
    let status_of = |ns: &str, resource: &str| {
        let attributes = access::attributes("update", "tekfed.io", &format!("{resource}/status"));
        access::may(&hub, agent_1, access::in_namespace(attributes, ns))
    };
    assert!(status_of(&cluster_namespace("member-1"), "runassignments").await);
    assert!(!status_of(&cluster_namespace("member-2"), "runassignments").await);
    assert!(!status_of("default", "federatedtaskruns").await);

    // Agents run with the hub kubeconfig join left on each member.
    for member in &members {
        bed.start_joined_agent(member).await.unwrap();
    }
    wait_condition(&bed, &members, "Ready", WAIT).await.unwrap();
    let ns = bed.namespace("joined", &[HUB]).await.unwrap();
    create_task_runs(&hub, &ns, 10, None).await;
    let runs: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), &ns);
    wait_all_succeeded(&runs, "10 runs through joined members", WAIT).await;

    // A run still active on member-2: unjoin refuses without --force.
    let long: FederatedTaskRun = serde_json::from_value(json!({
        "apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedTaskRun",
        "metadata": {"name": "long", "namespace": ns},
        "spec": {
            "template": {"metadata": {"annotations": {"tekfed.io/test-duration": "10m"}}, "spec": {"taskSpec": {"stepTemplate": {"securityContext": tekfed_api::guard::restricted_security_context()}, "steps": [{"name": "s", "image": "ubuntu", "script": "true"}]}}},
            "placement": {"clusters": [{"name": "member-2"}]},
        },
    }))
    .unwrap();
    runs.create(&PostParams::default(), &long).await.unwrap();
    eventually_logged(&bed, "the long run to start on member-2", WAIT, || {
        let runs = runs.clone();
        async move {
            let s = runs.get("long").await.ok()?.status?;
            (s.phase == Some(tekfed_api::RunPhase::Running)).then_some(())
        }
    })
    .await;
    let (ok, out) = tekfed(
        &bed,
        &[
            "unjoin",
            "member-2",
            "--cluster-context",
            "member-2",
            "--hub-context",
            HUB,
        ],
    );
    assert!(
        !ok && out.contains("1 run(s) are active on member-2") && out.contains("--force"),
        "{out}"
    );

    for member in &members {
        bed.stop(&format!("agent-{member}"));
        let mut args = vec![
            "unjoin",
            member.as_str(),
            "--cluster-context",
            member.as_str(),
            "--hub-context",
            HUB,
        ];
        if member == "member-2" {
            args.push("--force");
        }
        let (ok, out) = tekfed(&bed, &args);
        assert!(ok && out.contains(&format!("unjoined {member}")), "{out}");
    }

    // Nothing of tekfed's is left. (No namespace controller runs in the test
    // bed, so a deleted namespace stays Terminating: deleted is what counts.)
    let gone_or_terminating =
        |ns: Option<Namespace>| ns.is_none_or(|n| n.metadata.deletion_timestamp.is_some());
    // unjoin waits for the hub's finalizer to let the MemberClusters go.
    assert!(
        Api::<MemberCluster>::all(hub.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let hub_secrets: Api<Secret> = Api::namespaced(hub.clone(), "tekfed-system");
    let hub_sas: Api<ServiceAccount> = Api::namespaced(hub.clone(), "tekfed-system");
    for member in &members {
        assert!(
            hub_secrets
                .get_opt(&format!("tekfed-member-{member}"))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            hub_sas
                .get_opt(&format!("tekfed-agent-{member}"))
                .await
                .unwrap()
                .is_none()
        );
        let ns = Api::<Namespace>::all(hub.clone())
            .get_opt(&cluster_namespace(member))
            .await
            .unwrap();
        assert!(gone_or_terminating(ns), "hub namespace of {member}");

        let m = bed.client(member).await.unwrap();
        let system = Api::<Namespace>::all(m.clone())
            .get_opt("tekfed-system")
            .await
            .unwrap();
        assert!(gone_or_terminating(system), "{member}: tekfed-system");
        for name in ["tekfed-hub", "tekfed-agent"] {
            let role = Api::<ClusterRole>::all(m.clone())
                .get_opt(name)
                .await
                .unwrap();
            assert!(role.is_none(), "{member}: ClusterRole {name}");
            let binding = Api::<ClusterRoleBinding>::all(m.clone())
                .get_opt(name)
                .await
                .unwrap();
            assert!(binding.is_none(), "{member}: ClusterRoleBinding {name}");
        }
        for kind in ["TaskRun", "PipelineRun", "Task", "Pipeline", "StepAction"] {
            let api: Api<DynamicObject> = Api::all_with(m.clone(), &tekton_resource(kind));
            let left = api
                .list(&ListParams::default().labels("app.kubernetes.io/managed-by=tekfed"))
                .await
                .unwrap();
            assert!(
                left.items.is_empty(),
                "{member}: {kind}s left: {:?}",
                left.items.iter().map(|o| o.name_any()).collect::<Vec<_>>()
            );
        }
        let marked = Api::<Namespace>::all(m.clone())
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=tekfed"))
            .await
            .unwrap();
        assert!(
            marked
                .items
                .iter()
                .all(|n| n.metadata.deletion_timestamp.is_some()),
            "{member}: namespaces still marked as tekfed's"
        );
    }
}
