//! One member's copies of what runs there need.
//!
//! Tekton objects come from their federated templates, with that cluster's
//! overrides ([`crate::templates::copies`]); a copy made only because a run
//! needs it carries `tekfed.io/run-dependency=true`, and one the
//! template's placement selects anyway is left to the template. Plain hub
//! objects (ServiceAccounts, ConfigMaps, Secrets) are copied as they are
//! ([`member_copy`]), labelled as tekfed's with the hub object they came
//! from and its resourceVersion.
//!
//! What is already there costs no write: a plain copy found in sync is
//! remembered ([`super::Dependencies::carried`]) and not looked at again
//! until the hub object changes; a template copy is compared in the
//! member watch's store. A Secret's data is read from the hub only when it
//! is written, and never logged or put in a status.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::{Value, json};
use tekfed_api::{MemberCluster, PropagationState};
use tekfed_runtime::connect::tekton_resource;

use super::{Dep, DepKind, Dependencies, Place};
use crate::clusters::Members;
use crate::errors::member_refusal;
use crate::ownership::{
    FIELD_MANAGER, LABEL_KIND, LABEL_MANAGED_BY, LABEL_NAME, LABEL_NAMESPACE, LABEL_RUN_DEPENDENCY,
    MANAGED_BY,
};
use crate::placement::{Matcher, Member, Selection};
use crate::templates::Federated;
use crate::templates::copies::{ensure_namespace, remove_copy, sync_cluster};

/// On a plain copy: the hub object's resourceVersion it was copied from.
pub const SOURCE_VERSION: &str = "tekfed.io/source-version";

/// Annotations never copied: kubectl's last applied configuration holds a
/// Secret's data in clear.
const NOT_COPIED: [&str; 1] = ["kubectl.kubernetes.io/last-applied-configuration"];

/// Put `needs` on the place's cluster, in dependency order. `Err` says, in
/// one line per object, what could not be put there (never a Secret's data).
pub async fn carry(
    deps: &Dependencies,
    members: &Members,
    clusters: &Store<MemberCluster>,
    place: &Place,
    needs: &BTreeSet<Dep>,
) -> Result<(), String> {
    let mut failed = Vec::new();
    for dep in needs {
        if let Err(message) = carry_one(deps, members, clusters, place, dep).await {
            failed.push(message);
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

async fn carry_one(
    deps: &Dependencies,
    members: &Members,
    clusters: &Store<MemberCluster>,
    place: &Place,
    dep: &Dep,
) -> Result<(), String> {
    let (cluster, namespace) = (place.0.as_str(), place.1.as_str());
    let gone = || format!("{dep} is no longer on the hub");
    match dep.kind {
        DepKind::Task => {
            let t = deps.task(namespace, &dep.name).ok_or_else(gone)?;
            carry_template(t.as_ref(), cluster, members, clusters).await
        }
        DepKind::Pipeline => {
            let p = deps.pipeline(namespace, &dep.name).ok_or_else(gone)?;
            carry_template(p.as_ref(), cluster, members, clusters).await
        }
        DepKind::StepAction => {
            let s = deps.step_action(namespace, &dep.name).ok_or_else(gone)?;
            carry_template(s.as_ref(), cluster, members, clusters).await
        }
        _ => carry_plain(deps, members, place, dep).await,
    }
}

/// Whether `obj`'s own placement puts it on `cluster` (then its copy is
/// the template's, not the run's).
pub(crate) fn placed_by_template<K: Federated>(
    obj: &K,
    cluster: &str,
    clusters: &Store<MemberCluster>,
) -> bool {
    let Some(mc) = clusters.get(&ObjectRef::new(cluster)) else {
        return false;
    };
    let member = Member {
        name: mc.name_any(),
        labels: mc.labels().clone(),
        taints: mc.spec.taints.clone(),
    };
    Matcher::new(Selection::from(obj.placement()))
        .is_ok_and(|m| m.selects(&member, &BTreeSet::from([cluster.to_owned()])))
}

async fn carry_template<K: Federated>(
    obj: &K,
    cluster: &str,
    members: &Members,
    clusters: &Store<MemberCluster>,
) -> Result<(), String> {
    let run_dependency = !placed_by_template(obj, cluster, clusters);
    match sync_cluster(obj, cluster, members, run_dependency).await {
        (PropagationState::Synced, _) => Ok(()),
        (_, message) => Err(format!(
            "{} {}: {}",
            K::TEKTON_KIND,
            obj.name_any(),
            message.unwrap_or_else(|| "not applied".into())
        )),
    }
}

fn plain_resource(kind: DepKind) -> ApiResource {
    match kind {
        DepKind::Secret => ApiResource::erase::<Secret>(&()),
        DepKind::ConfigMap => ApiResource::erase::<ConfigMap>(&()),
        _ => ApiResource::erase::<ServiceAccount>(&()),
    }
}

/// The labels of a plain copy: tekfed's, naming the hub object.
fn carried_labels(kind: DepKind, namespace: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_RUN_DEPENDENCY.to_owned(), "true".to_owned()),
        (LABEL_KIND.to_owned(), kind.member_kind().to_owned()),
        (LABEL_NAMESPACE.to_owned(), namespace.to_owned()),
        (LABEL_NAME.to_owned(), name.to_owned()),
    ])
}

/// Whether a member object with these labels is tekfed's copy of that hub object.
pub fn is_carried(
    labels: &BTreeMap<String, String>,
    kind: DepKind,
    namespace: &str,
    name: &str,
) -> bool {
    carried_labels(kind, namespace, name)
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
}

/// The member's copy of a plain hub object (pure): its name, labels (with
/// tekfed's, which win), annotations (with the source version) and the
/// fields of its kind; nothing of the hub's metadata besides.
pub fn member_copy(kind: DepKind, source: &Value, namespace: &str) -> Value {
    let meta = &source["metadata"];
    let name = meta["name"].as_str().unwrap_or_default();
    let mut labels: BTreeMap<String, String> =
        serde_json::from_value(meta["labels"].clone()).unwrap_or_default();
    labels.extend(carried_labels(kind, namespace, name));
    let mut annotations: BTreeMap<String, String> =
        serde_json::from_value(meta["annotations"].clone()).unwrap_or_default();
    annotations.retain(|k, _| !NOT_COPIED.contains(&k.as_str()));
    if let Some(version) = meta["resourceVersion"].as_str() {
        annotations.insert(SOURCE_VERSION.to_owned(), version.to_owned());
    }
    let mut copy = json!({
        "apiVersion": "v1",
        "kind": kind.member_kind(),
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations},
    });
    let fields: &[&str] = match kind {
        DepKind::Secret => &["type", "data", "immutable"],
        DepKind::ConfigMap => &["data", "binaryData", "immutable"],
        _ => &[
            "secrets",
            "imagePullSecrets",
            "automountServiceAccountToken",
        ],
    };
    for field in fields {
        if let Some(v) = source.get(*field).filter(|v| !v.is_null()) {
            copy[*field] = v.clone();
        }
    }
    copy
}

async fn carry_plain(
    deps: &Dependencies,
    members: &Members,
    place: &Place,
    dep: &Dep,
) -> Result<(), String> {
    let (cluster, namespace) = (place.0.as_str(), place.1.as_str());
    let Some(version) = deps.source_version(namespace, dep) else {
        return Err(format!("{dep} is no longer on the hub"));
    };
    let key = (place.clone(), dep.clone());
    if deps.carried.get(&key).is_some_and(|v| *v == version) {
        return Ok(());
    }
    let conn = members
        .connection(cluster)
        .map_err(|why| why.describe(cluster))?;
    ensure_namespace(&conn, &members.tenancy(cluster), cluster, namespace).await?;
    let resource = plain_resource(dep.kind);
    let member: Api<DynamicObject> =
        Api::namespaced_with(conn.client.clone(), namespace, &resource);
    let what = format!("{} {namespace}/{}", dep.kind.member_kind(), dep.name);
    match member.get_metadata_opt(&dep.name).await {
        Err(e) => return Err(member_refusal(cluster, &format!("reading {what}"), &e)),
        Ok(Some(live)) if !is_carried(live.labels(), dep.kind, namespace, &dep.name) => {
            return Err(format!(
                "a {} named {} already exists in namespace {namespace} on {cluster} and was not carried there by tekfed; tekfed leaves it untouched: rename one of them or delete the member's",
                dep.kind.member_kind(),
                dep.name
            ));
        }
        Ok(Some(live)) if live.annotations().get(SOURCE_VERSION) == Some(&version) => {
            deps.carried.insert(key, version);
            return Ok(());
        }
        Ok(_) => {}
    }
    // Read in full only now, to be written.
    let hub: Api<DynamicObject> = Api::namespaced_with(deps.hub().clone(), namespace, &resource);
    let source = hub
        .get(&dep.name)
        .await
        .map_err(|e| format!("reading {dep} on the hub: {}", crate::errors::one_line(&e)))?;
    let source = serde_json::to_value(&source).unwrap_or_default();
    let copy = member_copy(dep.kind, &source, namespace);
    let written_version = source["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    member
        .patch(
            &dep.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&copy),
        )
        .await
        .map_err(|e| member_refusal(cluster, &format!("writing {what}"), &e))?;
    tracing::info!(%cluster, %namespace, kind = dep.kind.member_kind(), name = %dep.name, "carried");
    deps.carried.insert(key, written_version);
    Ok(())
}

/// Remove tekfed's copy of `dep` from the place's cluster, if there is one.
pub async fn remove(
    deps: &Dependencies,
    members: &Members,
    place: &Place,
    dep: &Dep,
) -> Result<(), String> {
    let (cluster, namespace) = (place.0.as_str(), place.1.as_str());
    let conn = members
        .connection(cluster)
        .map_err(|why| why.describe(cluster))?;
    let removed = if dep.kind.is_template() {
        // The member watch has tekfed's Tekton objects: only a copy made
        // for runs goes (one the placement selects is the template's).
        let cached = conn.stores.get(dep.kind.member_kind()).and_then(|s| {
            s.get(
                &ObjectRef::new_with(&dep.name, tekton_resource(dep.kind.member_kind()))
                    .within(namespace),
            )
        });
        match cached {
            Some(copy)
                if copy.labels().get(LABEL_RUN_DEPENDENCY).map(String::as_str) == Some("true")
                    && copy.labels().get(LABEL_NAMESPACE).map(String::as_str)
                        == Some(namespace) =>
            {
                remove_template_copy(deps, members, place, dep).await
            }
            _ => Ok(()),
        }
    } else {
        let api: Api<DynamicObject> =
            Api::namespaced_with(conn.client.clone(), namespace, &plain_resource(dep.kind));
        let what = format!("{} {namespace}/{}", dep.kind.member_kind(), dep.name);
        match api.get_metadata_opt(&dep.name).await {
            Ok(Some(live)) if is_carried(live.labels(), dep.kind, namespace, &dep.name) => {
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: live.uid(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match api.delete(&dep.name, &params).await {
                    Ok(_) => {
                        tracing::info!(%cluster, %namespace, kind = dep.kind.member_kind(), name = %dep.name, "no run needs it there: removed");
                        Ok(())
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
                    Err(e) => Err(member_refusal(cluster, &format!("deleting {what}"), &e)),
                }
            }
            Ok(_) => Ok(()),
            Err(e) => Err(member_refusal(cluster, &format!("reading {what}"), &e)),
        }
    };
    if removed.is_ok() {
        deps.carried.remove(&(place.clone(), dep.clone()));
    }
    removed
}

async fn remove_template_copy(
    deps: &Dependencies,
    members: &Members,
    place: &Place,
    dep: &Dep,
) -> Result<(), String> {
    let (cluster, namespace) = (place.0.as_str(), place.1.as_str());
    // The federated object gone: its own deletion removes its copies.
    match dep.kind {
        DepKind::Task => match deps.task(namespace, &dep.name) {
            Some(t) => remove_copy(t.as_ref(), cluster, members).await,
            None => Ok(()),
        },
        DepKind::Pipeline => match deps.pipeline(namespace, &dep.name) {
            Some(p) => remove_copy(p.as_ref(), cluster, members).await,
            None => Ok(()),
        },
        _ => match deps.step_action(namespace, &dep.name) {
            Some(s) => remove_copy(s.as_ref(), cluster, members).await,
            None => Ok(()),
        },
    }
}

/// A copy made for runs that the template's placement now selects stays.
pub(crate) fn template_wanted_there(
    deps: &Dependencies,
    clusters: &Store<MemberCluster>,
    place: &Place,
    dep: &Dep,
) -> bool {
    let (cluster, namespace) = (place.0.as_str(), place.1.as_str());
    match dep.kind {
        DepKind::Task => deps
            .task(namespace, &dep.name)
            .is_some_and(|t| placed_by_template(t.as_ref(), cluster, clusters)),
        DepKind::Pipeline => deps
            .pipeline(namespace, &dep.name)
            .is_some_and(|p| placed_by_template(p.as_ref(), cluster, clusters)),
        DepKind::StepAction => deps
            .step_action(namespace, &dep.name)
            .is_some_and(|s| placed_by_template(s.as_ref(), cluster, clusters)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_copied_with_its_data_type_and_labels_and_nothing_of_the_hubs_metadata() {
        let source = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {
                "name": "git-credentials", "namespace": "ci", "uid": "u1",
                "resourceVersion": "42", "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"team": "a", LABEL_MANAGED_BY: "someone-else"},
                "annotations": {"tekton.dev/git-0": "https://github.com",
                                "kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"password\":\"c2VjcmV0\"}}"},
                "managedFields": [{"manager": "kubectl"}],
                "ownerReferences": [{"kind": "X", "name": "y", "uid": "z", "apiVersion": "v1"}],
            },
            "type": "kubernetes.io/basic-auth",
            "data": {"username": "dXNlcg==", "password": "c2VjcmV0"},
        });
        let copy = member_copy(DepKind::Secret, &source, "ci");
        assert_eq!(copy["data"], source["data"]);
        assert_eq!(copy["type"], "kubernetes.io/basic-auth");
        let meta = copy["metadata"].as_object().unwrap();
        let mut keys: Vec<&str> = meta.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["annotations", "labels", "name", "namespace"]);
        assert_eq!(copy["metadata"]["labels"]["team"], "a");
        assert_eq!(
            copy["metadata"]["labels"][LABEL_MANAGED_BY], MANAGED_BY,
            "tekfed's labels win"
        );
        assert_eq!(copy["metadata"]["annotations"][SOURCE_VERSION], "42");
        assert_eq!(
            copy["metadata"]["annotations"]["tekton.dev/git-0"],
            "https://github.com"
        );
        assert!(
            !copy.to_string().contains("last-applied"),
            "kubectl's copy of the data stays on the hub"
        );
        let labels: BTreeMap<String, String> =
            serde_json::from_value(copy["metadata"]["labels"].clone()).unwrap();
        assert!(is_carried(
            &labels,
            DepKind::Secret,
            "ci",
            "git-credentials"
        ));
        assert!(!is_carried(
            &labels,
            DepKind::Secret,
            "other",
            "git-credentials"
        ));
        assert!(!is_carried(
            &labels,
            DepKind::ConfigMap,
            "ci",
            "git-credentials"
        ));
    }

    #[test]
    fn a_service_account_keeps_its_secrets_and_a_config_map_its_data() {
        let sa = json!({"metadata": {"name": "builder", "resourceVersion": "7"},
                        "secrets": [{"name": "git"}], "imagePullSecrets": [{"name": "pull"}],
                        "automountServiceAccountToken": false});
        let copy = member_copy(DepKind::ServiceAccount, &sa, "ci");
        assert_eq!(copy["kind"], "ServiceAccount");
        assert_eq!(copy["secrets"], sa["secrets"]);
        assert_eq!(copy["imagePullSecrets"], sa["imagePullSecrets"]);
        assert_eq!(copy["automountServiceAccountToken"], false);
        let cm = json!({"metadata": {"name": "settings"}, "data": {"a": "1"}, "binaryData": {"b": "AA=="}});
        let copy = member_copy(DepKind::ConfigMap, &cm, "ci");
        assert_eq!(copy["data"], cm["data"]);
        assert_eq!(copy["binaryData"], cm["binaryData"]);
        assert!(copy.get("secrets").is_none());
    }

    #[test]
    fn an_object_someone_else_made_is_not_ours() {
        assert!(!is_carried(&BTreeMap::new(), DepKind::Secret, "ci", "x"));
        let mut labels = carried_labels(DepKind::Secret, "ci", "x");
        labels.remove(LABEL_RUN_DEPENDENCY);
        assert!(!is_carried(&labels, DepKind::Secret, "ci", "x"));
    }
}
