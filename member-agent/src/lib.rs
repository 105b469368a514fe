//! The tekfed member agent: it runs in one member cluster, with that
//! cluster's credentials and a narrow hub identity, and
//!
//! - reports heartbeat and load into its `MemberReport` on the hub,
//! - releases runs assigned to its cluster (the fencing step, [`plan`]),
//! - writes its runs' status back into their assignments,
//! - serves [`metrics`] and the kubelet's probes ([`health`]),
//! - keeps its hub credential valid without a restart ([`credentials`]).
//!
//! [`plan`], [`load`] and [`health`]'s decisions are pure; [`agent`] does
//! the I/O.

pub mod agent;
pub mod credentials;
pub mod health;
pub mod load;
pub mod metrics;
pub mod plan;
