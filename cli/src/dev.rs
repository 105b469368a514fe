//! `kubectl tekfed dev up | down`: a local federation on this machine, from
//! the same real binaries the tests use (etcd, kube-apiserver per cluster;
//! on each member Tekton's own controller and webhook, kube-scheduler,
//! kube-controller-manager and kwok playing the pods, since no kubelet
//! runs here), with the hub and one agent per member as background
//! processes. Members are joined with `join` itself.
//!
//! State lives in one folder: `kubeconfig` (contexts `hub`, `member-1`, …),
//! every process's log, and `pids`. `down` stops what `pids` lists and
//! removes the folder.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use tekfed_api::MemberCluster;
use tekfed_testbed::TestBed;

use crate::join::{self, SYSTEM_NAMESPACE};

const PIDS: &str = "pids";

/// A sibling binary of this one (`tekfed-hub`, `tekfed-agent`), as
/// `cargo build --workspace --bins` leaves them.
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("finding this program's folder")?;
    let path = me.with_file_name(name);
    if path.is_file() {
        Ok(path)
    } else {
        bail!(
            "{} not found next to {}; build everything first: cargo build --workspace --bins",
            name,
            me.display()
        )
    }
}

/// Running (a zombie, exited but not yet reaped by its new parent, is not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_owned();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

fn read_pids(dir: &Path) -> Vec<(String, u32)> {
    std::fs::read_to_string(dir.join(PIDS))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pid, name) = l.split_once(' ')?;
            Some((name.to_owned(), pid.parse().ok()?))
        })
        .collect()
}

fn usage(dir: &Path) -> String {
    let kc = dir.join("kubeconfig");
    format!(
        "Use it:\n  export KUBECONFIG={}\n  kubectl --context hub get memberclusters\n  \
         kubectl --context hub apply -f examples/hello-world.yaml\n  kubectl --context hub get ftr,fpr\n  \
         kubectl tekfed --context hub status\nLogs and pids: {}\nStop it: kubectl tekfed dev down --dir {}",
        kc.display(),
        dir.display(),
        dir.display()
    )
}

pub async fn up(members: usize, dir: PathBuf) -> anyhow::Result<()> {
    if !(1..=10).contains(&members) {
        bail!("--members must be between 1 and 10");
    }
    let running = read_pids(&dir);
    if !running.is_empty() {
        if running.iter().all(|(_, pid)| alive(*pid)) {
            println!(
                "a local federation is already up in {} ({} processes); nothing changed.\n{}",
                dir.display(),
                running.len(),
                usage(&dir)
            );
            return Ok(());
        }
        println!(
            "{} holds a federation that is partly down; replacing it",
            dir.display()
        );
        down(&dir).await?;
    } else if dir.join("kubeconfig").exists() {
        bail!(
            "{} holds a federation's files but no pids; remove the folder (or run dev down --dir {}) first",
            dir.display(),
            dir.display()
        );
    }
    let dir = std::path::absolute(&dir).context("resolving --dir")?;
    let (hub_bin, agent_bin) = (sibling("tekfed-hub")?, sibling("tekfed-agent")?);
    let began = Instant::now();
    println!(
        "starting etcd and {} API servers (hub + {members} members), and on each member Tekton, kube-scheduler, kube-controller-manager and kwok, in {}",
        members + 1,
        dir.display()
    );
    let bed = TestBed::start_in(members, Some(dir.clone()))
        .await
        .map_err(|e| anyhow!("starting the API servers: {e}"))?;
    println!(
        "  API servers and members' Tekton ready in {:.1}s",
        began.elapsed().as_secs_f64()
    );
    let kubeconfig = bed.kubeconfig().to_owned();
    let kc = kubeconfig.to_string_lossy().into_owned();
    let spawn = |name: &str, bin: &Path, args: Vec<String>| {
        bed.spawn(name, bin, &args, &[("RUST_LOG", "info")])
            .map_err(|e| anyhow!("starting {name}: {e}"))
    };
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    for member in bed.members() {
        join::join(join::JoinOptions {
            name: member.clone(),
            kubeconfig: Some(kubeconfig.clone()),
            cluster_context: member.clone(),
            hub_context: Some("hub".into()),
            labels: vec![
                ("tekfed.io/dev-member".into(), member.clone()),
                ("tekfed.io/pool".into(), "ci".into()),
            ],
            install_agent: false,
            agent_image: String::new(),
            member_server: None,
            hub_server: None,
            token_ttl: Duration::from_secs(24 * 3600),
            tenancy: Default::default(),
            quiet: true,
        })
        .await
        .with_context(|| format!("joining {member}"))?;
    }
    spawn(
        "tekfed-hub",
        &hub_bin,
        s(&[
            "--kubeconfig",
            &kc,
            "--context",
            "hub",
            "--namespace",
            SYSTEM_NAMESPACE,
            "--heartbeat-grace",
            "60",
            "--metrics-addr",
            "127.0.0.1:0",
        ]),
    )?;
    for member in bed.members() {
        // The agent runs as the hub identity join made for it.
        let secrets: Api<Secret> = Api::namespaced(
            bed.client(&member).await.map_err(|e| anyhow!("{e}"))?,
            SYSTEM_NAMESPACE,
        );
        let secret = secrets.get("tekfed-hub-kubeconfig").await?;
        let hub_kc = secret
            .data
            .and_then(|d| d.get("kubeconfig").cloned())
            .ok_or_else(|| anyhow!("join left no agent kubeconfig on {member}"))?;
        let path = dir.join(format!("agent-{member}-hub.kubeconfig"));
        std::fs::write(&path, hub_kc.0)?;
        spawn(
            &format!("agent-{member}"),
            &agent_bin,
            s(&[
                "--cluster-name",
                &member,
                "--kubeconfig",
                &kc,
                "--context",
                &member,
                "--hub-kubeconfig",
                &path.to_string_lossy(),
                "--hub-kubeconfig-secret",
                "tekfed-system/tekfed-hub-kubeconfig",
                "--heartbeat-interval",
                "1",
            ]),
        )?;
    }
    // Ready: every member reachable with a fresh heartbeat.
    let hub = bed.client("hub").await.map_err(|e| anyhow!("{e}"))?;
    let clusters: Api<MemberCluster> = Api::all(hub);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = clusters.list(&ListParams::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|mc| mc.status.as_ref().is_some_and(|s| s.is_ready()))
            .count();
        if ready == members {
            break;
        }
        if Instant::now() > deadline {
            let logs = bed.log_of("tekfed-hub");
            bail!("members not Ready after 120s ({ready}/{members}); hub log:\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let pids = bed.detach();
    let text: String = pids
        .iter()
        .map(|(name, pid)| format!("{pid} {name}\n"))
        .collect();
    std::fs::write(dir.join(PIDS), text)?;
    println!(
        "local federation up in {:.1}s: hub + {members} members joined, {} processes.\n{}",
        began.elapsed().as_secs_f64(),
        pids.len(),
        usage(&dir)
    );
    Ok(())
}

pub async fn down(dir: &Path) -> anyhow::Result<()> {
    let pids = read_pids(dir);
    if pids.is_empty() && !dir.exists() {
        println!("no local federation in {}; nothing to stop", dir.display());
        return Ok(());
    }
    // Controllers first, etcd last.
    for (_, pid) in pids.iter().rev() {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|(_, p)| alive(*p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (_, pid) in pids.iter().filter(|(_, p)| alive(*p)) {
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
    }
    // Return only once they are gone: a killed process takes a moment to exit.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|(_, p)| alive(*p)) {
        if Instant::now() > deadline {
            let left: Vec<String> = pids
                .iter()
                .filter(|(_, p)| alive(*p))
                .map(|(name, pid)| format!("{name} ({pid})"))
                .collect();
            bail!(
                "these processes did not stop even when killed: {}",
                left.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::remove_dir_all(dir)
        .or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        })
        .with_context(|| format!("removing {}", dir.display()))?;
    println!(
        "stopped {} processes and removed {}",
        pids.len(),
        dir.display()
    );
    Ok(())
}
