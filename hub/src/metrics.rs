//! The hub's Prometheus metrics (`tekfed_` prefix, `cluster` label where it
//! applies), served on `--metrics-addr` at `/metrics`, beside the kubelet's
//! probes: `/healthz` and `/readyz` answer 200 on every replica that
//! serves, leader or standby (a standby is healthy: it stands ready to
//! take the Lease over, and it serves run logs).
//!
//! - `tekfed_runs{phase}`: federated runs by phase.
//! - `tekfed_run_queue_depth`: runs waiting for a cluster.
//! - `tekfed_scheduling_latency_seconds`: run created → decision written.
//! - `tekfed_cluster_load{cluster}`: running + pending runs the agent reported.
//! - `tekfed_cluster_active_runs{cluster}`: unfinished runs the hub assigned.
//! - `tekfed_cluster_ready{cluster}`: 1 when the member is Ready.
//! - `tekfed_template_syncs_total{outcome}`: member copies of templates
//!   checked, by outcome: `unchanged` (no request sent), `applied`,
//!   `conflict`, `failed`.
//! - `tekfed_leader`: 1 while this replica leads (always, without
//!   `--leader-elect`), 0 while it waits for the Lease.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tekfed_runtime::serve::{Endpoints, ServeError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

/// Every metric the hub exports.
pub struct Metrics {
    registry: Registry,
    pub runs: Family<PhaseLabel, Gauge>,
    pub queue_depth: Gauge,
    pub scheduling_latency: Histogram,
    pub cluster_load: Family<ClusterLabel, Gauge>,
    pub cluster_active: Family<ClusterLabel, Gauge>,
    pub cluster_ready: Family<ClusterLabel, Gauge>,
    pub leader: Gauge,
    pub template_syncs: Family<OutcomeLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tekfed");
        let runs = Family::<PhaseLabel, Gauge>::default();
        registry.register("runs", "Federated runs by phase", runs.clone());
        let queue_depth = Gauge::default();
        registry.register(
            "run_queue_depth",
            "Runs waiting for a cluster with room",
            queue_depth.clone(),
        );
        // 1 ms to about 65 s.
        let scheduling_latency = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "scheduling_latency_seconds",
            "From a run's creation to its scheduling decision being written",
            scheduling_latency.clone(),
        );
        let cluster_load = Family::<ClusterLabel, Gauge>::default();
        registry.register(
            "cluster_load",
            "Running and pending runs the member's agent last reported",
            cluster_load.clone(),
        );
        let cluster_active = Family::<ClusterLabel, Gauge>::default();
        registry.register(
            "cluster_active_runs",
            "Unfinished runs the hub has assigned to the member",
            cluster_active.clone(),
        );
        let cluster_ready = Family::<ClusterLabel, Gauge>::default();
        registry.register(
            "cluster_ready",
            "1 when the member is Ready (reachable, fresh heartbeat)",
            cluster_ready.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and runs the controllers",
            leader.clone(),
        );
        let template_syncs = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "template_syncs",
            "Member copies of templates (FederatedTasks, FederatedPipelines, FederatedStepActions) checked, by outcome (unchanged: no request sent)",
            template_syncs.clone(),
        );
        Self {
            registry,
            template_syncs,
            runs,
            queue_depth,
            scheduling_latency,
            cluster_load,
            cluster_active,
            cluster_ready,
            leader,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// What the hub's replica is doing, for `/readyz`'s note.
fn role(metrics: &Metrics) -> String {
    match metrics.leader.get() {
        1 => "ok: leading".to_owned(),
        _ => "ok: standby, waiting for the Lease".to_owned(),
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `addr` until the hub
/// stops. Logs the bound address (useful with port 0).
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<(), ServeError> {
    let listener = tekfed_runtime::serve::bind(addr).await?;
    let (scraped, described) = (metrics.clone(), metrics);
    let endpoints = Endpoints {
        metrics: Arc::new(move || scraped.render()),
        // The hub exits when it cannot go on (a lost Lease, a failed
        // server): a process that answers is alive.
        live: Arc::new(|| Ok("ok".to_owned())),
        // Serving is ready: it answers metrics and run logs, and a standby
        // takes over the Lease without a restart.
        ready: Arc::new(move || Ok(role(&described))),
    };
    tekfed_runtime::serve::serve(listener, endpoints).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_their_prefix_and_labels() {
        let m = Metrics::default();
        m.runs
            .get_or_create(&PhaseLabel {
                phase: "Running".into(),
            })
            .set(3);
        m.cluster_load
            .get_or_create(&ClusterLabel {
                cluster: "member-1".into(),
            })
            .set(7);
        m.scheduling_latency.observe(0.02);
        m.leader.set(1);
        let text = m.render();
        assert!(text.contains("tekfed_runs{phase=\"Running\"} 3"), "{text}");
        assert!(
            text.contains("tekfed_cluster_load{cluster=\"member-1\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("tekfed_scheduling_latency_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("tekfed_leader 1"), "{text}");
        assert_eq!(role(&m), "ok: leading");
        m.leader.set(0);
        assert_eq!(role(&m), "ok: standby, waiting for the Lease");
    }
}
