//! `kubectl tekfed cordon | uncordon | status` against a real federation of
//! its own (cordoning would disturb tests that count where runs land).

use std::time::Duration;

use kube::api::Api;
use tekfed_api::{FederatedTaskRun, MemberCluster};
use tekfed_testbed::federation::{create_task_runs, federate, wait_all_succeeded};
use tekfed_testbed::{HUB, TestBed, eventually, kubectl_tekfed};

const WAIT: Duration = Duration::from_secs(120);

fn tekfed(bed: &TestBed, args: &[&str]) -> (bool, String) {
    let kubeconfig = bed.kubeconfig().to_string_lossy();
    let mut all = args.to_vec();
    all.extend(["--kubeconfig", &kubeconfig, "--context", HUB]);
    kubectl_tekfed(&all)
}

#[tokio::test]
async fn cordon_keeps_new_runs_off_and_uncordon_lets_them_back() {
    let bed = TestBed::start(2).await.unwrap();
    federate(&bed, &[]).await.unwrap();
    let hub = bed.client(HUB).await.unwrap();

    let (ok, out) = tekfed(&bed, &["cordon", "member-1"]);
    assert!(
        ok && out.contains("member-1 cordoned") && out.contains("kubectl tekfed uncordon member-1"),
        "{out}"
    );
    let (ok, out) = tekfed(&bed, &["cordon", "member-1"]);
    assert!(
        ok && out.contains("already cordoned; nothing changed"),
        "a second cordon: {out}"
    );
    let (ok, out) = tekfed(&bed, &["cordon", "member-9"]);
    assert!(
        !ok && out.contains("no member cluster member-9") && out.contains("kubectl get mc"),
        "{out}"
    );

    // kubectl get mc shows it, once the hub has seen it.
    let clusters: Api<MemberCluster> = Api::all(hub.clone());
    eventually("member-1 to be unschedulable", WAIT, || {
        let clusters = clusters.clone();
        async move {
            (clusters.get("member-1").await.ok()?.status?.schedulable == Some(false)).then_some(())
        }
    })
    .await;
    let ns = bed.namespace("cordon", &[HUB]).await.unwrap();
    create_task_runs(&hub, &ns, 10, None).await;
    let api: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), &ns);
    wait_all_succeeded(&api, "the runs to succeed on member-2 only", WAIT).await;
    for run in api.list(&Default::default()).await.unwrap() {
        assert_eq!(
            run.status.unwrap().cluster.as_deref(),
            Some("member-2"),
            "a run landed on the cordoned member"
        );
    }

    let (ok, out) = tekfed(&bed, &["status"]);
    assert!(ok, "{out}");
    let row = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(out.lines().next().unwrap().contains("SCHEDULABLE"), "{out}");
    assert!(row("member-1").contains("false"), "{out}");
    assert!(
        row("member-2").contains("True") && row("member-2").contains("true"),
        "{out}"
    );
    assert!(out.contains("queue: 0 run(s) waiting"), "{out}");

    let (ok, out) = tekfed(&bed, &["uncordon", "member-1"]);
    assert!(ok && out.contains("member-1 uncordoned"), "{out}");
    eventually("member-1 to be schedulable again", WAIT, || {
        let clusters = clusters.clone();
        async move {
            (clusters.get("member-1").await.ok()?.status?.schedulable == Some(true)).then_some(())
        }
    })
    .await;
    let ns = bed.namespace("uncordon", &[HUB]).await.unwrap();
    create_task_runs(&hub, &ns, 10, None).await;
    let api: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), &ns);
    wait_all_succeeded(&api, "the new runs to succeed", WAIT).await;
    let on_member_1 = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|r| r.status.as_ref().and_then(|s| s.cluster.as_deref()) == Some("member-1"))
        .count();
    assert!(
        on_member_1 >= 3,
        "after uncordon only {on_member_1} of 10 runs landed on member-1"
    );
}
