//! Benchmark 4, "Scheduler alone at scale": the pure scheduler over a
//! simulated fleet. **Simulation: no API servers**, no network, no Tekton;
//! only [`tekfed_hub::runs::scheduler`] and the placement resolution it calls.
//!
//! 1,000 member clusters with varied load, capacity, labels (5 regions,
//! 4 pools, gpu or not), taints, some cordoned or not Ready, and 100,000
//! queued runs (10,000 with `--quick`) with mixed placements: by name, by
//! label (`matchLabels`, `matchExpressions`), both, with tolerations, a few
//! `mode: All`, some matching nothing. Everything comes from a seeded
//! generator, so every run of the benchmark schedules the same fleet.
//!
//! Figures: whole-queue throughput (`Scheduler::schedule`), the latency of
//! each decision (`decide` then `assign`, the work `schedule` does per run),
//! peak memory (`VmHWM`), and the outcomes so a reader can see the
//! simulation is not trivial. It prints a table and writes them as JSON; it
//! never fails on time.
//!
//! ```text
//! cargo run --release -p tekfed-hub --example bench_scheduler -- [--quick] [--json PATH]
//! ```

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use tekfed_api::{
    ClusterRef, PlacementMode, RunPlacement, Taint, TaintEffect, Toleration, TolerationOperator,
};
use tekfed_hub::placement::Member;
use tekfed_hub::runs::scheduler::{ClusterView, Decision, RunRequest, Scheduled, Scheduler};

const CLUSTERS: usize = 1_000;
const RUNS_FULL: usize = 100_000;
const RUNS_QUICK: usize = 10_000;
const SEED: u64 = 0x7e4f_ed00_5ced_0004;

const REGIONS: [&str; 5] = ["eu-west", "eu-north", "us-east", "us-west", "ap-south"];
const POOLS: [&str; 4] = ["ci", "release", "batch", "nightly"];

#[derive(Parser, Debug)]
#[command(about = "Scheduler alone at scale (simulation: no API servers)")]
struct Args {
    /// 10,000 queued runs instead of 100,000 (CI smoke).
    #[arg(long)]
    quick: bool,
    /// Where to write the figures as JSON [default: target/bench/scheduler.json
    /// in the workspace].
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let json = args.json.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(Path::new("."))
            .join("target/bench/scheduler.json")
    });
    let runs = if args.quick { RUNS_QUICK } else { RUNS_FULL };
    let started = Instant::now();
    let rss_start = memory_mib("VmHWM");

    let mut rng = Rng(SEED);
    let clusters = fleet(&mut rng, CLUSTERS);
    let queue = queue(&mut rng, runs, CLUSTERS);
    let rss_simulation = memory_mib("VmHWM");

    // (a) The whole queue in one call, as the dispatcher does each round.
    let build_started = Instant::now();
    let mut scheduler = Scheduler::new(clusters.clone());
    let build = build_started.elapsed();
    let schedule_started = Instant::now();
    let decisions = scheduler.schedule(&queue);
    let schedule = schedule_started.elapsed();
    let rss_schedule = memory_mib("VmHWM");

    // (b) Each decision on its own, in the order `schedule` takes them,
    // doing what it does per run: decide, then count the assignment.
    let mut scheduler = Scheduler::new(clusters.clone());
    let mut order: Vec<&RunRequest> = queue.iter().collect();
    order.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.key.cmp(&b.key)));
    let mut latencies_ns = Vec::with_capacity(order.len());
    for (run, scheduled) in order.iter().zip(&decisions) {
        let (key, expected) = (&scheduled.key, &scheduled.decision);
        let t = Instant::now();
        let decision = scheduler.decide(&run.placement);
        if let Decision::Assign(to) = &decision {
            for c in to {
                scheduler.assign(c);
            }
        }
        latencies_ns.push(t.elapsed().as_nanos() as u64);
        // Not a timing check: the two measurements must schedule alike.
        assert!(
            run.key == *key && decision == *expected,
            "decide+assign disagrees with schedule on {key}"
        );
    }
    latencies_ns.sort_unstable();
    let rss_peak = memory_mib("VmHWM");

    let outcome = Outcome::of(&clusters, &decisions);
    let figures = Figures {
        mode: if args.quick { "quick" } else { "full" },
        clusters: clusters.len(),
        runs: queue.len(),
        build,
        schedule,
        p50_us: percentile_us(&latencies_ns, 50.0),
        p99_us: percentile_us(&latencies_ns, 99.0),
        max_us: latencies_ns.last().copied().unwrap_or(0) as f64 / 1e3,
        mean_us: latencies_ns.iter().sum::<u64>() as f64 / latencies_ns.len().max(1) as f64 / 1e3,
        rss_start,
        rss_simulation,
        rss_schedule,
        rss_peak,
        outcome,
        wall: started.elapsed(),
    };
    figures.print();
    figures.write(&json)?;
    println!("figures written to {}", json.display());
    Ok(())
}

/// A small seeded generator (splitmix64): the same fleet and queue every run,
/// without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

fn cluster_name(i: usize) -> String {
    format!("member-{i:04}")
}

/// 1,000 clusters: 60% capped at 20–200 runs, the rest uncapped; load from
/// idle to full; 15% gpu (tainted), 3% under a `NoExecute` maintenance
/// taint, 2% cordoned, 3% not Ready.
fn fleet(rng: &mut Rng, n: usize) -> Vec<ClusterView> {
    (0..n)
        .map(|i| {
            let gpu = rng.chance(0.15);
            let labels = BTreeMap::from([
                ("region".to_string(), rng.pick(&REGIONS).to_string()),
                ("pool".to_string(), rng.pick(&POOLS).to_string()),
                ("gpu".to_string(), gpu.to_string()),
            ]);
            let mut taints = Vec::new();
            if gpu {
                taints.push(Taint {
                    key: "gpu".into(),
                    value: Some("true".into()),
                    effect: TaintEffect::NoSchedule,
                });
            }
            if rng.chance(0.03) {
                taints.push(Taint {
                    key: "maintenance".into(),
                    value: None,
                    effect: TaintEffect::NoExecute,
                });
            }
            let max_concurrent_runs = rng.chance(0.6).then(|| 20 + rng.below(181) as u64);
            let reported = match max_concurrent_runs {
                Some(max) => rng.below(max as usize + 1) as u64,
                None => rng.below(150) as u64,
            };
            ClusterView {
                member: Member {
                    name: cluster_name(i),
                    labels,
                    taints,
                },
                ready: !rng.chance(0.03),
                unschedulable: rng.chance(0.02),
                max_concurrent_runs,
                reported,
                assigned_since_report: 0,
            }
        })
        .collect()
}

/// Queued runs with mixed placements, created ten a second, arriving out of
/// order (the scheduler sorts them).
fn queue(rng: &mut Rng, n: usize, clusters: usize) -> Vec<RunRequest> {
    let mut runs: Vec<RunRequest> = (0..n)
        .map(|i| RunRequest {
            key: format!("ci/run-{i:06}"),
            created: 1_700_000_000 + (i / 10) as i64,
            placement: placement(rng, clusters),
            refused: Default::default(),
        })
        .collect();
    // Fisher–Yates, so the queue does not arrive already in order.
    for i in (1..runs.len()).rev() {
        runs.swap(i, rng.below(i + 1));
    }
    runs
}

fn placement(rng: &mut Rng, clusters: usize) -> RunPlacement {
    let roll = rng.below(1000);
    let mut p = RunPlacement::default();
    match roll {
        // 30%: by name, 1–5 clusters.
        0..300 => p.clusters = names(rng, clusters, 1..=5),
        // 30%: matchLabels, a pool and sometimes a region.
        300..600 => {
            let mut labels = BTreeMap::from([("pool".into(), rng.pick(&POOLS).into())]);
            if rng.chance(0.5) {
                labels.insert("region".into(), rng.pick(&REGIONS).into());
            }
            p.cluster_selector = Some(LabelSelector {
                match_labels: Some(labels),
                ..Default::default()
            });
        }
        // 15%: matchExpressions, regions In, gpu NotIn, pool Exists.
        600..750 => {
            let (a, b) = (rng.pick(&REGIONS), rng.pick(&REGIONS));
            p.cluster_selector = Some(LabelSelector {
                match_expressions: Some(vec![
                    requirement("region", "In", &[a, b]),
                    requirement("gpu", "NotIn", &["true"]),
                    requirement("pool", "Exists", &[]),
                ]),
                ..Default::default()
            });
        }
        // 12%: names and a selector (their intersection; often empty).
        750..870 => {
            p.clusters = names(rng, clusters, 3..=5);
            p.cluster_selector = Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "region".into(),
                    rng.pick(&REGIONS).into(),
                )])),
                ..Default::default()
            });
        }
        // 9%: gpu runs, tolerating the gpu taint.
        870..960 => {
            p.cluster_selector = Some(LabelSelector {
                match_labels: Some(BTreeMap::from([
                    ("gpu".into(), "true".into()),
                    ("pool".into(), rng.pick(&POOLS).into()),
                ])),
                ..Default::default()
            });
            p.tolerations = vec![Toleration {
                key: Some("gpu".into()),
                value: Some("true".into()),
                ..Default::default()
            }];
        }
        // 3%: tolerate everything, matchExpressions on the pool.
        960..990 => {
            p.cluster_selector = Some(LabelSelector {
                match_expressions: Some(vec![requirement("pool", "In", &["ci", "batch"])]),
                ..Default::default()
            });
            p.tolerations = vec![Toleration {
                operator: Some(TolerationOperator::Exists),
                ..Default::default()
            }];
        }
        // 0.5%: a label nobody has, or a cluster that is not a member.
        990..995 => {
            if rng.chance(0.5) {
                p.cluster_selector = Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("region".into(), "mars".into())])),
                    ..Default::default()
                });
            } else {
                p.clusters = vec![ClusterRef {
                    name: "not-joined".into(),
                }];
            }
        }
        // 0.1%: an invalid selector (the user's to fix).
        995..996 => {
            p.cluster_selector = Some(LabelSelector {
                match_expressions: Some(vec![requirement("region", "Near", &["eu-west"])]),
                ..Default::default()
            });
        }
        // 0.4%: mode All, over a few named clusters or one region and pool.
        _ => {
            p.mode = PlacementMode::All;
            if rng.chance(0.5) {
                p.clusters = names(rng, clusters, 2..=5);
            } else {
                p.cluster_selector = Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([
                        ("region".into(), rng.pick(&REGIONS).into()),
                        ("pool".into(), rng.pick(&POOLS).into()),
                    ])),
                    ..Default::default()
                });
            }
        }
    }
    p
}

/// Between `count.start()` and `count.end()` member names, at random.
fn names(rng: &mut Rng, clusters: usize, count: RangeInclusive<usize>) -> Vec<ClusterRef> {
    let n = count.start() + rng.below(count.end() - count.start() + 1);
    (0..n)
        .map(|_| ClusterRef {
            name: cluster_name(rng.below(clusters)),
        })
        .collect()
}

fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
    }
}

/// What the scheduler did with the queue.
struct Outcome {
    /// Runs assigned (a `mode: All` run counts once).
    assigned: usize,
    /// Member runs created: one per assigned run, one per cluster for `All`.
    copies: usize,
    queued: usize,
    /// Queued runs by `Scheduled=False` reason.
    by_reason: BTreeMap<&'static str, usize>,
    /// Clusters that can take runs (Ready and not cordoned).
    eligible: usize,
    /// Among those: the most runs one was given, and the mean.
    max_per_cluster: usize,
    mean_per_cluster: f64,
    /// FNV-1a over every (run, decision) in order: equal digests before
    /// and after a change to the scheduler mean it decides exactly alike.
    digest: u64,
}

impl Outcome {
    fn of(clusters: &[ClusterView], decisions: &[Scheduled]) -> Self {
        let mut per_cluster: BTreeMap<&str, usize> = BTreeMap::new();
        let (mut assigned, mut copies) = (0, 0);
        let mut by_reason = BTreeMap::new();
        let mut digest = 0xcbf2_9ce4_8422_2325_u64;
        for Scheduled {
            key, decision: d, ..
        } in decisions
        {
            for byte in format!("{key} {d:?}\n").bytes() {
                digest = (digest ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
            match d {
                Decision::Assign(to) => {
                    assigned += 1;
                    copies += to.len();
                    for c in to {
                        *per_cluster.entry(c.as_str()).or_default() += 1;
                    }
                }
                Decision::Queue(reason) => *by_reason.entry(reason.reason()).or_default() += 1,
            }
        }
        let eligible: Vec<usize> = clusters
            .iter()
            .filter(|c| c.ready && !c.unschedulable)
            .map(|c| {
                per_cluster
                    .get(c.member.name.as_str())
                    .copied()
                    .unwrap_or(0)
            })
            .collect();
        Self {
            assigned,
            copies,
            queued: decisions.len() - assigned,
            by_reason,
            eligible: eligible.len(),
            max_per_cluster: eligible.iter().copied().max().unwrap_or(0),
            mean_per_cluster: eligible.iter().sum::<usize>() as f64 / eligible.len().max(1) as f64,
            digest,
        }
    }
}

struct Figures {
    mode: &'static str,
    clusters: usize,
    runs: usize,
    build: Duration,
    schedule: Duration,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    mean_us: f64,
    rss_start: f64,
    rss_simulation: f64,
    rss_schedule: f64,
    rss_peak: f64,
    outcome: Outcome,
    wall: Duration,
}

impl Figures {
    fn decisions_per_s(&self) -> f64 {
        self.runs as f64 / self.schedule.as_secs_f64()
    }

    fn balance(&self) -> f64 {
        self.outcome.max_per_cluster as f64 / self.outcome.mean_per_cluster.max(f64::MIN_POSITIVE)
    }

    fn print(&self) {
        let o = &self.outcome;
        println!(
            "Scheduler alone (simulation: no API servers; {} clusters, {} queued runs){}",
            thousands(self.clusters),
            thousands(self.runs),
            if self.mode == "quick" { " [quick]" } else { "" }
        );
        println!("machine: {} cores, {}", nproc(), cpu_model());
        let rows = [
            (
                "Scheduler::new (index the fleet)",
                format!("{:.2} ms", ms(self.build)),
            ),
            (
                "schedule(whole queue)",
                format!("{:.3} s", self.schedule.as_secs_f64()),
            ),
            ("decisions/s", format!("{:.0}", self.decisions_per_s())),
            (
                "per decision p50 / p99 / max",
                format!(
                    "{:.1} / {:.1} / {:.1} µs",
                    self.p50_us, self.p99_us, self.max_us
                ),
            ),
            ("per decision mean", format!("{:.1} µs", self.mean_us)),
            (
                "peak RSS (VmHWM)",
                format!(
                    "{:.1} MiB (start {:.1}, after simulation {:.1}, after schedule {:.1})",
                    self.rss_peak, self.rss_start, self.rss_simulation, self.rss_schedule
                ),
            ),
            (
                "assigned",
                format!(
                    "{} runs, {} member runs",
                    thousands(o.assigned),
                    thousands(o.copies)
                ),
            ),
            (
                "queued",
                format!(
                    "{} ({})",
                    thousands(o.queued),
                    o.by_reason
                        .iter()
                        .map(|(r, n)| format!("{r} {}", thousands(*n)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            (
                "balance, max/mean per eligible cluster",
                format!(
                    "{:.2} ({} max, {:.1} mean, {} eligible clusters)",
                    self.balance(),
                    o.max_per_cluster,
                    o.mean_per_cluster,
                    o.eligible
                ),
            ),
            ("decisions digest", format!("{:016x}", o.digest)),
            (
                "benchmark wall time",
                format!("{:.1} s", self.wall.as_secs_f64()),
            ),
        ];
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        println!("| {:width$} | value |", "figure");
        println!("| {:-<width$} | ----- |", "");
        for (k, v) in rows {
            println!("| {k:width$} | {v} |");
        }
    }

    fn write(&self, path: &Path) -> anyhow::Result<()> {
        let o = &self.outcome;
        let mut json = serde_json::json!({
            "scheduler_simulation": "pure scheduler over simulated clusters; no API servers",
            "scheduler_mode": self.mode,
            "scheduler_clusters": self.clusters,
            "scheduler_runs": self.runs,
            "scheduler_build_ms": round(ms(self.build), 3),
            "scheduler_schedule_s": round(self.schedule.as_secs_f64(), 4),
            "scheduler_decisions_per_s": self.decisions_per_s().round(),
            "scheduler_decision_p50_us": round(self.p50_us, 2),
            "scheduler_decision_p99_us": round(self.p99_us, 2),
            "scheduler_decision_max_us": round(self.max_us, 2),
            "scheduler_decision_mean_us": round(self.mean_us, 2),
            "scheduler_rss_start_mib": round(self.rss_start, 1),
            "scheduler_rss_after_simulation_mib": round(self.rss_simulation, 1),
            "scheduler_peak_rss_mib": round(self.rss_peak, 1),
            "scheduler_assigned": o.assigned,
            "scheduler_assigned_member_runs": o.copies,
            "scheduler_queued": o.queued,
            "scheduler_eligible_clusters": o.eligible,
            "scheduler_balance_max_over_mean": round(self.balance(), 3),
            "scheduler_decisions_digest": format!("{:016x}", o.digest),
            "scheduler_wall_s": round(self.wall.as_secs_f64(), 2),
            "machine_nproc": nproc(),
            "machine_cpu": cpu_model(),
        });
        for (reason, n) in &o.by_reason {
            json[format!("scheduler_queued_{}", snake(reason))] = (*n).into();
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// `p`th percentile (nearest rank) of sorted nanoseconds, in microseconds.
fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_ns.len() as f64).ceil() as usize;
    sorted_ns[rank.clamp(1, sorted_ns.len()) - 1] as f64 / 1e3
}

/// A `kB` line of `/proc/self/status` (`VmHWM`: peak resident set), in MiB.
fn memory_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// `AllClustersFull` → `all_clusters_full`.
fn snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, ch) in camel.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}
