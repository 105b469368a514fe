//! Retrying failed reconciles, per object: after each failure in a row an
//! object waits twice as long as after the one before (from a controller's
//! first wait up to its cap), and a reconcile that succeeds starts it over.
//! One object that keeps failing (a member refusing every write, an RBAC
//! gap) then costs a request every few minutes, not every second, while a
//! passing conflict is still retried at once.
//!
//! Only failures go through here: a wait the reconciler knows about (a
//! member run waiting for its dependencies, a copy being removed) stays an
//! `Action::requeue` of its own.

use std::time::Duration;

use dashmap::DashMap;
use kube::api::DynamicObject;
use kube::runtime::reflector::ObjectRef;

/// The wait after `failures` failures in a row (1 for the first): `first`,
/// doubled for each failure after the first, at most `cap`.
pub fn delay(first: Duration, cap: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1);
    let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
    first.saturating_mul(factor).min(cap)
}

/// One controller's failures in a row, by object.
pub struct ErrorBackoff {
    first: Duration,
    cap: Duration,
    failures: DashMap<ObjectRef<DynamicObject>, u32>,
}

impl ErrorBackoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self {
            first,
            cap: cap.max(first),
            failures: DashMap::new(),
        }
    }

    /// The wait after a first failure.
    pub fn first(&self) -> Duration {
        self.first
    }

    /// Count one more failure of `object`: how long it waits before the
    /// next try.
    pub fn failed(&self, object: ObjectRef<DynamicObject>) -> Duration {
        let mut failures = self.failures.entry(object).or_insert(0);
        *failures = failures.saturating_add(1);
        delay(self.first, self.cap, *failures)
    }

    /// `object` was reconciled (or is gone): its next failure waits `first`.
    pub fn succeeded(&self, object: &ObjectRef<DynamicObject>) {
        self.failures.remove(object);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn object(name: &str) -> ObjectRef<DynamicObject> {
        ObjectRef::<k8s_openapi::api::core::v1::ConfigMap>::new(name)
            .within("ns")
            .erase()
    }

    #[test]
    fn waits_double_up_to_the_cap() {
        let cap = Duration::from_secs(300);
        let waits: Vec<u64> = (1..=11).map(|n| delay(S, cap, n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(delay(S, cap, u32::MAX), cap, "no overflow");
        assert_eq!(delay(S, cap, 0), S);
    }

    #[test]
    fn success_starts_an_object_over_and_objects_count_apart() {
        let backoff = ErrorBackoff::new(S, Duration::from_secs(300));
        let (a, b) = (object("a"), object("b"));
        assert_eq!(backoff.failed(a.clone()), S);
        assert_eq!(backoff.failed(a.clone()), 2 * S);
        assert_eq!(backoff.failed(b.clone()), S);
        assert_eq!(backoff.failed(a.clone()), 4 * S);
        backoff.succeeded(&a);
        assert_eq!(backoff.failed(a), S);
        assert_eq!(backoff.failed(b), 2 * S);
    }

    #[test]
    fn the_cap_is_never_below_the_first_wait() {
        let backoff = ErrorBackoff::new(Duration::from_secs(5), S);
        let a = object("a");
        assert_eq!(backoff.failed(a.clone()), Duration::from_secs(5));
        assert_eq!(backoff.failed(a), Duration::from_secs(5));
    }
}
