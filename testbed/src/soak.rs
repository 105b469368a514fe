//! The chaos soak: runs created steadily on a federation of three members
//! (each with the real Tekton, pods played by kwok) under a leader-elected
//! hub of two replicas, while a fault is made every ~20 s, drawn by a
//! seeded generator from:
//! - SIGKILL the leading hub (it is started again, as its Deployment would);
//! - SIGKILL an agent (started again);
//! - restart a member's API server;
//! - SIGSTOP a member's API server past the heartbeat grace, then SIGCONT;
//! - stop the hub's API server for longer than the grace;
//! - an agent's clock set off by ±60 s (the test-only `--clock-offset`),
//!   for the rest of the soak;
//! - a member that refuses runs for a while (an admission policy there).
//!
//! Everything is watched from outside tekfed: every federated run's final
//! phase and reason on the hub (before retention deletes it), and every
//! member run tekfed makes on each member, by the federated run's uid.
//! [`Report`] counts what a user relies on: duplicates (two started copies
//! of one placement, by Tekton's own start time), runs lost, runs stuck,
//! and failures no fault explains.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::discovery::ApiResource;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tekfed_api::runs::{RunPhase, RunStatus};
use tekfed_api::{FederatedPipelineRun, FederatedTaskRun, MemberCluster};
use tekfed_runtime::connect::tekton_resource;

use crate::federation::{HUB_NAMESPACE, pipeline_run_template, task_run_template, wait_condition};
use crate::{HUB, TestBed};

/// How a soak runs.
#[derive(Clone, Debug)]
pub struct Soak {
    /// Seeds the choice and timing of faults and the mix of runs.
    pub seed: u64,
    /// Runs to create, at least.
    pub runs: usize,
    /// Keep creating (and faulting) for at least this long.
    pub min_duration: Duration,
    /// A fault about this often.
    pub fault_every: Duration,
    /// The hub's heartbeat grace (its started-run grace is the same).
    pub grace: Duration,
    /// A run not finished this long after the last fault ended is stuck.
    pub stuck_after: Duration,
}

/// One fault, as made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    KillLeadingHub(String),
    KillAgent(String),
    RestartMemberApiServer(String),
    PauseMemberApiServer(String),
    StopHubApiServer,
    SkewAgentClock(String, i64),
    RefuseRuns(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::KillLeadingHub(h) => write!(f, "SIGKILL the leading hub ({h})"),
            Fault::KillAgent(m) => write!(f, "SIGKILL {m}'s agent"),
            Fault::RestartMemberApiServer(m) => write!(f, "restart {m}'s API server"),
            Fault::PauseMemberApiServer(m) => {
                write!(f, "SIGSTOP {m}'s API server past the grace, then SIGCONT")
            }
            Fault::StopHubApiServer => write!(f, "stop the hub's API server past the grace"),
            Fault::SkewAgentClock(m, s) => write!(f, "{m}'s agent clock off by {s:+} s"),
            Fault::RefuseRuns(m) => write!(f, "{m} refuses runs for a while"),
        }
    }
}

/// One fault as made: when it began and when it was undone (a fault that
/// lasts, an agent's clock, ends when it begins), into the soak.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Made {
    pub at: Duration,
    pub until: Duration,
    pub fault: Fault,
}

/// The hub judging a member unwell: one of its `Reachable` or `AgentReady`
/// conditions turning `False`, or changing its reason while `False`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    /// When the soak saw it, into the soak.
    pub at: Duration,
    pub member: String,
    pub condition: String,
    pub reason: String,
}

impl std::fmt::Display for Judged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>6.1} s  {} {}=False {}",
            self.at.as_secs_f64(),
            self.member,
            self.condition,
            self.reason
        )
    }
}

/// How long after a fault is undone the hub may still be judging by it:
/// one status round and an agent's start, on a busy machine.
const JUDGE_SLACK: Duration = Duration::from_secs(20);

/// Whether `made` explains the hub judging a member as `judged` says,
/// with the heartbeat grace `grace`. What the spec says a fault may do:
/// - a member's API server restarted or paused: that member unreachable
///   (its agent, alive, heartbeats on: the heartbeat reads nothing from
///   the member);
/// - an agent killed: that member's heartbeats late;
/// - the hub's API server stopped: `Disruption` on any member (the hub
///   suspects its own view), never `HeartbeatLost`.
///
/// Nothing else explains anything: an agent's clock set off, a leader
/// killed, a member refusing runs must leave every member Ready.
pub fn explains(made: &Made, judged: &Judged, grace: Duration) -> bool {
    let during = judged.at >= made.at && judged.at <= made.until + grace + JUDGE_SLACK;
    let on = |member: &String| *member == judged.member;
    let condition = judged.condition.as_str();
    let reason = judged.reason.as_str();
    during
        && match &made.fault {
            Fault::RestartMemberApiServer(m) => on(m) && condition == "Reachable",
            Fault::PauseMemberApiServer(m) => on(m) && condition == "Reachable",
            Fault::KillAgent(m) => on(m) && reason == "HeartbeatLost",
            Fault::StopHubApiServer => reason == "Disruption",
            Fault::KillLeadingHub(_) | Fault::SkewAgentClock(..) | Fault::RefuseRuns(_) => false,
        }
}

/// What a soak saw.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub elapsed: Duration,
    pub faults: Vec<Made>,
    pub created: usize,
    pub succeeded: usize,
    /// Failed or cancelled runs by the reason of their `Succeeded` condition.
    pub failed: BTreeMap<String, usize>,
    /// Failed runs no fault explains (a reason other than those the
    /// faults made account for).
    pub unexplained: Vec<String>,
    /// Federated runs with two started copies of one placement.
    pub duplicates: Vec<String>,
    /// Created, never seen finished, and gone from the hub.
    pub lost: Vec<String>,
    /// Not finished `stuck_after` past the last fault.
    pub stuck: Vec<String>,
    /// Resident memory of the leading hub at the first and last look.
    pub hub_memory_before: u64,
    pub hub_memory_after: u64,
    /// The leading hub's resident memory at each fault once the retention
    /// TTL has passed (runs are deleted as fast as they finish from then
    /// on): `(seconds into the soak, bytes)`.
    pub hub_memory_steady: Vec<(u64, u64)>,
    /// Moves off a member (runs placed again), by reason.
    pub moves: BTreeMap<String, usize>,
    /// Finished runs still on the hub well past the retention TTL.
    pub kept_past_ttl: usize,
    /// Runs on the hub at the end, finished or not.
    pub stored_at_end: usize,
    /// Every time the hub judged a member unwell, with the fault that
    /// explains it, if one does.
    pub judged: Vec<(Judged, Option<Fault>)>,
    /// Members not `Ready` once every run has finished.
    pub unready_at_end: Vec<String>,
}

impl Report {
    /// Whether it holds what a user relies on.
    pub fn passed(&self) -> bool {
        self.duplicates.is_empty()
            && self.lost.is_empty()
            && self.stuck.is_empty()
            && self.unexplained.is_empty()
            && self.kept_past_ttl == 0
            && self.unready_at_end.is_empty()
            && self.judged.iter().all(|(_, by)| by.is_some())
    }

    /// The table the soak prints.
    pub fn table(&self) -> String {
        let mib = |b: u64| b as f64 / 1024.0 / 1024.0;
        let mut t = String::new();
        let mut row = |k: &str, v: String| t.push_str(&format!("| {k:<44} | {v} |\n"));
        row("seed", self.seed.to_string());
        row(
            "wall time",
            format!("{:.1} min", self.elapsed.as_secs_f64() / 60.0),
        );
        row("faults made", self.faults.len().to_string());
        row("runs created", self.created.to_string());
        row("succeeded", self.succeeded.to_string());
        for (reason, n) in &self.failed {
            row(&format!("failed, reason {reason}"), n.to_string());
        }
        for (reason, n) in &self.moves {
            row(
                &format!("moves off a member, reason {reason}"),
                n.to_string(),
            );
        }
        row(
            "failed with no fault to explain it",
            self.unexplained.len().to_string(),
        );
        let unexplained_judged = self.judged.iter().filter(|(_, by)| by.is_none()).count();
        row(
            "members judged unwell, a fault explains it",
            (self.judged.len() - unexplained_judged).to_string(),
        );
        row(
            "members judged unwell, no fault explains it",
            unexplained_judged.to_string(),
        );
        row(
            "members not Ready at the end",
            self.unready_at_end.len().to_string(),
        );
        row(
            "duplicates (two started copies of a placement)",
            self.duplicates.len().to_string(),
        );
        row("lost", self.lost.len().to_string());
        row("stuck", self.stuck.len().to_string());
        row(
            "runs stored on the hub at the end",
            self.stored_at_end.to_string(),
        );
        row(
            "finished runs kept past the 2 min TTL",
            self.kept_past_ttl.to_string(),
        );
        row(
            "hub memory (leader) first look / last look",
            format!(
                "{:.1} MiB / {:.1} MiB",
                mib(self.hub_memory_before),
                mib(self.hub_memory_after)
            ),
        );
        if let (Some(min), Some(max)) = (
            self.hub_memory_steady.iter().map(|(_, b)| *b).min(),
            self.hub_memory_steady.iter().map(|(_, b)| *b).max(),
        ) {
            row(
                "hub memory (leader) once retention runs, min / max",
                format!(
                    "{:.1} MiB / {:.1} MiB over {} looks",
                    mib(min),
                    mib(max),
                    self.hub_memory_steady.len()
                ),
            );
        }
        let mut out = String::from("| what | figure |\n|---|---|\n");
        out.push_str(&t);
        out.push_str("\nfaults:\n");
        for made in &self.faults {
            out.push_str(&format!(
                "  {:>6.1} s  {}\n",
                made.at.as_secs_f64(),
                made.fault
            ));
        }
        if !self.judged.is_empty() {
            out.push_str("\nmembers judged unwell by the hub:\n");
        }
        for (judged, by) in &self.judged {
            let by = by
                .as_ref()
                .map_or("NO FAULT EXPLAINS IT".to_owned(), |f| format!("after: {f}"));
            out.push_str(&format!("  {judged}  ({by})\n"));
        }
        for (what, names) in [
            ("unexplained", &self.unexplained),
            ("duplicates", &self.duplicates),
            ("lost", &self.lost),
            ("stuck", &self.stuck),
            ("not Ready at the end", &self.unready_at_end),
        ] {
            if !names.is_empty() {
                out.push_str(&format!("{what}: {}\n", names.join(", ")));
            }
        }
        out
    }
}

/// A small seeded generator (xorshift64*): the same seed, the same soak.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// In `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The fault to make next, drawn from `rng`.
pub fn draw(rng: &mut Rng, members: &[String], leader: &str) -> Fault {
    let member = members[rng.below(members.len() as u64) as usize].clone();
    match rng.below(7) {
        0 => Fault::KillLeadingHub(leader.to_owned()),
        1 => Fault::KillAgent(member),
        2 => Fault::RestartMemberApiServer(member),
        3 => Fault::PauseMemberApiServer(member),
        4 => Fault::StopHubApiServer,
        5 => Fault::SkewAgentClock(member, if rng.below(2) == 0 { 60 } else { -60 }),
        _ => Fault::RefuseRuns(member),
    }
}

/// What was seen of one federated run.
#[derive(Clone, Debug, Default)]
struct Seen {
    uid: String,
    /// Its first final status.
    end: Option<(RunPhase, String)>,
    /// The reasons of its moves (`status.attempts`).
    moves: Vec<String>,
    reschedule: bool,
}

/// What was seen of the member copies of one federated uid: member run
/// uid → (member, attempt label, started by Tekton's start time).
type Copies = BTreeMap<String, (String, String, bool)>;

#[derive(Default)]
struct Watched {
    runs: BTreeMap<String, Seen>,
    copies: BTreeMap<String, Copies>,
    /// Each member condition's last (status, reason), by (member, type).
    conditions: BTreeMap<(String, String), (String, String)>,
    judged: Vec<Judged>,
}

const SOAK_NAMESPACE: &str = "soak";
/// The hub's `--finished-run-ttl` in the soak.
const RETENTION_SECS: i64 = 120;
const PROCESSES_SUPERVISED: [&str; 2] = ["tekfed-hub", "tekfed-hub-2"];

/// Run a soak on a test bed of its own; prints progress as it goes.
pub async fn run(soak: &Soak) -> Result<Report, String> {
    let began = Instant::now();
    let e = |e: crate::TestBedError| e.to_string();
    let bed = Arc::new(TestBed::start(3).await.map_err(e)?);
    let members = bed.members();
    for member in &members {
        let labels = BTreeMap::from([("tekfed.io/test-member".to_owned(), member.clone())]);
        bed.register_member(member, labels).await.map_err(e)?;
    }
    let grace = soak.grace.as_secs().to_string();
    let retention = format!("{RETENTION_SECS}s");
    let hub_args = [
        "--leader-elect",
        "--heartbeat-grace",
        &grace,
        "--started-run-grace",
        &grace,
        // Finished runs go two minutes after they end: the hub's store,
        // and its memory, stay flat however many runs the soak makes.
        "--finished-run-ttl",
        &retention,
    ];
    for hub in PROCESSES_SUPERVISED {
        bed.start_hub(hub, &hub_args).map_err(e)?;
    }
    for member in &members {
        bed.start_agent(member, 1.0).await.map_err(e)?;
    }
    wait_condition(&bed, &members, "Ready", Duration::from_secs(120)).await?;
    let hub = bed.client(HUB).await.map_err(e)?;
    let ns = SOAK_NAMESPACE;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(hub.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))
                .map_err(|e| e.to_string())?,
        )
        .await
        .map_err(|e| e.to_string())?;

    let watched = Arc::new(Mutex::new(Watched::default()));
    let mut watches = Vec::new();
    watches.push(tokio::spawn(watch_hub::<FederatedTaskRun>(
        hub.clone(),
        watched.clone(),
        |r| (r.status.clone(), r.spec.on_cluster_lost),
    )));
    watches.push(tokio::spawn(watch_hub::<FederatedPipelineRun>(
        hub.clone(),
        watched.clone(),
        |r| (r.status.clone(), r.spec.on_cluster_lost),
    )));
    watches.push(tokio::spawn(watch_members(
        hub.clone(),
        watched.clone(),
        began,
    )));
    for member in &members {
        let client = bed.client(member).await.map_err(e)?;
        for kind in ["TaskRun", "PipelineRun"] {
            watches.push(tokio::spawn(watch_member(
                client.clone(),
                member.clone(),
                kind,
                watched.clone(),
            )));
        }
    }

    // Processes a Deployment would start again when they exit (a hub that
    // lost its Lease exits by design).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let supervisor = {
        let (bed, stop, members) = (bed.clone(), stop.clone(), members.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let agents = members.iter().map(|m| format!("agent-{m}"));
                for name in PROCESSES_SUPERVISED
                    .iter()
                    .map(|s| s.to_string())
                    .chain(agents)
                {
                    if !bed.alive(&name) {
                        println!("soak: {name} exited; starting it again");
                        let _ = bed.restart(&name);
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    // Runs, created steadily.
    let rate = soak.runs as f64 / soak.min_duration.as_secs_f64();
    let created = Arc::new(Mutex::new(Vec::<String>::new()));
    let creator = {
        let (hub, created, seed, runs) = (hub.clone(), created.clone(), soak.seed, soak.runs);
        let min_duration = soak.min_duration;
        tokio::spawn(async move {
            let mut rng = Rng::new(seed ^ 0xC0FFEE);
            let start = Instant::now();
            let mut i = 0usize;
            while i < runs || start.elapsed() < min_duration {
                let name = format!("run-{i:05}");
                let run = soak_run(ns, &name, &mut rng);
                create_until_done(&hub, run).await;
                created.lock().unwrap_or_else(|p| p.into_inner()).push(name);
                i += 1;
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
        })
    };

    // Faults, one at a time, about every `fault_every`.
    let mut rng = Rng::new(soak.seed);
    let mut faults = Vec::new();
    let mut memory_before = 0;
    let mut steady = Vec::new();
    let mut last_fault_end = Instant::now();
    let fault_every = soak.fault_every.as_secs_f64();
    while !creator.is_finished() {
        let wait = fault_every * (0.75 + rng.below(50) as f64 / 100.0);
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        if creator.is_finished() {
            break;
        }
        if memory_before == 0 {
            memory_before = leader_memory(&bed, &hub).await.unwrap_or(0);
        }
        if began.elapsed().as_secs() > RETENTION_SECS as u64 + 60
            && let Some(bytes) = leader_memory(&bed, &hub).await
        {
            steady.push((began.elapsed().as_secs(), bytes));
        }
        let leader = leader(&bed, &hub)
            .await
            .unwrap_or_else(|| "tekfed-hub".into());
        let fault = draw(&mut rng, &members, &leader);
        let at = began.elapsed();
        println!("soak: {:>6.1} s  {fault}", at.as_secs_f64());
        make(&bed, &fault, soak.grace).await;
        faults.push(Made {
            at,
            until: began.elapsed(),
            fault,
        });
        last_fault_end = Instant::now();
        let done = created.lock().unwrap_or_else(|p| p.into_inner()).len();
        println!("soak: {done} runs created so far");
    }
    creator.await.map_err(|e| e.to_string())?;
    let names = created.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!(
        "soak: {} runs created; waiting for them to finish",
        names.len()
    );

    // Every run ends within the bound after the last fault.
    let deadline = last_fault_end + soak.stuck_after;
    loop {
        let open = {
            let w = watched.lock().unwrap_or_else(|p| p.into_inner());
            names
                .iter()
                .filter(|n| w.runs.get(*n).is_none_or(|s| s.end.is_none()))
                .count()
        };
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let memory_after = leader_memory(&bed, &hub).await.unwrap_or(0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = supervisor.await;
    // The copies' last events are in: give the member watches a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for w in watches {
        w.abort();
    }

    let w = std::mem::take(&mut *watched.lock().unwrap_or_else(|p| p.into_inner()));
    let api_tr: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), ns);
    let api_pr: Api<FederatedPipelineRun> = Api::namespaced(hub.clone(), ns);
    let mut report = Report {
        seed: soak.seed,
        elapsed: began.elapsed(),
        faults,
        created: names.len(),
        hub_memory_before: memory_before,
        hub_memory_after: memory_after,
        hub_memory_steady: steady,
        ..Default::default()
    };
    // Retention: nothing finished more than the TTL (and a sweep or two)
    // ago is still stored.
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut stored = Vec::new();
    if let Ok(list) = api_tr.list(&Default::default()).await {
        stored.extend(list.items.into_iter().map(|r| r.status.unwrap_or_default()));
    }
    if let Ok(list) = api_pr.list(&Default::default()).await {
        stored.extend(list.items.into_iter().map(|r| r.status.unwrap_or_default()));
    }
    report.stored_at_end = stored.len();
    report.kept_past_ttl = stored
        .iter()
        .filter(|s| {
            s.completion_time
                .as_ref()
                .is_some_and(|t| now.duration_since(t.0).as_secs() > RETENTION_SECS + 60)
        })
        .count();
    report.judged = w
        .judged
        .iter()
        .map(|judged| {
            // The latest fault that explains it: the nearest cause.
            let by = report
                .faults
                .iter()
                .rev()
                .find(|made| explains(made, judged, soak.grace))
                .map(|made| made.fault.clone());
            (judged.clone(), by)
        })
        .collect();
    let clusters: Api<MemberCluster> = Api::all(hub.clone());
    for member in &members {
        let ready = clusters
            .get(member)
            .await
            .ok()
            .is_some_and(|c| c.status.is_some_and(|s| s.is_ready()));
        if !ready {
            report.unready_at_end.push(member.clone());
        }
    }
    let refusals = report
        .faults
        .iter()
        .any(|m| matches!(m.fault, Fault::RefuseRuns(_)));
    // Only an agent silent past both graces fails started runs: one
    // killed (a clock set off, or its member's API server paused, is no
    // reason: it heartbeats on).
    let silenced = report
        .faults
        .iter()
        .any(|m| matches!(m.fault, Fault::KillAgent(_)));
    for name in &names {
        let seen = w.runs.get(name).cloned().unwrap_or_default();
        match &seen.end {
            Some((RunPhase::Succeeded, _)) => report.succeeded += 1,
            Some((_, reason)) => {
                *report.failed.entry(reason.clone()).or_default() += 1;
                // MemberRejected: a member refused (the refusal fault).
                // ClusterLost: a member silent past both graces (a
                // killed agent).
                let explained = (reason == "MemberRejected" && refusals)
                    || (reason == "ClusterLost" && silenced);
                if !explained {
                    report.unexplained.push(format!("{name} ({reason})"));
                }
            }
            None => {
                let still_there = api_tr.get_opt(name).await.ok().flatten().is_some()
                    || api_pr.get_opt(name).await.ok().flatten().is_some();
                if still_there {
                    report.stuck.push(name.clone());
                } else {
                    report.lost.push(name.clone());
                }
            }
        }
        for reason in &seen.moves {
            *report.moves.entry(reason.clone()).or_default() += 1;
        }
        if let Some(copies) = w.copies.get(&seen.uid) {
            // Two started copies of one placement is a run run twice. A
            // run that asks to be rescheduled runs again under a new
            // attempt: those are told apart.
            let mut started: BTreeMap<String, usize> = BTreeMap::new();
            for (_, attempt, is_started) in copies.values() {
                if *is_started {
                    let key = if seen.reschedule {
                        attempt.clone()
                    } else {
                        String::new()
                    };
                    *started.entry(key).or_default() += 1;
                }
            }
            if started.values().any(|n| *n > 1) {
                let wheres: BTreeSet<String> = copies
                    .values()
                    .map(|(m, a, s)| format!("{m} attempt {a} started {s}"))
                    .collect();
                report.duplicates.push(format!(
                    "{name} ({})",
                    wheres.into_iter().collect::<Vec<_>>().join("; ")
                ));
            }
        }
    }
    Ok(report)
}

/// One soak run: a TaskRun (most) or a PipelineRun of one task, a second
/// or two long, on any member; one in five asks to be rescheduled if its
/// member is lost.
fn soak_run(ns: &str, name: &str, rng: &mut Rng) -> (bool, Value) {
    let duration = format!("{}ms", 500 + rng.below(1500));
    let reschedule = rng.below(5) == 0;
    let pipeline = rng.below(10) == 0;
    let (kind, template) = if pipeline {
        (
            "FederatedPipelineRun",
            pipeline_run_template(Some(&duration)),
        )
    } else {
        (
            "FederatedTaskRun",
            task_run_template(Some(&duration), json!({})),
        )
    };
    (
        pipeline,
        json!({
            "apiVersion": "tekfed.io/v1alpha1",
            "kind": kind,
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "template": template,
                "placement": {"clusterSelector": {"matchExpressions": [
                    {"key": "tekfed.io/test-member", "operator": "Exists"}]}},
                "onClusterLost": if reschedule { "Reschedule" } else { "Fail" },
            },
        }),
    )
}

/// Create a run, trying again while the hub's API server is away; an
/// AlreadyExists after a lost answer is a create that happened.
async fn create_until_done(hub: &Client, (pipeline, run): (bool, Value)) {
    let resource = ApiResource {
        group: "tekfed.io".into(),
        version: "v1alpha1".into(),
        api_version: "tekfed.io/v1alpha1".into(),
        kind: run["kind"].as_str().unwrap_or_default().into(),
        plural: if pipeline {
            "federatedpipelineruns".into()
        } else {
            "federatedtaskruns".into()
        },
    };
    let api: Api<DynamicObject> = Api::namespaced_with(hub.clone(), SOAK_NAMESPACE, &resource);
    let Ok(object) = serde_json::from_value::<DynamicObject>(run) else {
        return;
    };
    loop {
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 409 => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Record each federated run of kind `K` as the hub shows it: its uid, any
/// move, and its first final phase and reason (`view`: its status and
/// `onClusterLost`).
async fn watch_hub<K>(
    hub: Client,
    watched: Arc<Mutex<Watched>>,
    view: fn(&K) -> (Option<RunStatus>, tekfed_api::runs::OnClusterLost),
) where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let api: Api<K> = Api::namespaced(hub, SOAK_NAMESPACE);
    let mut stream = std::pin::pin!(
        watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
    );
    while let Some(event) = stream.next().await {
        let Ok(run) = event else { continue };
        let (status, on_lost) = view(&run);
        let status = status.unwrap_or_default();
        let mut w = watched.lock().unwrap_or_else(|p| p.into_inner());
        let seen = w.runs.entry(run.name_any()).or_default();
        seen.uid = run.uid().unwrap_or_default();
        seen.reschedule = on_lost == tekfed_api::runs::OnClusterLost::Reschedule;
        if status.attempts.len() > seen.moves.len() {
            seen.moves = status.attempts.iter().map(|a| a.reason.clone()).collect();
        }
        if seen.end.is_none()
            && let Some(phase) = status.phase.filter(|p| tekfed_api::tekton::is_final(*p))
        {
            let reason = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Succeeded")
                .map(|c| c.reason.clone())
                .unwrap_or_default();
            seen.end = Some((phase, reason));
        }
    }
}

async fn watch_member(member: Client, name: String, kind: &str, watched: Arc<Mutex<Watched>>) {
    let api: Api<DynamicObject> =
        Api::namespaced_with(member, SOAK_NAMESPACE, &tekton_resource(kind));
    let mut selector = "app.kubernetes.io/managed-by=tekfed".to_owned();
    if kind == "TaskRun" {
        selector.push_str(",!tekton.dev/pipelineRun");
    }
    let mut stream = std::pin::pin!(
        watcher(api, watcher::Config::default().labels(&selector))
            .default_backoff()
            .applied_objects()
    );
    while let Some(event) = stream.next().await {
        let Ok(run) = event else { continue };
        let Some(uid) = run.labels().get("tekfed.io/federated-uid").cloned() else {
            continue;
        };
        let attempt = run
            .labels()
            .get("tekfed.io/attempt")
            .cloned()
            .unwrap_or_else(|| "1".into());
        let started = run.data["status"]["startTime"].is_string()
            && run.data["spec"]["status"].as_str() != Some("PipelineRunPending")
            && !held_when_cancelled(&run.data);
        let mut w = watched.lock().unwrap_or_else(|p| p.into_inner());
        let copy = w
            .copies
            .entry(uid)
            .or_default()
            .entry(run.uid().unwrap_or_default())
            .or_insert((name.clone(), attempt, false));
        copy.2 |= started;
    }
}

/// Record every time the hub judges a member unwell: its `Reachable` or
/// `AgentReady` condition turning `False`, or changing reason while so.
async fn watch_members(hub: Client, watched: Arc<Mutex<Watched>>, began: Instant) {
    let api: Api<MemberCluster> = Api::all(hub);
    let mut stream = std::pin::pin!(
        watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
    );
    while let Some(event) = stream.next().await {
        let Ok(cluster) = event else { continue };
        let member = cluster.name_any();
        let conditions = cluster.status.unwrap_or_default().conditions;
        let mut w = watched.lock().unwrap_or_else(|p| p.into_inner());
        for c in conditions
            .iter()
            .filter(|c| c.type_ == "Reachable" || c.type_ == "AgentReady")
        {
            let now = (c.status.clone(), c.reason.clone());
            let key = (member.clone(), c.type_.clone());
            if w.conditions.get(&key) == Some(&now) {
                continue;
            }
            if c.status == "False" {
                w.judged.push(Judged {
                    at: began.elapsed(),
                    member: member.clone(),
                    condition: c.type_.clone(),
                    reason: c.reason.clone(),
                });
            }
            w.conditions.insert(key, now);
        }
    }
}

/// A PipelineRun cancelled while held never ran a task: Tekton stamps a
/// start time on it all the same.
fn held_when_cancelled(run: &Value) -> bool {
    run["status"]["childReferences"]
        .as_array()
        .is_none_or(|c| c.is_empty())
        && run["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Succeeded" && c["status"] == "False")
        && run["kind"] == "PipelineRun"
}

/// The hub process holding the Lease, by name.
async fn leader(bed: &TestBed, hub: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(hub.clone(), HUB_NAMESPACE);
    let holder = leases.get("tekfed-hub").await.ok()?.spec?.holder_identity?;
    PROCESSES_SUPERVISED
        .iter()
        .find(|name| {
            bed.pid_of(name)
                .is_some_and(|pid| holder.contains(&format!("_{pid}_")))
        })
        .map(|s| s.to_string())
}

async fn leader_memory(bed: &TestBed, hub: &Client) -> Option<u64> {
    let leader = leader(bed, hub).await?;
    bed.memory()
        .into_iter()
        .find(|(name, _)| *name == leader)
        .map(|(_, bytes)| bytes)
}

/// Make one fault, and undo it as its kind says.
async fn make(bed: &TestBed, fault: &Fault, grace: Duration) {
    let past_grace = grace + Duration::from_secs(5);
    match fault {
        Fault::KillLeadingHub(name) => {
            bed.signal(name, "KILL");
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = bed.restart(name);
        }
        Fault::KillAgent(member) => {
            let name = format!("agent-{member}");
            bed.signal(&name, "KILL");
            tokio::time::sleep(Duration::from_secs(3)).await;
            let _ = bed.restart(&name);
        }
        Fault::RestartMemberApiServer(member) => {
            let _ = bed.restart(&format!("kube-apiserver ({member})"));
        }
        Fault::PauseMemberApiServer(member) => {
            let name = format!("kube-apiserver ({member})");
            bed.signal(&name, "STOP");
            tokio::time::sleep(past_grace).await;
            bed.signal(&name, "CONT");
        }
        Fault::StopHubApiServer => {
            bed.stop(&format!("kube-apiserver ({HUB})"));
            tokio::time::sleep(past_grace).await;
            let _ = bed.restart(&format!("kube-apiserver ({HUB})"));
        }
        Fault::SkewAgentClock(member, offset) => {
            let offset = offset.to_string();
            let _ = bed.restart_with(&format!("agent-{member}"), |args| {
                if let Some(i) = args.iter().position(|a| a == "--clock-offset") {
                    args.drain(i..=i + 1);
                }
                args.extend(["--clock-offset".to_owned(), offset.clone()]);
            });
        }
        Fault::RefuseRuns(member) => {
            if let Ok(client) = bed.client(member).await {
                refuse(&client, true).await;
                tokio::time::sleep(Duration::from_secs(15)).await;
                refuse(&client, false).await;
            }
        }
    }
}

/// An admission policy on a member that refuses tekfed's runs in the soak
/// namespace (`on`), or its removal.
async fn refuse(member: &Client, on: bool) {
    let resource = |kind: &str, plural: &str| ApiResource {
        group: "admissionregistration.k8s.io".into(),
        version: "v1".into(),
        api_version: "admissionregistration.k8s.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    let policies: Api<DynamicObject> = Api::all_with(
        member.clone(),
        &resource("ValidatingAdmissionPolicy", "validatingadmissionpolicies"),
    );
    let bindings: Api<DynamicObject> = Api::all_with(
        member.clone(),
        &resource(
            "ValidatingAdmissionPolicyBinding",
            "validatingadmissionpolicybindings",
        ),
    );
    let name = "soak-refuse-runs";
    if !on {
        let _ = bindings.delete(name, &DeleteParams::default()).await;
        let _ = policies.delete(name, &DeleteParams::default()).await;
        return;
    }
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["tekton.dev"], "apiVersions": ["*"],
                "operations": ["CREATE"], "resources": ["taskruns", "pipelineruns"],
            }]},
            "validations": [{
                "expression": format!("request.namespace != '{SOAK_NAMESPACE}' || has(object.metadata.labels) && 'tekton.dev/pipelineRun' in object.metadata.labels"),
                "message": "the soak's member refuses runs for a while",
            }],
        },
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    });
    for (api, object) in [(&policies, policy), (&bindings, binding)] {
        if let Ok(object) = serde_json::from_value::<DynamicObject>(object) {
            let _ = api.create(&PostParams::default(), &object).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_faults() {
        let members: Vec<String> = ["member-1", "member-2", "member-3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let draws = |seed| {
            let mut rng = Rng::new(seed);
            (0..20)
                .map(|_| draw(&mut rng, &members, "tekfed-hub"))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        // Every kind of fault comes up.
        let kinds: BTreeSet<String> = draws(7)
            .into_iter()
            .chain(draws(8))
            .chain(draws(9))
            .map(|f| {
                format!("{f:?}")
                    .split('(')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(kinds.len(), 7, "{kinds:?}");
    }

    fn judged(at: u64, member: &str, condition: &str, reason: &str) -> Judged {
        Judged {
            at: Duration::from_secs(at),
            member: member.into(),
            condition: condition.into(),
            reason: reason.into(),
        }
    }

    fn made(at: u64, until: u64, fault: Fault) -> Made {
        Made {
            at: Duration::from_secs(at),
            until: Duration::from_secs(until),
            fault,
        }
    }

    #[test]
    fn a_killed_agent_explains_only_its_own_members_late_heartbeats_for_a_while() {
        let grace = Duration::from_secs(20);
        let kill = made(100, 103, Fault::KillAgent("member-1".into()));
        let lost = |at, member| judged(at, member, "AgentReady", "HeartbeatLost");
        assert!(explains(&kill, &lost(125, "member-1"), grace));
        assert!(!explains(&kill, &lost(125, "member-2"), grace));
        assert!(!explains(&kill, &lost(99, "member-1"), grace));
        // Long after the agent is back, a lost heartbeat is the hub's.
        assert!(!explains(&kill, &lost(200, "member-1"), grace));
        let unreachable = judged(110, "member-1", "Reachable", "Unreachable");
        assert!(!explains(&kill, &unreachable, grace));
    }

    #[test]
    fn a_clock_set_off_explains_nothing() {
        let grace = Duration::from_secs(20);
        let skew = made(50, 50, Fault::SkewAgentClock("member-1".into(), -60));
        for reason in ["HeartbeatLost", "Disruption", "NoHeartbeat"] {
            let j = judged(52, "member-1", "AgentReady", reason);
            assert!(!explains(&skew, &j, grace), "{reason}");
        }
    }

    #[test]
    fn the_hubs_api_server_stopped_explains_disruption_not_a_lost_member() {
        let grace = Duration::from_secs(20);
        let stop = made(10, 35, Fault::StopHubApiServer);
        assert!(explains(
            &stop,
            &judged(40, "member-2", "AgentReady", "Disruption"),
            grace
        ));
        assert!(!explains(
            &stop,
            &judged(40, "member-2", "AgentReady", "HeartbeatLost"),
            grace
        ));
    }

    #[test]
    fn a_member_api_server_paused_explains_it_unreachable_not_its_agent_silent() {
        let grace = Duration::from_secs(20);
        let pause = made(10, 35, Fault::PauseMemberApiServer("member-3".into()));
        let unreachable = |member| judged(30, member, "Reachable", "Unreachable");
        assert!(explains(&pause, &unreachable("member-3"), grace));
        assert!(!explains(&pause, &unreachable("member-1"), grace));
        // The agent heartbeats to the hub whatever its member's API server
        // does (seed 1796154600 found it waiting on that server's answers).
        assert!(!explains(
            &pause,
            &judged(30, "member-3", "AgentReady", "HeartbeatLost"),
            grace
        ));
        let restart = made(10, 12, Fault::RestartMemberApiServer("member-3".into()));
        assert!(!explains(
            &restart,
            &judged(20, "member-3", "AgentReady", "HeartbeatLost"),
            grace
        ));
    }
}
