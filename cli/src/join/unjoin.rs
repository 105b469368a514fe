//! `kubectl tekfed unjoin`: what join made, removed (refused while runs
//! are active on the member, unless forced).
//!
//! First the identities are revoked: deleting a ServiceAccount invalidates
//! every token issued for it at once (the agent's on the hub; the hub's
//! and the log reader's on the member, given its context). One that could
//! not be deleted is said loudly, with until when its token stays valid
//! and how to revoke it by hand, and unjoin exits non-zero.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ApiResource, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tekfed_api::rbac::TEKTON_NAMESPACE;
use tekfed_api::tekton::is_final;
use tekfed_api::{MemberCluster, RunAssignment, cluster_namespace};
use tekfed_runtime::connect::tekton_resource;

use tekfed_runtime::tokens::{Claims, kubeconfig_token};

use super::agent::{HUB_KUBECONFIG_ROLE, TEKTON_VERSION_ROLE};
use super::hub::{agent_account, logs_secret};
use super::kubeconfig::{connect, hub_context, read_kubeconfig};
use super::objects::{Report, remove, secret_kubeconfig};
use super::{AGENT, AGENT_SECRET, HUB_SA, HUB_TOKENS_ROLE, LOGS_SA, MANAGED_BY, SYSTEM_NAMESPACE};

/// What `unjoin` is asked to do.
pub struct UnjoinOptions {
    pub name: String,
    pub kubeconfig: Option<PathBuf>,
    pub cluster_context: Option<String>,
    pub hub_context: Option<String>,
    pub force: bool,
}

/// Runs still active on a member: assignments neither finished nor revoked.
async fn active_runs(hub: &Client, name: &str) -> anyhow::Result<Vec<String>> {
    let records: Api<RunAssignment> = Api::namespaced(hub.clone(), &cluster_namespace(name));
    let list = match records.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(kube::Error::Api(s)) if s.code == 404 => vec![],
        Err(e) => return Err(e).context("listing the member's assignments"),
    };
    Ok(list
        .into_iter()
        .filter(|r| {
            let s = r.status.clone().unwrap_or_default();
            !s.is_revoked() && !s.phase.is_some_and(is_final)
        })
        .map(|r| format!("{}/{}", r.spec.run.namespace, r.spec.run.name))
        .collect())
}

/// An identity unjoin could not revoke.
struct Unrevoked {
    /// Which, and where: `the hub's identity on member-1 (ServiceAccount …)`.
    identity: String,
    /// When its token expires (seconds since the epoch), if known.
    expires: Option<i64>,
    /// The command that revokes it.
    by_hand: String,
}

impl Unrevoked {
    fn describe(&self) -> String {
        let until = match self.expires {
            Some(exp) => match k8s_openapi::jiff::Timestamp::from_second(exp) {
                Ok(t) => format!("until {t}"),
                Err(_) => "until its token expires".to_owned(),
            },
            None => {
                "until its token expires (at most --token-ttl after it was last renewed)".to_owned()
            }
        };
        format!(
            "{} stays valid {until}; revoke it: {}",
            self.identity, self.by_hand
        )
    }
}

/// When the token in kubeconfig Secret `name` expires, if it says.
async fn token_expiry(secrets: &Api<Secret>, name: &str) -> Option<i64> {
    let text = secret_kubeconfig(secrets, name).await.ok()??;
    Claims::of(&kubeconfig_token(&text, None).ok()?)?.exp
}

/// Delete ServiceAccount `sa` in `tekfed-system`, which invalidates its
/// tokens; when that fails, say so at once and record it.
async fn revoke(
    api: &Api<ServiceAccount>,
    sa: &str,
    identity: String,
    expires: Option<i64>,
    context: &str,
    report: &mut Report,
    unrevoked: &mut Vec<Unrevoked>,
) {
    let what = format!("{identity} (ServiceAccount {SYSTEM_NAMESPACE}/{sa})");
    if let Err(e) = remove(api, sa, format!("{what}: its tokens revoked"), report).await {
        let failed = Unrevoked {
            identity: what,
            expires,
            by_hand: format!(
                "kubectl --context {context} -n {SYSTEM_NAMESPACE} delete serviceaccount {sa}"
            ),
        };
        eprintln!("  FAILED    {e:#}\n            {}", failed.describe());
        unrevoked.push(failed);
    }
}

pub async fn unjoin(options: UnjoinOptions) -> anyhow::Result<()> {
    let name = options.name.as_str();
    let kubeconfig = read_kubeconfig(&options.kubeconfig)?;
    let hub_context = hub_context(&kubeconfig, &options.hub_context)?;
    let hub = connect(&kubeconfig, &hub_context, "hub").await?;
    let h = &hub.client;
    let active = active_runs(h, name).await?;
    if !active.is_empty() && !options.force {
        bail!(
            "{} run(s) are active on {name} ({}); drain it first (kubectl tekfed drain {name}), or pass --force to unjoin anyway",
            active.len(),
            active
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let member = match &options.cluster_context {
        Some(ctx) => Some(connect(&kubeconfig, ctx, "member").await?),
        None => None,
    };
    // When each token expires, read before the Secrets holding them go.
    let hub_secrets: Api<Secret> = Api::namespaced(h.clone(), SYSTEM_NAMESPACE);
    let hub_expires = token_expiry(&hub_secrets, &format!("tekfed-member-{name}")).await;
    let logs_expires = token_expiry(&hub_secrets, &logs_secret(name)).await;
    let agent_expires = match &member {
        Some(m) => {
            let secrets = Api::namespaced(m.client.clone(), SYSTEM_NAMESPACE);
            token_expiry(&secrets, AGENT_SECRET).await
        }
        None => None,
    };
    let mut report = Report::default();
    let mut unrevoked = Vec::new();
    println!("unjoining {name}");
    // Revoke first, so that nothing failing later leaves a valid token.
    revoke(
        &Api::namespaced(h.clone(), SYSTEM_NAMESPACE),
        &agent_account(name),
        "hub: the agent's hub identity".to_owned(),
        agent_expires,
        &hub.context,
        &mut report,
        &mut unrevoked,
    )
    .await;
    if let Some(member) = &member {
        for (sa, what, expires) in [
            (HUB_SA, "the hub's identity", hub_expires),
            (LOGS_SA, "the hub's log reader", logs_expires),
        ] {
            revoke(
                &Api::namespaced(member.client.clone(), SYSTEM_NAMESPACE),
                sa,
                format!("member {name}: {what}"),
                expires,
                &member.context,
                &mut report,
                &mut unrevoked,
            )
            .await;
        }
    }
    unjoin_hub(h, name, &mut report).await?;
    match member {
        None => {
            println!(
                "The member side was left as it is; unjoin again with --cluster-context to remove tekfed's objects there."
            );
            for (sa, what, expires) in [
                (HUB_SA, "the hub's identity", hub_expires),
                (LOGS_SA, "the hub's log reader", logs_expires),
            ] {
                let left = Unrevoked {
                    identity: format!(
                        "{what} on {name} (ServiceAccount {SYSTEM_NAMESPACE}/{sa} there)"
                    ),
                    expires,
                    by_hand: format!(
                        "kubectl --context <{name}'s context> -n {SYSTEM_NAMESPACE} delete serviceaccount {sa}"
                    ),
                };
                eprintln!(
                    "kubectl-tekfed: NOT REVOKED (no --cluster-context): {}",
                    left.describe()
                );
            }
        }
        Some(member) => unjoin_member(&member.client, name, &mut report).await?,
    }
    if !unrevoked.is_empty() {
        bail!(
            "unjoined {name}, but {} identit{} could not be revoked and may still be used:\n  {}",
            unrevoked.len(),
            if unrevoked.len() == 1 { "y" } else { "ies" },
            unrevoked
                .iter()
                .map(Unrevoked::describe)
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
    println!("unjoined {name}");
    Ok(())
}

/// The MemberCluster, the member's kubeconfig Secrets, the agent's token
/// Role and the cluster's namespace (its assignments, report and the
/// agent's Role there); the agent's ServiceAccount went first
/// ([`revoke`]).
async fn unjoin_hub(h: &Client, name: &str, report: &mut Report) -> anyhow::Result<()> {
    remove(
        &Api::<MemberCluster>::all(h.clone()),
        name,
        format!("hub: MemberCluster {name}"),
        report,
    )
    .await?;
    for secret in [format!("tekfed-member-{name}"), logs_secret(name)] {
        remove(
            &Api::<Secret>::namespaced(h.clone(), SYSTEM_NAMESPACE),
            &secret,
            format!("hub: Secret {SYSTEM_NAMESPACE}/{secret}"),
            report,
        )
        .await?;
    }
    let agent_sa = agent_account(name);
    remove(
        &Api::<RoleBinding>::namespaced(h.clone(), SYSTEM_NAMESPACE),
        &agent_sa,
        format!("hub: RoleBinding {SYSTEM_NAMESPACE}/{agent_sa}"),
        report,
    )
    .await?;
    remove(
        &Api::<Role>::namespaced(h.clone(), SYSTEM_NAMESPACE),
        &agent_sa,
        format!("hub: Role {SYSTEM_NAMESPACE}/{agent_sa} (renewing the agent's token)"),
        report,
    )
    .await?;
    let cluster_ns = cluster_namespace(name);
    remove(
        &Api::<Namespace>::all(h.clone()),
        &cluster_ns,
        format!("hub: Namespace {cluster_ns} (its assignments, report and the agent's Role)"),
        report,
    )
    .await?;
    // The hub's finalizer lets the MemberCluster go once its runs left it:
    // wait for that a while, so a finished unjoin leaves no MemberCluster.
    let clusters = Api::<MemberCluster>::all(h.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut said = false;
    while let Ok(Some(mc)) = clusters.get_opt(name).await
        && mc.metadata.deletion_timestamp.is_some()
        && std::time::Instant::now() < deadline
    {
        if !said {
            println!(
                "hub: waiting for the hub to take {name}'s runs off it and let its MemberCluster go…"
            );
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    if let Ok(Some(mc)) = clusters.get_opt(name).await
        && mc.metadata.deletion_timestamp.is_some()
    {
        println!(
            "hub: MemberCluster {name} goes once the hub has taken its runs off it \
             (finalizer tekfed.io/member-cluster). With no hub running, it stays: \
             kubectl patch membercluster {name} --type merge -p '{{\"metadata\":{{\"finalizers\":null}}}}'"
        );
    }
    Ok(())
}

async fn unjoin_member(m: &Client, name: &str, report: &mut Report) -> anyhow::Result<()> {
    let on_member = |what: &str| format!("member {name}: {what}");
    // What the hub put there: tekfed's Tekton objects, in every namespace.
    let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    for kind in ["TaskRun", "PipelineRun", "Task", "Pipeline", "StepAction"] {
        let api: Api<kube::api::DynamicObject> = Api::all_with(m.clone(), &tekton_resource(kind));
        let items = api
            .list_metadata(&ListParams::default().labels(&selector))
            .await
            .with_context(|| format!("listing tekfed's {kind}s"))?;
        for item in items {
            let ns = item.namespace().unwrap_or_default();
            let api: Api<kube::api::DynamicObject> =
                Api::namespaced_with(m.clone(), &ns, &tekton_resource(kind));
            remove(
                &api,
                &item.name_any(),
                on_member(&format!("{kind} {ns}/{}", item.name_any())),
                report,
            )
            .await?;
        }
    }
    // What the hub carried there for runs (a run's ServiceAccounts,
    // ConfigMaps and Secrets): credentials must not outlive the federation.
    let carried = format!("{selector},tekfed.io/run-dependency=true");
    for (kind, resource) in [
        ("ServiceAccount", ApiResource::erase::<ServiceAccount>(&())),
        ("ConfigMap", ApiResource::erase::<ConfigMap>(&())),
        ("Secret", ApiResource::erase::<Secret>(&())),
    ] {
        let api: Api<kube::api::DynamicObject> = Api::all_with(m.clone(), &resource);
        let items = api
            .list_metadata(&ListParams::default().labels(&carried))
            .await
            .with_context(|| format!("listing the {kind}s tekfed carried"))?;
        for item in items {
            let ns = item.namespace().unwrap_or_default();
            let api: Api<kube::api::DynamicObject> =
                Api::namespaced_with(m.clone(), &ns, &resource);
            remove(
                &api,
                &item.name_any(),
                on_member(&format!(
                    "{kind} {ns}/{} (carried for runs)",
                    item.name_any()
                )),
                report,
            )
            .await?;
        }
    }
    // Namespaces the hub created are kept (they may hold your objects) but
    // are no longer marked as tekfed's.
    let namespaces: Api<Namespace> = Api::all(m.clone());
    for ns in namespaces
        .list_metadata(&ListParams::default().labels(&selector))
        .await?
    {
        let ns_name = ns.name_any();
        if ns_name == SYSTEM_NAMESPACE {
            continue;
        }
        let patch = json!({"metadata": {"labels": {MANAGED_BY.0: null}}});
        namespaces
            .patch(&ns_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        report.note(
            "unmarked",
            on_member(&format!("Namespace {ns_name} (kept)")),
        );
    }
    for cr in [HUB_SA, LOGS_SA, AGENT] {
        remove(
            &Api::<ClusterRoleBinding>::all(m.clone()),
            cr,
            on_member(&format!("ClusterRoleBinding {cr}")),
            report,
        )
        .await?;
        remove(
            &Api::<ClusterRole>::all(m.clone()),
            cr,
            on_member(&format!("ClusterRole {cr}")),
            report,
        )
        .await?;
    }
    // Roles in tekfed-system that name the identities: the namespace's
    // deletion takes them too, but only once its controller runs.
    for role in [HUB_TOKENS_ROLE, HUB_KUBECONFIG_ROLE] {
        remove(
            &Api::<RoleBinding>::namespaced(m.clone(), SYSTEM_NAMESPACE),
            role,
            on_member(&format!("RoleBinding {SYSTEM_NAMESPACE}/{role}")),
            report,
        )
        .await?;
        remove(
            &Api::<Role>::namespaced(m.clone(), SYSTEM_NAMESPACE),
            role,
            on_member(&format!("Role {SYSTEM_NAMESPACE}/{role}")),
            report,
        )
        .await?;
    }
    // The agent's Role outside tekfed-system (join --install-agent).
    remove(
        &Api::<RoleBinding>::namespaced(m.clone(), TEKTON_NAMESPACE),
        TEKTON_VERSION_ROLE,
        on_member(&format!(
            "RoleBinding {TEKTON_NAMESPACE}/{TEKTON_VERSION_ROLE}"
        )),
        report,
    )
    .await?;
    remove(
        &Api::<Role>::namespaced(m.clone(), TEKTON_NAMESPACE),
        TEKTON_VERSION_ROLE,
        on_member(&format!("Role {TEKTON_NAMESPACE}/{TEKTON_VERSION_ROLE}")),
        report,
    )
    .await?;
    remove(
        &Api::<Namespace>::all(m.clone()),
        SYSTEM_NAMESPACE,
        on_member(&format!(
            "Namespace {SYSTEM_NAMESPACE} (the hub's ServiceAccount, the agent and its hub kubeconfig)"
        )),
        report,
    )
    .await?;
    Ok(())
}
