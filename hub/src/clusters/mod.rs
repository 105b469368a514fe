//! Member clusters: how the hub reaches each one and how healthy it is.
//!
//! - [`registry`]: one client per member cluster, built from its kubeconfig
//!   Secret, and watches on the Tekton objects tekfed owns there (how drift
//!   reaches the template controllers at once). Everything else that talks
//!   to a member gets its client here.
//! - [`controller`]: the `MemberCluster` controller: credentials,
//!   reachability, the member's hub namespace and `MemberReport`, and the
//!   status it folds with [`health`].
//! - [`credentials`]: the member kubeconfig Secrets, and the renewal of
//!   the tokens in them before they expire.
//! - [`health`]: pure: `Reachable`, `AgentReady` (heartbeats) and `Ready`
//!   from what the hub's probe saw and what the agent last reported, and
//!   `CredentialsExpiring` from what came of each credential's renewal.

pub mod controller;
pub mod credentials;
pub mod health;
pub mod registry;

pub use controller::ClusterContext;
pub use registry::Members;

/// Why a member cannot be used right now: a reason for the `Reachable`
/// condition and a message saying what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreachable {
    pub reason: &'static str,
    pub message: String,
}

impl Unreachable {
    /// One line for a status: which cluster, and why it cannot be reached.
    pub fn describe(&self, cluster: &str) -> String {
        format!(
            "cluster {cluster} is not reachable ({}): {}",
            self.reason, self.message
        )
    }
}
