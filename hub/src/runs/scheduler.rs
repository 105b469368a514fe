//! The run scheduler: which member cluster a federated run goes to.
//!
//! 1. **Filter**: a candidate is `Ready` with a fresh heartbeat, not
//!    cordoned, selected by the run's placement (names, labels, tolerated
//!    taints: see [`crate::placement`]), and under its `maxConcurrentRuns`.
//! 2. **Score**: the least loaded candidate wins, load being
//!    `(runs the agent reported running or pending + runs the hub assigned
//!    since that report) / capacity`. Ties go to the smaller name, so the
//!    same inputs always give the same answer.
//! 3. **Queue**: with no candidate the run waits, with the reason, and
//!    runs are taken first-in first-out by creation time.
//!
//! The hub counts its own assignments at once ([`Scheduler::assign`]), so a
//! burst of thousands spreads over the clusters instead of piling onto the
//! one that looked idle at its last heartbeat. Everything here is pure: the
//! caller feeds cluster views and runs in, and writes the decisions out.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use tekfed_api::{PlacementMode, RunPlacement};

use crate::placement::{Matcher, Member, Selection};

/// Capacity assumed for a cluster without `maxConcurrentRuns`: its load is
/// still comparable with capped clusters, and it never counts as full.
pub const UNCAPPED_CAPACITY: u64 = 100;

/// What the scheduler knows of one member cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterView {
    pub member: Member,
    /// `Ready`: reachable by the hub, agent heartbeat fresh.
    pub ready: bool,
    /// Cordoned (`spec.unschedulable`).
    pub unschedulable: bool,
    /// `spec.maxConcurrentRuns`.
    pub max_concurrent_runs: Option<u64>,
    /// Runs the agent last reported running or pending.
    pub reported: u64,
    /// Runs the hub assigned since that report.
    pub assigned_since_report: u64,
}

impl ClusterView {
    /// Runs on the cluster as far as the hub can tell (saturating: an
    /// agent's figure is input, never trusted to be small).
    pub fn load(&self) -> u64 {
        self.reported.saturating_add(self.assigned_since_report)
    }

    fn capacity(&self) -> u64 {
        self.max_concurrent_runs.unwrap_or(UNCAPPED_CAPACITY).max(1)
    }

    fn has_room(&self) -> bool {
        self.max_concurrent_runs.is_none_or(|max| self.load() < max)
    }

    /// `self` is less loaded than `other`, relative to capacity; ties by name.
    fn lighter_than(&self, other: &Self) -> Ordering {
        // a/ca < b/cb  <=>  a*cb < b*ca, in integers: no float ties.
        let mine = u128::from(self.load()) * u128::from(other.capacity());
        let theirs = u128::from(other.load()) * u128::from(self.capacity());
        mine.cmp(&theirs)
            .then_with(|| self.member.name.cmp(&other.member.name))
    }
}

/// A run waiting for a cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRequest {
    /// `namespace/name`, the run's identity for the caller.
    pub key: String,
    /// Creation time (seconds since the epoch), for first-in first-out.
    pub created: i64,
    pub placement: RunPlacement,
    /// Clusters that do not allow this run (their tenancy), with why.
    pub refused: BTreeMap<String, String>,
}

/// Why a run waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueReason {
    /// The placement selects no member at all.
    NoClusterMatches,
    /// Every selected member is cordoned.
    AllCordoned,
    /// Every selected, uncordoned member is not Ready.
    NoneReady,
    /// Every usable member is at its `maxConcurrentRuns`.
    AllFull,
    /// The placement itself is invalid.
    InvalidPlacement(String),
    /// Every selected member refuses the run (`spec.tenancy`): each with why.
    NotAllowed(String),
}

impl QueueReason {
    /// The `reason` of the `Scheduled=False` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoClusterMatches => "NoClusterMatches",
            Self::AllCordoned => "AllCordoned",
            Self::NoneReady => "NoClusterReady",
            Self::AllFull => "AllClustersFull",
            Self::InvalidPlacement(_) => "InvalidPlacement",
            Self::NotAllowed(_) => "NotAllowedOnMembers",
        }
    }

    /// A message saying what would let the run go.
    pub fn message(&self) -> String {
        match self {
            Self::NoClusterMatches => "no member cluster matches spec.placement (names, labels and tolerated taints)".into(),
            Self::AllCordoned => "every matching member cluster is cordoned; uncordon one or widen spec.placement".into(),
            Self::NoneReady => "no matching member cluster is Ready (its agent's heartbeat is missing or stale)".into(),
            Self::AllFull => "every matching member cluster is at its maxConcurrentRuns; the run starts when one has room".into(),
            Self::InvalidPlacement(e) => e.clone(),
            Self::NotAllowed(why) => format!(
                "no matching member cluster allows this run: {why}; change the run, or ask a member's admin to allow it (kubectl tekfed join --allow-namespaces, --pod-security)"
            ),
        }
    }
}

/// The decision for one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Create the run on these clusters (one, or every candidate with `mode: All`).
    Assign(Vec<String>),
    /// Keep the run queued.
    Queue(QueueReason),
}

/// The scheduler's view of the fleet, updated as it assigns.
#[derive(Clone, Debug, Default)]
pub struct Scheduler {
    clusters: BTreeMap<String, ClusterView>,
}

impl Scheduler {
    pub fn new(clusters: impl IntoIterator<Item = ClusterView>) -> Self {
        Self {
            clusters: clusters
                .into_iter()
                .map(|c| (c.member.name.clone(), c))
                .collect(),
        }
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterView> {
        self.clusters.get(name)
    }

    /// Count a run the hub placed on `cluster` before the agent reports it.
    pub fn assign(&mut self, cluster: &str) {
        if let Some(c) = self.clusters.get_mut(cluster) {
            c.assigned_since_report = c.assigned_since_report.saturating_add(1);
        }
    }

    /// The clusters a placement selects (names, labels, tolerated taints),
    /// in name order, whatever their state.
    fn selected(&self, placement: &RunPlacement) -> Result<Vec<&ClusterView>, QueueReason> {
        let matcher = Matcher::new(Selection::from(placement))
            .map_err(|e| QueueReason::InvalidPlacement(e.to_string()))?;
        // A run is new everywhere: a NoSchedule taint keeps it off.
        let holders = BTreeSet::new();
        let selects = |c: &&ClusterView| matcher.selects(&c.member, &holders);
        // Named clusters are looked up rather than found by testing the
        // whole fleet; both ways give name order.
        Ok(if matcher.named().is_empty() {
            self.clusters.values().filter(selects).collect()
        } else {
            matcher
                .named()
                .iter()
                .filter_map(|n| self.clusters.get(*n))
                .filter(selects)
                .collect()
        })
    }

    /// The decision for one run, without recording it.
    pub fn decide(&self, placement: &RunPlacement) -> Decision {
        self.decide_refused(placement, &BTreeMap::new())
    }

    /// The decision for one run that the clusters in `refused` do not
    /// allow, without recording it.
    pub fn decide_refused(
        &self,
        placement: &RunPlacement,
        refused: &BTreeMap<String, String>,
    ) -> Decision {
        let selected = match self.selected(placement) {
            Ok(selected) => selected,
            Err(reason) => return Decision::Queue(reason),
        };
        if selected.is_empty() {
            return Decision::Queue(QueueReason::NoClusterMatches);
        }
        let (selected, refusing): (Vec<&ClusterView>, Vec<&ClusterView>) = selected
            .into_iter()
            .partition(|c| !refused.contains_key(&c.member.name));
        if selected.is_empty() {
            let why: Vec<String> = refusing
                .iter()
                .take(CANDIDATES_SHOWN)
                .map(|c| format!("{}: {}", c.member.name, refused[&c.member.name]))
                .collect();
            return Decision::Queue(QueueReason::NotAllowed(why.join("; ")));
        }
        let uncordoned: Vec<&ClusterView> =
            selected.into_iter().filter(|c| !c.unschedulable).collect();
        if uncordoned.is_empty() {
            return Decision::Queue(QueueReason::AllCordoned);
        }
        let ready: Vec<&ClusterView> = uncordoned.into_iter().filter(|c| c.ready).collect();
        if ready.is_empty() {
            return Decision::Queue(QueueReason::NoneReady);
        }
        match placement.mode {
            // Every candidate gets a copy: all of them need room.
            PlacementMode::All => {
                if ready.iter().all(|c| c.has_room()) {
                    Decision::Assign(ready.iter().map(|c| c.member.name.clone()).collect())
                } else {
                    Decision::Queue(QueueReason::AllFull)
                }
            }
            PlacementMode::One => ready
                .into_iter()
                .filter(|c| c.has_room())
                .min_by(|a, b| a.lighter_than(b))
                .map(|c| Decision::Assign(vec![c.member.name.clone()]))
                .unwrap_or(Decision::Queue(QueueReason::AllFull)),
        }
    }

    /// Why a run went where it went, as of the decision: every cluster
    /// the placement selects with its load (runs of capacity) or why it
    /// was passed over, lightest first, at most [`CANDIDATES_SHOWN`].
    pub fn candidates(
        &self,
        placement: &RunPlacement,
        chosen: &[String],
        refused: &BTreeMap<String, String>,
    ) -> String {
        let Ok(mut selected) = self.selected(placement) else {
            return String::new();
        };
        selected.sort_by(|a, b| a.lighter_than(b));
        let describe = |c: &ClusterView| {
            let load = match c.max_concurrent_runs {
                Some(max) => format!("{} of {max} runs", c.load()),
                None => format!("{} runs", c.load()),
            };
            let state = if chosen.contains(&c.member.name) {
                format!("{load}, chosen")
            } else if refused.contains_key(&c.member.name) {
                "does not allow the run".to_owned()
            } else if c.unschedulable {
                "cordoned".to_owned()
            } else if !c.ready {
                "not Ready".to_owned()
            } else if !c.has_room() {
                format!("full, {load}")
            } else {
                load
            };
            format!("{} ({state})", c.member.name)
        };
        let mut parts: Vec<String> = selected
            .iter()
            .take(CANDIDATES_SHOWN)
            .map(|c| describe(c))
            .collect();
        if selected.len() > CANDIDATES_SHOWN {
            parts.push(format!("{} more", selected.len() - CANDIDATES_SHOWN));
        }
        parts.join(", ")
    }

    /// Decide every queued run in first-in first-out order (creation time,
    /// then key), counting each assignment before the next decision.
    pub fn schedule(&mut self, queue: &[RunRequest]) -> Vec<Scheduled> {
        let mut order: Vec<&RunRequest> = queue.iter().collect();
        order.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.key.cmp(&b.key)));
        order
            .into_iter()
            .map(|run| {
                let decision = self.decide_refused(&run.placement, &run.refused);
                let mut candidates = String::new();
                if let Decision::Assign(clusters) = &decision {
                    candidates = self.candidates(&run.placement, clusters, &run.refused);
                    for c in clusters {
                        self.assign(c);
                    }
                }
                Scheduled {
                    key: run.key.clone(),
                    decision,
                    candidates,
                }
            })
            .collect()
    }
}

/// How many candidates a scheduling message lists (the rest are counted).
pub const CANDIDATES_SHOWN: usize = 8;

/// One run's decision and, when assigned, the candidates it was chosen from
/// ([`Scheduler::candidates`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheduled {
    pub key: String,
    pub decision: Decision,
    pub candidates: String,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tekfed_api::{ClusterRef, Taint, TaintEffect};

    use super::*;

    fn cluster(name: &str, reported: u64, max: Option<u64>) -> ClusterView {
        ClusterView {
            member: Member {
                name: name.into(),
                labels: BTreeMap::from([("pool".into(), "ci".into())]),
                taints: vec![],
            },
            ready: true,
            max_concurrent_runs: max,
            reported,
            ..Default::default()
        }
    }

    fn anywhere() -> RunPlacement {
        RunPlacement {
            cluster_selector: Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some(BTreeMap::from([("pool".into(), "ci".into())])),
                    ..Default::default()
                },
            ),
            ..Default::default()
        }
    }

    fn runs(n: usize, placement: &RunPlacement) -> Vec<RunRequest> {
        (0..n)
            .map(|i| RunRequest {
                key: format!("ci/run-{i:05}"),
                created: i as i64,
                placement: placement.clone(),
                refused: Default::default(),
            })
            .collect()
    }

    fn assigned_to(decisions: &[Scheduled]) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for d in decisions {
            if let Decision::Assign(clusters) = &d.decision {
                for c in clusters {
                    *counts.entry(c.clone()).or_default() += 1;
                }
            }
        }
        counts
    }

    #[test]
    fn members_that_refuse_a_run_are_passed_over_and_all_refusing_queues_it_saying_why() {
        let mut s = Scheduler::new([cluster("light", 0, None), cluster("busy", 5, None)]);
        let mut run = runs(1, &anywhere()).remove(0);
        run.refused = BTreeMap::from([(
            "light".to_owned(),
            "Pod Security level restricted there forbids spec.podTemplate.hostNetwork".to_owned(),
        )]);
        let decided = s.schedule(std::slice::from_ref(&run));
        assert_eq!(decided[0].decision, Decision::Assign(vec!["busy".into()]));
        assert_eq!(
            decided[0].candidates,
            "light (does not allow the run), busy (5 runs, chosen)"
        );
        run.refused.insert(
            "busy".into(),
            "namespace kube-system is a system namespace".into(),
        );
        let Decision::Queue(reason) = s.decide_refused(&run.placement, &run.refused) else {
            panic!("queued");
        };
        assert_eq!(reason.reason(), "NotAllowedOnMembers");
        assert!(
            reason.message().contains(
                "busy: namespace kube-system is a system namespace; light: Pod Security level restricted"
            ),
            "{}",
            reason.message()
        );
    }

    #[test]
    fn the_least_loaded_cluster_wins() {
        let s = Scheduler::new([
            cluster("a", 7, None),
            cluster("b", 3, None),
            cluster("c", 5, None),
        ]);
        assert_eq!(s.decide(&anywhere()), Decision::Assign(vec!["b".into()]));
    }

    #[test]
    fn load_is_relative_to_capacity() {
        // 4 of 10 (40%) is lighter than 3 of 5 (60%).
        let s = Scheduler::new([cluster("big", 4, Some(10)), cluster("small", 3, Some(5))]);
        assert_eq!(s.decide(&anywhere()), Decision::Assign(vec!["big".into()]));
    }

    #[test]
    fn a_hostile_load_figure_neither_overflows_nor_wins() {
        let mut s = Scheduler::new([
            cluster("huge", u64::MAX, None),
            cluster("small", 1, Some(u64::MAX)),
        ]);
        assert_eq!(
            s.decide(&anywhere()),
            Decision::Assign(vec!["small".into()])
        );
        // Counting more runs onto a saturated cluster saturates too.
        s.assign("huge");
        assert_eq!(s.cluster("huge").unwrap().load(), u64::MAX);
        let capped = Scheduler::new([cluster("full", u64::MAX, Some(u64::MAX))]);
        assert_eq!(
            capped.decide(&anywhere()),
            Decision::Queue(QueueReason::AllFull)
        );
    }

    #[test]
    fn ties_go_to_the_smaller_name() {
        let s = Scheduler::new([
            cluster("m-2", 1, None),
            cluster("m-1", 1, None),
            cluster("m-3", 1, None),
        ]);
        assert_eq!(s.decide(&anywhere()), Decision::Assign(vec!["m-1".into()]));
    }

    #[test]
    fn filters_not_ready_cordoned_full_and_unselected_clusters() {
        let mut not_ready = cluster("not-ready", 0, None);
        not_ready.ready = false;
        let mut cordoned = cluster("cordoned", 0, None);
        cordoned.unschedulable = true;
        let full = cluster("full", 5, Some(5));
        let mut other_pool = cluster("other-pool", 0, None);
        other_pool
            .member
            .labels
            .insert("pool".into(), "release".into());
        let mut tainted = cluster("tainted", 0, None);
        tainted.member.taints = vec![Taint {
            key: "gpu".into(),
            value: None,
            effect: TaintEffect::NoSchedule,
        }];
        let busy = cluster("busy", 50, None);
        let s = Scheduler::new([not_ready, cordoned, full, other_pool, tainted, busy]);
        assert_eq!(s.decide(&anywhere()), Decision::Assign(vec!["busy".into()]));
    }

    #[test]
    fn the_queue_reason_says_what_blocks() {
        let named = |n: &str| RunPlacement {
            clusters: vec![ClusterRef { name: n.into() }],
            ..Default::default()
        };
        let mut cordoned = cluster("cordoned", 0, None);
        cordoned.unschedulable = true;
        let mut not_ready = cluster("not-ready", 0, None);
        not_ready.ready = false;
        let s = Scheduler::new([cordoned, not_ready, cluster("full", 2, Some(2))]);
        assert_eq!(
            s.decide(&named("nowhere")),
            Decision::Queue(QueueReason::NoClusterMatches)
        );
        assert_eq!(
            s.decide(&named("cordoned")),
            Decision::Queue(QueueReason::AllCordoned)
        );
        assert_eq!(
            s.decide(&named("not-ready")),
            Decision::Queue(QueueReason::NoneReady)
        );
        assert_eq!(
            s.decide(&named("full")),
            Decision::Queue(QueueReason::AllFull)
        );
        for reason in [
            QueueReason::NoClusterMatches,
            QueueReason::AllCordoned,
            QueueReason::NoneReady,
            QueueReason::AllFull,
        ] {
            assert!(!reason.message().is_empty());
        }
    }

    #[test]
    fn a_burst_spreads_evenly_over_equal_clusters() {
        let mut s = Scheduler::new([
            cluster("a", 0, None),
            cluster("b", 0, None),
            cluster("c", 0, None),
        ]);
        let decisions = s.schedule(&runs(3000, &anywhere()));
        let counts = assigned_to(&decisions);
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            vec![1000, 1000, 1000]
        );
    }

    #[test]
    fn a_burst_fills_unequal_clusters_in_proportion_and_then_queues() {
        let mut s = Scheduler::new([cluster("small", 0, Some(5)), cluster("large", 0, Some(20))]);
        let decisions = s.schedule(&runs(30, &anywhere()));
        let counts = assigned_to(&decisions);
        assert_eq!(counts["small"], 5);
        assert_eq!(counts["large"], 20);
        let queued: Vec<&String> = decisions
            .iter()
            .filter(|d| d.decision == Decision::Queue(QueueReason::AllFull))
            .map(|d| &d.key)
            .collect();
        assert_eq!(queued.len(), 5);
        // First in, first out: the five queued are the five created last.
        assert_eq!(queued[0], "ci/run-00025");
    }

    #[test]
    fn fifo_holds_whatever_order_the_queue_arrives_in() {
        let mut s = Scheduler::new([cluster("only", 0, Some(1))]);
        let mut queue = runs(3, &anywhere());
        queue.reverse();
        let decisions = s.schedule(&queue);
        assert_eq!(decisions[0].key, "ci/run-00000");
        assert_eq!(decisions[0].decision, Decision::Assign(vec!["only".into()]));
        assert_eq!(decisions[1].decision, Decision::Queue(QueueReason::AllFull));
    }

    #[test]
    fn mode_all_takes_every_candidate_or_waits_for_all() {
        let mut all = anywhere();
        all.mode = PlacementMode::All;
        let mut s = Scheduler::new([
            cluster("a", 0, None),
            cluster("b", 0, Some(1)),
            cluster("c", 0, None),
        ]);
        assert_eq!(
            s.schedule(&runs(1, &all))[0].decision,
            Decision::Assign(vec!["a".into(), "b".into(), "c".into()])
        );
        // b is now full: a second All run waits rather than running on only some.
        assert_eq!(s.decide(&all), Decision::Queue(QueueReason::AllFull));
    }

    #[test]
    fn a_decision_says_which_candidates_it_weighed_and_why_others_lost() {
        let mut s = Scheduler::new([
            cluster("busy", 40, None),
            cluster("light", 3, Some(10)),
            ClusterView {
                unschedulable: true,
                ..cluster("cordoned", 0, None)
            },
            ClusterView {
                ready: false,
                ..cluster("silent", 0, None)
            },
            cluster("full", 2, Some(2)),
        ]);
        let decided = s.schedule(&runs(1, &anywhere()));
        assert_eq!(decided[0].decision, Decision::Assign(vec!["light".into()]));
        assert_eq!(
            decided[0].candidates,
            "cordoned (cordoned), silent (not Ready), light (3 of 10 runs, chosen), busy (40 runs), full (full, 2 of 2 runs)"
        );
        // Many candidates: the lightest are named, the rest counted.
        let many = Scheduler::new((0..12).map(|i| cluster(&format!("m{i:02}"), i, None)));
        let text = many.candidates(&anywhere(), &["m00".into()], &BTreeMap::new());
        assert!(
            text.starts_with("m00 (0 runs, chosen), m01 (1 runs)"),
            "{text}"
        );
        assert!(text.ends_with(", 4 more"), "{text}");
        // Queued runs carry no candidates.
        let mut none = Scheduler::new([]);
        assert!(
            none.schedule(&runs(1, &anywhere()))[0]
                .candidates
                .is_empty()
        );
    }

    #[test]
    fn a_new_report_replaces_the_hubs_own_count() {
        let mut s = Scheduler::new([cluster("a", 0, None), cluster("b", 0, None)]);
        s.schedule(&runs(10, &anywhere()));
        assert_eq!(s.cluster("a").unwrap().load(), 5);
        // The caller rebuilds the view from the agent's report: 5 running, nothing new assigned.
        let refreshed = Scheduler::new([cluster("a", 5, None), cluster("b", 1, None)]);
        assert_eq!(
            refreshed.decide(&anywhere()),
            Decision::Assign(vec!["b".into()])
        );
    }
}
