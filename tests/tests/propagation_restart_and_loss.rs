//! Propagation when the hub restarts and when a member is lost, on a test
//! bed of its own (these tests stop processes others would need).
//!
//! - A hub restart, and then its periodic resync, check every one of 1,000
//!   federated objects again and write nothing to members for objects that
//!   did not change (counted by the members' own `apiserver_request_total`;
//!   the hub's `tekfed_template_syncs_total` says when it has checked them).
//! - Deleting a federated object while a member is down completes after
//!   the deletion timeout, and the leftover is reported in an event.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use serde_json::json;
use tekfed_api::FederatedTask;
use tekfed_runtime::connect::tekton_resource;
use tekfed_testbed::federation::{scrape, wait_reachable};
use tekfed_testbed::{HUB, TestBed, eventually};

const WAIT: Duration = Duration::from_secs(90);
const OBJECTS: usize = 1000;

/// Writes (create, update, patch, server-side apply, delete) the API server has served for
/// `resource`, from its own metrics.
async fn writes(client: &Client, resource: &str) -> u64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains(&format!("resource=\"{resource}\"")))
        .filter(|l| {
            ["POST", "PUT", "PATCH", "APPLY", "DELETE"]
                .iter()
                .any(|v| l.contains(&format!("verb=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn create_task(hub: &Client, ns: &str, name: &str) {
    let api: Api<FederatedTask> = Api::namespaced(hub.clone(), ns);
    let object: FederatedTask = serde_json::from_value(json!({
        "apiVersion": "tekfed.io/v1alpha1",
        "kind": "FederatedTask",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "template": {"spec": {"steps": [{"name": "s", "image": "ubuntu", "script": "true"}]}},
            "placement": {"clusters": [{"name": "member-1"}, {"name": "member-2"}]},
        },
    }))
    .unwrap();
    api.create(&PostParams::default(), &object).await.unwrap();
}

async fn wait_propagated(hub: &Client, ns: &str, names: &[String]) {
    let api: Api<FederatedTask> = Api::namespaced(hub.clone(), ns);
    eventually("every FederatedTask to be Propagated", WAIT, || {
        let api = api.clone();
        async move {
            let list = api.list(&ListParams::default()).await.ok()?;
            let done = names.iter().all(|n| {
                list.items.iter().any(|ft| {
                    ft.metadata.name.as_deref() == Some(n.as_str())
                        && ft.status.as_ref().is_some_and(|s| {
                            s.conditions
                                .iter()
                                .any(|c| c.type_ == "Propagated" && c.status == "True")
                        })
                })
            });
            done.then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn restart_rewrites_nothing_and_deletion_survives_a_lost_member() {
    let bed = TestBed::start(2).await.unwrap();
    for member in bed.members() {
        bed.register_member(&member, BTreeMap::new()).await.unwrap();
    }
    bed.start_hub("tekfed-hub", &["--deletion-timeout", "5"])
        .unwrap();
    wait_reachable(&bed, &bed.members(), WAIT).await.unwrap();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("restart", &[HUB]).await.unwrap();
    let names: Vec<String> = (0..OBJECTS).map(|i| format!("task-{i:04}")).collect();
    let api: Api<FederatedTask> = Api::namespaced(hub.clone(), &ns);
    futures::stream::iter(names.iter().map(|name| create_task(&hub, &ns, name)))
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    wait_propagated(&hub, &ns, &names).await;
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        OBJECTS
    );

    // Restart the hub, resyncing every 10 s: it checks every copy again
    // from scratch, then again on each resync.
    let members = [
        bed.client("member-1").await.unwrap(),
        bed.client("member-2").await.unwrap(),
    ];
    let mut before = Vec::new();
    for m in &members {
        before.push(writes(m, "tasks").await);
    }
    bed.stop("tekfed-hub");
    bed.start_hub("tekfed-hub", &["--deletion-timeout", "5", "--resync", "10"])
        .unwrap();
    let copies = (OBJECTS * members.len()) as u64;
    let syncs = eventually(
        "the restarted hub to check every copy twice (start-up and one resync)",
        Duration::from_secs(180),
        || {
            let bed = &bed;
            async move {
                let text = scrape(&bed.metrics_addr("tekfed-hub")?).ok()?;
                let count = |outcome: &str| -> u64 {
                    text.lines()
                        .find(|l| {
                            l.starts_with("tekfed_template_syncs_total{")
                                && l.contains(&format!("outcome=\"{outcome}\""))
                        })
                        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                        .unwrap_or(0)
                };
                let all: u64 = ["unchanged", "applied", "conflict", "failed"]
                    .iter()
                    .map(|o| count(o))
                    .sum();
                (count("unchanged") >= 2 * copies).then_some((count("unchanged"), all))
            }
        },
    )
    .await;
    assert_eq!(
        syncs.0, syncs.1,
        "every check of an unchanged copy found it unchanged: {syncs:?}"
    );
    for (m, before) in members.iter().zip(before) {
        let after = writes(m, "tasks").await;
        assert_eq!(
            after - before,
            0,
            "a member saw {} task writes across the restart and a resync of {OBJECTS} unchanged objects",
            after - before
        );
    }
    // Still at work: a new object is applied.
    create_task(&hub, &ns, "after-restart").await;
    wait_propagated(&hub, &ns, &["after-restart".to_owned()]).await;

    // Lose member-2: the hub says so, then delete a federated task placed on it.
    bed.stop_cluster("member-2");
    let clusters: Api<tekfed_api::MemberCluster> = Api::all(hub.clone());
    let condition = eventually("member-2 to be Reachable=False", WAIT, || {
        let clusters = clusters.clone();
        async move {
            let mc = clusters.get("member-2").await.ok()?;
            mc.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Reachable" && c.status == "False")
        }
    })
    .await;
    assert_eq!(condition.reason, "Unreachable");
    assert!(
        condition.message.contains("cannot reach"),
        "{}",
        condition.message
    );
    api.delete("task-0000", &DeleteParams::default())
        .await
        .unwrap();
    let member_1: Api<DynamicObject> =
        Api::namespaced_with(members[0].clone(), &ns, &tekton_resource("Task"));
    eventually(
        "deletion to complete despite member-2 being down",
        WAIT,
        || {
            let api = api.clone();
            let member_1 = member_1.clone();
            async move {
                let gone = api.get_opt("task-0000").await.ok()?.is_none();
                let removed_from_1 = member_1.get_opt("task-0000").await.ok()?.is_none();
                (gone && removed_from_1).then_some(())
            }
        },
    )
    .await;
    let events: Api<Event> = Api::namespaced(hub.clone(), &ns);
    let leftover = eventually("a LeftoverOnMembers event", WAIT, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("LeftoverOnMembers"))
        }
    })
    .await;
    let note = leftover.note.unwrap_or_default();
    assert!(note.contains("member-2"), "{note}");
    assert_eq!(leftover.type_.as_deref(), Some("Warning"));
}
