//! The member run: a federated run's copy on its cluster, under the
//! federated run's own name, carrying tekfed's labels; made when the
//! protocol says so (a PipelineRun held at once, a TaskRun once released),
//! after what it refers to ([`super::dependencies`]) and in a namespace
//! that can run pods; and given the user's cancel. A run whose template is
//! too big to carry ([`too_large`]) is refused before anything is made.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::json;
use tekfed_api::assignment::{ATTEMPT_LABEL, attempt_of};
use tekfed_api::tekton::{PIPELINE_RUN_PENDING, TektonRun, cancel_values, is_final};
use tekfed_api::{ClusterOverrides, RunAssignment, RunKind, Template};
use tekfed_runtime::connect::tekton_resource;

use super::dependencies::ensure_dependencies;
use super::{Error, FederatedRun, RunContext, kube_error, owner};
use crate::overrides::{Source, render};
use crate::templates::copies;
use tekfed_api::guard;

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
    let cancel = run.cancel();
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
        Some(member) if attempt_of(member.labels()) < assignment.spec.attempt => {
            // A copy from an earlier placement on this cluster (the run
            // moved off it and was placed here again): ended, then removed,
            // before the new one is made under the same name.
            let previous = format!(
                "the copy of an earlier placement (attempt {}) is still on {cluster}",
                attempt_of(member.labels())
            );
            let tekton_status = member.status.clone().unwrap_or_default();
            let ended = is_final(tekfed_api::tekton::phase(&tekton_status));
            let held = member.spec.status.as_deref() == Some(PIPELINE_RUN_PENDING);
            if ended || held {
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: member.uid(),
                        resource_version: member.resource_version(),
                    }),
                    ..Default::default()
                };
                api.delete(&name, &params).await.map_err(kube_error(
                    run,
                    format!("removing the earlier placement's copy on {cluster}"),
                ))?;
                return Err(waiting(
                    "PreviousAttemptEnding",
                    format!("{previous}; it ended and is being removed"),
                ));
            }
            let cancel = cancel_values(K::KIND)[0];
            if member.spec.status.as_deref() != Some(cancel) {
                let patch = json!({"spec": {"status": cancel}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(kube_error(
                        run,
                        format!("cancelling the earlier placement's copy on {cluster}"),
                    ))?;
            }
            Err(waiting(
                "PreviousAttemptEnding",
                format!("{previous}, running; it is cancelled, and removed once it ends"),
            ))
        }
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
            desired["metadata"]["labels"][ATTEMPT_LABEL] =
                json!(assignment.spec.attempt.to_string());
            if K::KIND == RunKind::PipelineRun && !released && cancel.is_none() {
                desired["spec"]["status"] = json!(PIPELINE_RUN_PENDING);
            }
            let tenancy = ctx.members.tenancy(cluster);
            if let Some(why) = guard::refusal(
                &tenancy,
                K::KIND.tekton_kind(),
                &namespace,
                desired["spec"].as_object().unwrap_or(&Default::default()),
            ) {
                return Err(waiting(
                    "NotAllowedOnMember",
                    format!("{cluster} does not allow this run: {why}"),
                ));
            }
            ensure_dependencies(run, cluster, ctx).await?;
            copies::ensure_namespace(&conn, &tenancy, cluster, &namespace)
                .await
                .map_err(|message| waiting("NamespaceNotReady", message))?;
            default_service_account(&conn.client, &namespace)
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
                Err(e) if rejected(&e) => Err(Error::Rejected {
                    message: crate::errors::member_refusal(
                        cluster,
                        &format!("{} {namespace}/{name}", K::KIND.tekton_kind()),
                        &e,
                    ),
                }),
                Err(e) => Err(kube_error(
                    run,
                    format!("creating the member run on {cluster}"),
                )(e)),
            }
        }
    }
}

/// Whether a member's answer to creating a run refuses the run itself: 400
/// (an admission webhook, Tekton's validation among them), 403 (a quota,
/// a namespace being deleted, an admission policy, the hub's RBAC there),
/// 422 (invalid). Made again, it would be refused again. Anything else (no
/// answer, 5xx, 429, 404 while a namespace is made) is tried again.
pub(super) fn rejected(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if matches!(s.code, 400 | 403 | 422))
}

/// How long after its creation a member namespace is checked for its
/// `default` ServiceAccount before a run is created in it.
const NEW_NAMESPACE: Duration = Duration::from_secs(120);

/// The member namespace (made by [`copies::ensure_namespace`]) can run
/// pods. Tekton reads the namespace's `default` ServiceAccount for every
/// run, and a run created before the member's controller-manager made it
/// fails at once (`PodCreationFailed`); so in a namespace created moments
/// ago (by tekfed or anyone) a run is created only once that account
/// exists. `Err` says what is awaited.
async fn default_service_account(client: &Client, namespace: &str) -> Result<(), String> {
    let api: Api<Namespace> = Api::all(client.clone());
    let created = match api.get_metadata_opt(namespace).await {
        Ok(Some(ns)) => ns.metadata.creation_timestamp.map(|t| t.0),
        _ => None,
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

/// The largest template (with the largest cluster's overrides) a run may
/// carry, in bytes of JSON. A run's template is stored about three times
/// on the hub and once on its member: in the federated run's spec, in its
/// status (`memberStatus` carries Tekton's resolved `taskSpec` or
/// `pipelineSpec`, often as big), in the `RunAssignment`'s `runStatus`,
/// and in the member run. Each object must stay under etcd's 1.5 MiB
/// request limit with room for results, conditions and child references:
/// 512 KiB leaves the run's status and spec together at most about
/// 1 MiB. Tekton's own examples are a few KiB.
pub const MAX_TEMPLATE_BYTES: usize = 512 * 1024;

/// The reason a run too large to carry fails with.
pub const TEMPLATE_TOO_LARGE: &str = "TemplateTooLarge";

/// Why a run's template cannot be carried to a member, or `None` when it
/// fits. Measured as the template's JSON plus the JSON of the largest
/// cluster's override list: an upper bound of any cluster's rendered copy
/// (an operation adds at most its value and key), found without rendering
/// a copy per cluster.
pub fn too_large(template: &Template, overrides: &[ClusterOverrides]) -> Option<String> {
    let template_bytes = json_len(template);
    let overrides_bytes = overrides
        .iter()
        .map(|o| json_len(&o.cluster_overrides))
        .max()
        .unwrap_or(0);
    let bytes = template_bytes.saturating_add(overrides_bytes);
    (bytes > MAX_TEMPLATE_BYTES).then(|| {
        format!(
            "spec.template is {} bytes{} as JSON, over the limit of {MAX_TEMPLATE_BYTES} bytes \
             (512 KiB) that keeps the run's status and its member copy under etcd's 1.5 MiB \
             request limit; move large data out of the template (a ConfigMap, a Task's steps)",
            template_bytes,
            if overrides_bytes > 0 {
                format!(" plus {overrides_bytes} bytes of overrides")
            } else {
                String::new()
            }
        )
    })
}

/// The length of `value` as JSON, without building the text.
fn json_len(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing a template to a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tekfed_api::{OverrideOp, OverrideOperation};

    use super::*;

    fn template(script_bytes: usize) -> Template {
        serde_json::from_value(json!({"spec": {"taskSpec": {"steps": [
            {"name": "s", "image": "ubuntu", "script": "x".repeat(script_bytes)},
        ]}}}))
        .unwrap()
    }

    fn replace_script(bytes: usize) -> ClusterOverrides {
        ClusterOverrides {
            cluster_name: "member-1".into(),
            cluster_overrides: vec![OverrideOp {
                op: OverrideOperation::Replace,
                path: "/spec/taskSpec/steps/0/script".into(),
                value: Some(json!("y".repeat(bytes))),
            }],
        }
    }

    #[test]
    fn a_member_refuses_a_run_with_400_403_or_422_and_fails_to_answer_otherwise() {
        let answer = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                status: Some(kube::core::response::StatusSummary::Failure),
                code,
                message: "no".into(),
                metadata: None,
                reason: "Reason".into(),
                details: None,
            }))
        };
        for code in [400, 403, 422] {
            assert!(rejected(&answer(code)), "{code}");
        }
        for code in [404, 409, 429, 500, 503] {
            assert!(!rejected(&answer(code)), "{code}");
        }
        assert!(!rejected(&kube::Error::Service("timed out".into())));
    }

    #[test]
    fn a_template_of_ordinary_size_fits() {
        assert_eq!(
            too_large(&template(10_000), &[replace_script(10_000)]),
            None
        );
    }

    #[test]
    fn a_template_over_the_limit_is_refused_with_its_size_and_the_limit() {
        let big = template(600 * 1024);
        let message = too_large(&big, &[]).expect("600 KiB is over the limit");
        assert!(message.contains(&json_len(&big).to_string()), "{message}");
        assert!(message.contains("524288 bytes"), "{message}");
        assert!(!message.contains("overrides"), "{message}");
    }

    #[test]
    fn overrides_count_the_largest_cluster_only() {
        // Each cluster's copy fits; so does the sum of the template and
        // the larger override list.
        let fits = template(300 * 1024);
        let two = [replace_script(200 * 1024), replace_script(100 * 1024)];
        assert_eq!(too_large(&fits, &two), None);
        // One cluster's override makes its copy too big.
        let message = too_large(&fits, &[replace_script(250 * 1024)]).unwrap();
        assert!(message.contains("bytes of overrides"), "{message}");
    }

    #[test]
    fn the_measure_is_the_json_length() {
        let t = template(5);
        assert_eq!(json_len(&t), serde_json::to_vec(&t).unwrap().len());
    }
}
