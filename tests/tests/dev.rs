//! `kubectl tekfed dev up | down`: a local federation that outlives the
//! command, joined with `join`, and both commands safe to run twice.

use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tekfed_api::MemberCluster;
use tekfed_testbed::{binary, kubectl_tekfed};

#[tokio::test]
async fn dev_up_leaves_a_ready_federation_running_and_dev_down_removes_it() {
    // The sibling binaries dev up runs.
    for name in ["tekfed-hub", "tekfed-agent"] {
        binary(name);
    }
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("fed");
    let d = dir.to_str().unwrap();

    let (ok, out) = kubectl_tekfed(&["dev", "up", "--members", "2", "--dir", d]);
    assert!(ok, "{out}");
    assert!(
        out.contains("local federation up") && out.contains("export KUBECONFIG="),
        "{out}"
    );

    // The command has returned; the federation is still there, Ready.
    let kubeconfig = Kubeconfig::read_from(dir.join("kubeconfig")).unwrap();
    let contexts: Vec<&str> = kubeconfig
        .contexts
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(contexts, ["hub", "member-1", "member-2"]);
    let options = KubeConfigOptions {
        context: Some("hub".into()),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    let clusters: Api<MemberCluster> = Api::all(Client::try_from(config).unwrap());
    let list = clusters.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 2);
    for mc in &list.items {
        let ready = mc.status.as_ref().unwrap().is_ready();
        assert!(ready, "{mc:?}");
    }

    let (ok, out) = kubectl_tekfed(&["dev", "up", "--members", "2", "--dir", d]);
    assert!(
        ok && out.contains("already up") && out.contains("nothing changed"),
        "{out}"
    );

    let pids: Vec<u32> = std::fs::read_to_string(dir.join("pids"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' ')?.0.parse().ok())
        .collect();
    let (ok, out) = kubectl_tekfed(&["dev", "down", "--dir", d]);
    assert!(ok && out.contains("stopped"), "{out}");
    assert!(!dir.exists());
    for pid in pids {
        // Gone, or a zombie waiting for its new parent to reap it.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        assert!(
            matches!(state, None | Some('Z' | 'X')),
            "process {pid} still runs: {stat}"
        );
    }
    let (ok, out) = kubectl_tekfed(&["dev", "down", "--dir", d]);
    assert!(ok && out.contains("nothing to stop"), "{out}");
}
