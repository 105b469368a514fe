//! Putting what a run needs on its cluster just before its member run is
//! made ([`crate::dependencies`]): its closure, computed again from what
//! the hub holds now, carried under the place's lock.

use kube::ResourceExt;

use super::{Error, FederatedRun, RunContext};
use crate::dependencies::carry::carry;

/// Carry `run`'s closure to `cluster`. Something now missing (deleted
/// since the run was scheduled) is `DependenciesNotReady`; something the
/// member refused, or a conflict there, a wait with `DependencyNotReady`.
pub(super) async fn ensure_dependencies<K: FederatedRun>(
    run: &K,
    cluster: &str,
    ctx: &RunContext,
) -> Result<(), Error> {
    let namespace = run.namespace().unwrap_or_default();
    let closure = ctx.deps.closure(K::KIND, &namespace, &run.template().spec);
    if let Some((reason, message)) = closure.blocked(&namespace) {
        return Err(Error::DependenciesNotReady { reason, message });
    }
    if closure.needs.is_empty() {
        return Ok(());
    }
    let place = (cluster.to_owned(), namespace.clone());
    let lock = ctx.deps.lock(&place);
    let mut carries = lock.lock().await;
    // Counted before carrying: the sweep skips removals here this round.
    *carries += 1;
    carry(
        &ctx.deps,
        &ctx.members,
        &ctx.clusters,
        &place,
        &closure.needs,
    )
    .await
    .map_err(|message| Error::Waiting {
        reason: "DependencyNotReady",
        kind: K::FEDERATED_KIND,
        namespace,
        name: run.name_any(),
        message: format!("what the run needs is not on {cluster} yet: {message}"),
    })
}
