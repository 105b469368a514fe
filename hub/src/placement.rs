//! Placement: which member clusters a federated object goes to.
//!
//! A placement names clusters (`clusters`), selects them by label
//! (`clusterSelector`), or both, and then it is their intersection. Taints
//! keep objects off unless tolerated: `NoSchedule` keeps *new* placements
//! off (a cluster already holding the object keeps it), `NoExecute` also
//! removes it from where it is.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use tekfed_api::{ClusterRef, Taint, TaintEffect, Toleration, TolerationOperator};

/// What placement needs to know of a member cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Member {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

/// The selection part of a placement, shared by templates and runs.
#[derive(Clone, Copy, Debug)]
pub struct Selection<'a> {
    pub clusters: &'a [ClusterRef],
    pub cluster_selector: Option<&'a LabelSelector>,
    pub tolerations: &'a [Toleration],
}

impl<'a> From<&'a tekfed_api::Placement> for Selection<'a> {
    fn from(p: &'a tekfed_api::Placement) -> Self {
        Self {
            clusters: &p.clusters,
            cluster_selector: p.cluster_selector.as_ref(),
            tolerations: &p.tolerations,
        }
    }
}

impl<'a> From<&'a tekfed_api::RunPlacement> for Selection<'a> {
    fn from(p: &'a tekfed_api::RunPlacement) -> Self {
        Self {
            clusters: &p.clusters,
            cluster_selector: p.cluster_selector.as_ref(),
            tolerations: &p.tolerations,
        }
    }
}

/// A placement the hub cannot resolve: the user's to fix.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlacementError {
    #[error("spec.placement.clusterSelector is invalid: {0}")]
    InvalidSelector(String),
}

/// The clusters `selection` places an object on, by name, in name order.
///
/// `current` are the clusters that hold the object now: an untolerated
/// `NoSchedule` taint keeps a cluster out only if it is not among them.
/// Named clusters that are not members are left out (the caller reports
/// them; see [`unknown_clusters`]).
pub fn resolve(
    selection: Selection<'_>,
    members: &[Member],
    current: &BTreeSet<String>,
) -> Result<BTreeSet<String>, PlacementError> {
    let matcher = Matcher::new(selection)?;
    Ok(members
        .iter()
        .filter(|m| matcher.selects(m, current))
        .map(|m| m.name.clone())
        .collect())
}

/// A selection ready to test members one at a time: its label selector is
/// parsed once, not once per member, and a caller holding members by name
/// can look up [`Matcher::named`] instead of testing every member.
#[derive(Debug)]
pub struct Matcher<'a> {
    named: BTreeSet<&'a str>,
    selector: Option<Selector>,
    tolerations: &'a [Toleration],
}

impl<'a> Matcher<'a> {
    pub fn new(selection: Selection<'a>) -> Result<Self, PlacementError> {
        let selector = selection
            .cluster_selector
            .map(|s| Selector::try_from(s.clone()))
            .transpose()
            .map_err(|e| PlacementError::InvalidSelector(e.to_string()))?;
        Ok(Self {
            named: selection.clusters.iter().map(|c| c.name.as_str()).collect(),
            selector,
            tolerations: selection.tolerations,
        })
    }

    /// The clusters the selection names, in name order; empty when it
    /// names none (and then any member may match).
    pub fn named(&self) -> &BTreeSet<&'a str> {
        &self.named
    }

    /// Whether the selection places the object on `member`; `current` as
    /// for [`resolve`].
    pub fn selects(&self, member: &Member, current: &BTreeSet<String>) -> bool {
        (self.named.is_empty() || self.named.contains(member.name.as_str()))
            && self
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(&member.labels))
            && untolerated(&member.taints, self.tolerations).all(|effect| match effect {
                TaintEffect::NoSchedule => current.contains(&member.name),
                TaintEffect::NoExecute => false,
            })
    }
}

/// Clusters a placement names that are not members (a typo, or a cluster
/// not joined yet), for a status message.
pub fn unknown_clusters(selection: Selection<'_>, members: &[Member]) -> Vec<String> {
    selection
        .clusters
        .iter()
        .filter(|c| !members.iter().any(|m| m.name == c.name))
        .map(|c| c.name.clone())
        .collect()
}

/// The effects of the taints no toleration matches.
fn untolerated<'a>(
    taints: &'a [Taint],
    tolerations: &'a [Toleration],
) -> impl Iterator<Item = TaintEffect> + 'a {
    taints
        .iter()
        .filter(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
        .map(|t| t.effect)
}

/// Whether one toleration matches one taint, with the rules pods use.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if toleration.effect.is_some_and(|e| e != taint.effect) {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    match toleration.operator.unwrap_or_default() {
        // An empty key with Exists tolerates every taint.
        TolerationOperator::Exists => key.is_empty() || key == taint.key,
        TolerationOperator::Equal => {
            key == taint.key
                && toleration.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn member(name: &str, labels: &[(&str, &str)], taints: Vec<Taint>) -> Member {
        Member {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            taints,
        }
    }

    fn taint(key: &str, value: Option<&str>, effect: TaintEffect) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect,
        }
    }

    fn fleet() -> Vec<Member> {
        vec![
            member("member-1", &[("pool", "ci"), ("region", "eu")], vec![]),
            member("member-2", &[("pool", "ci"), ("region", "us")], vec![]),
            member("member-3", &[("pool", "release")], vec![]),
            member(
                "gpu-1",
                &[("pool", "ci")],
                vec![taint("gpu", Some("true"), TaintEffect::NoSchedule)],
            ),
            member(
                "drain-1",
                &[("pool", "ci")],
                vec![taint("maintenance", None, TaintEffect::NoExecute)],
            ),
        ]
    }

    fn names(list: &[&str]) -> Vec<ClusterRef> {
        list.iter()
            .map(|n| ClusterRef {
                name: n.to_string(),
            })
            .collect()
    }

    fn set(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn resolve_new(selection: Selection<'_>) -> BTreeSet<String> {
        resolve(selection, &fleet(), &BTreeSet::new()).unwrap()
    }

    #[test]
    fn named_clusters_only() {
        let clusters = names(&["member-2"]);
        let got = resolve_new(Selection {
            clusters: &clusters,
            cluster_selector: None,
            tolerations: &[],
        });
        assert_eq!(got, set(&["member-2"]));
    }

    #[test]
    fn selector_matches_labels_and_leaves_out_untolerated_taints() {
        let selector = LabelSelector {
            match_labels: Some(BTreeMap::from([("pool".into(), "ci".into())])),
            ..Default::default()
        };
        let got = resolve_new(Selection {
            clusters: &[],
            cluster_selector: Some(&selector),
            tolerations: &[],
        });
        assert_eq!(got, set(&["member-1", "member-2"]));
    }

    #[test]
    fn names_and_selector_intersect() {
        let clusters = names(&["member-1", "member-3"]);
        let selector = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "region".into(),
                operator: "In".into(),
                values: Some(vec!["eu".into(), "us".into()]),
            }]),
            ..Default::default()
        };
        let got = resolve_new(Selection {
            clusters: &clusters,
            cluster_selector: Some(&selector),
            tolerations: &[],
        });
        assert_eq!(got, set(&["member-1"]));
    }

    #[test]
    fn a_toleration_lets_an_object_onto_a_tainted_cluster() {
        let clusters = names(&["gpu-1"]);
        let exact = [Toleration {
            key: Some("gpu".into()),
            value: Some("true".into()),
            ..Default::default()
        }];
        assert_eq!(
            resolve_new(Selection {
                clusters: &clusters,
                cluster_selector: None,
                tolerations: &exact
            }),
            set(&["gpu-1"])
        );
        let wrong_value = [Toleration {
            key: Some("gpu".into()),
            value: Some("false".into()),
            ..Default::default()
        }];
        assert!(
            resolve_new(Selection {
                clusters: &clusters,
                cluster_selector: None,
                tolerations: &wrong_value
            })
            .is_empty()
        );
        let exists_any = [Toleration {
            operator: Some(TolerationOperator::Exists),
            ..Default::default()
        }];
        assert_eq!(
            resolve_new(Selection {
                clusters: &clusters,
                cluster_selector: None,
                tolerations: &exists_any
            }),
            set(&["gpu-1"])
        );
        let other_effect = [Toleration {
            key: Some("gpu".into()),
            operator: Some(TolerationOperator::Exists),
            effect: Some(TaintEffect::NoExecute),
            ..Default::default()
        }];
        assert!(
            resolve_new(Selection {
                clusters: &clusters,
                cluster_selector: None,
                tolerations: &other_effect
            })
            .is_empty()
        );
    }

    #[test]
    fn no_schedule_keeps_what_is_there_and_no_execute_removes_it() {
        let clusters = names(&["gpu-1", "drain-1"]);
        let selection = Selection {
            clusters: &clusters,
            cluster_selector: None,
            tolerations: &[],
        };
        let got = resolve(selection, &fleet(), &set(&["gpu-1", "drain-1"])).unwrap();
        assert_eq!(got, set(&["gpu-1"]));
    }

    #[test]
    fn unknown_names_are_reported_not_placed() {
        let clusters = names(&["member-1", "member-9"]);
        let selection = Selection {
            clusters: &clusters,
            cluster_selector: None,
            tolerations: &[],
        };
        assert_eq!(resolve_new(selection), set(&["member-1"]));
        assert_eq!(
            unknown_clusters(selection, &fleet()),
            vec!["member-9".to_string()]
        );
    }

    #[test]
    fn an_invalid_selector_is_the_users_to_fix() {
        let selector = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "region".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..Default::default()
        };
        let err = resolve(
            Selection {
                clusters: &[],
                cluster_selector: Some(&selector),
                tolerations: &[],
            },
            &fleet(),
            &BTreeSet::new(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("spec.placement.clusterSelector"),
            "{err}"
        );
    }
}
