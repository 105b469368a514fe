//! `join --install-agent`: the agent on its member, with the rights and
//! flags the `tekfed-member-agent` chart gives it (the rules are both
//! `tekfed_api::rbac`'s): its ServiceAccount, ClusterRole, the Role on
//! Tekton's version ConfigMap, the Role on its leader-election Lease, the
//! Role on the Secret of its hub kubeconfig (where it writes its renewed
//! token), and the Deployment running it with `--leader-elect`.

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use kube::Client;
use kube::api::Api;
use serde_json::{Value, json};
use tekfed_api::rbac::{self, TEKTON_NAMESPACE};

use super::objects::{ensure, fields, labels_differ};
use super::{AGENT, AGENT_SECRET, Joining, SYSTEM_NAMESPACE};

/// The agent's Role (and binding) in [`TEKTON_NAMESPACE`].
pub(super) const TEKTON_VERSION_ROLE: &str = "tekfed-agent-tekton-version";
/// The agent's Role (and binding) in `tekfed-system`, on its Lease.
const LEADER_ELECTION_ROLE: &str = "tekfed-agent-leader-election";
/// The agent's Role (and binding) in `tekfed-system`, on the Secret of its
/// hub kubeconfig.
pub(super) const HUB_KUBECONFIG_ROLE: &str = "tekfed-agent-hub-kubeconfig";

pub(super) async fn install(m: &Client, image: &str, j: &mut Joining<'_>) -> anyhow::Result<()> {
    let labels = j.labels.clone();
    ensure::<ServiceAccount>(
        &Api::namespaced(m.clone(), SYSTEM_NAMESPACE),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": AGENT, "namespace": SYSTEM_NAMESPACE, "labels": labels}}),
        labels_differ,
        j.on_member(&format!("ServiceAccount {SYSTEM_NAMESPACE}/{AGENT}")),
        &mut j.report,
    )
    .await?;
    ensure::<ClusterRole>(
        &Api::all(m.clone()),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": AGENT, "labels": labels},
               "rules": rbac::policy_rules(rbac::agent_on_member())}),
        fields(&["rules"]),
        j.on_member(&format!("ClusterRole {AGENT}")),
        &mut j.report,
    )
    .await?;
    ensure::<ClusterRoleBinding>(
        &Api::all(m.clone()),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": AGENT, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": AGENT},
               "subjects": [{"kind": "ServiceAccount", "name": AGENT, "namespace": SYSTEM_NAMESPACE}]}),
        fields(&["roleRef", "subjects"]),
        j.on_member(&format!("ClusterRoleBinding {AGENT}")),
        &mut j.report,
    )
    .await?;
    let tekton = Api::<Namespace>::all(m.clone())
        .get_metadata_opt(TEKTON_NAMESPACE)
        .await
        .with_context(|| format!("reading Namespace {TEKTON_NAMESPACE}"))?;
    if tekton.is_some() {
        role(
            m,
            TEKTON_NAMESPACE,
            TEKTON_VERSION_ROLE,
            rbac::policy_rules(rbac::agent_tekton_version()),
            j,
        )
        .await?;
    } else {
        let what = j.on_member(&format!(
            "Role {TEKTON_NAMESPACE}/{TEKTON_VERSION_ROLE} (no namespace {TEKTON_NAMESPACE}: the agent reports no Tekton version)"
        ));
        j.report.note("skipped", what);
    }
    role(
        m,
        SYSTEM_NAMESPACE,
        LEADER_ELECTION_ROLE,
        rbac::policy_rules(rbac::leader_election(&rbac::agent_lease(j.name))),
        j,
    )
    .await?;
    role(
        m,
        SYSTEM_NAMESPACE,
        HUB_KUBECONFIG_ROLE,
        rbac::policy_rules(rbac::agent_hub_kubeconfig(AGENT_SECRET)),
        j,
    )
    .await?;
    ensure::<Deployment>(
        &Api::namespaced(m.clone(), SYSTEM_NAMESPACE),
        deployment(j.name, image, &labels),
        |current, desired| {
            let container = |d: &Value| d["spec"]["template"]["spec"]["containers"][0].clone();
            let (current, desired) = (container(current), container(desired));
            current["image"] != desired["image"] || current["args"] != desired["args"]
        },
        j.on_member(&format!("Deployment {SYSTEM_NAMESPACE}/{AGENT} ({image})")),
        &mut j.report,
    )
    .await?;
    Ok(())
}

/// Role `name` of `rules` in `namespace`, bound to the agent's
/// ServiceAccount.
async fn role(
    m: &Client,
    namespace: &str,
    name: &str,
    rules: Vec<PolicyRule>,
    j: &mut Joining<'_>,
) -> anyhow::Result<()> {
    let labels = j.labels.clone();
    ensure::<Role>(
        &Api::namespaced(m.clone(), namespace),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name, "namespace": namespace, "labels": labels},
               "rules": rules}),
        fields(&["rules"]),
        j.on_member(&format!("Role {namespace}/{name}")),
        &mut j.report,
    )
    .await?;
    ensure::<RoleBinding>(
        &Api::namespaced(m.clone(), namespace),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name, "namespace": namespace, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
               "subjects": [{"kind": "ServiceAccount", "name": AGENT, "namespace": SYSTEM_NAMESPACE}]}),
        fields(&["roleRef", "subjects"]),
        j.on_member(&format!("RoleBinding {namespace}/{name}")),
        &mut j.report,
    )
    .await?;
    Ok(())
}

/// The agent's Deployment for member `name`: one replica (two would do:
/// only the Lease's holder acts), its hub kubeconfig from the Secret join
/// wrote, which it renews its token in.
fn deployment(name: &str, image: &str, labels: &Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": AGENT, "namespace": SYSTEM_NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": AGENT}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": AGENT}},
                "spec": {
                    "serviceAccountName": AGENT,
                    "securityContext": {"runAsNonRoot": true},
                    "containers": [{
                        "name": "agent",
                        "image": image,
                        "command": ["tekfed-agent"],
                        "args": [
                            "--cluster-name", name,
                            "--hub-kubeconfig", "/etc/tekfed/hub/kubeconfig",
                            "--hub-kubeconfig-secret", format!("{SYSTEM_NAMESPACE}/{AGENT_SECRET}"),
                            "--leader-elect",
                            "--leader-elect-namespace", SYSTEM_NAMESPACE,
                            "--leader-elect-lease-name", rbac::agent_lease(name),
                        ],
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "hub", "mountPath": "/etc/tekfed/hub", "readOnly": true}],
                    }],
                    "volumes": [{"name": "hub", "secret": {"secretName": AGENT_SECRET}}],
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent elects on the Lease its Role names, where that Role is.
    #[test]
    fn the_agent_elects_on_the_lease_its_role_grants() {
        let d = deployment("member-1", "tekfed:test", &json!({}));
        let args: Vec<&str> = d["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let after = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
        assert!(args.contains(&"--leader-elect"), "{args:?}");
        assert_eq!(after("--leader-elect-namespace"), SYSTEM_NAMESPACE);
        let lease = after("--leader-elect-lease-name");
        let named: Vec<String> =
            rbac::policy_rules(rbac::leader_election(&rbac::agent_lease("member-1")))
                .into_iter()
                .filter_map(|r| r.resource_names)
                .flatten()
                .collect();
        assert_eq!(named, [lease]);
    }

    /// The agent renews its token in the Secret its Role names, the one
    /// mounted as its hub kubeconfig.
    #[test]
    fn the_agent_writes_its_token_where_its_role_lets_it() {
        let d = deployment("member-1", "tekfed:test", &json!({}));
        let pod = &d["spec"]["template"]["spec"];
        let args: Vec<&str> = pod["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let after = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
        let (ns, secret) = after("--hub-kubeconfig-secret").split_once('/').unwrap();
        assert_eq!(ns, SYSTEM_NAMESPACE);
        assert_eq!(pod["volumes"][0]["secret"]["secretName"], secret);
        let named: Vec<String> = rbac::policy_rules(rbac::agent_hub_kubeconfig(AGENT_SECRET))
            .into_iter()
            .filter_map(|r| r.resource_names)
            .flatten()
            .collect();
        assert_eq!(named, [secret]);
    }
}
