//! What tekfed puts on every object it creates in a member cluster, and how
//! it recognises them: one field manager for server-side apply, and labels
//! linking the member object back to its federated object.
//!
//! The uid label is what makes "ours" exact: an object with the same name
//! that carries another uid (or none) was not created for this federated
//! object, and is a conflict, never overwritten.

use std::collections::BTreeMap;

/// The field manager of every server-side apply the hub makes.
pub const FIELD_MANAGER: &str = "tekfed-hub";

/// `app.kubernetes.io/managed-by` (and its value) on member objects and
/// namespaces: the label the member guard requires on what the hub writes.
pub use tekfed_api::guard::{LABEL_MANAGED_BY, MANAGED_BY};
/// The federated object's kind (`FederatedTask`, …).
pub const LABEL_KIND: &str = "tekfed.io/federated-kind";
/// The federated object's namespace.
pub const LABEL_NAMESPACE: &str = "tekfed.io/federated-namespace";
/// The federated object's name.
pub const LABEL_NAME: &str = "tekfed.io/federated-name";
/// The federated object's uid.
pub const LABEL_UID: &str = "tekfed.io/federated-uid";
/// On a Task or Pipeline copied to a member because a run there needs it,
/// not because its placement selects that member.
pub const LABEL_RUN_DEPENDENCY: &str = "tekfed.io/run-dependency";

/// The federated object a member object belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner<'a> {
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
}

impl Owner<'_> {
    /// The labels tekfed sets on a member object it owns. They win over any
    /// label of the same key in the template, so a template cannot forge
    /// ownership.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
            (LABEL_KIND.to_owned(), self.kind.to_owned()),
            (LABEL_NAMESPACE.to_owned(), self.namespace.to_owned()),
            (LABEL_NAME.to_owned(), self.name.to_owned()),
            (LABEL_UID.to_owned(), self.uid.to_owned()),
        ])
    }

    /// Whether a member object with these labels was created for this owner.
    pub fn owns(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
            && labels.get(LABEL_UID).map(String::as_str) == Some(self.uid)
    }
}

/// The recorder of the hub's Events, reporting as tekfed's field manager
/// (and the pod, when the hub runs in one).
pub fn recorder(hub: kube::Client) -> kube::runtime::events::Recorder {
    let reporter = kube::runtime::events::Reporter {
        controller: FIELD_MANAGER.into(),
        instance: std::env::var("HOSTNAME").ok(),
    };
    kube::runtime::events::Recorder::new(hub, reporter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner<'static> {
        Owner {
            kind: "FederatedTask",
            namespace: "ci",
            name: "build",
            uid: "1f0c0c3e-0000-4000-8000-000000000001",
        }
    }

    #[test]
    fn an_object_with_our_labels_is_ours() {
        assert!(owner().owns(&owner().labels()));
    }

    #[test]
    fn an_object_of_the_same_name_from_another_owner_is_not_ours() {
        let mut labels = owner().labels();
        labels.insert(LABEL_UID.into(), "another-uid".into());
        assert!(!owner().owns(&labels));
        assert!(!owner().owns(&BTreeMap::new()));
        let mut not_managed = owner().labels();
        not_managed.remove(LABEL_MANAGED_BY);
        assert!(!owner().owns(&not_managed));
    }
}
