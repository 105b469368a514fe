//! What a run needs on its cluster besides itself, and the labels that
//! let a Secret travel.
//!
//! The hub computes a run's *dependency closure* from its template: the
//! Tasks, Pipeline and StepActions it refers to by name (kept on the hub
//! as `FederatedTask`, `FederatedPipeline`, `FederatedStepAction`), the
//! ServiceAccounts it runs as with their Secrets, the image pull Secrets of
//! its pod template, and the ConfigMaps and Secrets its workspaces and
//! volumes name (plain objects in the run's hub namespace). They are
//! carried to the run's cluster just before the run, and removed when no
//! unfinished run there needs them.
//!
//! Secrets travel only by consent: the hub namespace carries the label
//! [`LABEL_CARRY_SECRETS`]` = "true"`, or the Secret itself carries
//! [`LABEL_CARRY`]` = "true"`. Otherwise the run waits with
//! `DependenciesReady=False`, reason [`REASON_SECRET_NOT_CARRIED`].

/// On a hub namespace: every Secret in it that a run needs may be carried
/// to the run's cluster.
pub const LABEL_CARRY_SECRETS: &str = "tekfed.io/carry-secrets";

/// On a hub Secret: it may be carried to the cluster of a run that needs it.
pub const LABEL_CARRY: &str = "tekfed.io/carry";

/// `DependenciesReady=False`: something the run names is not on the hub.
pub const REASON_DEPENDENCY_MISSING: &str = "DependencyMissing";

/// `DependenciesReady=False`: a Secret the run needs may not leave the hub.
pub const REASON_SECRET_NOT_CARRIED: &str = "SecretNotCarried";

/// `DependenciesReady=True`: everything it needs is on the hub (and is
/// carried to its cluster before the run).
pub const REASON_RESOLVED: &str = "Resolved";
