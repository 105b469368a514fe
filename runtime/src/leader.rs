//! Leader election on a `coordination.k8s.io/v1` Lease, so that two
//! replicas of `tekfed-hub` (or of one cluster's `tekfed-agent`) can run
//! and only one of them writes.
//!
//! The rules are client-go's `leaderelection`:
//!
//! - A candidate takes the Lease by creating it, or by an update carrying
//!   the resourceVersion it read: never a blind overwrite, so of two
//!   candidates racing, one gets a 409 and goes back to waiting.
//! - The holder renews every third of the lease duration, and gives up when
//!   it has not renewed for two thirds of it (the renew deadline). The
//!   binaries then exit at once, before any standby can consider the Lease
//!   expired: a process never writes without the Lease.
//! - A standby never compares the holder's `renewTime` with its own clock
//!   (clocks of two machines disagree). It takes over once the Lease record
//!   has not changed for `leaseDurationSeconds`, measured on its own
//!   monotonic clock from when it first saw that record.
//! - On shutdown the holder releases the Lease (empty holder,
//!   `leaseDurationSeconds: 1`), so a standby takes over at its next poll
//!   instead of after the lease expires.
//!
//! [`decide`] is the pure decision, unit-tested; [`LeaderElector`] does the
//! I/O on tokio: it paces the polls and bounds every request to the API
//! server with the request timeout.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// The default `--leader-elect-lease-duration`, in seconds.
pub const DEFAULT_LEASE_SECONDS: u32 = 15;
/// The shortest lease duration the binaries accept, in seconds: below it
/// the request timeout (a fifth of it) is too short for a busy API server.
pub const MIN_LEASE_SECONDS: u32 = 3;

/// The periods derived from the lease duration, in client-go's proportions
/// (15 s → renew deadline 10 s, retry 2 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long the Lease is valid without renewal (`leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// The holder gives up when it has not renewed for this long.
    pub renew_deadline: Duration,
    /// The holder renews this often.
    pub renew_period: Duration,
    /// A standby reads the Lease this often; a failed renewal is retried after it.
    pub retry_period: Duration,
    /// The longest any one request may take. With the renew deadline it
    /// stays under the lease duration: a holder stops writing before a
    /// standby can take over.
    pub request_timeout: Duration,
}

impl Timing {
    /// The periods for a lease of `seconds`.
    pub fn new(seconds: u32) -> Self {
        let d = Duration::from_secs(seconds.into());
        Self {
            lease_duration: d,
            renew_deadline: d * 2 / 3,
            renew_period: d / 3,
            retry_period: d * 2 / 15,
            request_timeout: d / 5,
        }
    }
}

/// A Lease record as this candidate saw it, and when (its own monotonic
/// clock) it first saw that exact record.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub spec: LeaseSpec,
    pub since: Instant,
}

/// Why a holder stopped being one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// No renewal succeeded within the renew deadline.
    NotRenewed(Duration),
    /// Another candidate holds the Lease now.
    TakenBy(String),
    /// The Lease was deleted.
    Deleted,
    /// Someone else emptied the holder.
    Released,
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotRenewed(for_) => write!(f, "not renewed for {for_:.1?}"),
            Self::TakenBy(holder) => write!(f, "now held by {holder}"),
            Self::Deleted => write!(f, "the Lease was deleted"),
            Self::Released => write!(f, "someone else emptied its holder"),
        }
    }
}

/// What a candidate does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease exists: create it, naming me holder.
    Create,
    /// The Lease is free, released or expired: take it (an update
    /// conditional on the resourceVersion read).
    Acquire,
    /// I hold it: renew it.
    Renew,
    /// Another candidate holds it and it has not expired yet.
    Wait {
        holder: String,
        expires_in: Duration,
    },
    /// I was leading and can no longer be sure I am: stop.
    Lost(LostReason),
}

/// The holder named by a Lease record, if any.
pub fn holder(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// Decide, from the Lease as observed (`None`: it does not exist), whether
/// `me` creates, takes, renews, waits, or has lost it. `leading` is when my
/// last successful write to the Lease was sent, while I lead; `now` and
/// every instant are this process's monotonic clock.
pub fn decide(
    me: &str,
    lease: Option<&Observed>,
    leading: Option<Instant>,
    now: Instant,
    timing: &Timing,
) -> Decision {
    if let Some(renewed) = leading {
        let since = now.saturating_duration_since(renewed);
        if since >= timing.renew_deadline {
            return Decision::Lost(LostReason::NotRenewed(since));
        }
        return match lease.map(|o| holder(&o.spec)) {
            None => Decision::Lost(LostReason::Deleted),
            Some(None) => Decision::Lost(LostReason::Released),
            Some(Some(h)) if h == me => Decision::Renew,
            Some(Some(h)) => Decision::Lost(LostReason::TakenBy(h.to_owned())),
        };
    }
    let Some(observed) = lease else {
        return Decision::Create;
    };
    match holder(&observed.spec) {
        // Free or released; or mine from before (an identity is unique to a
        // process, so only after a restart that kept it): take it again.
        None => Decision::Acquire,
        Some(h) if h == me => Decision::Acquire,
        Some(h) => {
            let valid_for = observed
                .spec
                .lease_duration_seconds
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(s.unsigned_abs().into()))
                .unwrap_or(timing.lease_duration);
            let expires = observed.since + valid_for;
            if now >= expires {
                Decision::Acquire
            } else {
                Decision::Wait {
                    holder: h.to_owned(),
                    expires_in: expires - now,
                }
            }
        }
    }
}

/// The observation after reading `spec` at `now`: the time first seen is
/// kept while the record is unchanged, and restarts when it changes (a
/// renewal always changes `renewTime`).
pub fn observe(
    previous: Option<Observed>,
    spec: Option<LeaseSpec>,
    now: Instant,
) -> Option<Observed> {
    let spec = spec?;
    match previous {
        Some(seen) if seen.spec == spec => Some(seen),
        _ => Some(Observed { spec, since: now }),
    }
}

/// The record naming `me` holder for `seconds`, from the current one
/// (`None`: a new Lease). Taking it from another holder (or from none)
/// counts a transition and sets `acquireTime`; a renewal keeps both.
pub fn claimed(current: Option<&LeaseSpec>, me: &str, seconds: u32, now: Timestamp) -> LeaseSpec {
    let mut spec = current.cloned().unwrap_or_default();
    let taking = current.and_then(holder) != Some(me);
    if taking {
        spec.acquire_time = Some(MicroTime(now));
        if current.is_some() {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
    }
    spec.lease_transitions.get_or_insert(0);
    spec.holder_identity = Some(me.to_owned());
    spec.lease_duration_seconds = Some(i32::try_from(seconds).unwrap_or(i32::MAX));
    spec.renew_time = Some(MicroTime(now));
    spec
}

/// The record of a released Lease: no holder, and a one-second duration so
/// a standby that still sees the old holder (it read before the release)
/// does not wait long either.
pub fn released(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        ..current.clone()
    }
}

/// A holder identity unique to this process: `<host>_<pid>_<random>`. In a
/// pod the host name is the pod's name.
pub fn identity() -> String {
    use std::hash::BuildHasher;
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let pid = std::process::id();
    // RandomState is seeded from the OS's randomness: enough to tell two
    // processes with the same host name and pid apart (a restarted pod).
    let random = std::collections::hash_map::RandomState::new().hash_one(pid);
    format!("{host}_{pid}_{:08x}", random as u32)
}

/// Failing to take part in the election, or losing it.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "namespace {namespace} does not exist on {server}, so Lease {name} cannot be created there: create the namespace, or name another with --leader-elect-namespace"
    )]
    NamespaceMissing {
        server: String,
        namespace: String,
        name: String,
    },
    #[error(
        "not allowed to {verb} Lease {namespace}/{name} on {server}: grant get, create and update on leases (coordination.k8s.io) in {namespace} ({message})"
    )]
    Forbidden {
        verb: &'static str,
        server: String,
        namespace: String,
        name: String,
        message: String,
    },
    #[error("{verb} Lease {namespace}/{name} on {server}: {source}")]
    Api {
        verb: &'static str,
        server: String,
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("{verb} Lease {namespace}/{name} on {server}: no answer within {timeout:?}")]
    Timeout {
        verb: &'static str,
        server: String,
        namespace: String,
        name: String,
        timeout: Duration,
    },
    #[error("lost the Lease {namespace}/{name}: {reason}")]
    Lost {
        namespace: String,
        name: String,
        reason: LostReason,
    },
}

impl LeaderError {
    /// A mistake of configuration, which retrying does not fix.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::NamespaceMissing { .. } | Self::Forbidden { .. } | Self::Lost { .. }
        )
    }

    fn conflict(&self) -> bool {
        matches!(self, Self::Api { source: kube::Error::Api(s), .. } if s.code == 409)
    }
}

/// What the elector reports while it works, for the binary to log.
#[derive(Debug)]
pub enum Event<'a> {
    /// Another candidate holds the Lease (reported when the holder changes).
    Waiting {
        holder: &'a str,
        expires_in: Duration,
    },
    /// A request failed; the elector tries again.
    Retrying { error: &'a LeaderError },
}

/// Where the Lease is and who this candidate is.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// `--leader-elect-lease-duration`, seconds.
    pub duration_seconds: u32,
    /// From [`identity`].
    pub identity: String,
}

/// One candidate for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    server: String,
    settings: LeaseSettings,
    timing: Timing,
    observed: Option<Observed>,
    /// The Lease as last read or written: its resourceVersion is the
    /// precondition of the next write.
    lease: Option<Lease>,
    /// When the last successful write of mine was sent, while I lead.
    leading: Option<Instant>,
}

impl LeaderElector {
    /// A candidate for `settings.name` in `settings.namespace`, through
    /// `client` (to the API server at `server`, named in errors).
    pub fn new(client: Client, server: &str, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            server: server.to_owned(),
            timing: Timing::new(settings.duration_seconds),
            settings,
            observed: None,
            lease: None,
            leading: None,
        }
    }

    /// This candidate's holder identity.
    pub fn identity(&self) -> &str {
        &self.settings.identity
    }

    /// `namespace/name` of the Lease.
    pub fn lease(&self) -> String {
        format!("{}/{}", self.settings.namespace, self.settings.name)
    }

    /// Wait until this candidate holds the Lease. Errors only when retrying
    /// cannot help (a missing namespace, RBAC refusing).
    pub async fn acquire(&mut self, mut report: impl FnMut(Event<'_>)) -> Result<(), LeaderError> {
        let mut reported: Option<String> = None;
        loop {
            if let Err(error) = self.read().await {
                if error.is_fatal() {
                    return Err(error);
                }
                report(Event::Retrying { error: &error });
                self.pause(self.timing.retry_period).await;
                continue;
            }
            let decision = decide(
                &self.settings.identity,
                self.observed.as_ref(),
                None,
                Instant::now(),
                &self.timing,
            );
            match decision {
                Decision::Create | Decision::Acquire | Decision::Renew => match self.take().await {
                    Ok(()) => return Ok(()),
                    // Another candidate got there first: read again at once.
                    Err(error) if error.conflict() => {}
                    Err(error) if error.is_fatal() => return Err(error),
                    Err(error) => {
                        report(Event::Retrying { error: &error });
                        self.pause(self.timing.retry_period).await;
                    }
                },
                Decision::Wait { holder, expires_in } => {
                    if reported.as_deref() != Some(&holder) {
                        report(Event::Waiting {
                            holder: &holder,
                            expires_in,
                        });
                        reported = Some(holder);
                    }
                    self.pause(expires_in.min(self.timing.retry_period)).await;
                }
                Decision::Lost(reason) => return Err(self.lost(reason)),
            }
        }
    }

    /// Keep the Lease renewed; returns only when it is lost, saying why.
    /// The caller must stop writing at once.
    pub async fn keep(&mut self, mut report: impl FnMut(Event<'_>)) -> LeaderError {
        let mut wait = self.timing.renew_period;
        loop {
            let Some(renewed) = self.leading else {
                return self.lost(LostReason::NotRenewed(Duration::ZERO));
            };
            // Wake at the renew deadline at the latest, to stop in time.
            let deadline = renewed + self.timing.renew_deadline;
            let wake = (Instant::now() + wait).min(deadline);
            self.pause(wake.saturating_duration_since(Instant::now()))
                .await;
            let decision = decide(
                &self.settings.identity,
                self.observed.as_ref(),
                self.leading,
                Instant::now(),
                &self.timing,
            );
            match decision {
                Decision::Renew => match self.take().await {
                    Ok(()) => wait = self.timing.renew_period,
                    Err(error) => {
                        report(Event::Retrying { error: &error });
                        wait = self.timing.retry_period;
                        // The server answered (a conflict, a deleted Lease):
                        // read what it holds now and decide again.
                        if matches!(error, LeaderError::Api { .. }) {
                            match self.read().await {
                                Ok(()) if error.conflict() => wait = Duration::ZERO,
                                Ok(()) => {}
                                Err(error) => report(Event::Retrying { error: &error }),
                            }
                        }
                    }
                },
                Decision::Lost(reason) => return self.lost(reason),
                // Not reachable while leading; stopping is the safe answer.
                Decision::Create | Decision::Acquire | Decision::Wait { .. } => {
                    return self.lost(LostReason::NotRenewed(Duration::ZERO));
                }
            }
        }
    }

    /// Give the Lease up (on shutdown, after the work stopped), so a standby
    /// takes over at its next poll. Only while holding it, conditional on
    /// the resourceVersion last written; true when it was released.
    pub async fn release(&mut self) -> Result<bool, LeaderError> {
        if self.leading.take().is_none() {
            return Ok(false);
        }
        let Some(mut lease) = self.lease.clone() else {
            return Ok(false);
        };
        let current = lease.spec.clone().unwrap_or_default();
        if holder(&current) != Some(self.settings.identity.as_str()) {
            return Ok(false);
        }
        lease.spec = Some(released(&current, Timestamp::now()));
        lease.metadata.managed_fields = None;
        let api = self.api.clone();
        let name = self.settings.name.clone();
        match self
            .call("update", async move {
                api.replace(&name, &PostParams::default(), &lease).await
            })
            .await
        {
            Ok(lease) => {
                self.lease = Some(lease);
                Ok(true)
            }
            // Changed meanwhile: no longer mine to release.
            Err(error) if error.conflict() => Ok(false),
            Err(error) => Err(error),
        }
    }

    fn lost(&mut self, reason: LostReason) -> LeaderError {
        self.leading = None;
        LeaderError::Lost {
            namespace: self.settings.namespace.clone(),
            name: self.settings.name.clone(),
            reason,
        }
    }

    async fn pause(&self, duration: Duration) {
        if !duration.is_zero() {
            tokio::time::sleep(duration).await;
        }
    }

    /// Read the Lease and update the observation.
    async fn read(&mut self) -> Result<(), LeaderError> {
        let api = self.api.clone();
        let name = self.settings.name.clone();
        let lease = self
            .call("get", async move { api.get_opt(&name).await })
            .await?;
        let spec = lease.as_ref().map(|l| l.spec.clone().unwrap_or_default());
        self.observed = observe(self.observed.take(), spec, Instant::now());
        self.lease = lease;
        Ok(())
    }

    /// Create the Lease, or update the one read (conditional on its
    /// resourceVersion), naming me holder: acquiring and renewing alike.
    async fn take(&mut self) -> Result<(), LeaderError> {
        let me = self.settings.identity.clone();
        let seconds = self.settings.duration_seconds;
        let sent = Instant::now();
        let api = self.api.clone();
        let name = self.settings.name.clone();
        let result = match self.lease.clone() {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name),
                        namespace: Some(self.settings.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(claimed(None, &me, seconds, Timestamp::now())),
                };
                self.call("create", async move {
                    api.create(&PostParams::default(), &lease).await
                })
                .await
            }
            Some(mut lease) => {
                lease.spec = Some(claimed(lease.spec.as_ref(), &me, seconds, Timestamp::now()));
                // Omitted managedFields are kept as they are by the server.
                lease.metadata.managed_fields = None;
                self.call("update", async move {
                    api.replace(&name, &PostParams::default(), &lease).await
                })
                .await
            }
        };
        let lease = result?;
        self.observed = observe(self.observed.take(), lease.spec.clone(), Instant::now());
        self.lease = Some(lease);
        self.leading = Some(sent);
        Ok(())
    }

    /// One request, bounded by the request timeout, its error naming the Lease.
    async fn call<T>(
        &self,
        verb: &'static str,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaderError> {
        let timeout = self.timing.request_timeout;
        let (server, namespace, name) = (
            self.server.clone(),
            self.settings.namespace.clone(),
            self.settings.name.clone(),
        );
        match tokio::time::timeout(timeout, request).await {
            Err(_elapsed) => Err(LeaderError::Timeout {
                verb,
                server,
                namespace,
                name,
                timeout,
            }),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(kube::Error::Api(status))) if status.code == 403 => {
                Err(LeaderError::Forbidden {
                    verb,
                    server,
                    namespace,
                    name,
                    message: status.message.clone(),
                })
            }
            // Creating in a namespace that does not exist.
            Ok(Err(kube::Error::Api(status))) if status.code == 404 && verb == "create" => {
                Err(LeaderError::NamespaceMissing {
                    server,
                    namespace,
                    name,
                })
            }
            Ok(Err(source)) => Err(LeaderError::Api {
                verb,
                server,
                namespace,
                name,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "hub-a_10_00000001";
    const OTHER: &str = "hub-b_20_00000002";

    fn held_by(holder: Option<&str>, seconds: Option<i32>, renewed: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: seconds,
            renew_time: Some(MicroTime(renewed)),
            ..Default::default()
        }
    }

    fn seen(spec: LeaseSpec, since: Instant) -> Observed {
        Observed { spec, since }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    #[test]
    fn timing_follows_client_go_proportions() {
        let t = Timing::new(15);
        assert_eq!(t.lease_duration, Duration::from_secs(15));
        assert_eq!(t.renew_deadline, Duration::from_secs(10));
        assert_eq!(t.renew_period, Duration::from_secs(5));
        assert_eq!(t.retry_period, Duration::from_secs(2));
        assert_eq!(t.request_timeout, Duration::from_secs(3));
        // A holder that starts its last try just before the deadline has
        // its answer (or gives up) before the lease can expire for others.
        for seconds in [MIN_LEASE_SECONDS, 15, 60] {
            let t = Timing::new(seconds);
            assert!(t.renew_deadline + t.request_timeout < t.lease_duration);
        }
    }

    #[test]
    fn no_lease_is_created() {
        let now = Instant::now();
        assert_eq!(
            decide(ME, None, None, now, &Timing::new(15)),
            Decision::Create
        );
    }

    #[test]
    fn a_free_or_released_lease_is_taken_at_once() {
        let now = Instant::now();
        let t = Timing::new(15);
        for spec in [
            LeaseSpec::default(),
            held_by(None, Some(1), at(0)),
            held_by(Some(""), Some(15), at(0)),
        ] {
            let lease = seen(spec, now);
            assert_eq!(decide(ME, Some(&lease), None, now, &t), Decision::Acquire);
        }
    }

    #[test]
    fn a_held_lease_is_waited_for_until_unchanged_for_its_duration_by_my_clock() {
        let t = Timing::new(15);
        let first_seen = Instant::now();
        let lease = seen(held_by(Some(OTHER), Some(15), at(0)), first_seen);
        assert_eq!(
            decide(
                ME,
                Some(&lease),
                None,
                first_seen + Duration::from_secs(5),
                &t
            ),
            Decision::Wait {
                holder: OTHER.into(),
                expires_in: Duration::from_secs(10)
            }
        );
        assert_eq!(
            decide(
                ME,
                Some(&lease),
                None,
                first_seen + Duration::from_secs(15),
                &t
            ),
            Decision::Acquire
        );
        // The holder's own duration counts, not mine.
        let long = seen(held_by(Some(OTHER), Some(30), at(0)), first_seen);
        assert!(matches!(
            decide(
                ME,
                Some(&long),
                None,
                first_seen + Duration::from_secs(20),
                &t
            ),
            Decision::Wait { .. }
        ));
    }

    #[test]
    fn the_holders_clock_does_not_matter() {
        let t = Timing::new(15);
        let now = Instant::now();
        // renewTime an hour behind (a skewed holder, or a stale record just
        // seen): still waited for, from when it was seen.
        let stale = seen(held_by(Some(OTHER), Some(15), at(-3600)), now);
        assert!(matches!(
            decide(ME, Some(&stale), None, now, &t),
            Decision::Wait { .. }
        ));
        // renewTime an hour ahead: expired once unchanged for 15 s here.
        let ahead = seen(held_by(Some(OTHER), Some(15), at(3600)), now);
        assert_eq!(
            decide(ME, Some(&ahead), None, now + Duration::from_secs(16), &t),
            Decision::Acquire
        );
    }

    #[test]
    fn the_time_seen_restarts_only_when_the_record_changes() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(4);
        let first = observe(None, Some(held_by(Some(OTHER), Some(15), at(0))), t0);
        let same = observe(
            first.clone(),
            Some(held_by(Some(OTHER), Some(15), at(0))),
            t1,
        );
        assert_eq!(same.as_ref().map(|o| o.since), Some(t0));
        let renewed = observe(same, Some(held_by(Some(OTHER), Some(15), at(5))), t1);
        assert_eq!(renewed.as_ref().map(|o| o.since), Some(t1));
        assert_eq!(observe(renewed, None, t1), None);
    }

    #[test]
    fn the_holder_renews_until_the_renew_deadline_then_has_lost() {
        let t = Timing::new(15);
        let renewed = Instant::now();
        let mine = seen(held_by(Some(ME), Some(15), at(0)), renewed);
        assert_eq!(
            decide(
                ME,
                Some(&mine),
                Some(renewed),
                renewed + Duration::from_secs(5),
                &t
            ),
            Decision::Renew
        );
        assert_eq!(
            decide(
                ME,
                Some(&mine),
                Some(renewed),
                renewed + Duration::from_secs(10),
                &t
            ),
            Decision::Lost(LostReason::NotRenewed(Duration::from_secs(10)))
        );
    }

    #[test]
    fn a_holder_that_sees_another_holder_or_no_lease_has_lost() {
        let t = Timing::new(15);
        let now = Instant::now();
        let taken = seen(held_by(Some(OTHER), Some(15), at(0)), now);
        assert_eq!(
            decide(ME, Some(&taken), Some(now), now, &t),
            Decision::Lost(LostReason::TakenBy(OTHER.into()))
        );
        assert_eq!(
            decide(ME, None, Some(now), now, &t),
            Decision::Lost(LostReason::Deleted)
        );
        let emptied = seen(held_by(None, Some(1), at(0)), now);
        assert_eq!(
            decide(ME, Some(&emptied), Some(now), now, &t),
            Decision::Lost(LostReason::Released)
        );
    }

    #[test]
    fn a_lease_still_naming_me_when_not_leading_is_taken_again() {
        let now = Instant::now();
        let lease = seen(held_by(Some(ME), Some(15), at(0)), now);
        assert_eq!(
            decide(ME, Some(&lease), None, now, &Timing::new(15)),
            Decision::Acquire
        );
    }

    #[test]
    fn taking_counts_a_transition_and_renewing_keeps_it() {
        let spec = claimed(None, ME, 15, at(0));
        assert_eq!(spec.holder_identity.as_deref(), Some(ME));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(0))));

        let renewed = claimed(Some(&spec), ME, 15, at(5));
        assert_eq!(renewed.lease_transitions, Some(0));
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(5))));

        let taken = claimed(Some(&held_by(Some(OTHER), Some(15), at(0))), ME, 15, at(20));
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(20))));
        assert_eq!(taken.holder_identity.as_deref(), Some(ME));
    }

    #[test]
    fn a_released_lease_has_no_holder_and_a_short_duration() {
        let spec = released(&claimed(None, ME, 15, at(0)), at(9));
        assert_eq!(holder(&spec), None);
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(spec.renew_time, Some(MicroTime(at(9))));
        let now = Instant::now();
        let other_sees = seen(spec, now);
        assert_eq!(
            decide(OTHER, Some(&other_sees), None, now, &Timing::new(15)),
            Decision::Acquire
        );
    }

    #[test]
    fn identities_name_the_process_and_differ() {
        let a = identity();
        let b = identity();
        assert!(a.contains(&format!("_{}_", std::process::id())), "{a}");
        assert_ne!(a, b);
    }
}
