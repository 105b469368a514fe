//! The tekfed hub: what it decides and how it reaches member clusters.
//!
//! Decisions are pure functions over data, unit-tested without an API
//! server; reconcilers read, call them, and write. Each folder is one
//! kind of thing the hub looks after:
//!
//! - [`clusters`]: member clusters.
//!   - [`clusters::registry`]: one client per member cluster, built from
//!     its Secret, and watches on what tekfed owns there.
//!   - [`clusters::controller`]: the `MemberCluster` controller
//!     (credentials, reachability, heartbeats).
//!   - [`clusters::health`] (pure): `Reachable`, `AgentReady`, `Ready`.
//! - [`templates`]: `FederatedTask`s, `FederatedPipeline`s and
//!   `FederatedStepAction`s.
//!   - [`templates::propagation`]: the reconciler that puts them on members.
//!   - [`templates::copies`]: one member's copy, applied or removed.
//!   - [`templates::drift`] (pure): whether a member's copy still says what
//!     tekfed applied.
//!   - [`templates::status`] (pure): folding per-cluster results into a
//!     template's status.
//! - [`runs`]: `FederatedTaskRun`s and `FederatedPipelineRun`s; its module
//!   doc tells a run's life.
//!   - [`runs::dispatch`](mod@runs::dispatch): the scheduling loop;
//!     [`runs::scheduler`] (pure): which member a run goes to, by load, or
//!     why it waits.
//!   - [`runs::reconcile`]: the run controllers; [`runs::member_run`] and
//!     [`runs::dependencies`]: what they make on a member.
//!   - [`runs::assignments`]: the `RunAssignment` watch, the agents' side of
//!     each run; [`runs::context`]: what the run controllers share.
//!   - [`runs::status`] (pure): where a run's status comes from: folding
//!     member runs, as agents report them, into a federated run's status.
//!   - [`runs::moves`] (pure): which runs leave a drained or lost cluster.
//!
//! Shared by templates and runs:
//!
//! - [`placement`] (pure): which member clusters a placement selects.
//! - [`overrides`] (pure): the object a member gets, with its overrides.
//! - [`ownership`]: the field manager and labels marking what tekfed owns.
//! - [`errors`] (pure): a Kubernetes error as one line for a status.
//! - [`backoff`]: retrying failed reconciles, per object, exponentially.
//! - [`metrics`]: Prometheus metrics on `/metrics`.

pub mod backoff;
pub mod clusters;
pub mod dependencies;
pub mod errors;
pub mod logs;
pub mod metrics;
pub mod native;
pub mod overrides;
pub mod ownership;
pub mod placement;
pub mod runs;
pub mod templates;
