//! The `ValidatingAdmissionPolicy`s shipped beside the CRDs, for the rules
//! a CRD schema's CEL cannot express: CEL in a schema sees only typed
//! fields, and a template's Tekton spec and an override's `value` are
//! untyped by design. A policy sees the object as written.
//!
//! - `tekfed-overrides`: a `remove` carries no `value`; `add` and
//!   `replace` carry one.
//! - `tekfed-run-frozen`: once the hub has scheduled a run, its spec may
//!   change only in the cancel field, `spec.template.spec.status`
//!   (`onClusterLost` included: what happens on a lost cluster was decided
//!   with the run).
//! - `tekfed-agent-writes`: a member's agent (hub user
//!   `system:serviceaccount:tekfed-system:tekfed-agent-<cluster>`, as
//!   `kubectl tekfed join` makes it, or `tekfed-agent-<cluster>`, a client
//!   certificate) writes only the status of its own cluster's
//!   `RunAssignment`s and `MemberReport` (their `spec.cluster` and
//!   namespace are its cluster's), and never the hub's revoke fields. RBAC
//!   already confines it to its namespace; this holds even for a Role bound
//!   too widely.
//! - `tekfed-hub-status`: the status of federated objects and
//!   `MemberCluster`s carries the hub's decisions (`status.cluster`,
//!   `status.phase`, attempts, `Ready`…): only an identity RBAC allows the
//!   verb [`DECIDE_VERB`] on `<kind>/status` in `tekfed.io`, cluster-wide,
//!   may write it. The hub's ClusterRole (chart) grants it; cluster admins
//!   (`system:masters`, `cluster-admin`) have every verb. A tenant granted
//!   `update` on `federatedtaskruns/status` still cannot forge where a run
//!   goes.
//!
//! Why an RBAC verb and not a list of the hub's usernames (a parameter
//! ConfigMap): the hub's identity differs per install (the chart's
//! ServiceAccount in its release namespace, a test bed's admin, a renamed
//! account), and RBAC already names it; a missing or stale list would
//! either lock the hub out or let everyone in, while a missing grant only
//! ever refuses. Nothing is left to configure on a fresh install.

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use serde_json::json;

/// Name of the policy checking override operations.
pub const OVERRIDES_POLICY: &str = "tekfed-overrides";
/// Name of the policy freezing a scheduled run's spec.
pub const RUN_FROZEN_POLICY: &str = "tekfed-run-frozen";
/// Name of the policy confining an agent's writes.
pub const AGENT_WRITES_POLICY: &str = "tekfed-agent-writes";
/// Name of the policy reserving the hub's status to the hub.
pub const HUB_STATUS_POLICY: &str = "tekfed-hub-status";

/// The verb, on `<plural>/status` in `tekfed.io` (cluster-wide), that lets
/// an identity write the status the hub decides (see [`HUB_STATUS_POLICY`]).
pub const DECIDE_VERB: &str = "decide";
/// The status subresources only the hub writes.
pub const HUB_STATUS_RESOURCES: [&str; 6] = [
    "federatedtaskruns/status",
    "federatedpipelineruns/status",
    "federatedtasks/status",
    "federatedpipelines/status",
    "federatedstepactions/status",
    "memberclusters/status",
];

/// The hub user name prefixes of member agents, each followed by the
/// cluster's name: `kubectl tekfed join`'s ServiceAccount, and a client
/// certificate's common name (the test bed's).
pub const AGENT_USER_PREFIXES: [&str; 2] = [
    "system:serviceaccount:tekfed-system:tekfed-agent-",
    "tekfed-agent-",
];

/// What the API server answers when an agent writes a revoke field.
pub const REVOKE_FIELDS_MESSAGE: &str = "status.revoked, status.revokedReason and status.revokedTime are the hub's: an agent cannot write them";

/// What the API server answers when an edit touches a scheduled run.
pub const FROZEN_MESSAGE: &str = "spec is immutable once the run is scheduled; \
     only spec.template.spec.status (the cancel field) may change";

/// True when the spec is unchanged but for `spec.template.spec.status`.
const SPEC_UNCHANGED_BUT_CANCEL: &str = "object.spec.placement == oldObject.spec.placement \
     && (has(object.spec.overrides) ? object.spec.overrides : []) == (has(oldObject.spec.overrides) ? oldObject.spec.overrides : []) \
     && (has(object.spec.template.metadata) ? object.spec.template.metadata : {}) == (has(oldObject.spec.template.metadata) ? oldObject.spec.template.metadata : {}) \
     && object.spec.template.spec.all(k, k == 'status' || (k in oldObject.spec.template.spec && object.spec.template.spec[k] == oldObject.spec.template.spec[k])) \
     && oldObject.spec.template.spec.all(k, k == 'status' || k in object.spec.template.spec) \
     && (has(object.spec.onClusterLost) ? object.spec.onClusterLost : 'Fail') == (has(oldObject.spec.onClusterLost) ? oldObject.spec.onClusterLost : 'Fail')";

/// CEL: `field` of `status` is the same (present and equal, or absent) in
/// the object as written and as stored.
fn status_field_unchanged(field: &str) -> String {
    format!(
        "((has(object.status) && has(object.status.{field})) == (has(oldObject.status) && has(oldObject.status.{field}))) \
         && (!(has(object.status) && has(object.status.{field})) || object.status.{field} == oldObject.status.{field})"
    )
}

/// CEL: the request's user is a member agent.
fn agent_user() -> String {
    AGENT_USER_PREFIXES
        .iter()
        .map(|p| format!("request.userInfo.username.startsWith('{p}')"))
        .collect::<Vec<_>>()
        .join(" || ")
}

/// CEL: the agent's cluster, from its user name.
fn agent_cluster() -> String {
    let [service_account, certificate] = AGENT_USER_PREFIXES;
    format!(
        "request.userInfo.username.startsWith('{service_account}') ? request.userInfo.username.substring({}) : request.userInfo.username.substring({})",
        service_account.len(),
        certificate.len()
    )
}

/// Every policy (one binding each, [`bindings`]).
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
        agent_writes(),
        hub_status(),
    ];
    policies
        .into_iter()
        .map(|p| {
            serde_json::from_value(p).expect("the policies are valid ValidatingAdmissionPolicies")
        })
        .collect()
}

/// `tekfed-agent-writes`: see the module documentation.
fn agent_writes() -> serde_json::Value {
    let revoke_unchanged = ["revoked", "revokedReason", "revokedTime"]
        .map(status_field_unchanged)
        .join(" && ");
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": AGENT_WRITES_POLICY},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [crate::GROUP],
                "apiVersions": ["*"],
                "operations": ["CREATE", "UPDATE", "DELETE"],
                "resources": ["runassignments", "runassignments/status", "memberreports", "memberreports/status"],
            }]},
            "matchConditions": [{"name": "agent", "expression": agent_user()}],
            "variables": [
                {"name": "cluster", "expression": agent_cluster()},
                {"name": "record", "expression": "request.operation == 'DELETE' ? oldObject : object"},
            ],
            "validations": [
                {
                    "expression": "request.operation == 'UPDATE' && request.subResource == 'status'",
                    "messageExpression": "request.userInfo.username + ' (the agent of cluster ' + variables.cluster + ') may only write the status of its RunAssignments and MemberReport, not ' + request.operation + ' ' + request.resource.resource + (request.subResource == '' ? '' : '/' + request.subResource)",
                    "reason": "Forbidden",
                },
                {
                    "expression": format!("variables.record.spec.cluster == variables.cluster && request.namespace == '{}' + variables.cluster", crate::cluster_namespace("")),
                    "messageExpression": "request.userInfo.username + ' (the agent of cluster ' + variables.cluster + ') may not write the records of cluster ' + variables.record.spec.cluster + ' in namespace ' + request.namespace",
                    "reason": "Forbidden",
                },
                {
                    "expression": format!("request.resource.resource != 'runassignments' || request.operation != 'UPDATE' || ({revoke_unchanged})"),
                    "message": REVOKE_FIELDS_MESSAGE,
                    "reason": "Forbidden",
                },
            ],
        },
    })
}

/// `tekfed-hub-status`: see the module documentation.
fn hub_status() -> serde_json::Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": HUB_STATUS_POLICY},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [crate::GROUP],
                "apiVersions": ["*"],
                "operations": ["UPDATE"],
                "resources": HUB_STATUS_RESOURCES,
            }]},
            "validations": [{
                "expression": format!("authorizer.group('{}').resource(request.resource.resource).subresource('status').check('{DECIDE_VERB}').allowed()", crate::GROUP),
                "messageExpression": format!("'status of ' + request.resource.resource + ' is written by the tekfed hub only (it carries the decisions of the hub: status.cluster, status.phase, attempts, conditions): ' + request.userInfo.username + ' is not allowed verb {DECIDE_VERB} on ' + request.resource.resource + '/status in {}'", crate::GROUP),
                "reason": "Forbidden",
            }],
        },
    })
}

/// One binding per policy, denying what it refuses, cluster-wide.
pub fn bindings() -> Vec<ValidatingAdmissionPolicyBinding> {
    [
        OVERRIDES_POLICY,
        RUN_FROZEN_POLICY,
        AGENT_WRITES_POLICY,
        HUB_STATUS_POLICY,
    ]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_has_its_binding() {
        let policies: Vec<String> = policies()
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect();
        let bound: Vec<String> = bindings().into_iter().map(|b| b.spec.policy_name).collect();
        assert_eq!(policies, bound);
        assert!(policies.contains(&AGENT_WRITES_POLICY.to_owned()));
        assert!(policies.contains(&HUB_STATUS_POLICY.to_owned()));
    }

    #[test]
    fn an_agent_is_known_by_either_user_name_and_its_cluster_is_the_rest() {
        let cel = agent_cluster();
        // The offsets are the prefixes' lengths.
        assert!(cel.contains("substring(49)"), "{cel}");
        assert!(cel.contains("substring(13)"), "{cel}");
        for (user, cluster) in [
            (
                "system:serviceaccount:tekfed-system:tekfed-agent-member-1",
                "member-1",
            ),
            ("tekfed-agent-member-1", "member-1"),
        ] {
            let prefix = AGENT_USER_PREFIXES
                .iter()
                .find(|p| user.starts_with(*p))
                .unwrap();
            assert_eq!(&user[prefix.len()..], cluster);
        }
    }

    #[test]
    fn a_scheduled_run_keeps_its_on_cluster_lost() {
        assert!(SPEC_UNCHANGED_BUT_CANCEL.contains("object.spec.onClusterLost"));
    }

    #[test]
    fn an_agent_may_not_change_any_revoke_field() {
        let policy = serde_json::to_value(agent_writes()).unwrap();
        let text = policy.to_string();
        for field in ["revoked", "revokedReason", "revokedTime"] {
            assert!(
                text.contains(&format!(
                    "object.status.{field} == oldObject.status.{field}"
                )),
                "{field}"
            );
        }
    }

    /// The hub chart's ClusterRole grants the hub the verb the hub-status
    /// policy asks for, on every status it guards (else a chart-installed
    /// hub could not write its own status).
    #[test]
    fn the_hub_chart_grants_the_decide_verb() {
        let rbac = include_str!("../../charts/tekfed-hub/templates/rbac.yaml");
        let rule = rbac
            .split("  - apiGroups:")
            .find(|rule| rule.contains(&format!("verbs: [{DECIDE_VERB}]")))
            .expect("a rule granting the decide verb");
        for resource in HUB_STATUS_RESOURCES {
            assert!(rule.contains(resource), "{resource} missing from\n{rule}");
        }
    }
}
