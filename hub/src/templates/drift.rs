//! Whether a member's copy of an object still says what tekfed applied,
//! both ways:
//! - from the hub's side, every field tekfed sets has the value tekfed set
//!   (the desired object is a subset of the live one), and the copy was
//!   made from this very template: its [`APPLIED`] annotation holds the
//!   [`fingerprint`] of what tekfed would apply now, so a field removed
//!   from the template is removed on the member too;
//! - from the member's side, its `spec` is as it was right after tekfed's
//!   last write (defaults its webhooks added included), so a field someone
//!   added there is taken out again.
//!
//! Fields the member's own defaulting adds when tekfed writes (Tekton
//! fills in `params[].type`, step `computeResources`, …) are part of that
//! last write, so an unchanged copy is never rewritten.

use serde_json::Value;

/// The annotation on a member copy: the [`fingerprint`] of the object
/// tekfed applied (without this annotation).
pub const APPLIED: &str = "tekfed.io/applied";

/// A short, stable fingerprint of a JSON value (FNV-1a, 64 bits, over its
/// JSON text with object keys in order). Not a security measure: it tells
/// tekfed's own writes apart.
pub fn fingerprint(value: &Value) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in value.to_string().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// `desired` with its [`APPLIED`] annotation set.
pub fn stamp(desired: &mut Value) {
    let print = fingerprint(desired);
    desired["metadata"]["annotations"][APPLIED] = Value::String(print);
}

/// What to do with a member's copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It holds what tekfed would write: nothing to do.
    InSync,
    /// The template changed, or a field tekfed set changed there: write
    /// the whole copy again.
    Rewrite,
    /// The member's copy changed since tekfed's last write (a field
    /// added, say): write the whole copy again.
    Reverted,
}

/// The verdict on a `live` copy, against the `desired` one ([`stamp`]ed)
/// and the fingerprint of the live `spec` right after tekfed's last write
/// to it (`None`: not known, as after a hub restart; then only the hub's
/// side is checked).
pub fn verdict(live: &Value, desired: &Value, last_written: Option<&str>) -> Verdict {
    let applied = |v: &Value| {
        v["metadata"]["annotations"][APPLIED]
            .as_str()
            .map(str::to_owned)
    };
    if !in_sync(live, desired) || applied(live) != applied(desired) {
        return Verdict::Rewrite;
    }
    match last_written {
        Some(print) if fingerprint(&live["spec"]) != print => Verdict::Reverted,
        _ => Verdict::InSync,
    }
}

/// Whether `live` holds every field of `desired` with the same value.
/// Lists must have the same length and match element by element.
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(live), Value::Object(desired)) => desired
            .iter()
            .all(|(k, v)| live.get(k).is_some_and(|l| contains(l, v))),
        (Value::Array(live), Value::Array(desired)) => {
            live.len() == desired.len() && live.iter().zip(desired).all(|(l, d)| contains(l, d))
        }
        (live, desired) => live == desired,
    }
}

/// Whether the live member object is in sync with the desired one: its
/// `spec`, and the labels and annotations tekfed sets.
pub fn in_sync(live: &Value, desired: &Value) -> bool {
    ["labels", "annotations"].iter().all(|k| {
        contains(&live["metadata"][k], &desired["metadata"][k]) || desired["metadata"][k].is_null()
    }) && contains(&live["spec"], &desired["spec"])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn desired() -> Value {
        json!({
            "metadata": {"labels": {"tekfed.io/federated-uid": "u1"}},
            "spec": {"params": [{"name": "a", "default": "x"}], "steps": [{"name": "s", "image": "ubuntu"}]},
        })
    }

    #[test]
    fn defaults_a_member_adds_are_not_drift() {
        let live = json!({
            "metadata": {"labels": {"tekfed.io/federated-uid": "u1", "app": "x"}, "resourceVersion": "7"},
            "spec": {"params": [{"name": "a", "default": "x", "type": "string"}], "steps": [{"name": "s", "image": "ubuntu", "computeResources": {}}]},
        });
        assert!(in_sync(&live, &desired()));
    }

    #[test]
    fn a_changed_or_removed_field_is_drift() {
        let mut edited = desired();
        edited["spec"]["steps"][0]["image"] = json!("evil/ubuntu");
        assert!(!in_sync(&edited, &desired()));
        let mut removed = desired();
        removed["spec"]["params"] = json!([]);
        assert!(!in_sync(&removed, &desired()));
        let mut relabelled = desired();
        relabelled["metadata"]["labels"] = json!({});
        assert!(!in_sync(&relabelled, &desired()));
    }

    fn stamped(mut v: Value) -> Value {
        stamp(&mut v);
        v
    }

    #[test]
    fn a_field_removed_from_the_template_is_drift_though_the_copy_still_holds_it() {
        let old = stamped(desired());
        let mut new = desired();
        new["spec"].as_object_mut().unwrap().remove("params");
        let new = stamped(new);
        // The live copy, made from the old template, holds more than the
        // new one: a subset check alone calls that in sync.
        assert!(contains(&old["spec"], &new["spec"]));
        assert_eq!(verdict(&old, &new, None), Verdict::Rewrite);
        assert_eq!(verdict(&old, &old, None), Verdict::InSync);
    }

    #[test]
    fn a_field_the_member_added_since_the_last_write_is_reverted() {
        let written = stamped(desired());
        let print = fingerprint(&written["spec"]);
        assert_eq!(verdict(&written, &written, Some(&print)), Verdict::InSync);
        let mut edited = written.clone();
        edited["spec"]["description"] = json!("added on the member");
        assert_eq!(verdict(&edited, &written, Some(&print)), Verdict::Reverted);
        // Without the record (a hub restart), only the hub's side counts.
        assert_eq!(verdict(&edited, &written, None), Verdict::InSync);
    }

    #[test]
    fn a_fingerprint_is_stable_and_tells_values_apart() {
        assert_eq!(fingerprint(&desired()), fingerprint(&desired()));
        assert_ne!(fingerprint(&desired()), fingerprint(&json!({})));
        assert_eq!(fingerprint(&json!({})).len(), 16);
    }

    #[test]
    fn an_extra_list_element_is_drift() {
        let mut live = desired();
        live["spec"]["steps"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "extra", "image": "x"}));
        assert!(!in_sync(&live, &desired()));
    }
}
