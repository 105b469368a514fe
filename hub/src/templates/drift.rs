//! Whether a member's copy of an object still says what tekfed applied.
//!
//! "In sync" means every field tekfed sets has the value tekfed set: the
//! desired object is a subset of the live one. Fields a member adds on its
//! own (Tekton's defaulting webhook fills in `params[].type`, step
//! `computeResources`, …) do not count as drift, so an unchanged object is
//! never rewritten; a changed or removed field tekfed set does count, and
//! is restored by the next apply.

use serde_json::Value;

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
