//! The agent's Prometheus metrics, served on `--metrics-addr` at
//! `/metrics`. Prefix `tekfed_agent_` (apart from the hub's `tekfed_`
//! metrics in a Prometheus that scrapes both), and every series carries
//! `cluster`, the MemberCluster the agent reports for.
//!
//! - `tekfed_agent_heartbeats_total{outcome}`: heartbeats to the hub,
//!   `written` or `failed`.
//! - `tekfed_agent_last_heartbeat_timestamp_seconds`: when the last one was
//!   written (unix time); alert on `time() - …` nearing the hub's
//!   `--heartbeat-grace`, after which the hub stops sending runs here.
//! - `tekfed_agent_heartbeat_duration_seconds`: how long one took
//!   (listing runs, pods and nodes on the member, then writing).
//! - `tekfed_agent_run_steps_total{step,outcome}`: the agent's writes for
//!   assigned runs, by step (`release`, `start`, `report`, and `cancel`,
//!   `delete_held` for runs the hub revoked) and outcome (`done`,
//!   `conflict`: the object changed first, as when the hub revokes a run
//!   before its release, `failed`).
//! - `tekfed_agent_runs{scope,state}`: `running` and `pending` runs as last
//!   reported, tekfed's (`scope="tekfed"`) and all on the member (`all`).
//! - `tekfed_agent_pending_pods`, `tekfed_agent_cpu_millicores{kind}`,
//!   `tekfed_agent_memory_bytes{kind}` (`allocatable`, `requested`): the
//!   rest of the load as last reported.
//! - `tekfed_agent_leader`: 1 while this replica holds the Lease and acts.
//! - `tekfed_agent_hub_token_renewals_total{outcome}`: renewals of the
//!   agent's hub token, `renewed`, `conflict` (its Secret changed first;
//!   tried again) or `failed`.
//! - `tekfed_agent_hub_token_expiry_timestamp_seconds`: when the hub token
//!   in use expires (unix time); alert on `… - time()` nearing zero.

use std::borrow::Cow;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tekfed_api::ClusterLoad;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    pub step: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunsLabel {
    pub scope: &'static str,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    pub heartbeats: Family<OutcomeLabel, Counter>,
    pub last_heartbeat: Gauge,
    pub heartbeat_duration: Histogram,
    pub run_steps: Family<StepLabel, Counter>,
    pub runs: Family<RunsLabel, Gauge>,
    pub pending_pods: Gauge,
    pub cpu: Family<KindLabel, Gauge>,
    pub memory: Family<KindLabel, Gauge>,
    pub leader: Gauge,
    pub hub_token_renewals: Family<OutcomeLabel, Counter>,
    pub hub_token_expiry: Gauge,
}

impl Metrics {
    /// The metrics of the agent for MemberCluster `cluster`.
    pub fn new(cluster: &str) -> Self {
        let labels = [(Cow::Borrowed("cluster"), Cow::Owned(cluster.to_owned()))];
        let mut registry = Registry::with_prefix_and_labels("tekfed_agent", labels.into_iter());
        let heartbeats = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "heartbeats",
            "Heartbeats (load reports) to the hub, by outcome: written or failed",
            heartbeats.clone(),
        );
        let last_heartbeat = Gauge::default();
        registry.register(
            "last_heartbeat_timestamp_seconds",
            "Unix time of the last heartbeat written to the hub",
            last_heartbeat.clone(),
        );
        // 10 ms to about 80 s.
        let heartbeat_duration = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "heartbeat_duration_seconds",
            "How long a heartbeat took: reading the member's runs, pods and nodes, then writing to the hub",
            heartbeat_duration.clone(),
        );
        let run_steps = Family::<StepLabel, Counter>::default();
        registry.register(
            "run_steps",
            "Writes for assigned runs by step (release, start, report, cancel, delete_held) and outcome (done, conflict, failed)",
            run_steps.clone(),
        );
        let runs = Family::<RunsLabel, Gauge>::default();
        registry.register(
            "runs",
            "Running and pending runs as last reported, tekfed's (scope=tekfed) and all on the member (scope=all)",
            runs.clone(),
        );
        let pending_pods = Gauge::default();
        registry.register(
            "pending_pods",
            "Pods waiting to be scheduled on the member, as last reported",
            pending_pods.clone(),
        );
        let cpu = Family::<KindLabel, Gauge>::default();
        registry.register(
            "cpu_millicores",
            "CPU allocatable over the member's nodes and requested by its pods, as last reported",
            cpu.clone(),
        );
        let memory = Family::<KindLabel, Gauge>::default();
        registry.register(
            "memory_bytes",
            "Memory allocatable over the member's nodes and requested by its pods, as last reported",
            memory.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the Lease and acts for its cluster",
            leader.clone(),
        );
        let hub_token_renewals = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "hub_token_renewals",
            "Renewals of the agent's hub token, by outcome: renewed, conflict (its Secret changed first) or failed",
            hub_token_renewals.clone(),
        );
        let hub_token_expiry = Gauge::default();
        registry.register(
            "hub_token_expiry_timestamp_seconds",
            "Unix time when the hub token in use expires",
            hub_token_expiry.clone(),
        );
        Self {
            registry,
            heartbeats,
            last_heartbeat,
            heartbeat_duration,
            run_steps,
            runs,
            pending_pods,
            cpu,
            memory,
            leader,
            hub_token_renewals,
            hub_token_expiry,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// Count a write for an assigned run.
    pub fn step<T>(&self, step: &'static str, result: &Result<T, kube::Error>) {
        let outcome = match result {
            Ok(_) => "done",
            Err(kube::Error::Api(status)) if status.code == 409 => "conflict",
            Err(_) => "failed",
        };
        self.run_steps
            .get_or_create(&StepLabel { step, outcome })
            .inc();
    }

    /// The load a heartbeat reported: tekfed's runs, and the member's
    /// totals when they could all be read.
    pub fn load(&self, load: &ClusterLoad, total: Option<&ClusterLoad>) {
        let runs = |scope, load: &ClusterLoad| {
            for (state, value) in [("running", load.running), ("pending", load.pending)] {
                self.runs
                    .get_or_create(&RunsLabel { scope, state })
                    .set(value);
            }
        };
        runs("tekfed", load);
        if let Some(total) = total {
            runs("all", total);
        }
        self.pending_pods.set(load.pending_pods);
        for (family, kind, value) in [
            (&self.cpu, "allocatable", load.cpu_allocatable_millis),
            (&self.cpu, "requested", load.cpu_requested_millis),
            (&self.memory, "allocatable", load.memory_allocatable_bytes),
            (&self.memory, "requested", load.memory_requested_bytes),
        ] {
            if let Some(value) = value {
                family.get_or_create(&KindLabel { kind }).set(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_their_prefix_and_the_cluster() {
        let m = Metrics::new("member-1");
        m.heartbeats
            .get_or_create(&OutcomeLabel { outcome: "written" })
            .inc();
        m.last_heartbeat.set(1_700_000_000);
        m.step::<()>("release", &Ok(()));
        m.load(
            &ClusterLoad {
                running: 3,
                pending: 1,
                pending_pods: 2,
                cpu_allocatable_millis: Some(4000),
                ..Default::default()
            },
            None,
        );
        let text = m.render();
        for line in [
            "tekfed_agent_heartbeats_total{cluster=\"member-1\",outcome=\"written\"} 1",
            "tekfed_agent_last_heartbeat_timestamp_seconds{cluster=\"member-1\"} 1700000000",
            "tekfed_agent_run_steps_total{cluster=\"member-1\",step=\"release\",outcome=\"done\"} 1",
            "tekfed_agent_runs{cluster=\"member-1\",scope=\"tekfed\",state=\"running\"} 3",
            "tekfed_agent_pending_pods{cluster=\"member-1\"} 2",
            "tekfed_agent_cpu_millicores{cluster=\"member-1\",kind=\"allocatable\"} 4000",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
        // No totals reported, none exported (rather than a false 0).
        assert!(!text.contains("scope=\"all\""), "{text}");
        assert!(!text.contains("kind=\"requested\""), "{text}");
    }
}
