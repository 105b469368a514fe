//! What tekfed's binaries (`tekfed-hub`, `tekfed-agent`, `kubectl-tekfed`)
//! share at run time, so that the API crate stays types only:
//!
//! - [`connect`]: reaching a cluster as kubectl does, and telling the user
//!   when it lacks an API the binary needs.
//! - [`leader`]: Lease leader election, client-go's rules on tokio.
//! - [`run_while_leading`]: the daemons' life: wait for the Lease, run
//!   while holding it, stop on SIGTERM, release.
//! - [`init_tracing`]: logs to stderr, filtered by `RUST_LOG`.
//! - `serve` (feature `serve`, the daemons'): metrics and the kubelet's
//!   probes on `--metrics-addr`.
//! - [`tokens`]: when a ServiceAccount token is due for renewal, and the
//!   token inside a kubeconfig (join, the hub and the agent renew theirs).

pub mod connect;
pub mod leader;
#[cfg(feature = "serve")]
pub mod serve;
pub mod tokens;

use std::future::Future;

use leader::LeaderElector;

/// Logs to stderr (coloured on a terminal), filtered by `RUST_LOG`
/// (default `info`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
pub async fn stop_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

/// A daemon's life. With an `elector`, first wait for its Lease; then
/// start `work` and run it until it ends, the Lease is lost (an error: the
/// process must exit before a standby takes over), or SIGTERM / Ctrl-C;
/// then release the Lease so a standby takes over at once. `beside` runs
/// all along, leader or not (the hub's metrics server); its end ends the
/// daemon. Signals are listened for from the call on, so none is missed
/// between the phases. Whichever way it ends, `work` is dropped before the
/// Lease is released: nothing is written without it.
pub async fn run_while_leading<Work>(
    mut elector: Option<LeaderElector>,
    beside: impl Future<Output = anyhow::Result<()>>,
    work: impl FnOnce() -> Work,
) -> anyhow::Result<()>
where
    Work: Future<Output = ()>,
{
    let mut beside = std::pin::pin!(beside);
    let mut stopping = std::pin::pin!(stop_signal());
    if let Some(elector) = elector.as_mut() {
        let (identity, lease) = (elector.identity().to_owned(), elector.lease());
        tracing::info!(%identity, %lease, "leader election: trying to take the Lease");
        tokio::select! {
            r = elector.acquire(|e| log_election(&lease, e)) => r?,
            r = &mut beside => return r,
            r = &mut stopping => { r?; tracing::info!("stopping"); return Ok(()); }
        }
        tracing::info!(%identity, %lease, "leading");
    }
    let work = work();
    let keeping = async {
        match elector.as_mut() {
            Some(elector) => {
                let lease = elector.lease();
                elector.keep(|e| log_election(&lease, e)).await
            }
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        () = work => Ok(()),
        r = &mut beside => r,
        lost = keeping => {
            tracing::error!(error = %lost, "lost the lease; exiting");
            return Err(lost.into());
        }
        r = &mut stopping => { r?; tracing::info!("stopping"); Ok(()) }
    };
    if let Some(elector) = elector.as_mut() {
        match elector.release().await {
            Ok(true) => tracing::info!(lease = %elector.lease(), "released the Lease"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not release the Lease; it expires on its own")
            }
        }
    }
    outcome
}

fn log_election(lease: &str, event: leader::Event<'_>) {
    match event {
        leader::Event::Waiting { holder, expires_in } => {
            tracing::info!(%lease, %holder, ?expires_in, "waiting to lead (held by {holder})")
        }
        leader::Event::Retrying { error } => {
            tracing::warn!(%lease, %error, "leader election: retrying")
        }
    }
}
