//! The member run: a federated run's copy on its cluster, under the
//! federated run's own name, carrying tekfed's labels; made when the
//! protocol says so (a PipelineRun held at once, a TaskRun once released),
//! after what it refers to ([`super::dependencies`]) and in a namespace
//! that can run pods; and given the user's cancel.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tekfed_api::tekton::{PIPELINE_RUN_PENDING, TektonRun, cancel_values, is_final};
use tekfed_api::{RunAssignment, RunKind};
use tekfed_runtime::connect::tekton_resource;

use super::dependencies::ensure_dependencies;
use super::{Error, FederatedRun, RunContext, kube_error, owner};
use crate::overrides::{Source, render};
use crate::ownership::{LABEL_MANAGED_BY, MANAGED_BY};

/// The member run exists as it should at this point of the protocol, and
/// carries the user's cancel.
pub(super) async fn ensure_member_run<K: FederatedRun>(
    run: &K,
    cluster: &str,
    assignment: &RunAssignment,
    ctx: &RunContext,
) -> Result<(), Error> {
    let released = assignment
        .status
        .as_ref()
        .and_then(|s| s.released)
        .unwrap_or(false);
    let waiting = |reason: &'static str, message: String| Error::Waiting {
        reason,
        kind: K::FEDERATED_KIND,
        namespace: run.namespace().unwrap_or_default(),
        name: run.name_any(),
        message,
    };
    let cancel = run
        .template()
        .spec
        .get("status")
        .and_then(|s| s.as_str())
        .filter(|s| cancel_values(K::KIND).contains(s));
    let reported = assignment.status.as_ref().and_then(|s| s.phase).is_some();
    if reported && cancel.is_none() {
        // The agent has seen the member run, with this run's uid on it:
        // nothing to create or change there.
        return Ok(());
    }
    if K::KIND == RunKind::TaskRun && !released && cancel.is_none() {
        // Tekton cannot hold a TaskRun: it is created once released.
        return Ok(());
    }
    let conn = ctx.members.connection(cluster).map_err(|u| {
        waiting(
            "ClusterUnreachable",
            format!("cluster {cluster} is not reachable: {}", u.message),
        )
    })?;
    let name = run.name_any();
    let namespace = run.namespace().unwrap_or_default();
    // Read as a typed partial object (the spec.status tekfed reads);
    // created as the whole rendered object.
    let resource = tekton_resource(K::KIND.tekton_kind());
    let api: Api<TektonRun> = Api::namespaced_with(conn.client.clone(), &namespace, &resource);
    let existing = api.get_opt(&name).await.map_err(kube_error(
        run,
        format!("reading the member run on {cluster}"),
    ))?;
    let owner = owner(run);
    let conflict = || {
        waiting(
            "Conflict",
            format!(
                "a {} named {name} that tekfed did not create exists in {namespace} on {cluster}",
                K::KIND.tekton_kind()
            ),
        )
    };
    match existing {
        Some(member) if !owner.owns(member.labels()) => Err(conflict()),
        Some(member) => {
            if let Some(cancel) = cancel
                && member.spec.status.as_deref() != Some(cancel)
            {
                // The one change Tekton allows on a started run.
                let patch = json!({"spec": {"status": cancel}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(kube_error(
                        run,
                        format!("cancelling the member run on {cluster}"),
                    ))?;
            }
            Ok(())
        }
        // A TaskRun is created only once released; a PipelineRun is created held.
        None if K::KIND == RunKind::TaskRun && !released => Ok(()),
        None if assignment
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(is_final) =>
        {
            Ok(())
        }
        None => {
            let source = Source {
                kind: K::KIND.tekton_kind(),
                name: &name,
                owner: owner.clone(),
                template: run.template(),
                overrides: run.overrides(),
            };
            let mut desired = render(&source, cluster)
                .map_err(|e| waiting("OverrideFailed", format!("{e}; fix spec.overrides")))?;
            if K::KIND == RunKind::PipelineRun && !released && cancel.is_none() {
                desired["spec"]["status"] = json!(PIPELINE_RUN_PENDING);
            }
            ensure_dependencies(run, cluster, ctx).await?;
            ensure_namespace(&conn.client, &namespace)
                .await
                .map_err(|message| {
                    waiting(
                        "WaitingForServiceAccount",
                        format!("{message} on {cluster}"),
                    )
                })?;
            let object: DynamicObject = serde_json::from_value(desired).map_err(|e| {
                waiting("InvalidTemplate", format!("rendering the member run: {e}"))
            })?;
            let create: Api<DynamicObject> =
                Api::namespaced_with(conn.client.clone(), &namespace, &resource);
            match create.create(&PostParams::default(), &object).await {
                Ok(_) => Ok(()),
                // Created meanwhile: "already created" only if it is ours.
                Err(kube::Error::Api(s)) if s.code == 409 => match api.get_opt(&name).await {
                    Ok(Some(member)) if owner.owns(member.labels()) => Ok(()),
                    _ => Err(conflict()),
                },
                Err(e) => Err(kube_error(
                    run,
                    format!("creating the member run on {cluster}"),
                )(e)),
            }
        }
    }
}

/// How long after its creation a member namespace is checked for its
/// `default` ServiceAccount before a run is created in it.
const NEW_NAMESPACE: Duration = Duration::from_secs(120);

/// The member namespace exists and can run pods. Tekton reads the
/// namespace's `default` ServiceAccount for every run, and a run created
/// before the member's controller-manager made it fails at once
/// (`PodCreationFailed`); so in a namespace created moments ago (by tekfed
/// or anyone) a run is created only once that account exists. `Err` says
/// what is awaited.
async fn ensure_namespace(client: &Client, namespace: &str) -> Result<(), String> {
    let api: Api<Namespace> = Api::all(client.clone());
    let created = match api.get_metadata_opt(namespace).await {
        Ok(Some(ns)) => ns.metadata.creation_timestamp.map(|t| t.0),
        _ => {
            let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": {LABEL_MANAGED_BY: MANAGED_BY}}});
            let _ = api
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(ns).expect("a valid Namespace"),
                )
                .await;
            None
        }
    };
    let age = created.map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t));
    if age.is_some_and(|age| age.as_secs() >= NEW_NAMESPACE.as_secs() as i64) {
        return Ok(());
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    match accounts.get_metadata_opt("default").await {
        Ok(None) => Err(format!(
            "namespace {namespace} has no default ServiceAccount yet (the member's controller-manager makes it; Tekton needs it for every run)"
        )),
        // Found, or not ours to read (a hub identity joined before it
        // could): go on as before.
        _ => Ok(()),
    }
}
