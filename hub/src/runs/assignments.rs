//! The `RunAssignment` watch: every assignment, on every member's hub
//! namespace, into the store the run controllers and the dispatcher read
//! ([`super::RunContext`]); a changed assignment wakes its run's
//! controller.

use std::sync::Arc;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tekfed_api::RunAssignment;
use tekfed_runtime::connect::drop_managed_fields;

use super::RunContext;
use crate::errors::watch_failure;

/// Watch every `RunAssignment` into the store the run controllers and the
/// dispatcher read, and wake the run of each changed assignment; runs
/// until the hub stops. Call after [`super::controller`].
pub async fn watch_assignments(ctx: Arc<RunContext>) {
    let Some(writer) = ctx
        .assignments_writer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    else {
        return;
    };
    let triggers = std::mem::take(
        &mut *ctx
            .assignment_triggers
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    let api: Api<RunAssignment> = Api::all(ctx.hub.clone());
    // The store is updated before an object comes out of `reflect`: the
    // woken reconcile reads at least this version.
    watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(drop_managed_fields)
        .reflect(writer)
        .applied_objects()
        .for_each(|assignment| {
            match assignment {
                Ok(assignment) => {
                    let run = &assignment.spec.run;
                    for (_, tx) in triggers.iter().filter(|(kind, _)| *kind == run.kind) {
                        let _ = tx.send((run.name.clone(), run.namespace.clone()));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %watch_failure(&e), "watching assignments; retrying")
                }
            }
            futures::future::ready(())
        })
        .await;
}
