//! Credentials that expire and renew (issue 14): a member joined with
//! `kubectl tekfed join --token-ttl 10m`, the hub and its agent told to
//! renew with 9m30s left (`--renew-before`), so a renewal comes every 30 s
//! or so. Shown on real API servers:
//! - each of the three tokens (the hub's on the member, its log reader's,
//!   the agent's on the hub) is renewed at least three times, the agent's
//!   process stays the same, the member stays Ready, and a run made after
//!   that succeeds; `CredentialsExpiring` is `False`, `Valid`;
//! - when the hub may no longer renew (its Role on the member deleted),
//!   `CredentialsExpiring` turns `True`, `RenewalFailed`, naming the hub's
//!   token, with an Event; when the agent may not, it names the agent's;
//! - the agent uses a new token written into its kubeconfig file at once;
//!   when the token it uses is invalidated, it goes on with the one the
//!   file holds next, without a restart;
//! - `unjoin` revokes the tokens: the hub's old token gets 401 from the
//!   member, the agent's from the hub.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::Role;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;
use tekfed_api::{FederatedTaskRun, MemberCluster, MemberReport, RunPhase, cluster_namespace};
use tekfed_runtime::tokens::{Claims, kubeconfig_token, with_token};
use tekfed_testbed::federation::wait_condition;
use tekfed_testbed::{HUB, TestBed, eventually_logged, kubectl_tekfed};

const MEMBER: &str = "member-1";
const SYSTEM: &str = "tekfed-system";
const WAIT: Duration = Duration::from_secs(120);
/// Three renewals 30 s apart, and room for a loaded machine.
const RENEWALS_WAIT: Duration = Duration::from_secs(300);

fn tekfed(bed: &TestBed, args: &[&str]) -> (bool, String) {
    let kubeconfig = bed.kubeconfig().to_string_lossy();
    let mut all = args.to_vec();
    all.extend(["--kubeconfig", &kubeconfig, "--hub-context", HUB]);
    kubectl_tekfed(&all)
}

/// The kubeconfig in Secret `name`, if it is there.
async fn kubeconfig_in(secrets: &Api<Secret>, name: &str) -> Option<String> {
    let secret = secrets.get_opt(name).await.ok()??;
    String::from_utf8(secret.data?.get("kubeconfig")?.0.clone()).ok()
}

/// The token in Secret `name`'s kubeconfig.
async fn token_in(secrets: &Api<Secret>, name: &str) -> Option<String> {
    kubeconfig_token(&kubeconfig_in(secrets, name).await?, None).ok()
}

fn expiry(token: &str) -> i64 {
    Claims::of(token)
        .and_then(|c| c.exp)
        .expect("a token says when it expires")
}

/// A client of the kubeconfig `text`.
async fn client_of(text: &str) -> Client {
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::from_yaml(text).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    Client::try_from(config).unwrap()
}

/// The HTTP code a request with the kubeconfig `text` gets (listing
/// namespaces), 200 when it is answered.
async fn answer_to(text: &str) -> u16 {
    match Api::<Namespace>::all(client_of(text).await)
        .list_metadata(&ListParams::default().limit(1))
        .await
    {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(e) => panic!("no answer: {e}"),
    }
}

fn condition(
    mc: &MemberCluster,
    type_: &str,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    mc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// A token of the agent's hub ServiceAccount bound to a new Secret `name`
/// on the hub (deleting the Secret invalidates it), for `seconds`.
async fn bound_agent_token(hub: &Client, name: &str, seconds: i64) -> String {
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), SYSTEM);
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": SYSTEM},
    }))
    .unwrap();
    let secret = secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Secret".into()),
                name: Some(name.into()),
                uid: secret.metadata.uid,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(hub.clone(), SYSTEM)
        .create_token_request(
            &format!("tekfed-agent-{MEMBER}"),
            &PostParams::default(),
            &request,
        )
        .await
        .unwrap()
        .status
        .and_then(|s| s.token)
        .unwrap()
}

/// What the agent's report says of its token: when it expires, and when it
/// last heartbeat.
async fn agent_reported(reports: &Api<MemberReport>) -> Option<(i64, Timestamp)> {
    let status = reports.get(MEMBER).await.ok()?.status?;
    let expires = status.credential?.expiration_time?.0.as_second();
    Some((expires, status.heartbeat_time?.0))
}

#[tokio::test]
async fn tokens_renew_without_a_restart_and_unjoin_revokes_them() {
    let began = Instant::now();
    let bed = TestBed::start(1).await.unwrap();
    let hub = bed.client(HUB).await.unwrap();
    let member = bed.client(MEMBER).await.unwrap();

    // Tokens shorter than the TokenRequest API issues are refused up front.
    let (ok, out) = tekfed(
        &bed,
        &[
            "join",
            MEMBER,
            "--cluster-context",
            MEMBER,
            "--token-ttl",
            "5m",
        ],
    );
    assert!(
        !ok && out.contains("--token-ttl 5m is too short") && out.contains("10m"),
        "{out}"
    );
    let (ok, out) = tekfed(
        &bed,
        &[
            "join",
            MEMBER,
            "--cluster-context",
            MEMBER,
            "--token-ttl",
            "10m",
        ],
    );
    assert!(ok, "join: {out}");
    assert!(
        out.contains("Role tekfed-system/tekfed-hub-tokens")
            && out.contains("Role tekfed-system/tekfed-agent-member-1"),
        "join lets the hub and the agent renew their tokens: {out}"
    );
    bed.start_hub(
        "tekfed-hub",
        &["--renew-before", "9m30s", "--heartbeat-grace", "30"],
    )
    .unwrap();
    let agent_pid = bed
        .start_joined_agent_with(MEMBER, &["--renew-before", "9m30s"])
        .await
        .unwrap();
    wait_condition(&bed, &[MEMBER.to_owned()], "Ready", WAIT)
        .await
        .unwrap();
    let clusters: Api<MemberCluster> = Api::all(hub.clone());
    let ready_since = condition(&clusters.get(MEMBER).await.unwrap(), "Ready")
        .unwrap()
        .last_transition_time;

    // Three renewals of each token, the agent the same process throughout
    // and the member Ready.
    let hub_secrets: Api<Secret> = Api::namespaced(hub.clone(), SYSTEM);
    let member_secrets: Api<Secret> = Api::namespaced(member.clone(), SYSTEM);
    let watched: [(&str, &Api<Secret>, String); 3] = [
        ("hub", &hub_secrets, format!("tekfed-member-{MEMBER}")),
        (
            "log reader",
            &hub_secrets,
            format!("tekfed-member-{MEMBER}-logs"),
        ),
        ("agent", &member_secrets, "tekfed-hub-kubeconfig".to_owned()),
    ];
    // Each token seen, with when it was first seen.
    let mut seen: BTreeMap<&str, Vec<(String, Duration)>> = BTreeMap::new();
    let renewals_began = Instant::now();
    loop {
        for (who, secrets, name) in &watched {
            if let Some(token) = token_in(secrets, name).await {
                let tokens = seen.entry(who).or_default();
                if !tokens.iter().any(|(t, _)| *t == token) {
                    tokens.push((token, renewals_began.elapsed()));
                }
            }
        }
        assert_eq!(
            bed.pid_of(&format!("agent-{MEMBER}")),
            Some(agent_pid),
            "the agent's process changed"
        );
        let mc = clusters.get(MEMBER).await.unwrap();
        for type_ in ["Ready", "AgentReady"] {
            let c = condition(&mc, type_).unwrap();
            assert_eq!(c.status, "True", "{type_} went {}: {}", c.status, c.message);
        }
        if seen.len() == 3 && seen.values().all(|tokens| tokens.len() >= 4) {
            break;
        }
        assert!(
            renewals_began.elapsed() < RENEWALS_WAIT,
            "not three renewals of each token within {RENEWALS_WAIT:?}: {:?}\nhub log: {}\nagent log: {}",
            seen.iter()
                .map(|(who, t)| (who, t.len()))
                .collect::<Vec<_>>(),
            bed.log_of("tekfed-hub"),
            bed.log_of(&format!("agent-{MEMBER}"))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (who, tokens) in &seen {
        let at: Vec<String> = tokens
            .iter()
            .map(|(_, t)| format!("{:.1}s", t.as_secs_f64()))
            .collect();
        println!(
            "FIGURES {who} token: {} values, first seen at {}",
            tokens.len(),
            at.join(", ")
        );
        for pair in tokens.windows(2) {
            // Renewed with the same lifetime (exp - iat): TokenRequest's 10m.
            let (old, new) = (
                Claims::of(&pair[0].0).unwrap(),
                Claims::of(&pair[1].0).unwrap(),
            );
            assert_eq!(new.lifetime(), old.lifetime(), "{who}");
            assert_eq!(new.sub, old.sub, "{who}");
        }
    }
    let mc = clusters.get(MEMBER).await.unwrap();
    assert_eq!(
        condition(&mc, "Ready").unwrap().last_transition_time,
        ready_since,
        "Ready stayed True across the renewals"
    );

    // The agent uses the token it renewed (not the one its file still
    // holds), and the hub writes CredentialsExpiring=False, Valid.
    let reports: Api<MemberReport> = Api::namespaced(hub.clone(), &cluster_namespace(MEMBER));
    eventually_logged(
        &bed,
        "the agent to report its renewed token's expiry",
        WAIT,
        || {
            let (reports, secrets) = (reports.clone(), member_secrets.clone());
            async move {
                let latest = token_in(&secrets, "tekfed-hub-kubeconfig").await?;
                let (reported, _) = agent_reported(&reports).await?;
                (reported == expiry(&latest)).then_some(())
            }
        },
    )
    .await;
    // Nothing rewrote the agent's file (no kubelet here): the token it
    // uses is the one it renewed.
    let file = std::fs::read_to_string(bed.joined_agent_kubeconfig(MEMBER)).unwrap();
    let (reported, _) = agent_reported(&reports).await.unwrap();
    assert_ne!(reported, expiry(&kubeconfig_token(&file, None).unwrap()));
    let valid = eventually_logged(&bed, "CredentialsExpiring=False, Valid", WAIT, || {
        let clusters = clusters.clone();
        async move {
            let c = condition(&clusters.get(MEMBER).await.ok()?, "CredentialsExpiring")?;
            (c.status == "False" && c.reason == "Valid").then_some(c)
        }
    })
    .await;
    for who in [
        "the hub's token",
        "the log reader's token",
        "the agent's token",
    ] {
        assert!(valid.message.contains(who), "{}", valid.message);
    }

    // A run made after the third renewal succeeds (joined members label
    // the namespaces they create Pod Security restricted).
    let ns = bed.namespace("credentials", &[HUB]).await.unwrap();
    let runs: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), &ns);
    let run: FederatedTaskRun = serde_json::from_value(json!({
        "apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedTaskRun",
        "metadata": {"name": "after-renewals", "namespace": ns},
        "spec": {
            "template": {"spec": {"taskSpec": {
                "stepTemplate": {"securityContext": tekfed_api::guard::restricted_security_context()},
                "steps": [{"name": "s", "image": "ubuntu", "script": "true"}]}}},
            "placement": {"clusters": [{"name": MEMBER}]},
        },
    }))
    .unwrap();
    runs.create(&PostParams::default(), &run).await.unwrap();
    eventually_logged(
        &bed,
        "the run after three renewals to succeed",
        WAIT,
        || {
            let runs = runs.clone();
            async move {
                let phase = runs.get("after-renewals").await.ok()?.status?.phase?;
                assert_ne!(phase, RunPhase::Failed, "the run failed");
                (phase == RunPhase::Succeeded).then_some(())
            }
        },
    )
    .await;
    let renewed_in = began.elapsed();

    // The hub may no longer renew: CredentialsExpiring=True, naming its token.
    Api::<Role>::namespaced(member.clone(), SYSTEM)
        .delete("tekfed-hub-tokens", &DeleteParams::default())
        .await
        .unwrap();
    let failed = eventually_logged(
        &bed,
        "CredentialsExpiring=True, RenewalFailed",
        WAIT,
        || {
            let clusters = clusters.clone();
            async move {
                let c = condition(&clusters.get(MEMBER).await.ok()?, "CredentialsExpiring")?;
                (c.status == "True").then_some(c)
            }
        },
    )
    .await;
    println!(
        "FIGURES CredentialsExpiring when the hub may not renew: {}",
        failed.message
    );
    assert_eq!(failed.reason, "RenewalFailed");
    assert!(
        failed
            .message
            .contains("the hub's token on the member could not be renewed")
            && failed.message.contains("tekfed-system/tekfed-hub")
            && failed
                .message
                .contains(&format!("kubectl tekfed join {MEMBER}")),
        "{}",
        failed.message
    );
    assert!(!failed.message.contains("Status {"), "{}", failed.message);
    let mc = clusters.get(MEMBER).await.unwrap();
    assert_eq!(
        condition(&mc, "Ready").unwrap().status,
        "True",
        "renewal failing is not unreadiness"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(hub.clone(), "default");
    eventually_logged(
        &bed,
        "a CredentialsExpiring Event on the MemberCluster",
        WAIT,
        || {
            let events = events.clone();
            async move {
                events
                    .list(&ListParams::default())
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .find(|e| {
                        e.reason.as_deref() == Some("CredentialsExpiring")
                            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(MEMBER)
                    })
            }
        },
    )
    .await;

    // The agent may no longer renew (its Role on the hub deleted): the hub
    // says so too, from the agent's report, naming the agent's token.
    Api::<Role>::namespaced(hub.clone(), SYSTEM)
        .delete(&format!("tekfed-agent-{MEMBER}"), &DeleteParams::default())
        .await
        .unwrap();
    let failed = eventually_logged(
        &bed,
        "CredentialsExpiring to name the agent's token",
        WAIT,
        || {
            let clusters = clusters.clone();
            async move {
                let c = condition(&clusters.get(MEMBER).await.ok()?, "CredentialsExpiring")?;
                c.message
                    .contains("the agent's token on the hub could not be renewed")
                    .then_some(c)
            }
        },
    )
    .await;
    assert!(
        failed
            .message
            .contains(&format!("tekfed-system/tekfed-agent-{MEMBER}")),
        "{}",
        failed.message
    );

    // The agent uses a token written into its file at once. Tokens bound
    // to Secrets
    // on the hub (deleting one invalidates its token), for an hour: not
    // due for renewal in this test.
    let file_path = bed.joined_agent_kubeconfig(MEMBER);
    let first = bound_agent_token(&hub, "agent-token-1", 3600).await;
    std::fs::write(&file_path, with_token(&file, None, &first).unwrap()).unwrap();
    let reload_began = Instant::now();
    eventually_logged(
        &bed,
        "the agent to use the token written into its file",
        WAIT,
        || {
            let reports = reports.clone();
            let want = expiry(&first);
            async move { (agent_reported(&reports).await?.0 == want).then_some(()) }
        },
    )
    .await;
    println!(
        "FIGURES the agent used a new token from its file after {:.1}s",
        reload_began.elapsed().as_secs_f64()
    );
    // The token in use invalidated (its Secret deleted): the hub answers
    // the agent 401 until the file holds a new token, which it then uses
    // at once (read again on the 401, or at its next poll).
    let second = bound_agent_token(&hub, "agent-token-2", 3601).await;
    Api::<Secret>::namespaced(hub.clone(), SYSTEM)
        .delete("agent-token-1", &DeleteParams::default())
        .await
        .unwrap();
    let first_file = with_token(&file, None, &first).unwrap();
    eventually_logged(
        &bed,
        "the first file token to be refused once its Secret is gone",
        WAIT,
        || {
            let text = first_file.clone();
            async move { (answer_to(&text).await == 401).then_some(()) }
        },
    )
    .await;
    std::fs::write(&file_path, with_token(&file, None, &second).unwrap()).unwrap();
    let invalidated = Timestamp::now();
    eventually_logged(
        &bed,
        "heartbeats with the second token after the first was invalidated",
        WAIT,
        || {
            let reports = reports.clone();
            let want = expiry(&second);
            async move {
                let (expires, heartbeat) = agent_reported(&reports).await?;
                (expires == want && heartbeat.as_second() > invalidated.as_second() + 2)
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(bed.pid_of(&format!("agent-{MEMBER}")), Some(agent_pid));
    wait_condition(&bed, &[MEMBER.to_owned()], "AgentReady", WAIT)
        .await
        .unwrap();
    let agent_log = bed.log_of(&format!("agent-{MEMBER}"));
    println!(
        "FIGURES the agent switched tokens from its file {} time(s) on a change, {} after a 401",
        agent_log.matches("the file changed").count(),
        agent_log.matches("refused the token in use (401)").count()
    );

    // unjoin revokes: the hub's last token gets 401 from the member, the
    // log reader's too, the agent's from the hub.
    let hub_kubeconfig = kubeconfig_in(&hub_secrets, &format!("tekfed-member-{MEMBER}"))
        .await
        .unwrap();
    let logs_kubeconfig = kubeconfig_in(&hub_secrets, &format!("tekfed-member-{MEMBER}-logs"))
        .await
        .unwrap();
    let agent_kubeconfig = with_token(&file, None, &second).unwrap();
    assert_eq!(
        answer_to(&agent_kubeconfig).await,
        403,
        "the agent's token works (list namespaces is not its to do)"
    );
    assert_ne!(
        answer_to(&hub_kubeconfig).await,
        401,
        "the hub's token works before unjoin"
    );
    bed.stop("tekfed-hub");
    bed.stop(&format!("agent-{MEMBER}"));
    let (ok, out) = tekfed(&bed, &["unjoin", MEMBER, "--cluster-context", MEMBER]);
    assert!(ok && out.contains(&format!("unjoined {MEMBER}")), "{out}");
    assert!(out.contains("its tokens revoked"), "{out}");
    for (who, text) in [
        ("the hub's token on the member", &hub_kubeconfig),
        ("the log reader's token on the member", &logs_kubeconfig),
        ("the agent's token on the hub", &agent_kubeconfig),
    ] {
        // The API servers see a ServiceAccount go through a cache: soon.
        eventually_logged(
            &bed,
            &format!("{who} to be refused (401) after unjoin"),
            WAIT,
            || {
                let text = text.clone();
                async move { (answer_to(&text).await == 401).then_some(()) }
            },
        )
        .await;
    }
    println!(
        "FIGURES three renewals of each token and a run after them: {:.0}s from the start; the whole test {:.0}s",
        renewed_in.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
}
