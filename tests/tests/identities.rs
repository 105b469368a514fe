//! The SubjectAccessReview table of tekfed's identities, as the README
//! shows it: each question asked of the real API servers of a federation
//! joined with `kubectl tekfed join --install-agent`, and the README's
//! table must be exactly what they answer.

use std::time::Duration;

use kube::Client;
use tekfed_testbed::access;
use tekfed_testbed::federation::wait_condition;
use tekfed_testbed::{HUB, TestBed, kubectl_tekfed};

const MEMBER: &str = "member-1";

/// One question: `verb` on `group`/`resource`[/`subresource`] in
/// `namespace` (cluster-wide when empty), of `name` when given.
struct Question {
    what: &'static str,
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: &'static str,
    namespace: &'static str,
    name: &'static str,
}

const fn q(
    what: &'static str,
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: &'static str,
    namespace: &'static str,
    name: &'static str,
) -> Question {
    Question {
        what,
        verb,
        group,
        resource,
        subresource,
        namespace,
        name,
    }
}

/// Asked on the member of the hub's identity, the log reader and the agent.
const ON_MEMBER: [Question; 22] = [
    q(
        "create a TaskRun in `ci`",
        "create",
        "tekton.dev",
        "taskruns",
        "",
        "ci",
        "",
    ),
    q(
        "delete a PipelineRun in `ci`",
        "delete",
        "tekton.dev",
        "pipelineruns",
        "",
        "ci",
        "",
    ),
    q(
        "get Secret `ci/git` by name",
        "get",
        "",
        "secrets",
        "",
        "ci",
        "git",
    ),
    q("list Secrets", "list", "", "secrets", "", "", ""),
    q("watch Secrets", "watch", "", "secrets", "", "", ""),
    q("create a pod in `ci`", "create", "", "pods", "", "ci", ""),
    q(
        "read a pod's log in `ci`",
        "get",
        "",
        "pods",
        "log",
        "ci",
        "",
    ),
    q(
        "exec into a pod in `ci`",
        "create",
        "",
        "pods",
        "exec",
        "ci",
        "",
    ),
    q("create a namespace", "create", "", "namespaces", "", "", ""),
    q("delete a namespace", "delete", "", "namespaces", "", "", ""),
    q(
        "create a RoleBinding in `ci`",
        "create",
        "rbac.authorization.k8s.io",
        "rolebindings",
        "",
        "ci",
        "",
    ),
    q(
        "escalate a ClusterRole",
        "escalate",
        "rbac.authorization.k8s.io",
        "clusterroles",
        "",
        "",
        "",
    ),
    q(
        "mint a ServiceAccount token in `ci`",
        "create",
        "",
        "serviceaccounts",
        "token",
        "ci",
        "",
    ),
    q(
        "mint `tekfed-hub`'s token (the hub's own)",
        "create",
        "",
        "serviceaccounts",
        "token",
        "tekfed-system",
        "tekfed-hub",
    ),
    q(
        "mint `tekfed-logs`'s token (the log reader's)",
        "create",
        "",
        "serviceaccounts",
        "token",
        "tekfed-system",
        "tekfed-logs",
    ),
    q(
        "mint `tekfed-agent`'s token (the agent's)",
        "create",
        "",
        "serviceaccounts",
        "token",
        "tekfed-system",
        "tekfed-agent",
    ),
    q(
        "mint the token of a ServiceAccount `tekfed-hub` in `ci`",
        "create",
        "",
        "serviceaccounts",
        "token",
        "ci",
        "tekfed-hub",
    ),
    q(
        "read Secret `tekfed-system/tekfed-hub-kubeconfig` (the agent's)",
        "get",
        "",
        "secrets",
        "",
        "tekfed-system",
        "tekfed-hub-kubeconfig",
    ),
    q(
        "patch Secret `tekfed-system/tekfed-hub-kubeconfig`",
        "patch",
        "",
        "secrets",
        "",
        "tekfed-system",
        "tekfed-hub-kubeconfig",
    ),
    q(
        "patch another Secret in `tekfed-system`",
        "patch",
        "",
        "secrets",
        "",
        "tekfed-system",
        "other",
    ),
    q(
        "delete the member guard",
        "delete",
        "admissionregistration.k8s.io",
        "validatingadmissionpolicies",
        "",
        "",
        "tekfed-member-guard",
    ),
    q(
        "patch a run's status (Tekton's)",
        "patch",
        "tekton.dev",
        "taskruns",
        "status",
        "ci",
        "",
    ),
];

/// Asked on the hub of the agent's hub identity.
const ON_HUB: [Question; 9] = [
    q(
        "write its RunAssignments' status",
        "update",
        "tekfed.io",
        "runassignments",
        "status",
        "tekfed-cluster-member-1",
        "",
    ),
    q(
        "write another cluster's RunAssignments' status",
        "update",
        "tekfed.io",
        "runassignments",
        "status",
        "tekfed-cluster-member-2",
        "",
    ),
    q(
        "change a RunAssignment's spec",
        "update",
        "tekfed.io",
        "runassignments",
        "",
        "tekfed-cluster-member-1",
        "",
    ),
    q(
        "write its MemberReport's status",
        "update",
        "tekfed.io",
        "memberreports",
        "status",
        "tekfed-cluster-member-1",
        "",
    ),
    q(
        "read MemberClusters",
        "get",
        "tekfed.io",
        "memberclusters",
        "",
        "",
        "",
    ),
    q(
        "read federated runs",
        "list",
        "tekfed.io",
        "federatedtaskruns",
        "",
        "",
        "",
    ),
    q(
        "read Secrets in `tekfed-system`",
        "get",
        "",
        "secrets",
        "",
        "tekfed-system",
        "",
    ),
    q(
        "mint its own token",
        "create",
        "",
        "serviceaccounts",
        "token",
        "tekfed-system",
        "tekfed-agent-member-1",
    ),
    q(
        "mint another cluster's agent's token",
        "create",
        "",
        "serviceaccounts",
        "token",
        "tekfed-system",
        "tekfed-agent-member-2",
    ),
];

async fn allowed(client: &Client, user: &str, q: &Question) -> bool {
    let resource = if q.subresource.is_empty() {
        q.resource.to_owned()
    } else {
        format!("{}/{}", q.resource, q.subresource)
    };
    let mut attributes = access::attributes(q.verb, q.group, &resource);
    if !q.namespace.is_empty() {
        attributes = access::in_namespace(attributes, q.namespace);
    }
    if !q.name.is_empty() {
        attributes = access::named(attributes, q.name);
    }
    access::may(client, user, attributes).await
}

fn yes(allowed: bool) -> &'static str {
    if allowed { "yes" } else { "no" }
}

#[tokio::test]
async fn the_readme_table_of_what_each_identity_may_do_is_what_the_api_servers_answer() {
    let bed = TestBed::start(1).await.unwrap();
    let kubeconfig = bed.kubeconfig().to_string_lossy().into_owned();
    let (ok, out) = kubectl_tekfed(&[
        "join",
        MEMBER,
        "--cluster-context",
        MEMBER,
        "--hub-context",
        HUB,
        "--install-agent",
        "--agent-image",
        "tekfed:test",
        "--kubeconfig",
        &kubeconfig,
    ]);
    assert!(ok, "join: {out}");
    bed.start_hub("tekfed-hub", &[]).unwrap();
    wait_condition(
        &bed,
        &[MEMBER.to_owned()],
        "Reachable",
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let member = bed.client(MEMBER).await.unwrap();
    let hub = bed.client(HUB).await.unwrap();
    let sa = |name: &str| format!("system:serviceaccount:tekfed-system:{name}");

    let mut table = String::from(
        "| on the member, may it… | hub `tekfed-hub` | log reader `tekfed-logs` | agent `tekfed-agent` |\n|---|---|---|---|\n",
    );
    for q in &ON_MEMBER {
        table.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            q.what,
            yes(allowed(&member, &sa("tekfed-hub"), q).await),
            yes(allowed(&member, &sa("tekfed-logs"), q).await),
            yes(allowed(&member, &sa("tekfed-agent"), q).await),
        ));
    }
    table.push_str("\n| on the hub, may it… | agent `tekfed-agent-member-1` |\n|---|---|\n");
    for q in &ON_HUB {
        table.push_str(&format!(
            "| {} | {} |\n",
            q.what,
            yes(allowed(&hub, &sa("tekfed-agent-member-1"), q).await),
        ));
    }
    println!("{table}");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    assert!(
        readme.contains(&table),
        "README.md's table of identities is not what the API servers answer; it should read:\n\n{table}"
    );
}
