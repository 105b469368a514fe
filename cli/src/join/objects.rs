//! Writing objects the join way: read first, write only when it differs,
//! and say what was done ([`Report`]); delete, taking absent as done.

use std::fmt::Debug;

use anyhow::Context as _;
use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{MANAGED_BY, MEMBER_LABEL, SYSTEM_NAMESPACE};

/// What join or unjoin did to each object, to report it.
#[derive(Default)]
pub struct Report {
    pub(super) lines: Vec<String>,
    pub(super) changed: usize,
    pub(super) quiet: bool,
}

impl Report {
    pub(super) fn note(&mut self, verb: &str, what: String) {
        if !matches!(verb, "unchanged" | "skipped" | "kept") {
            self.changed += 1;
        }
        let line = format!("  {verb:<9} {what}");
        if !self.quiet {
            println!("{line}");
        }
        self.lines.push(line);
    }
}

/// The labels on tekfed's objects for member `name`.
pub(super) fn meta_labels(name: &str) -> Value {
    json!({MANAGED_BY.0: MANAGED_BY.1, MEMBER_LABEL: name})
}

/// Create `desired` if absent; replace it if `differs(existing, desired)`.
pub(super) async fn ensure<K>(
    api: &Api<K>,
    desired: Value,
    differs: impl Fn(&Value, &Value) -> bool,
    what: String,
    report: &mut Report,
) -> anyhow::Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let name = desired["metadata"]["name"]
        .as_str()
        .expect("desired objects are named")
        .to_owned();
    let desired_obj: K =
        serde_json::from_value(desired.clone()).with_context(|| format!("building {what}"))?;
    match api
        .get_opt(&name)
        .await
        .with_context(|| format!("reading {what}"))?
    {
        None => {
            let created = api
                .create(&PostParams::default(), &desired_obj)
                .await
                .with_context(|| format!("creating {what}"))?;
            report.note("created", what);
            Ok(created)
        }
        Some(existing) => {
            let current = serde_json::to_value(&existing)?;
            if differs(&current, &desired) {
                let mut next = desired_obj;
                next.meta_mut().resource_version = existing.resource_version();
                let updated = api
                    .replace(&name, &PostParams::default(), &next)
                    .await
                    .with_context(|| format!("updating {what}"))?;
                report.note("updated", what);
                Ok(updated)
            } else {
                report.note("unchanged", what);
                Ok(existing)
            }
        }
    }
}

/// Differs in any of these top-level fields.
pub(super) fn fields(keys: &'static [&'static str]) -> impl Fn(&Value, &Value) -> bool {
    move |current, desired| keys.iter().any(|k| current[*k] != desired[*k])
}

/// Differs where `desired` says something `current` does not hold, in any
/// of these top-level fields: for objects the API server fills in with
/// defaults (an admission policy's `spec`).
pub(super) fn not_contained(keys: &'static [&'static str]) -> impl Fn(&Value, &Value) -> bool {
    move |current, desired| keys.iter().any(|k| !contains(&current[*k], &desired[*k]))
}

/// `current` holds everything `desired` says (objects key by key, lists
/// item by item, the rest equal).
fn contains(current: &Value, desired: &Value) -> bool {
    match (current, desired) {
        (Value::Object(c), Value::Object(d)) => d
            .iter()
            .all(|(k, v)| c.get(k).is_some_and(|cv| contains(cv, v))),
        (Value::Array(c), Value::Array(d)) => {
            c.len() == d.len() && c.iter().zip(d).all(|(c, d)| contains(c, d))
        }
        (c, d) => c == d,
    }
}

/// Never differs: an object whose existence is all that matters.
pub(super) fn exists(_: &Value, _: &Value) -> bool {
    false
}

/// Differs in labels tekfed sets (others a user added are kept as they are).
pub(super) fn labels_differ(current: &Value, desired: &Value) -> bool {
    desired["metadata"]["labels"]
        .as_object()
        .is_some_and(|want| {
            want.iter()
                .any(|(k, v)| current["metadata"]["labels"][k] != *v)
        })
}

/// Delete, saying what went; absent is fine.
pub(super) async fn remove<K>(
    api: &Api<K>,
    name: &str,
    what: String,
    report: &mut Report,
) -> anyhow::Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => report.note("deleted", what),
        Err(kube::Error::Api(s)) if s.code == 404 => report.note("absent", what),
        Err(e) => return Err(e).with_context(|| format!("deleting {what}")),
    }
    Ok(())
}

/// The kubeconfig Secret `name` holds, if it exists.
pub(super) async fn secret_kubeconfig(
    api: &Api<Secret>,
    name: &str,
) -> anyhow::Result<Option<String>> {
    let secret = api
        .get_opt(name)
        .await
        .with_context(|| format!("reading Secret {name}"))?;
    Ok(secret.and_then(|s| {
        let v = serde_json::to_value(&s).ok()?;
        secret_value(&v, "kubeconfig")
    }))
}

/// A Secret's value under `key`, decoded.
pub(super) fn secret_value(secret: &Value, key: &str) -> Option<String> {
    let b64 = secret["data"][key].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

/// A Secret in [`SYSTEM_NAMESPACE`] holding `kubeconfig`, replaced when its
/// kubeconfig differs.
pub(super) async fn ensure_kubeconfig_secret(
    api: &Api<Secret>,
    name: &str,
    labels: &Value,
    kubeconfig: &str,
    what: String,
    report: &mut Report,
) -> anyhow::Result<()> {
    ensure::<Secret>(
        api,
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": name, "namespace": SYSTEM_NAMESPACE, "labels": labels},
               "stringData": {"kubeconfig": kubeconfig}}),
        |current, _| secret_value(current, "kubeconfig").as_deref() != Some(kubeconfig),
        what,
        report,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_the_server_adds_are_not_a_difference() {
        let desired = json!({"spec": {"failurePolicy": "Fail", "rules": [{"a": 1}]}});
        let current = json!({"spec": {"failurePolicy": "Fail", "matchPolicy": "Equivalent", "rules": [{"a": 1, "b": 2}]}});
        assert!(!not_contained(&["spec"])(&current, &desired));
        let changed = json!({"spec": {"failurePolicy": "Ignore", "rules": [{"a": 1}]}});
        assert!(not_contained(&["spec"])(&current, &changed));
        let more = json!({"spec": {"rules": [{"a": 1}, {"a": 2}]}});
        assert!(not_contained(&["spec"])(&current, &more));
    }
}
