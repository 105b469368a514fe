//! One member's copy of a template: applied (server-side, with tekfed's
//! field manager and labels) unless the member already holds what tekfed
//! would apply ([`super::drift`]), or removed. A copy that tekfed did not
//! create is a conflict, left untouched. What a member refused lands in the
//! template's status in one line ([`crate::errors::member_refusal`]).

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};
use tekfed_api::PropagationState;
use tekfed_api::guard::{self, Tenancy};
use tekfed_runtime::connect::tekton_resource;

use super::{Federated, drift, owner};
use crate::clusters::Members;
use crate::clusters::registry::Connection;
use crate::errors::member_refusal;
use crate::metrics::OutcomeLabel;
use crate::overrides::{Source, render};
use crate::ownership::{FIELD_MANAGER, LABEL_RUN_DEPENDENCY};

/// Bring one member's copy in line: `(state, message)`. `run_dependency`
/// marks a copy put there because a run needs it.
pub async fn sync_cluster<K: Federated>(
    obj: &K,
    cluster: &str,
    members: &Members,
    run_dependency: bool,
) -> (PropagationState, Option<String>) {
    let (state, message, outcome) = check_and_apply(obj, cluster, members, run_dependency).await;
    members.syncs.get_or_create(&OutcomeLabel { outcome }).inc();
    (state, message)
}

async fn check_and_apply<K: Federated>(
    obj: &K,
    cluster: &str,
    members: &Members,
    run_dependency: bool,
) -> (PropagationState, Option<String>, &'static str) {
    let failed = |message: String| (PropagationState::Failed, Some(message), "failed");
    let conn = match members.connection(cluster) {
        Ok(conn) => conn,
        Err(why) => return failed(why.describe(cluster)),
    };
    let owner = owner(obj);
    let name = obj.name_any();
    let source = Source {
        kind: K::TEKTON_KIND,
        name: &name,
        owner: owner.clone(),
        template: obj.template(),
        overrides: obj.overrides(),
    };
    let mut desired = match render(&source, cluster) {
        Ok(desired) => desired,
        Err(e) => return failed(format!("{e}; fix spec.overrides")),
    };
    if run_dependency {
        desired["metadata"]["labels"][LABEL_RUN_DEPENDENCY] = json!("true");
    }
    drift::stamp(&mut desired);
    let unchanged = (PropagationState::Synced, None, "unchanged");
    let key = (K::TEKTON_KIND, owner.namespace.to_owned(), name.clone());
    let last_written = conn.written.get(&key).map(|p| p.clone());
    // The member watch's store answers without a request in the common
    // case: an unchanged copy that is ours.
    let cached = conn.stores.get(K::TEKTON_KIND).and_then(|s| {
        s.get(&ObjectRef::new_with(&name, tekton_resource(K::TEKTON_KIND)).within(owner.namespace))
    });
    if let Some(live) = cached
        && owner.owns(live.labels())
    {
        let live = serde_json::to_value(live.as_ref()).unwrap_or_default();
        if drift::verdict(&live, &desired, last_written.as_deref()) == drift::Verdict::InSync {
            remember(&conn, key, &live, last_written.is_none());
            return unchanged;
        }
    }
    let tenancy = members.tenancy(cluster);
    if let Some(why) = guard::refusal(
        &tenancy,
        K::TEKTON_KIND,
        owner.namespace,
        desired["spec"].as_object().unwrap_or(&Default::default()),
    ) {
        return failed(format!("{cluster} does not allow it: {why}"));
    }
    if let Err(message) = ensure_namespace(&conn, &tenancy, cluster, owner.namespace).await {
        return failed(message);
    }
    let api: Api<DynamicObject> = Api::namespaced_with(
        conn.client.clone(),
        owner.namespace,
        &tekton_resource(K::TEKTON_KIND),
    );
    let live = match api.get_opt(&name).await {
        Err(e) => {
            return failed(member_refusal(
                cluster,
                &format!("reading {} {}/{name}", K::TEKTON_KIND, owner.namespace),
                &e,
            ));
        }
        Ok(Some(live)) if !owner.owns(live.labels()) => {
            return (
                PropagationState::Conflict,
                Some(format!(
                    "a {} named {name} already exists in namespace {} on {cluster} and was not created by tekfed for this object; tekfed leaves it untouched: rename one of them or delete the member's copy",
                    K::TEKTON_KIND,
                    owner.namespace
                )),
                "conflict",
            );
        }
        Ok(live) => live,
    };
    let written = match live {
        Some(live) => {
            let live_value = serde_json::to_value(&live).unwrap_or_default();
            match drift::verdict(&live_value, &desired, last_written.as_deref()) {
                drift::Verdict::InSync => {
                    remember(&conn, key, &live_value, last_written.is_none());
                    return unchanged;
                }
                verdict => {
                    tracing::info!(%cluster, kind = K::TEKTON_KIND, ns = owner.namespace, %name, ?verdict, "member copy differs from what tekfed wrote: writing it again");
                    // A whole write, on the version read: what anyone else
                    // added goes too (an apply would keep their fields).
                    let mut replacement = live;
                    let desired_meta = &desired["metadata"];
                    for (field, map) in [
                        (
                            "labels",
                            replacement.metadata.labels.get_or_insert_default(),
                        ),
                        (
                            "annotations",
                            replacement.metadata.annotations.get_or_insert_default(),
                        ),
                    ] {
                        for (k, v) in desired_meta[field].as_object().into_iter().flatten() {
                            map.insert(k.clone(), v.as_str().unwrap_or_default().to_owned());
                        }
                    }
                    replacement.data["spec"] = desired["spec"].clone();
                    api.replace(
                        &name,
                        &PostParams {
                            field_manager: Some(FIELD_MANAGER.into()),
                            ..Default::default()
                        },
                        &replacement,
                    )
                    .await
                }
            }
        }
        None => {
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await
        }
    };
    match written {
        Ok(copy) => {
            remember(
                &conn,
                key,
                &serde_json::to_value(&copy).unwrap_or_default(),
                true,
            );
            (PropagationState::Synced, None, "applied")
        }
        Err(kube::Error::Api(status)) if status.code == 404 => {
            // The namespace went away under us: look again next time.
            conn.namespaces.remove(owner.namespace);
            failed(format!(
                "namespace {} is missing on {cluster}; recreating it",
                owner.namespace
            ))
        }
        Err(e) => failed(member_refusal(
            cluster,
            &format!("{} {}/{name}", K::TEKTON_KIND, owner.namespace),
            &e,
        )),
    }
}

/// Record the fingerprint of a copy's `spec` as the member holds it after
/// tekfed's write, or as first seen in sync when tekfed does
/// not know its last write (after a restart): the member's side of drift.
fn remember(conn: &Connection, key: (&'static str, String, String), live: &Value, record: bool) {
    if record {
        conn.written.insert(key, drift::fingerprint(&live["spec"]));
    }
}

/// Create the namespace on the member if it does not exist, labelled as
/// tekfed's and with the Pod Security level the member asks for
/// (`tenancy`). A namespace that exists is left as it is. A namespace the
/// member does not open to tekfed is refused here, before any request.
pub(crate) async fn ensure_namespace(
    conn: &Connection,
    tenancy: &Tenancy,
    cluster: &str,
    namespace: &str,
) -> Result<(), String> {
    if let Some(why) = guard::namespace_refusal(tenancy, namespace) {
        return Err(format!("{cluster} does not allow it: {why}"));
    }
    if conn.namespaces.contains(namespace) {
        return Ok(());
    }
    let api: Api<Namespace> = Api::all(conn.client.clone());
    let exists = api
        .get_metadata_opt(namespace)
        .await
        .map_err(|e| member_refusal(cluster, &format!("reading namespace {namespace}"), &e))?
        .is_some();
    if !exists {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.to_owned()),
                labels: Some(guard::namespace_labels(tenancy)),
                ..Default::default()
            },
            ..Default::default()
        };
        match api
            .create(
                &PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &ns,
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                return Err(member_refusal(
                    cluster,
                    &format!("creating namespace {namespace}"),
                    &e,
                ));
            }
        }
    }
    conn.namespaces.insert(namespace.to_owned());
    Ok(())
}

/// Delete `obj`'s copy on `cluster`, if there is one and it is ours.
pub async fn remove_copy<K: Federated>(
    obj: &K,
    cluster: &str,
    members: &Members,
) -> Result<(), String> {
    let conn = members
        .connection(cluster)
        .map_err(|why| why.describe(cluster))?;
    let owner = owner(obj);
    let name = obj.name_any();
    let api: Api<DynamicObject> = Api::namespaced_with(
        conn.client.clone(),
        owner.namespace,
        &tekton_resource(K::TEKTON_KIND),
    );
    match api.get_metadata_opt(&name).await {
        Ok(Some(live)) if owner.owns(live.labels()) => {
            let uid = live.metadata.uid.clone();
            let params = DeleteParams {
                preconditions: uid.map(|uid| kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
                Err(e) => Err(member_refusal(
                    cluster,
                    &format!("deleting {} {}/{name}", K::TEKTON_KIND, owner.namespace),
                    &e,
                )),
            }
        }
        // Nothing there, or not ours: nothing to remove.
        Ok(_) => Ok(()),
        Err(e) => Err(member_refusal(
            cluster,
            &format!("reading {} {}/{name}", K::TEKTON_KIND, owner.namespace),
            &e,
        )),
    }
}
