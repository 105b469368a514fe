//! The `ValidatingAdmissionPolicy`s shipped beside the CRDs, for the rules
//! a CRD schema's CEL cannot express: CEL in a schema sees only typed
//! fields, and a template's Tekton spec and an override's `value` are
//! untyped by design. A policy sees the object as written.
//!
//! - `tekfed-overrides`: a `remove` carries no `value`; `add` and
//!   `replace` carry one.
//! - `tekfed-run-frozen`: once the hub has scheduled a run, its spec may
//!   change only in the cancel field, `spec.template.spec.status`.

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use serde_json::json;

/// Name of the policy checking override operations.
pub const OVERRIDES_POLICY: &str = "tekfed-overrides";
/// Name of the policy freezing a scheduled run's spec.
pub const RUN_FROZEN_POLICY: &str = "tekfed-run-frozen";

/// What the API server answers when an edit touches a scheduled run.
pub const FROZEN_MESSAGE: &str = "spec is immutable once the run is scheduled; \
     only spec.template.spec.status (the cancel field) may change";

/// True when the spec is unchanged but for `spec.template.spec.status`.
const SPEC_UNCHANGED_BUT_CANCEL: &str = "object.spec.placement == oldObject.spec.placement \
     && (has(object.spec.overrides) ? object.spec.overrides : []) == (has(oldObject.spec.overrides) ? oldObject.spec.overrides : []) \
     && (has(object.spec.template.metadata) ? object.spec.template.metadata : {}) == (has(oldObject.spec.template.metadata) ? oldObject.spec.template.metadata : {}) \
     && object.spec.template.spec.all(k, k == 'status' || (k in oldObject.spec.template.spec && object.spec.template.spec[k] == oldObject.spec.template.spec[k])) \
     && oldObject.spec.template.spec.all(k, k == 'status' || k in object.spec.template.spec)";

/// Both policies.
pub fn policies() -> Vec<ValidatingAdmissionPolicy> {
    let all_federated = [
        "federatedtasks",
        "federatedpipelines",
        "federatedstepactions",
        "federatedtaskruns",
        "federatedpipelineruns",
    ];
    let policies = [
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": OVERRIDES_POLICY},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{
                    "apiGroups": [crate::GROUP],
                    "apiVersions": [crate::VERSION],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": all_federated,
                }]},
                "variables": [
                    {"name": "overrides", "expression": "has(object.spec.overrides) ? object.spec.overrides : []"},
                    {"name": "bad", "expression": "variables.overrides.filter(o, has(o.clusterOverrides) && o.clusterOverrides.exists(p, (has(p.op) && p.op == 'remove') ? has(p.value) : !has(p.value)))"},
                ],
                "validations": [{
                    "expression": "size(variables.bad) == 0",
                    "message": "spec.overrides[].clusterOverrides[].value: required for op add and replace, not allowed for op remove",
                    "messageExpression": "'spec.overrides[clusterName=' + variables.bad[0].clusterName + '].clusterOverrides[].value: required for op add and replace, not allowed for op remove'",
                    "reason": "Invalid",
                }],
            },
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": RUN_FROZEN_POLICY},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{
                    "apiGroups": [crate::GROUP],
                    "apiVersions": [crate::VERSION],
                    "operations": ["UPDATE"],
                    "resources": ["federatedtaskruns", "federatedpipelineruns"],
                }]},
                "matchConditions": [{
                    "name": "scheduled",
                    "expression": "has(oldObject.status) && has(oldObject.status.phase) && oldObject.status.phase != 'Queued'",
                }],
                "validations": [{
                    "expression": SPEC_UNCHANGED_BUT_CANCEL,
                    "message": FROZEN_MESSAGE,
                    "reason": "Invalid",
                }],
            },
        }),
    ];
    policies
        .into_iter()
        .map(|p| {
            serde_json::from_value(p).expect("the policies are valid ValidatingAdmissionPolicies")
        })
        .collect()
}

/// One binding per policy, denying what it refuses, cluster-wide.
pub fn bindings() -> Vec<ValidatingAdmissionPolicyBinding> {
    [OVERRIDES_POLICY, RUN_FROZEN_POLICY]
        .into_iter()
        .map(|policy| {
            serde_json::from_value(json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": policy},
                "spec": {"policyName": policy, "validationActions": ["Deny"]},
            }))
            .expect("the bindings are valid ValidatingAdmissionPolicyBindings")
        })
        .collect()
}
