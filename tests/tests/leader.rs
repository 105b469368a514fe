//! Leader election against real API servers: two hubs sharing a Lease on
//! the hub, then two agents of one member sharing a Lease on the member.
//! Killing the leader with SIGKILL (a crash or a lost node: nothing is
//! released) in the middle of a burst hands the work to the standby, and no
//! run is lost or created twice. A graceful stop (SIGTERM) releases the
//! Lease, so the standby takes over well before it would have expired.
//!
//! Each test kills processes, so each has a test bed of its own; they take
//! turns (the machine has two cores).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams};
use tekfed_api::{FederatedTaskRun, RunPhase};
use tekfed_runtime::connect::tekton_resource;
use tekfed_testbed::federation::{
    HUB_NAMESPACE, create_task_runs, run_phases, scrape, wait_all_succeeded, wait_condition,
};
use tekfed_testbed::{HUB, TestBed, binary, eventually};

const WAIT: Duration = Duration::from_secs(240);
/// `--leader-elect-lease-duration`'s default, which both tests use.
const LEASE: Duration = Duration::from_secs(15);

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The pid in a holder identity (`<host>_<pid>_<random>`).
fn pid_in(identity: &str) -> Option<u32> {
    identity.rsplit('_').nth(1)?.parse().ok()
}

/// The pid of the Lease's holder, if it has one.
async fn holder_pid(leases: &Api<Lease>, name: &str) -> Option<u32> {
    let lease = leases.get_opt(name).await.ok()??;
    pid_in(lease.spec?.holder_identity.as_deref()?)
}

/// Wait until the Lease names the process `pid` holder; the time it took.
async fn wait_holder(leases: &Api<Lease>, name: &str, pid: u32, what: &str) -> Duration {
    let began = Instant::now();
    eventually(what, WAIT, || async {
        (holder_pid(leases, name).await == Some(pid)).then_some(())
    })
    .await;
    began.elapsed()
}

/// SIGKILL: the process gets no chance to release anything.
fn hard_kill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -KILL {pid} failed");
}

/// Whether the child `pid` has exited (the harness reaps it later: until
/// then it is a zombie).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) state …"
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

fn log(bed: &TestBed, name: &str) -> String {
    std::fs::read_to_string(bed.dir().join(format!("{name}.log"))).unwrap_or_default()
}

/// `tekfed_leader` as the hub `name` serves it.
fn leader_gauge(bed: &TestBed, name: &str) -> Option<String> {
    let text = scrape(&bed.metrics_addr(name)?).ok()?;
    let line = text.lines().find(|l| l.starts_with("tekfed_leader "))?;
    Some(line.trim_start_matches("tekfed_leader ").trim().to_owned())
}

/// How many member TaskRuns (in `ns`, over every member) each federated
/// run has, by its uid.
async fn copies_per_run(bed: &TestBed, ns: &str) -> BTreeMap<String, usize> {
    let mut copies = BTreeMap::new();
    for member in bed.members() {
        let api: Api<DynamicObject> = Api::namespaced_with(
            bed.client(&member).await.unwrap(),
            ns,
            &tekton_resource("TaskRun"),
        );
        for run in api.list(&ListParams::default()).await.unwrap().items {
            let uid = run
                .labels()
                .get("tekfed.io/federated-uid")
                .cloned()
                .unwrap_or_default();
            *copies.entry(uid).or_default() += 1;
        }
    }
    copies
}

/// Every run succeeded, and each has exactly one copy on the members.
async fn assert_each_ran_once(bed: &TestBed, api: &Api<FederatedTaskRun>, ns: &str, runs: usize) {
    let phases = run_phases(api).await;
    assert_eq!(phases.len(), runs);
    let copies = copies_per_run(bed, ns).await;
    assert_eq!(
        copies.len(),
        runs,
        "member runs for {} federated runs, expected {runs}",
        copies.len()
    );
    let twice: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "runs created more than once: {twice:?}");
}

fn count(phases: &[(String, Option<RunPhase>, Option<String>)], wanted: &[RunPhase]) -> usize {
    phases
        .iter()
        .filter(|(_, p, _)| p.is_some_and(|p| wanted.contains(&p)))
        .count()
}

fn labels(member: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("tekfed.io/test-member".to_owned(), member.to_owned())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leading_hub_mid_burst_hands_over_without_loss_or_duplicates() {
    let _turn = TURN.lock().await;
    const RUNS: usize = 150;
    let bed = TestBed::start(2).await.unwrap();
    let members = bed.members();
    for member in &members {
        bed.register_member(member, labels(member)).await.unwrap();
    }
    let hub = bed.client(HUB).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(hub.clone(), HUB_NAMESPACE);
    let args = ["--leader-elect", "--heartbeat-grace", "30"];
    let first = bed.start_hub("tekfed-hub", &args).unwrap();
    wait_holder(
        &leases,
        "tekfed-hub",
        first,
        "the first hub to take the Lease",
    )
    .await;
    let second = bed.start_hub("tekfed-hub-2", &args).unwrap();
    for member in &members {
        bed.start_agent(member, 1.0).await.unwrap();
    }
    wait_condition(&bed, &members, "Ready", WAIT).await.unwrap();

    // One leader: the second hub waits, naming the first, and runs nothing.
    eventually("the second hub to wait for the first", WAIT, || async {
        let first = format!("_{first}_");
        log(&bed, "tekfed-hub-2")
            .lines()
            .any(|l| l.contains("waiting to lead (held by") && l.contains(&first))
            .then_some(())
    })
    .await;
    eventually("both hubs to serve tekfed_leader", WAIT, || async {
        let gauges = (
            leader_gauge(&bed, "tekfed-hub")?,
            leader_gauge(&bed, "tekfed-hub-2")?,
        );
        (gauges == ("1".into(), "0".into())).then_some(())
    })
    .await;
    assert!(
        !log(&bed, "tekfed-hub-2").contains("leading"),
        "the standby hub leads too:\n{}",
        log(&bed, "tekfed-hub-2")
    );

    // A burst; the leader dies once a third of it is scheduled.
    let ns = bed.namespace("leader-hub", &[HUB]).await.unwrap();
    let api: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), &ns);
    let creating = {
        let (hub, ns) = (hub.clone(), ns.clone());
        tokio::spawn(async move { create_task_runs(&hub, &ns, RUNS, None).await })
    };
    let decided = eventually("a third of the runs to be scheduled", WAIT, || async {
        let phases = run_phases(&api).await;
        let decided = phases
            .iter()
            .filter(|(_, p, _)| p.is_some_and(|p| p != RunPhase::Queued))
            .count();
        (decided >= RUNS / 3).then_some(phases)
    })
    .await;
    hard_kill(first);
    let killed = Instant::now();
    let succeeded_at_kill = count(&decided, &[RunPhase::Succeeded]);
    assert!(
        succeeded_at_kill < RUNS,
        "the burst was over before the kill"
    );

    let takeover = wait_holder(
        &leases,
        "tekfed-hub",
        second,
        "the second hub to take the Lease",
    )
    .await;
    eventually("the second hub to report itself leader", WAIT, || async {
        (leader_gauge(&bed, "tekfed-hub-2")? == "1").then_some(())
    })
    .await;
    creating.await.unwrap();
    wait_all_succeeded(&api, "every run to succeed after the takeover", WAIT).await;
    let drained = killed.elapsed();
    assert_each_ran_once(&bed, &api, &ns, RUNS).await;
    println!(
        "FIGURES hub failover (lease {LEASE:?}, {RUNS} runs): leader killed with {} created, \
         {} scheduled, {succeeded_at_kill} succeeded; standby took the Lease {takeover:.1?} after \
         the kill; every run succeeded {drained:.1?} after it, each once",
        decided.len(),
        count(
            &decided,
            &[
                RunPhase::Scheduled,
                RunPhase::Running,
                RunPhase::Succeeded,
                RunPhase::Failed,
                RunPhase::Cancelled
            ]
        ),
    );
}

/// `tekfed-agent` for `member` with `--leader-elect`, its Lease in `lease_ns`.
fn agent_args(bed: &TestBed, member: &str, hub_kubeconfig: &Path, lease_ns: &str) -> Vec<String> {
    [
        "--cluster-name",
        member,
        "--kubeconfig",
        &bed.kubeconfig().to_string_lossy(),
        "--context",
        member,
        "--hub-kubeconfig",
        &hub_kubeconfig.to_string_lossy(),
        "--heartbeat-interval",
        "1",
        "--leader-elect",
        "--leader-elect-namespace",
        lease_ns,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leading_agent_hands_over_and_runs_keep_flowing() {
    let _turn = TURN.lock().await;
    const RUNS: usize = 60;
    const MEMBER: &str = "member-1";
    const LEASE_NAME: &str = "tekfed-agent-member-1";
    let bed = TestBed::start(1).await.unwrap();
    bed.register_member(MEMBER, labels(MEMBER)).await.unwrap();
    // The hub's heartbeat grace (30 s, its default) outlasts an agent
    // takeover (at most the 15 s lease and a poll): the hub must not
    // declare the cluster lost while the standby takes over.
    bed.start_hub("tekfed-hub", &["--heartbeat-grace", "30"])
        .unwrap();
    let hub = bed.client(HUB).await.unwrap();
    let member = bed.client(MEMBER).await.unwrap();
    let hub_kubeconfig = bed.agent_identity(MEMBER).await.unwrap();

    // A Lease namespace missing on the member: the agent refuses to start
    // and says what to do.
    let refused = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(binary("tekfed-agent"))
            .args(agent_args(
                &bed,
                MEMBER,
                &hub_kubeconfig,
                "no-such-namespace",
            ))
            .output(),
    )
    .await
    .expect("the agent to exit")
    .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("namespace no-such-namespace does not exist")
            && stderr.contains("--leader-elect-namespace"),
        "{stderr}"
    );

    let lease_ns = bed.namespace("agent-lease", &[MEMBER]).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(member.clone(), &lease_ns);
    let args = agent_args(&bed, MEMBER, &hub_kubeconfig, &lease_ns);
    let env = [("RUST_LOG", "info")];
    let mut agents = BTreeMap::new();
    for name in ["agent-a", "agent-b"] {
        let pid = bed
            .spawn(name, &binary("tekfed-agent"), &args, &env)
            .unwrap();
        agents.insert(pid, name);
    }
    wait_condition(&bed, &[MEMBER.to_owned()], "Ready", WAIT)
        .await
        .unwrap();
    let leader = eventually("one agent to take the Lease", WAIT, || async {
        holder_pid(&leases, LEASE_NAME)
            .await
            .filter(|p| agents.contains_key(p))
    })
    .await;
    let (&standby, &standby_name) = agents.iter().find(|(p, _)| **p != leader).unwrap();
    eventually("the other agent to wait", WAIT, || async {
        log(&bed, standby_name)
            .contains("waiting to lead (held by")
            .then_some(())
    })
    .await;

    // Runs flow; the leading agent dies once a third have succeeded.
    let ns = bed.namespace("leader-agent", &[HUB]).await.unwrap();
    let api: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), &ns);
    let creating = {
        let (hub, ns) = (hub.clone(), ns.clone());
        tokio::spawn(async move { create_task_runs(&hub, &ns, RUNS, None).await })
    };
    let at_kill = eventually("a third of the runs to succeed", WAIT, || async {
        let phases = run_phases(&api).await;
        (count(&phases, &[RunPhase::Succeeded]) >= RUNS / 3).then_some(phases)
    })
    .await;
    hard_kill(leader);
    let killed = Instant::now();
    let takeover = wait_holder(
        &leases,
        LEASE_NAME,
        standby,
        "the standby agent to take the Lease",
    )
    .await;
    creating.await.unwrap();
    wait_all_succeeded(&api, "every run to succeed after the takeover", WAIT).await;
    let drained = killed.elapsed();
    assert_each_ran_once(&bed, &api, &ns, RUNS).await;
    let phases = run_phases(&api).await;
    assert_eq!(count(&phases, &[RunPhase::Succeeded]), RUNS);

    // A graceful stop releases the Lease: a new standby takes over at its
    // next poll, long before the Lease could have expired.
    let third = bed
        .spawn("agent-c", &binary("tekfed-agent"), &args, &env)
        .unwrap();
    eventually("the new agent to wait", WAIT, || async {
        log(&bed, "agent-c")
            .contains("waiting to lead (held by")
            .then_some(())
    })
    .await;
    let stopping = Instant::now();
    bed.stop(standby_name);
    let handover = {
        wait_holder(
            &leases,
            LEASE_NAME,
            third,
            "the new agent to take the released Lease",
        )
        .await;
        stopping.elapsed()
    };
    assert!(
        log(&bed, standby_name).contains("released the Lease"),
        "{}",
        log(&bed, standby_name)
    );
    assert!(
        handover < LEASE,
        "the handover took {handover:?}: the Lease expired rather than being released"
    );
    let ns2 = bed.namespace("leader-agent-after", &[HUB]).await.unwrap();
    let api2: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), &ns2);
    create_task_runs(&hub, &ns2, 20, None).await;
    wait_all_succeeded(&api2, "runs after the handover to succeed", WAIT).await;
    assert_each_ran_once(&bed, &api2, &ns2, 20).await;

    // A leader that finds the Lease taken from it stops at once, non-zero.
    let mut lease = leases.get(LEASE_NAME).await.unwrap();
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = Some("intruder".into());
    }
    leases
        .replace(LEASE_NAME, &Default::default(), &lease)
        .await
        .unwrap();
    eventually(
        "the agent to exit once its Lease is taken",
        WAIT,
        || async { exited(third).then_some(()) },
    )
    .await;
    assert!(
        log(&bed, "agent-c").contains("lost the lease; exiting"),
        "{}",
        log(&bed, "agent-c")
    );
    println!(
        "FIGURES agent failover (lease {LEASE:?}, {RUNS} runs on one member): leader killed with \
         {} succeeded; standby took the Lease {takeover:.1?} after the kill; every run succeeded \
         {drained:.1?} after it, each once; after SIGTERM (Lease released) a standby took over in \
         {handover:.1?}",
        count(&at_kill, &[RunPhase::Succeeded]),
    );
}
