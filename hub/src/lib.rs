//! The tekfed hub: what it decides and how it reaches member clusters.
//!
//! Decisions are pure functions over data, unit-tested without an API
//! server; reconcilers read, call them, and write.
//!
//! - [`placement`]: which member clusters a placement selects.
//! - [`overrides`]: the object a member gets, with its overrides applied.
//! - [`ownership`]: the field manager and labels marking what tekfed owns.
//! - [`drift`]: whether a member's copy still says what tekfed applied.
//! - [`status`]: folding per-cluster results into a template's status.
//! - [`scheduler`]: which member a run goes to, by load, or why it waits.
//! - [`run_status`]: folding member runs into a federated run's status.
//! - [`moves`]: which runs leave a drained or lost cluster, and how.
//!
//! And the parts that do I/O:
//!
//! - [`members`]: one client per member cluster, built from its Secret,
//!   and watches on what tekfed owns there.
//! - [`member_controller`]: reconciles `MemberCluster`s (credentials,
//!   reachability).
//! - [`propagation`]: reconciles `FederatedTask`s and `FederatedPipeline`s
//!   onto their members.
//! - [`runs`]: the dispatcher and the run controllers.
//! - [`metrics`]: Prometheus metrics on `/metrics`.

pub mod drift;
pub mod member_controller;
pub mod members;
pub mod metrics;
pub mod moves;
pub mod overrides;
pub mod ownership;
pub mod placement;
pub mod propagation;
pub mod run_status;
pub mod runs;
pub mod scheduler;
pub mod status;
