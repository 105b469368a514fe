//! What the agent answers on `/healthz` and `/readyz`, from what its
//! startup and loops record in a [`Health`].
//!
//! - Liveness fails only when restarting is the cure: the agent's loops run
//!   as one task beside a pulse that beats every second, so a pulse older
//!   than [`WEDGED_AFTER`] means something blocks that task's thread. A
//!   slow or unreachable API server is no reason: the loops retry, and a
//!   restart would only drop the agent's caches.
//! - Readiness: connected to the member and the hub, and the last heartbeat
//!   written (the last attempt succeeded, within [`stale_after`]). A
//!   standby (`--leader-elect`, waiting for the Lease) that connected to
//!   both is ready: it writes no heartbeat, and were it never ready a
//!   rolling update of two replicas would wait forever for it.
//!
//! [`readiness`] and [`liveness`] are pure, over a [`Snapshot`] and the
//! time now.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the loops' task may go unpolled before liveness fails.
pub const WEDGED_AFTER: Duration = Duration::from_secs(60);

/// How old the last heartbeat written may be for the agent to stay ready:
/// three heartbeat intervals, and no less than the hub's default
/// `--heartbeat-grace` (30 s), after which the hub stops counting on the
/// member anyway. A heartbeat lists runs, pods and nodes on the member, so
/// on a large cluster one takes a while.
pub fn stale_after(heartbeat: Duration) -> Duration {
    (heartbeat * 3).max(Duration::from_secs(30))
}

/// Where the agent is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stage {
    /// Reaching the member and the hub and checking their APIs.
    #[default]
    Connecting,
    /// Connected to both; waiting for the Lease on the member.
    Standby,
    /// Running its loops: heartbeats and run sync.
    Running,
}

/// What the agent recorded, at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub stage: Stage,
    /// The loops' task was last polled (while [`Stage::Running`]).
    pub pulse: Option<Instant>,
    /// The last heartbeat written to the hub.
    pub heartbeat_written: Option<Instant>,
    /// Why the last heartbeat attempt failed; `None` once one succeeds.
    pub heartbeat_error: Option<String>,
    /// Why the member's API server did not answer the last heartbeat's
    /// questions; `None` once it does.
    pub member_error: Option<String>,
}

/// `/healthz`: `Err` only when the loops' task has stopped being polled.
pub fn liveness(s: &Snapshot, now: Instant) -> Result<String, String> {
    match (s.stage, s.pulse) {
        (Stage::Running, Some(pulse)) if now.saturating_duration_since(pulse) > WEDGED_AFTER => {
            Err(format!(
                "the agent's loops have not run for {}s: a blocked thread (restart)",
                now.saturating_duration_since(pulse).as_secs()
            ))
        }
        _ => Ok("ok".to_owned()),
    }
}

/// `/readyz`: `Ok` once connected and, when running, with the last
/// heartbeat written less than `stale_after` ago; `Err` says why not.
pub fn readiness(s: &Snapshot, now: Instant, stale_after: Duration) -> Result<String, String> {
    match s.stage {
        Stage::Connecting => return Err("connecting to the member and the hub".to_owned()),
        Stage::Standby => return Ok("ok: standby, waiting for the Lease".to_owned()),
        Stage::Running => {}
    }
    if let Some(error) = &s.heartbeat_error {
        return Err(format!("the last heartbeat to the hub failed: {error}"));
    }
    if let Some(error) = &s.member_error {
        return Err(format!("the member's API server did not answer: {error}"));
    }
    let Some(written) = s.heartbeat_written else {
        return Err("no heartbeat written to the hub yet".to_owned());
    };
    let age = now.saturating_duration_since(written);
    if age > stale_after {
        return Err(format!(
            "the last heartbeat was written {}s ago (more than {}s): one is hanging",
            age.as_secs(),
            stale_after.as_secs()
        ));
    }
    Ok(format!("ok: heartbeat written {}s ago", age.as_secs()))
}

/// What the agent records as it goes, shared by its loops and its server.
#[derive(Debug)]
pub struct Health {
    state: Mutex<Snapshot>,
    stale_after: Duration,
}

impl Health {
    /// For an agent heartbeating every `heartbeat`.
    pub fn new(heartbeat: Duration) -> Self {
        Self {
            state: Mutex::default(),
            stale_after: stale_after(heartbeat),
        }
    }

    fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        change(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn snapshot(&self) -> Snapshot {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Connected to both sides; waiting for the Lease.
    pub fn standby(&self) {
        self.update(|s| s.stage = Stage::Standby);
    }

    /// The loops start.
    pub fn running(&self) {
        self.update(|s| {
            s.stage = Stage::Running;
            s.pulse = Some(Instant::now());
        });
    }

    /// The loops' task was polled.
    pub fn pulse(&self) {
        self.update(|s| s.pulse = Some(Instant::now()));
    }

    /// A heartbeat was written (`Ok`) or not (`Err(why)`).
    pub fn heartbeat(&self, outcome: Result<(), String>) {
        self.update(|s| match outcome {
            Ok(()) => {
                s.heartbeat_written = Some(Instant::now());
                s.heartbeat_error = None;
            }
            Err(error) => s.heartbeat_error = Some(error),
        });
    }

    /// The member's API server answered the heartbeat's questions, or not.
    pub fn member(&self, outcome: Result<(), String>) {
        self.update(|s| s.member_error = outcome.err());
    }

    pub fn live(&self) -> Result<String, String> {
        liveness(&self.snapshot(), Instant::now())
    }

    pub fn ready(&self) -> Result<String, String> {
        readiness(&self.snapshot(), Instant::now(), self.stale_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE: Duration = Duration::from_secs(30);

    fn running(at: Instant) -> Snapshot {
        Snapshot {
            stage: Stage::Running,
            pulse: Some(at),
            ..Default::default()
        }
    }

    #[test]
    fn not_ready_until_connected_and_a_heartbeat_is_written() {
        let t0 = Instant::now();
        let connecting = Snapshot::default();
        assert_eq!(
            readiness(&connecting, t0, STALE),
            Err("connecting to the member and the hub".to_owned())
        );
        let started = running(t0);
        assert_eq!(
            readiness(&started, t0, STALE),
            Err("no heartbeat written to the hub yet".to_owned())
        );
        let beating = Snapshot {
            heartbeat_written: Some(t0),
            ..started
        };
        assert_eq!(
            readiness(&beating, t0 + Duration::from_secs(4), STALE),
            Ok("ok: heartbeat written 4s ago".to_owned())
        );
    }

    #[test]
    fn a_standby_that_connected_is_ready() {
        let standby = Snapshot {
            stage: Stage::Standby,
            ..Default::default()
        };
        assert!(readiness(&standby, Instant::now(), STALE).is_ok());
    }

    #[test]
    fn a_failed_heartbeat_says_why() {
        let t0 = Instant::now();
        let failed = Snapshot {
            heartbeat_written: Some(t0),
            heartbeat_error: Some("error trying to connect: Connection refused".into()),
            ..running(t0)
        };
        assert_eq!(
            readiness(&failed, t0 + Duration::from_secs(1), STALE),
            Err(
                "the last heartbeat to the hub failed: error trying to connect: Connection refused"
                    .to_owned()
            )
        );
        let member_down = Snapshot {
            heartbeat_written: Some(t0),
            member_error: Some("connection refused".into()),
            ..running(t0)
        };
        let reason = readiness(&member_down, t0, STALE).unwrap_err();
        assert!(reason.contains("member's API server"), "{reason}");
    }

    #[test]
    fn a_heartbeat_hanging_past_the_limit_is_not_ready() {
        let t0 = Instant::now();
        let beating = Snapshot {
            heartbeat_written: Some(t0),
            ..running(t0)
        };
        assert!(readiness(&beating, t0 + STALE, STALE).is_ok());
        let reason = readiness(&beating, t0 + STALE + Duration::from_secs(1), STALE).unwrap_err();
        assert!(
            reason.contains("written 31s ago (more than 30s)"),
            "{reason}"
        );
    }

    #[test]
    fn the_heartbeat_limit_follows_the_interval_but_not_below_the_hubs_grace() {
        assert_eq!(stale_after(Duration::from_secs(1)), Duration::from_secs(30));
        assert_eq!(
            stale_after(Duration::from_secs(20)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn only_a_loop_task_left_unpolled_fails_liveness() {
        let t0 = Instant::now();
        let later = t0 + WEDGED_AFTER + Duration::from_secs(1);
        // Connecting or waiting for the Lease for long is no reason to restart.
        assert!(liveness(&Snapshot::default(), later).is_ok());
        // Heartbeats failing for long neither: the loops retry.
        let failing = Snapshot {
            heartbeat_error: Some("connection refused".into()),
            pulse: Some(later),
            ..running(t0)
        };
        assert!(liveness(&failing, later).is_ok());
        let reason = liveness(&running(t0), later).unwrap_err();
        assert!(reason.contains("have not run for 61s"), "{reason}");
    }

    #[test]
    fn the_recorder_clears_an_error_once_a_heartbeat_succeeds() {
        let health = Health::new(Duration::from_secs(1));
        health.running();
        health.heartbeat(Err("refused".into()));
        assert!(health.ready().unwrap_err().contains("refused"));
        health.heartbeat(Ok(()));
        assert!(health.ready().is_ok(), "{:?}", health.ready());
        assert!(health.live().is_ok());
    }
}
