//! A member's health, as its `MemberCluster` status says it: `Reachable`
//! (the hub's own probe of the member's API server), `AgentReady` (the
//! agent's heartbeats, timed on the hub's own clock against the grace) and
//! `Ready`, both of them, which runs need; and apart from those,
//! `CredentialsExpiring` ([`credentials_condition`]): whether a credential
//! of the member could not be renewed. Pure, so every case is a unit test;
//! [`super::controller`] probes, renews ([`super::credentials`]), reads the
//! agent's report, and writes.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use tekfed_api::{MemberClusterStatus, MemberReportStatus};

use super::Unreachable;

/// The condition saying whether the hub reaches the member.
pub const REACHABLE: &str = "Reachable";
/// The condition saying whether the member's agent heartbeat is fresh.
pub const AGENT_READY: &str = "AgentReady";
/// Reachable and AgentReady: runs may be scheduled here.
pub const READY: &str = "Ready";
/// `AgentReady=False`: no new heartbeat seen for longer than the grace.
/// Runs leave the cluster ([`crate::runs::moves`]).
pub const HEARTBEAT_LOST: &str = "HeartbeatLost";
/// `AgentReady=False`: silent too, but so are most members at once, which
/// says more about the hub's own view (its API server, its network) than
/// about the members: no run moves while it lasts.
pub const DISRUPTION: &str = "Disruption";
/// True when a credential of the member was due for renewal and could not
/// be renewed. It does not touch `Ready`: the credential still works until
/// it expires, and then `Reachable` or `AgentReady` says so.
pub const CREDENTIALS_EXPIRING: &str = "CredentialsExpiring";

/// What the hub has seen of one member's heartbeats. The heartbeat the
/// agent writes is a time on the member's clock, so it is only ever
/// compared with the one before it, never subtracted from the hub's
/// clock: what counts is when the hub saw it change (as Kubernetes' node
/// lifecycle controller times node leases).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The heartbeat as the agent last wrote it.
    pub heartbeat: Time,
    /// When the hub first saw that value, on its own clock.
    pub at: Timestamp,
}

/// What the hub has seen after reading the report again: a new value is
/// seen now; the same one keeps the time it was first seen.
pub fn observe(previous: Option<&Seen>, heartbeat: Option<&Time>, now: Timestamp) -> Option<Seen> {
    let heartbeat = heartbeat?;
    match previous {
        Some(p) if &p.heartbeat == heartbeat => Some(p.clone()),
        _ => Some(Seen {
            heartbeat: heartbeat.clone(),
            at: now,
        }),
    }
}

/// How long the hub has gone without seeing a new heartbeat (`None`: it
/// never saw one). Counted from the later of when it saw the last one and
/// when its own view of the reports began (`view_since`: the hub's start,
/// or the last time it could not read them): a hub that was down, or cut
/// off from its API server, gives every member a whole grace again rather
/// than declaring all of them lost at once.
pub fn silence(seen: Option<&Seen>, view_since: Timestamp, now: Timestamp) -> Option<Duration> {
    let since = seen?.at.max(view_since);
    Some(now.duration_since(since).unsigned_abs())
}

/// Whether the members going silent (the caller counts those silent for
/// half the grace) are most of them: at least two, and more than half of
/// those that ever reported. Then the hub suspects
/// itself and moves nothing (Kubernetes' full-disruption mode). One silent
/// member of one is lost as before: there is nothing to compare it with.
pub fn disrupted(silent: usize, reporting: usize) -> bool {
    silent >= 2 && silent * 2 > reporting
}

/// The hub's view of one member's heartbeats, for [`fold_member_status`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatView {
    /// [`silence`]: `None` when no heartbeat was ever seen.
    pub silence: Option<Duration>,
    /// When the hub last saw a new heartbeat (its clock).
    pub seen_at: Option<Timestamp>,
    /// Most members are silent together ([`disrupted`]).
    pub disrupted: bool,
}

/// The `MemberCluster` status from what the hub saw (`version`: the probe;
/// `heartbeats`: when it saw the agent's heartbeat change) and what the
/// agent reported. `Ready` = `Reachable` and `AgentReady` (a new heartbeat
/// seen within `grace`); runs need `Ready`.
#[allow(clippy::too_many_arguments)]
pub fn fold_member_status(
    previous: &MemberClusterStatus,
    version: Result<String, Unreachable>,
    report: Option<&MemberReportStatus>,
    heartbeats: HeartbeatView,
    unschedulable: bool,
    assigned: i64,
    grace: Duration,
    now: k8s_openapi::jiff::Timestamp,
) -> MemberClusterStatus {
    let (reachable, reason, message, kubernetes_version) = match version {
        Ok(v) => (
            true,
            "Connected".to_owned(),
            "the hub reaches the member's API server".to_owned(),
            Some(v),
        ),
        Err(u) => (
            false,
            u.reason.to_owned(),
            u.message,
            previous.kubernetes_version.clone(),
        ),
    };
    let (agent_ready, agent_reason, agent_message) = match heartbeats.silence {
        None => (
            false,
            "NoHeartbeat",
            "no heartbeat from the member's agent yet; is tekfed-agent running there?".to_owned(),
        ),
        Some(age) if age <= grace => (
            true,
            "HeartbeatFresh",
            format!("last heartbeat seen {}s ago", age.as_secs()),
        ),
        Some(age) if heartbeats.disrupted => (
            false,
            DISRUPTION,
            format!(
                "no heartbeat seen for {}s (grace {}s), but most members went silent together: \
                 the hub suspects its own view (its API server or network) and moves no runs until heartbeats return",
                age.as_secs(),
                grace.as_secs()
            ),
        ),
        Some(age) => (
            false,
            HEARTBEAT_LOST,
            format!(
                "no heartbeat seen for {}s (grace {}s)",
                age.as_secs(),
                grace.as_secs()
            ),
        ),
    };
    let ready = reachable && agent_ready;
    let (ready_reason, ready_message) = if ready {
        (
            "Ready".to_owned(),
            "reachable, and the agent's heartbeat is fresh".to_owned(),
        )
    } else if !reachable {
        (reason.clone(), message.clone())
    } else {
        (agent_reason.to_owned(), agent_message.clone())
    };
    let condition = |type_: &str, ok: bool, reason: String, message: String| {
        condition(previous, type_, ok, reason, message, now)
    };
    MemberClusterStatus {
        conditions: vec![
            condition(REACHABLE, reachable, reason, message),
            condition(
                AGENT_READY,
                agent_ready,
                agent_reason.to_owned(),
                agent_message,
            ),
            condition(READY, ready, ready_reason, ready_message),
        ],
        schedulable: Some(ready && !unschedulable),
        // The hub's time, like every time it judges by.
        last_heartbeat_time: heartbeats.seen_at.map(Time),
        kubernetes_version: report
            .and_then(|r| r.kubernetes_version.clone())
            .or(kubernetes_version),
        tekton_version: report.and_then(|r| r.tekton_version.clone()),
        load: report.and_then(|r| r.load.clone()),
        assigned_runs: Some(assigned),
    }
}

/// Condition `type_` as it is now, keeping its transition time from
/// `previous` while its status holds.
fn condition(
    previous: &MemberClusterStatus,
    type_: &str,
    ok: bool,
    reason: String,
    message: String,
    now: Timestamp,
) -> Condition {
    let old = previous.conditions.iter().find(|c| c.type_ == type_);
    let status = if ok { "True" } else { "False" };
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason,
        message,
        observed_generation: None,
        last_transition_time: old
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now)),
    }
}

/// Whose credential: the two the hub holds for a member, or its agent's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialOf {
    /// The hub's identity on the member (`MemberCluster.spec.secretRef`).
    Hub,
    /// The hub's log reader on the member (`spec.logsSecretRef`).
    LogReader,
    /// The agent's identity on the hub (its `MemberReport` says).
    Agent,
}

impl CredentialOf {
    /// What the credential is, for a message.
    pub fn describe(self) -> &'static str {
        match self {
            CredentialOf::Hub => "the hub's token on the member",
            CredentialOf::LogReader => "the log reader's token on the member",
            CredentialOf::Agent => "the agent's token on the hub",
        }
    }
}

/// One credential of a member, as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub of: CredentialOf,
    /// When it expires; `None` when it does not say (not a token, or one
    /// without an expiry).
    pub expires: Option<Timestamp>,
    /// Why renewing it failed, when it was due (one line).
    pub renewal_failure: Option<String>,
}

/// The agent's credential as its report says it (its words bounded and on
/// one line: a member's report is not trusted).
pub fn agent_credential(report: Option<&MemberReportStatus>) -> Option<Credential> {
    let reported = report?.credential.as_ref()?;
    Some(Credential {
        of: CredentialOf::Agent,
        expires: reported.expiration_time.as_ref().map(|t| t.0),
        renewal_failure: reported
            .renewal_failure
            .as_deref()
            .map(crate::errors::sanitize),
    })
}

/// `CredentialsExpiring` from what was seen of each credential:
/// - `True`, `RenewalFailed`: one was due for renewal and could not be
///   renewed; the message names each, when it expires, why, and what to
///   do (join again);
/// - `False`, `Valid`: renewal works; the message says when each expires;
/// - `False`, `NoExpiry`: none says when it expires (not tokens).
///
/// The message holds no relative time, so it changes only when a
/// credential does: a status is not rewritten at every probe.
pub fn credentials_condition(
    previous: &MemberClusterStatus,
    cluster: &str,
    credentials: &[Credential],
    now: Timestamp,
) -> Condition {
    let failed: Vec<String> = credentials
        .iter()
        .filter_map(|c| {
            let why = c.renewal_failure.as_ref()?;
            let when = match c.expires {
                Some(t) if t <= now => format!("it expired at {t}"),
                Some(t) => format!("it expires at {t}"),
                None => "its expiry is unknown".to_owned(),
            };
            Some(format!(
                "{} could not be renewed ({when}): {why}",
                c.of.describe()
            ))
        })
        .collect();
    let (expiring, reason, message) = if !failed.is_empty() {
        (
            true,
            "RenewalFailed",
            format!(
                "{}. Run `kubectl tekfed join {cluster} --cluster-context <its context>` again to issue new tokens",
                failed.join("; ")
            ),
        )
    } else {
        let valid: Vec<String> = credentials
            .iter()
            .filter_map(|c| Some(format!("{} expires at {}", c.of.describe(), c.expires?)))
            .collect();
        if valid.is_empty() {
            (
                false,
                "NoExpiry",
                "the member's credentials do not say when they expire (not ServiceAccount tokens): nothing to renew".to_owned(),
            )
        } else {
            (
                false,
                "Valid",
                format!("{}; each is renewed before then", valid.join(", ")),
            )
        }
    };
    condition(
        previous,
        CREDENTIALS_EXPIRING,
        expiring,
        reason.to_owned(),
        message,
        now,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> k8s_openapi::jiff::Timestamp {
        k8s_openapi::jiff::Timestamp::from_second(s).unwrap()
    }

    fn report(heartbeat: i64) -> MemberReportStatus {
        MemberReportStatus {
            heartbeat_time: Some(Time(at(heartbeat))),
            load: Some(tekfed_api::ClusterLoad {
                running: 3,
                pending: 1,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A heartbeat seen at `since` and not since, judged at `now`.
    fn seen(since: i64, now: i64) -> HeartbeatView {
        HeartbeatView {
            silence: Some(Duration::from_secs((now - since) as u64)),
            seen_at: Some(at(since)),
            disrupted: false,
        }
    }

    fn status_of(s: &MemberClusterStatus, type_: &str) -> (String, String) {
        let c = s.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn ready_needs_reachable_and_a_fresh_heartbeat() {
        let grace = Duration::from_secs(30);
        let fresh = fold_member_status(
            &Default::default(),
            Ok("v1.37.2".into()),
            Some(&report(100)),
            seen(100, 110),
            false,
            2,
            grace,
            at(110),
        );
        assert_eq!(status_of(&fresh, READY), ("True".into(), "Ready".into()));
        assert_eq!(fresh.schedulable, Some(true));
        assert_eq!(fresh.load.as_ref().unwrap().running, 3);
        assert_eq!(fresh.assigned_runs, Some(2));

        let lost = fold_member_status(
            &fresh,
            Ok("v1.37.2".into()),
            Some(&report(100)),
            seen(100, 200),
            false,
            2,
            grace,
            at(200),
        );
        assert_eq!(
            status_of(&lost, AGENT_READY),
            ("False".into(), "HeartbeatLost".into())
        );
        assert_eq!(
            status_of(&lost, READY),
            ("False".into(), "HeartbeatLost".into())
        );
        assert_eq!(lost.schedulable, Some(false));

        let none = fold_member_status(
            &Default::default(),
            Ok("v1.37.2".into()),
            None,
            HeartbeatView::default(),
            false,
            0,
            grace,
            at(200),
        );
        assert_eq!(status_of(&none, AGENT_READY).1, "NoHeartbeat");

        let down = Unreachable {
            reason: "Unreachable",
            message: "connection refused".into(),
        };
        let unreachable = fold_member_status(
            &fresh,
            Err(down),
            Some(&report(195)),
            seen(195, 200),
            false,
            0,
            grace,
            at(200),
        );
        assert_eq!(
            status_of(&unreachable, READY),
            ("False".into(), "Unreachable".into())
        );
    }

    #[test]
    fn a_heartbeat_counts_from_when_the_hub_saw_it_change_not_from_its_own_time() {
        // The agent's clock is an hour ahead: what it writes is compared,
        // never subtracted.
        let first = observe(None, Some(&Time(at(3700))), at(100)).unwrap();
        assert_eq!(first.at, at(100));
        assert_eq!(
            silence(Some(&first), at(0), at(110)),
            Some(Duration::from_secs(10))
        );
        // The same value read again keeps the time it was first seen...
        let again = observe(Some(&first), Some(&Time(at(3700))), at(140)).unwrap();
        assert_eq!(again.at, at(100));
        assert_eq!(
            silence(Some(&again), at(0), at(140)),
            Some(Duration::from_secs(40))
        );
        // ... and a new value, even an earlier one (the agent's clock set
        // back), is a new heartbeat.
        let back = observe(Some(&again), Some(&Time(at(1))), at(141)).unwrap();
        assert_eq!(back.at, at(141));
        assert_eq!(observe(Some(&back), None, at(150)), None);
        assert_eq!(silence(None, at(0), at(150)), None);
    }

    #[test]
    fn the_grace_starts_again_when_the_hubs_own_view_does() {
        let seen_long_ago = Seen {
            heartbeat: Time(at(5)),
            at: at(10),
        };
        // The hub was down (or could not read the reports) until 1000.
        assert_eq!(
            silence(Some(&seen_long_ago), at(1000), at(1005)),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            silence(Some(&seen_long_ago), at(0), at(1005)),
            Some(Duration::from_secs(995))
        );
    }

    #[test]
    fn most_members_silent_together_is_a_disruption_and_moves_nothing() {
        assert!(!disrupted(1, 1), "one member of one: lost as ever");
        assert!(!disrupted(1, 3));
        assert!(!disrupted(2, 4), "half is not most");
        assert!(disrupted(2, 3));
        assert!(disrupted(3, 3));
        assert!(disrupted(2, 2));
        let mut view = seen(100, 200);
        view.disrupted = true;
        let s = fold_member_status(
            &Default::default(),
            Ok("v".into()),
            Some(&report(100)),
            view,
            false,
            0,
            Duration::from_secs(30),
            at(200),
        );
        assert_eq!(
            status_of(&s, AGENT_READY),
            ("False".into(), DISRUPTION.into())
        );
        assert_eq!(status_of(&s, READY), ("False".into(), DISRUPTION.into()));
        assert_eq!(s.schedulable, Some(false));
        assert_eq!(s.last_heartbeat_time, Some(Time(at(100))), "the hub's time");
    }

    #[test]
    fn a_cordoned_ready_cluster_is_not_schedulable() {
        let s = fold_member_status(
            &Default::default(),
            Ok("v".into()),
            Some(&report(100)),
            seen(100, 101),
            true,
            0,
            Duration::from_secs(30),
            at(101),
        );
        assert_eq!(status_of(&s, READY).0, "True");
        assert_eq!(s.schedulable, Some(false));
    }

    #[test]
    fn transition_times_hold_while_nothing_changes() {
        let grace = Duration::from_secs(30);
        let first = fold_member_status(
            &Default::default(),
            Ok("v".into()),
            Some(&report(100)),
            seen(100, 101),
            false,
            0,
            grace,
            at(101),
        );
        let later = fold_member_status(
            &first,
            Ok("v".into()),
            Some(&report(100)),
            seen(100, 105),
            false,
            0,
            grace,
            at(105),
        );
        assert_eq!(
            first.conditions[0].last_transition_time,
            later.conditions[0].last_transition_time
        );
    }

    fn credential(of: CredentialOf, expires: i64, failure: Option<&str>) -> Credential {
        Credential {
            of,
            expires: Some(at(expires)),
            renewal_failure: failure.map(str::to_owned),
        }
    }

    #[test]
    fn credentials_that_renew_are_valid_until_their_expiry() {
        let c = credentials_condition(
            &Default::default(),
            "member-1",
            &[
                credential(CredentialOf::Hub, 1000, None),
                credential(CredentialOf::LogReader, 1001, None),
                credential(CredentialOf::Agent, 1002, None),
            ],
            at(100),
        );
        assert_eq!(
            (c.type_.as_str(), c.status.as_str()),
            (CREDENTIALS_EXPIRING, "False")
        );
        assert_eq!(c.reason, "Valid");
        assert_eq!(
            c.message,
            "the hub's token on the member expires at 1970-01-01T00:16:40Z, the log reader's token on the member expires at 1970-01-01T00:16:41Z, the agent's token on the hub expires at 1970-01-01T00:16:42Z; each is renewed before then"
        );
        // The same credentials later: the same message, the same time.
        let later = credentials_condition(
            &MemberClusterStatus {
                conditions: vec![c.clone()],
                ..Default::default()
            },
            "member-1",
            &[
                credential(CredentialOf::Hub, 1000, None),
                credential(CredentialOf::LogReader, 1001, None),
                credential(CredentialOf::Agent, 1002, None),
            ],
            at(500),
        );
        assert_eq!(later, c);
    }

    #[test]
    fn a_failed_renewal_names_the_credential_its_expiry_and_what_to_do() {
        let c = credentials_condition(
            &Default::default(),
            "member-1",
            &[
                credential(
                    CredentialOf::Hub,
                    1000,
                    Some(
                        "member-1 refused a token for ServiceAccount tekfed-system/tekfed-hub: forbidden",
                    ),
                ),
                credential(CredentialOf::LogReader, 1001, None),
            ],
            at(900),
        );
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "RenewalFailed")
        );
        assert_eq!(
            c.message,
            "the hub's token on the member could not be renewed (it expires at 1970-01-01T00:16:40Z): member-1 refused a token for ServiceAccount tekfed-system/tekfed-hub: forbidden. Run `kubectl tekfed join member-1 --cluster-context <its context>` again to issue new tokens"
        );
        let expired = credentials_condition(
            &Default::default(),
            "member-1",
            &[credential(CredentialOf::Agent, 1000, Some("x"))],
            at(1000),
        );
        assert!(
            expired
                .message
                .starts_with("the agent's token on the hub could not be renewed (it expired at"),
            "{}",
            expired.message
        );
    }

    #[test]
    fn credentials_without_an_expiry_have_nothing_to_renew() {
        let c = credentials_condition(
            &Default::default(),
            "member-1",
            &[Credential {
                of: CredentialOf::Hub,
                expires: None,
                renewal_failure: None,
            }],
            at(1),
        );
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NoExpiry")
        );
    }

    /// What an agent reports is bounded and on one line.
    #[test]
    fn an_agents_renewal_failure_is_sanitized() {
        let report = MemberReportStatus {
            credential: Some(tekfed_api::AgentCredential {
                expiration_time: Some(Time(at(50))),
                renewal_failure: Some(format!("line\n{}", "x".repeat(5000))),
            }),
            ..Default::default()
        };
        let c = agent_credential(Some(&report)).unwrap();
        let failure = c.renewal_failure.unwrap();
        assert!(!failure.contains('\n'));
        assert!(failure.chars().count() <= crate::errors::MAX_MESSAGE + 1);
        assert_eq!(c.expires, Some(at(50)));
        assert_eq!(agent_credential(None), None);
    }
}
