//! Native runs (`tekfed_api::native`): Tekton `TaskRun`s and
//! `PipelineRun`s on the hub with `spec.managedBy: tekfed.io/hub`.
//!
//! Each is carried by a *shadow* `Federated*Run` of the same name in the
//! same namespace, owned by it ([`mirror::shadow`]): the shadow is
//! scheduled, fenced, moved and mirrored by the run machinery as any
//! federated run is, so a native run gets all of that and nothing is
//! written twice. This controller keeps the pair in step:
//!
//! - makes the shadow (a run whose annotations cannot be read fails, its
//!   status saying which annotation and why);
//! - passes a cancel (`spec.status` on the native run, as `tkn … cancel`
//!   sets it) to the shadow's template, which the run controller carries
//!   to the member;
//! - writes the native run's `status` from the shadow's: Tekton's own
//!   status from the member once there is one ([`mirror::native_status`]);
//! - deletes the shadow (and so the member run) when the native run is
//!   deleted (a finalizer: the hub API server may have no garbage
//!   collector).
//!
//! The hub serves native runs only if the hub cluster has Tekton's
//! `TaskRun` and `PipelineRun` CRDs (no Tekton controller is needed
//! there; one that runs leaves these runs alone).

pub mod mirror;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tekfed_api::native::{LABEL_MIRROR_OF, LABEL_NATIVE, MANAGED_BY_HUB};
use tekfed_api::{RunKind, RunStatus};
use tekfed_runtime::connect::tekton_resource;

use crate::clusters::Members;
use crate::errors::one_line;

/// The finalizer on a native run: its shadow goes before it does.
pub const FINALIZER: &str = "tekfed.io/native-run";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
}

fn kube_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

struct Context {
    hub: Client,
    /// Where a native PipelineRun's child TaskRuns are read.
    members: Arc<Members>,
    kind: RunKind,
    native: ApiResource,
    shadow: ApiResource,
}

/// Whether the hub cluster serves Tekton's run kinds (`tekton.dev/v1`).
pub async fn served(hub: &Client) -> bool {
    for kind in [RunKind::TaskRun, RunKind::PipelineRun] {
        let api: Api<DynamicObject> =
            Api::all_with(hub.clone(), &tekton_resource(kind.tekton_kind()));
        if api
            .list_metadata(&kube::api::ListParams::default().limit(1))
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

/// Run the native-run controller of one kind until the hub stops.
pub async fn run(hub: Client, members: Arc<Members>, kind: RunKind) {
    let native = tekton_resource(kind.tekton_kind());
    let shadow = kind.federated_resource();
    let natives: Api<DynamicObject> = Api::all_with(hub.clone(), &native);
    let shadows: Api<DynamicObject> = Api::all_with(hub.clone(), &shadow);
    let ctx = Arc::new(Context {
        hub,
        members,
        kind,
        native: native.clone(),
        shadow: shadow.clone(),
    });
    Controller::new_with(natives, watcher::Config::default(), native)
        .owns_with(
            shadows,
            shadow,
            watcher::Config::default().labels(LABEL_NATIVE),
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "native run reconcile");
            }
        })
        .await;
}

fn error_policy(
    run: Arc<DynamicObject>,
    error: &kube::runtime::finalizer::Error<Error>,
    ctx: Arc<Context>,
) -> Action {
    tracing::info!(kind = ctx.kind.tekton_kind(), ns = run.namespace().unwrap_or_default(), name = %run.name_any(), %error, "native run: retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Whether `shadow` is this native run's (owned by it, by uid), not a
/// `Federated*Run` of the same name someone else made.
fn carries(shadow: &DynamicObject, run: &DynamicObject) -> bool {
    shadow
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == run.metadata.uid.as_ref())
}

fn managed_by_hub(run: &DynamicObject) -> bool {
    run.data["spec"]["managedBy"].as_str() == Some(MANAGED_BY_HUB)
}

async fn reconcile(
    run: Arc<DynamicObject>,
    ctx: Arc<Context>,
) -> Result<Action, kube::runtime::finalizer::Error<Error>> {
    let mirror = run.labels().contains_key(LABEL_MIRROR_OF);
    if mirror || (!managed_by_hub(&run) && !run.finalizers().iter().any(|f| f == FINALIZER)) {
        // Tekton's, another manager's, or a child TaskRun mirrored here.
        return Ok(Action::await_change());
    }
    let ns = run.namespace().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.hub.clone(), &ns, &ctx.native);
    finalizer(&api, FINALIZER, run, |event| async {
        match event {
            Finalizer::Apply(run) => apply(&run, &ctx).await,
            Finalizer::Cleanup(run) => cleanup(&run, &ctx).await,
        }
    })
    .await
}

/// The shadow exists, carries the user's cancel, and the native run's
/// status says what the shadow's does.
async fn apply(run: &DynamicObject, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = (run.namespace().unwrap_or_default(), run.name_any());
    let shadows: Api<DynamicObject> = Api::namespaced_with(ctx.hub.clone(), &ns, &ctx.shadow);
    let natives: Api<DynamicObject> = Api::namespaced_with(ctx.hub.clone(), &ns, &ctx.native);
    let native = serde_json::to_value(run).unwrap_or_default();
    let shadow = shadows.get_opt(&name).await.map_err(kube_error(format!(
        "reading the shadow {} {ns}/{name}",
        ctx.kind.federated_kind()
    )))?;
    let shadow = match shadow {
        Some(shadow) => shadow,
        None if tekfed_api::tekton::is_final(tekfed_api::tekton::phase(&run.data["status"])) => {
            // Over; its shadow was removed. Nothing is made again.
            return Ok(Action::await_change());
        }
        None => {
            let object = match mirror::shadow(ctx.kind, &native) {
                Ok(object) => object,
                Err(refusal) => {
                    write_status(&natives, run, mirror::refused_status(ctx.kind, &refusal)).await?;
                    return Ok(Action::await_change());
                }
            };
            let object: DynamicObject =
                serde_json::from_value(object).expect("a shadow is an object");
            return match shadows.create(&PostParams::default(), &object).await {
                Ok(_) => Ok(Action::await_change()),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    Ok(Action::requeue(Duration::from_secs(1)))
                }
                // Refused at admission (a placement or override the API
                // server's rules reject): the run fails, saying why.
                Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 || s.code == 403 => {
                    let refusal = mirror::Refusal {
                        reason: "Invalid",
                        message: format!("the hub refused to federate it: {}", s.message),
                    };
                    write_status(&natives, run, mirror::refused_status(ctx.kind, &refusal)).await?;
                    Ok(Action::await_change())
                }
                Err(e) => Err(kube_error("creating the shadow run")(e)),
            };
        }
    };
    if !carries(&shadow, run) {
        let refusal = mirror::Refusal {
            reason: "Conflict",
            message: format!(
                "a {} named {name} that is not this run's exists in {ns}; delete it or rename the run",
                ctx.kind.federated_kind()
            ),
        };
        write_status(&natives, run, mirror::refused_status(ctx.kind, &refusal)).await?;
        return Ok(Action::await_change());
    }
    if let Some(cancel) = mirror::cancel(ctx.kind, &native)
        && shadow.data["spec"]["template"]["spec"]["status"].as_str() != Some(cancel)
    {
        let patch = json!({"spec": {"template": {"spec": {"status": cancel}}}});
        shadows
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(kube_error("passing the cancel to the shadow run"))?;
    }
    let status = RunStatus::of(&shadow.data);
    let mirrored = match (ctx.kind, status.cluster.as_deref()) {
        (RunKind::PipelineRun, Some(cluster)) if status.member_status.is_some() => {
            mirror_children(ctx, run, &native, cluster).await?
        }
        _ => Vec::new(),
    };
    write_status(
        &natives,
        run,
        mirror::native_status(ctx.kind, &status, &mirrored),
    )
    .await?;
    Ok(Action::await_change())
}

/// The native PipelineRun's child TaskRuns, read on its member, mirrored
/// on the hub ([`mirror::child`]); the names mirrored. A member out of
/// reach leaves the mirrors as they are.
async fn mirror_children(
    ctx: &Context,
    run: &DynamicObject,
    native: &Value,
    cluster: &str,
) -> Result<Vec<String>, Error> {
    let (ns, name) = (run.namespace().unwrap_or_default(), run.name_any());
    let hub_task_runs: Api<DynamicObject> =
        Api::namespaced_with(ctx.hub.clone(), &ns, &tekton_resource("TaskRun"));
    let selector = format!("{LABEL_MIRROR_OF}={name}");
    let existing = hub_task_runs
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .map_err(kube_error("listing the mirrored TaskRuns"))?
        .items;
    let Ok(conn) = ctx.members.connection(cluster) else {
        return Ok(existing.iter().map(|t| t.name_any()).collect());
    };
    let member_task_runs: Api<DynamicObject> =
        Api::namespaced_with(conn.client.clone(), &ns, &tekton_resource("TaskRun"));
    let children = match member_task_runs
        .list(&kube::api::ListParams::default().labels(&format!("tekton.dev/pipelineRun={name}")))
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            tracing::debug!(%cluster, %ns, %name, error = %one_line(&e), "reading the child TaskRuns");
            return Ok(existing.iter().map(|t| t.name_any()).collect());
        }
    };
    let mut mirrored = Vec::new();
    for child in children {
        let child_name = child.name_any();
        let desired = mirror::child(native, &serde_json::to_value(&child).unwrap_or_default());
        let current = match existing.iter().find(|t| t.name_any() == child_name) {
            Some(current) => current.clone(),
            None => {
                let object: DynamicObject =
                    serde_json::from_value(desired.clone()).expect("a mirror is an object");
                match hub_task_runs.create(&PostParams::default(), &object).await {
                    Ok(created) => created,
                    // A TaskRun of that name that is not a mirror: left alone.
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(kube_error("mirroring a child TaskRun")(e)),
                }
            }
        };
        write_status(&hub_task_runs, &current, desired["status"].clone()).await?;
        mirrored.push(child_name);
    }
    Ok(mirrored)
}

/// Replace the native run's status, unless it already says that.
async fn write_status(
    api: &Api<DynamicObject>,
    run: &DynamicObject,
    status: Value,
) -> Result<(), Error> {
    let Some(patch) = mirror::status_patch(run.data.get("status"), status) else {
        return Ok(());
    };
    // A merge patch of the whole status, without a resourceVersion: this
    // controller is its one writer, and a store a step behind its own
    // last write would make a conditional write fail and be retried.
    api.patch_status(
        &run.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(kube_error(format!(
        "writing the status of {}",
        run.name_any()
    )))?;
    Ok(())
}

/// The native run is being deleted: its shadow goes (and with it the
/// member run, by the shadow's own finalizer).
async fn cleanup(run: &DynamicObject, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = (run.namespace().unwrap_or_default(), run.name_any());
    if ctx.kind == RunKind::PipelineRun {
        let hub_task_runs: Api<DynamicObject> =
            Api::namespaced_with(ctx.hub.clone(), &ns, &tekton_resource("TaskRun"));
        let selector = format!("{LABEL_MIRROR_OF}={name}");
        hub_task_runs
            .delete_collection(
                &DeleteParams::default(),
                &kube::api::ListParams::default().labels(&selector),
            )
            .await
            .map_err(kube_error("deleting the mirrored TaskRuns"))?;
    }
    let shadows: Api<DynamicObject> = Api::namespaced_with(ctx.hub.clone(), &ns, &ctx.shadow);
    if let Some(shadow) = shadows
        .get_opt(&name)
        .await
        .map_err(kube_error("reading the shadow run"))?
        && carries(&shadow, run)
    {
        match shadows.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                tracing::warn!(%ns, %name, error = %one_line(&e), "deleting the shadow run");
                return Err(kube_error("deleting the shadow run")(e));
            }
        }
    }
    Ok(Action::await_change())
}
