//! The member guard: what the hub's identity may do on a member, as the
//! member's own admin decides it (`kubectl tekfed join` flags, or the
//! agent chart's values), written into `MemberCluster.spec.tenancy` on the
//! hub and into a `ValidatingAdmissionPolicy` on the member.
//!
//! The hub checks a run or template against its cluster's [`Tenancy`]
//! before it creates anything there ([`refusal`]) and says why it will not;
//! the member's API server checks every write of the hub's identity against
//! the same rules ([`member_policy`]), so they hold even against a
//! compromised hub:
//!
//! - no write in a system namespace (`kube-*`, `tekton-*`, `tekfed-system`)
//!   or one the member denies, nor outside the namespaces it allows;
//! - no write to an object that does not carry tekfed's label, nor a write
//!   that drops it: the hub cannot take over a member's own objects;
//! - a namespace the hub creates carries a Pod Security `enforce` label at
//!   least as strict as the member's level ([`PodSecurityLevel`]);
//! - below `privileged`, no Task, run or StepAction asking for host
//!   namespaces, `hostPath` volumes, privileged containers or added
//!   capabilities (the Pod Security `baseline` rules, which `restricted`
//!   includes; the namespace label has the member's API server enforce the
//!   rest on the pods Tekton makes);
//! - a run may name a ServiceAccount that holds rights on the member
//!   (reading Secrets, creating pods, binding roles, minting tokens) only
//!   when the member lists it in [`Tenancy::service_accounts`]: the
//!   ServiceAccounts tekfed carries have none (tekfed never binds roles).

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// A Tekton object's `spec`, as a template holds it.
pub type Spec = Map<String, Value>;

/// The hub's identity on a member (`kubectl tekfed join` makes it).
pub const HUB_MEMBER_USER: &str = "system:serviceaccount:tekfed-system:tekfed-hub";
/// The policy (and its binding) on each member.
pub const GUARD_POLICY: &str = "tekfed-member-guard";
/// Namespaces the hub never writes in, on any member.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-*", "tekton-*", "tekfed-system"];
/// The label tekfed puts on everything it creates on a member.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "tekfed";
/// Pod Security Admission's labels on a namespace.
pub const PSA_ENFORCE: &str = "pod-security.kubernetes.io/enforce";
pub const PSA_ENFORCE_VERSION: &str = "pod-security.kubernetes.io/enforce-version";

/// Capabilities Pod Security `baseline` lets a container add.
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
/// Capabilities Pod Security `restricted` lets a container add.
const RESTRICTED_CAPABILITIES: [&str; 1] = ["NET_BIND_SERVICE"];

/// A Pod Security Standards level.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PodSecurityLevel {
    Privileged,
    Baseline,
    #[default]
    Restricted,
}

impl PodSecurityLevel {
    /// The level as Pod Security Admission's labels spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Privileged => "privileged",
            Self::Baseline => "baseline",
            Self::Restricted => "restricted",
        }
    }

    /// Capabilities a container may add at this level; `None`: any.
    fn addable(self) -> Option<&'static [&'static str]> {
        match self {
            Self::Privileged => None,
            Self::Baseline => Some(&BASELINE_CAPABILITIES),
            Self::Restricted => Some(&RESTRICTED_CAPABILITIES),
        }
    }
}

impl std::str::FromStr for PodSecurityLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "privileged" => Ok(Self::Privileged),
            "baseline" => Ok(Self::Baseline),
            "restricted" => Ok(Self::Restricted),
            other => Err(format!(
                "{other:?} is not a Pod Security level: privileged, baseline or restricted"
            )),
        }
    }
}

/// What a member lets the hub do there (`MemberCluster.spec.tenancy`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tenancy {
    /// Namespaces the hub may write in: names, or prefixes ending in `*`
    /// (`team-*`). Empty: every namespace not denied. System namespaces
    /// (`kube-*`, `tekton-*`, `tekfed-system`) are never allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allow_namespaces: Vec<String>,
    /// Namespaces the hub may not write in, besides the system ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub deny_namespaces: Vec<String>,
    /// The Pod Security level of the namespaces tekfed creates here, and
    /// the most a run or Task may ask of its pods (`restricted` when unset).
    #[serde(default)]
    pub pod_security: PodSecurityLevel,
    /// ServiceAccounts (`namespace/name`, or `name` in any namespace) that
    /// runs may name here although they hold rights on this member.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub service_accounts: Vec<String>,
}

/// Whether `name` matches a namespace pattern: the name itself, or a
/// prefix ending in `*`.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// Why the hub may not write in `namespace` on a member with `tenancy`.
pub fn namespace_refusal(tenancy: &Tenancy, namespace: &str) -> Option<String> {
    if let Some(p) = SYSTEM_NAMESPACES
        .iter()
        .find(|p| pattern_matches(p, namespace))
    {
        return Some(format!(
            "namespace {namespace} is a system namespace ({p}), closed to tekfed on every member; use a namespace of your own"
        ));
    }
    if let Some(p) = tenancy
        .deny_namespaces
        .iter()
        .find(|p| pattern_matches(p, namespace))
    {
        return Some(format!(
            "namespace {namespace} is closed to tekfed there (denyNamespaces: {p})"
        ));
    }
    if !tenancy.allow_namespaces.is_empty()
        && !tenancy
            .allow_namespaces
            .iter()
            .any(|p| pattern_matches(p, namespace))
    {
        return Some(format!(
            "namespace {namespace} is not open to tekfed there (allowNamespaces: {})",
            tenancy.allow_namespaces.join(", ")
        ));
    }
    None
}

/// Why a member with `tenancy` refuses a Tekton object of `kind` in
/// `namespace` with this `spec`: its namespace, or what it asks of its
/// pods (every field named). `None`: allowed.
pub fn refusal(tenancy: &Tenancy, kind: &str, namespace: &str, spec: &Spec) -> Option<String> {
    if let Some(why) = namespace_refusal(tenancy, namespace) {
        return Some(why);
    }
    let fields = pod_refusals(tenancy.pod_security, kind, spec);
    if fields.is_empty() {
        return None;
    }
    Some(format!(
        "Pod Security level {} there forbids {}",
        tenancy.pod_security.as_str(),
        fields.join("; ")
    ))
}

/// The members (name, tenancy) that do not allow a run of `kind` in
/// `namespace` with this `spec`, each with why: [`refusal`], and, when
/// the run names a ServiceAccount some member lists as its own
/// ([`allows_service_account`]), every member that does not list it.
pub fn refusals(
    members: &[(String, &Tenancy)],
    kind: &str,
    namespace: &str,
    spec: &Spec,
) -> BTreeMap<String, String> {
    let owned: Vec<String> = service_account_names(kind, spec)
        .into_iter()
        .filter(|sa| {
            members
                .iter()
                .any(|(_, t)| allows_service_account(t, namespace, sa))
        })
        .collect();
    members
        .iter()
        .filter_map(|(name, tenancy)| {
            let why = refusal(tenancy, kind, namespace, spec).or_else(|| {
                let sa = owned
                    .iter()
                    .find(|sa| !allows_service_account(tenancy, namespace, sa))?;
                Some(format!(
                    "ServiceAccount {sa} is the own of the members that list it (spec.tenancy.serviceAccounts), and this one does not"
                ))
            })?;
            Some((name.clone(), why))
        })
        .collect()
}

/// What a Tekton object of `kind` asks of its pods that `level` forbids,
/// each as `field path (why)`.
pub fn pod_refusals(level: PodSecurityLevel, kind: &str, spec: &Spec) -> Vec<String> {
    let Some(addable) = level.addable() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut pod_template = |path: String, pt: &Value| {
        let Some(pt) = pt.as_object() else { return };
        for field in ["hostNetwork", "hostPID", "hostIPC"] {
            if pt.get(field) == Some(&Value::Bool(true)) {
                found.push(format!("{path}.{field} (host namespaces)"));
            }
        }
        volumes(&path, pt, &mut found);
    };
    match kind {
        "TaskRun" => {
            if let Some(pt) = spec.get("podTemplate") {
                pod_template("spec.podTemplate".into(), pt);
            }
        }
        "PipelineRun" => {
            if let Some(pt) = spec
                .get("taskRunTemplate")
                .and_then(|t| t.get("podTemplate"))
            {
                pod_template("spec.taskRunTemplate.podTemplate".into(), pt);
            }
            for (i, s) in items(spec.get("taskRunSpecs")) {
                if let Some(pt) = s.get("podTemplate") {
                    pod_template(format!("spec.taskRunSpecs[{i}].podTemplate"), pt);
                }
            }
        }
        _ => {}
    }
    let mut task = |path: &str, ts: &Value| {
        if let Some(ts) = ts.as_object() {
            task_spec(path, ts, addable, &mut found)
        }
    };
    match kind {
        "Task" => task_spec("spec", spec, addable, &mut found),
        "TaskRun" => {
            if let Some(ts) = spec.get("taskSpec") {
                task("spec.taskSpec", ts);
            }
        }
        "Pipeline" => pipeline_spec("spec", spec, &mut task),
        "PipelineRun" => {
            if let Some(ps) = spec.get("pipelineSpec").and_then(Value::as_object) {
                pipeline_spec("spec.pipelineSpec", ps, &mut task);
            }
        }
        "StepAction" => container("spec", spec, addable, &mut found),
        _ => {}
    }
    found
}

fn items(list: Option<&Value>) -> impl Iterator<Item = (usize, &Value)> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
}

fn pipeline_spec(path: &str, ps: &Spec, task: &mut impl FnMut(&str, &Value)) {
    for list in ["tasks", "finally"] {
        for (i, t) in items(ps.get(list)) {
            if let Some(ts) = t.get("taskSpec") {
                task(&format!("{path}.{list}[{i}].taskSpec"), ts);
            }
        }
    }
}

fn task_spec(path: &str, ts: &Spec, addable: &[&str], found: &mut Vec<String>) {
    for list in ["steps", "sidecars"] {
        for (i, c) in items(ts.get(list)) {
            if let Some(c) = c.as_object() {
                container(&format!("{path}.{list}[{i}]"), c, addable, found);
            }
        }
    }
    if let Some(c) = ts.get("stepTemplate").and_then(Value::as_object) {
        container(&format!("{path}.stepTemplate"), c, addable, found);
    }
    volumes(path, ts, found);
}

fn volumes(path: &str, holder: &Spec, found: &mut Vec<String>) {
    for (i, v) in items(holder.get("volumes")) {
        if v.get("hostPath").is_some() {
            found.push(format!("{path}.volumes[{i}].hostPath (host paths)"));
        }
    }
}

fn container(path: &str, c: &Spec, addable: &[&str], found: &mut Vec<String>) {
    let Some(sc) = c.get("securityContext") else {
        return;
    };
    if sc.get("privileged") == Some(&Value::Bool(true)) {
        found.push(format!(
            "{path}.securityContext.privileged (privileged containers)"
        ));
    }
    let added: Vec<&str> = items(sc.pointer("/capabilities/add"))
        .filter_map(|(_, c)| c.as_str())
        .filter(|c| !addable.contains(c))
        .collect();
    if !added.is_empty() {
        found.push(format!(
            "{path}.securityContext.capabilities.add {} (added capabilities)",
            added.join(", ")
        ));
    }
}

/// The ServiceAccounts a run of `kind` names (`serviceAccountName`, a
/// PipelineRun's `taskRunTemplate` and `taskRunSpecs[]`), `default` left
/// out.
pub fn service_account_names(kind: &str, spec: &Spec) -> Vec<String> {
    let name = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let mut names = Vec::new();
    match kind {
        "TaskRun" => names.extend(name(spec.get("serviceAccountName"))),
        "PipelineRun" => {
            names.extend(name(
                spec.get("taskRunTemplate")
                    .and_then(|t| t.get("serviceAccountName")),
            ));
            for (_, s) in items(spec.get("taskRunSpecs")) {
                names.extend(name(s.get("serviceAccountName")));
            }
        }
        _ => {}
    }
    names.retain(|n| !n.is_empty() && n != "default");
    names.dedup();
    names
}

/// Whether a member with `tenancy` lists ServiceAccount `name` of
/// `namespace` as one runs may use there: such a ServiceAccount is the
/// member's own, which tekfed never carries.
pub fn allows_service_account(tenancy: &Tenancy, namespace: &str, name: &str) -> bool {
    tenancy
        .service_accounts
        .iter()
        .any(|a| a == name || *a == format!("{namespace}/{name}"))
}

/// The labels of a namespace tekfed creates on a member with `tenancy`.
pub fn namespace_labels(tenancy: &Tenancy) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (
            PSA_ENFORCE.to_owned(),
            tenancy.pod_security.as_str().to_owned(),
        ),
        (PSA_ENFORCE_VERSION.to_owned(), "latest".to_owned()),
    ])
}

/// A container `securityContext` that Pod Security `restricted` admits:
/// what a Task's `stepTemplate` sets to run on a member at that level
/// (with Tekton's feature flag `set-security-context: "true"` for the
/// containers Tekton adds).
pub fn restricted_security_context() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": 65532,
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// A CEL list of strings.
fn cel_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|i| format!("'{}'", i.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// A CEL test that container `c` asks for what the level forbids.
fn bad_container(c: &str) -> String {
    format!(
        "(has({c}.securityContext) && ((has({c}.securityContext.privileged) && {c}.securityContext.privileged == true) \
         || (has({c}.securityContext.capabilities) && has({c}.securityContext.capabilities.add) \
             && {c}.securityContext.capabilities.add.exists(cap, !(cap in variables.addable)))))"
    )
}

/// A CEL test that task spec `ts` asks for what the level forbids.
fn bad_task_spec(ts: &str) -> String {
    format!(
        "((has({ts}.steps) && {ts}.steps.exists(c, {steps})) \
         || (has({ts}.sidecars) && {ts}.sidecars.exists(c, {steps})) \
         || (has({ts}.stepTemplate) && {template}) \
         || (has({ts}.volumes) && {ts}.volumes.exists(v, has(v.hostPath))))",
        steps = bad_container("c"),
        template = bad_container(&format!("{ts}.stepTemplate")),
    )
}

/// A CEL test that pod template `pt` asks for host namespaces or paths.
fn bad_pod_template(pt: &str) -> String {
    format!(
        "((has({pt}.hostNetwork) && {pt}.hostNetwork == true) || (has({pt}.hostPID) && {pt}.hostPID == true) \
         || (has({pt}.hostIPC) && {pt}.hostIPC == true) || (has({pt}.volumes) && {pt}.volumes.exists(v, has(v.hostPath))))"
    )
}

/// The rights a ServiceAccount named by a run may not hold unless the
/// member lists it, as `(group, resource, subresource, verb)`. Each is its
/// own validation: the API server allows two authorization checks per
/// expression, so a run naming more than two unlisted ServiceAccounts is
/// refused (the check errs, and the policy fails closed).
const RIGHTS: [(&str, &str, &str, &str); 4] = [
    ("", "secrets", "", "get"),
    ("", "pods", "", "create"),
    ("", "serviceaccounts", "token", "create"),
    ("rbac.authorization.k8s.io", "rolebindings", "", "create"),
];

/// A validation refusing a run whose unlisted ServiceAccount holds `right`.
fn no_right((group, resource, subresource, verb): (&str, &str, &str, &str)) -> Value {
    json!({
        "expression": format!(
            "request.operation == 'DELETE' || variables.unlisted.all(sa, !authorizer.serviceAccount(variables.ns, sa)\
             .group('{group}').resource('{resource}').subresource('{subresource}').namespace(variables.ns).check('{verb}').allowed())"
        ),
        "messageExpression": format!(
            "request.kind.kind + ' ' + variables.ns + '/' + variables.object.metadata.name + ': its ServiceAccount holds rights on this cluster \
             ({verb} {resource}{}) and is not among those the member guard allows (serviceAccounts of the member guard)'",
            if subresource.is_empty() { String::new() } else { format!("/{subresource}") }
        ),
        "reason": "Forbidden",
    })
}

/// The member's policy: every write of [`HUB_MEMBER_USER`] to the kinds
/// the hub writes there, checked against the member's `tenancy`, which is
/// written into the policy itself (no params object: a binding whose
/// params are missing refuses every matching request, whoever makes it).
pub fn member_policy(tenancy: &Tenancy) -> ValidatingAdmissionPolicy {
    policy(tenancy, tenancy.pod_security.as_str())
}

/// [`member_policy`] with the Pod Security level given as text (the
/// chart's template puts its value there).
fn policy(tenancy: &Tenancy, level: &str) -> ValidatingAdmissionPolicy {
    let matches = |list: &str| {
        format!(
            "{list}.exists(p, p.endsWith('*') ? variables.ns.startsWith(p.substring(0, size(p) - 1)) : variables.ns == p)"
        )
    };
    let system: Vec<String> = SYSTEM_NAMESPACES.iter().map(|s| format!("'{s}'")).collect();
    let spec = "variables.object.spec";
    let task_specs = format!(
        "(request.kind.kind == 'Task' ? [{spec}] : []) \
         + (request.kind.kind == 'TaskRun' && has({spec}.taskSpec) ? [{spec}.taskSpec] : []) \
         + (request.kind.kind == 'Pipeline' ? variables.pipelineTasks : []) \
         + (request.kind.kind == 'PipelineRun' ? variables.pipelineTasks : [])"
    );
    let pipeline = format!(
        "request.kind.kind == 'Pipeline' ? {spec} : (request.kind.kind == 'PipelineRun' && has({spec}.pipelineSpec) ? {spec}.pipelineSpec : {{}})"
    );
    let pod_templates = format!(
        "(request.kind.kind == 'TaskRun' && has({spec}.podTemplate) ? [{spec}.podTemplate] : []) \
         + (request.kind.kind == 'PipelineRun' && has({spec}.taskRunTemplate) && has({spec}.taskRunTemplate.podTemplate) ? [{spec}.taskRunTemplate.podTemplate] : []) \
         + (request.kind.kind == 'PipelineRun' && has({spec}.taskRunSpecs) ? {spec}.taskRunSpecs.filter(s, has(s.podTemplate)).map(s, s.podTemplate) : [])"
    );
    let accounts = format!(
        "(request.kind.kind == 'TaskRun' && has({spec}.serviceAccountName) ? [{spec}.serviceAccountName] : []) \
         + (request.kind.kind == 'PipelineRun' && has({spec}.taskRunTemplate) && has({spec}.taskRunTemplate.serviceAccountName) ? [{spec}.taskRunTemplate.serviceAccountName] : []) \
         + (request.kind.kind == 'PipelineRun' && has({spec}.taskRunSpecs) ? {spec}.taskRunSpecs.filter(s, has(s.serviceAccountName)).map(s, s.serviceAccountName) : [])"
    );
    let labelled = |o: &str| {
        format!(
            "has({o}.metadata.labels) && '{LABEL_MANAGED_BY}' in {o}.metadata.labels && {o}.metadata.labels['{LABEL_MANAGED_BY}'] == '{MANAGED_BY}'"
        )
    };
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": GUARD_POLICY, "labels": {LABEL_MANAGED_BY: MANAGED_BY}},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [
                {"apiGroups": ["tekton.dev"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE", "DELETE"],
                 "resources": ["tasks", "pipelines", "stepactions", "taskruns", "pipelineruns"]},
                {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE", "DELETE"],
                 "resources": ["namespaces", "serviceaccounts", "configmaps", "secrets"]},
            ]},
            "matchConditions": [{"name": "hub", "expression": format!("request.userInfo.username == '{HUB_MEMBER_USER}'")}],
            "variables": [
                {"name": "object", "expression": "request.operation == 'DELETE' ? oldObject : object"},
                {"name": "ns", "expression": "request.kind.kind == 'Namespace' ? variables.object.metadata.name : request.namespace"},
                {"name": "deny", "expression": format!("[{}] + {}", system.join(", "), cel_list(&tenancy.deny_namespaces))},
                {"name": "allow", "expression": cel_list(&tenancy.allow_namespaces)},
                {"name": "level", "expression": format!("'{level}'")},
                {"name": "addable", "expression": format!(
                    "variables.level == 'baseline' ? [{}] : [{}]",
                    BASELINE_CAPABILITIES.map(|c| format!("'{c}'")).join(", "),
                    RESTRICTED_CAPABILITIES.map(|c| format!("'{c}'")).join(", "))},
                {"name": "accounts", "expression": cel_list(&tenancy.service_accounts)},
                {"name": "pipeline", "expression": pipeline},
                {"name": "pipelineTasks", "expression":
                    "(has(variables.pipeline.tasks) ? variables.pipeline.tasks.filter(t, has(t.taskSpec)).map(t, t.taskSpec) : []) \
                     + (has(variables.pipeline.finally) ? variables.pipeline.finally.filter(t, has(t.taskSpec)).map(t, t.taskSpec) : [])"},
                {"name": "taskSpecs", "expression": task_specs},
                {"name": "podTemplates", "expression": pod_templates},
                {"name": "serviceAccounts", "expression": accounts},
                {"name": "unlisted", "expression": "variables.serviceAccounts.filter(sa, sa != 'default' \
                    && !(sa in variables.accounts) && !((variables.ns + '/' + sa) in variables.accounts))"},
            ],
            "validations": [
                {"expression": format!("!({})", matches("variables.deny")),
                 "messageExpression": "'namespace ' + variables.ns + ' is closed to the tekfed hub on this cluster (a system namespace, or one the member guard denies)'",
                 "reason": "Forbidden"},
                {"expression": format!("size(variables.allow) == 0 || {}", matches("variables.allow")),
                 "messageExpression": "'namespace ' + variables.ns + ' is not among the namespaces this cluster opens to the tekfed hub (allowNamespaces of the member guard)'",
                 "reason": "Forbidden"},
                {"expression": format!("({}) && (request.operation != 'UPDATE' || ({}))", labelled("variables.object"), labelled("oldObject")),
                 "messageExpression": format!("request.kind.kind + ' ' + variables.ns + '/' + variables.object.metadata.name + ': the tekfed hub writes only objects labelled {LABEL_MANAGED_BY}={MANAGED_BY}, and this one is not (or would not stay) tekfed\\'s'"),
                 "reason": "Forbidden"},
                {"expression": format!(
                    "request.kind.kind != 'Namespace' || request.operation == 'DELETE' || variables.level == 'privileged' \
                     || (has(object.metadata.labels) && '{PSA_ENFORCE}' in object.metadata.labels \
                         && (object.metadata.labels['{PSA_ENFORCE}'] == 'restricted' \
                             || (variables.level == 'baseline' && object.metadata.labels['{PSA_ENFORCE}'] == 'baseline')))"),
                 "messageExpression": format!("'namespace ' + variables.ns + ': the tekfed hub must label the namespaces it creates {PSA_ENFORCE}=' + variables.level + ' (or stricter) on this cluster'"),
                 "reason": "Forbidden"},
                {"expression": format!(
                    "request.operation == 'DELETE' || variables.level == 'privileged' \
                     || (!variables.taskSpecs.exists(ts, {}) && !variables.podTemplates.exists(pt, {}) \
                         && (request.kind.kind != 'StepAction' || !{}))",
                    bad_task_spec("ts"), bad_pod_template("pt"), bad_container(spec)),
                 "messageExpression": "request.kind.kind + ' ' + variables.ns + '/' + variables.object.metadata.name + ': Pod Security level ' + variables.level + ' on this cluster forbids host namespaces, hostPath volumes, privileged containers and added capabilities'",
                 "reason": "Forbidden"},
            ],
        },
    });
    let mut policy = policy;
    let validations = policy["spec"]["validations"]
        .as_array_mut()
        .expect("validations are a list");
    validations.extend(RIGHTS.map(no_right));
    serde_json::from_value(policy).expect("the member guard is a valid ValidatingAdmissionPolicy")
}

/// Where the agent chart's copy of the guard goes.
pub const CHART_TEMPLATE: &str = "charts/tekfed-member-agent/templates/guard.yaml";

/// The agent chart's guard (`make crds` writes it to [`CHART_TEMPLATE`];
/// `api/tests/chart_fresh.rs` checks it): the same policy and binding,
/// with the terms from the chart's `guard.*` values, under `guard.create`.
pub fn chart_template() -> String {
    let yaml = |v: &Value| serde_saphyr::to_string(v).expect("API objects serialize to YAML");
    let marker = |name: &str| vec![format!("@{name}@")];
    let terms = Tenancy {
        allow_namespaces: marker("allowNamespaces"),
        deny_namespaces: marker("denyNamespaces"),
        pod_security: PodSecurityLevel::default(),
        service_accounts: marker("serviceAccounts"),
    };
    let policy = serde_json::to_value(policy(&terms, "@podSecurity@")).expect("serializes");
    let binding = serde_json::to_value(member_binding()).expect("serializes");
    let mut text = format!(
        "{{{{/* Generated from api/src/guard.rs by `make crds`: do not edit. */}}}}\n\
         {{{{- if .Values.guard.create }}}}\n{}---\n{}{{{{- end }}}}\n",
        yaml(&policy),
        yaml(&binding)
    );
    for list in ["allowNamespaces", "denyNamespaces", "serviceAccounts"] {
        text = text.replace(
            &cel_list(&marker(list)),
            &format!("{{{{ include \"tekfed-member-agent.celList\" .Values.guard.{list} }}}}"),
        );
    }
    text.replace(
        "@podSecurity@",
        "{{ include \"tekfed-member-agent.guardLevel\" . }}",
    )
}

/// The binding of [`member_policy`]: it denies what the policy refuses.
pub fn member_binding() -> ValidatingAdmissionPolicyBinding {
    serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": GUARD_POLICY, "labels": {LABEL_MANAGED_BY: MANAGED_BY}},
        "spec": {"policyName": GUARD_POLICY, "validationActions": ["Deny"]},
    }))
    .expect("the member guard binding is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusals_of(level: PodSecurityLevel, kind: &str, spec: &Value) -> Vec<String> {
        pod_refusals(level, kind, spec.as_object().unwrap())
    }

    fn tenancy() -> Tenancy {
        Tenancy {
            allow_namespaces: vec!["team-*".into(), "ci".into()],
            deny_namespaces: vec!["team-secret".into()],
            ..Default::default()
        }
    }

    #[test]
    fn system_namespaces_are_closed_whatever_the_member_allows() {
        let open = Tenancy {
            allow_namespaces: vec!["*".into()],
            ..Default::default()
        };
        for ns in [
            "kube-system",
            "kube-public",
            "tekton-pipelines",
            "tekfed-system",
        ] {
            let why = namespace_refusal(&open, ns).unwrap();
            assert!(why.contains("system namespace"), "{why}");
        }
        assert_eq!(namespace_refusal(&open, "tekfed-systems"), None);
    }

    #[test]
    fn namespaces_follow_the_allow_and_deny_lists() {
        let t = tenancy();
        assert_eq!(namespace_refusal(&t, "team-a"), None);
        assert_eq!(namespace_refusal(&t, "ci"), None);
        assert!(
            namespace_refusal(&t, "team-secret")
                .unwrap()
                .contains("denyNamespaces: team-secret")
        );
        assert!(
            namespace_refusal(&t, "cia")
                .unwrap()
                .contains("allowNamespaces: team-*, ci")
        );
        assert_eq!(namespace_refusal(&Tenancy::default(), "anything"), None);
    }

    #[test]
    fn host_and_privileged_asks_are_named_by_field() {
        let run = json!({
            "podTemplate": {"hostNetwork": true, "volumes": [{"name": "a", "emptyDir": {}}, {"name": "h", "hostPath": {"path": "/"}}]},
            "taskSpec": {
                "steps": [{"name": "ok"}, {"name": "root", "securityContext": {"privileged": true}}],
                "sidecars": [{"name": "s", "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE", "SYS_ADMIN"]}}}],
            },
        });
        let found = refusals_of(PodSecurityLevel::Restricted, "TaskRun", &run);
        assert_eq!(
            found,
            [
                "spec.podTemplate.hostNetwork (host namespaces)",
                "spec.podTemplate.volumes[1].hostPath (host paths)",
                "spec.taskSpec.steps[1].securityContext.privileged (privileged containers)",
                "spec.taskSpec.sidecars[0].securityContext.capabilities.add SYS_ADMIN (added capabilities)",
            ]
        );
        assert!(refusals_of(PodSecurityLevel::Privileged, "TaskRun", &run).is_empty());
    }

    #[test]
    fn baseline_allows_its_capabilities_and_restricted_does_not() {
        let task = json!({"steps": [{"name": "s", "securityContext": {"capabilities": {"add": ["CHOWN"]}}}]});
        assert!(refusals_of(PodSecurityLevel::Baseline, "Task", &task).is_empty());
        assert_eq!(
            refusals_of(PodSecurityLevel::Restricted, "Task", &task),
            ["spec.steps[0].securityContext.capabilities.add CHOWN (added capabilities)"]
        );
    }

    #[test]
    fn pipelines_are_searched_to_their_embedded_tasks_and_pod_templates() {
        let run = json!({
            "taskRunTemplate": {"podTemplate": {"hostPID": true}},
            "taskRunSpecs": [{"pipelineTaskName": "b", "podTemplate": {"hostIPC": true}}],
            "pipelineSpec": {
                "tasks": [{"name": "a", "taskRef": {"name": "x"}}, {"name": "b", "taskSpec": {"volumes": [{"name": "h", "hostPath": {"path": "/var"}}]}}],
                "finally": [{"name": "f", "taskSpec": {"stepTemplate": {"securityContext": {"privileged": true}}}}],
            },
        });
        assert_eq!(
            refusals_of(PodSecurityLevel::Baseline, "PipelineRun", &run),
            [
                "spec.taskRunTemplate.podTemplate.hostPID (host namespaces)",
                "spec.taskRunSpecs[0].podTemplate.hostIPC (host namespaces)",
                "spec.pipelineSpec.tasks[1].taskSpec.volumes[0].hostPath (host paths)",
                "spec.pipelineSpec.finally[0].taskSpec.stepTemplate.securityContext.privileged (privileged containers)",
            ]
        );
        let pipeline = json!({"tasks": [{"name": "b", "taskSpec": {"steps": [{"name": "s", "securityContext": {"privileged": true}}]}}]});
        assert_eq!(
            refusals_of(PodSecurityLevel::Restricted, "Pipeline", &pipeline).len(),
            1
        );
        let step_action = json!({"image": "x", "securityContext": {"privileged": true}});
        assert_eq!(
            refusals_of(PodSecurityLevel::Restricted, "StepAction", &step_action),
            ["spec.securityContext.privileged (privileged containers)"]
        );
    }

    #[test]
    fn a_refusal_says_the_namespace_first_then_every_field() {
        let t = tenancy();
        let spec = json!({"podTemplate": {"hostNetwork": true}});
        assert!(
            refusal(&t, "TaskRun", "kube-system", spec.as_object().unwrap())
                .unwrap()
                .contains("system namespace")
        );
        assert_eq!(
            refusal(&t, "TaskRun", "ci", spec.as_object().unwrap()).unwrap(),
            "Pod Security level restricted there forbids spec.podTemplate.hostNetwork (host namespaces)"
        );
        assert_eq!(
            refusal(
                &t,
                "TaskRun",
                "ci",
                json!({"params": []}).as_object().unwrap()
            ),
            None
        );
    }

    #[test]
    fn a_runs_service_accounts_are_found_and_members_list_theirs_by_namespace() {
        let run = json!({
            "taskRunTemplate": {"serviceAccountName": "builder"},
            "taskRunSpecs": [{"pipelineTaskName": "a", "serviceAccountName": "deployer"}, {"serviceAccountName": "default"}],
        });
        assert_eq!(
            service_account_names("PipelineRun", run.as_object().unwrap()),
            ["builder", "deployer"]
        );
        let t = Tenancy {
            service_accounts: vec!["ci/deployer".into(), "builder".into()],
            ..Default::default()
        };
        assert!(allows_service_account(&t, "ci", "deployer"));
        assert!(!allows_service_account(&t, "other", "deployer"));
        assert!(allows_service_account(&t, "other", "builder"));
    }

    #[test]
    fn a_run_as_a_members_own_service_account_goes_only_where_it_is_listed() {
        let lists = Tenancy {
            service_accounts: vec!["ci/builder".into()],
            ..Default::default()
        };
        let open = Tenancy::default();
        let members = [("a".to_owned(), &lists), ("b".to_owned(), &open)];
        let run = json!({"serviceAccountName": "builder"});
        let refused = refusals(&members, "TaskRun", "ci", run.as_object().unwrap());
        assert_eq!(refused.keys().collect::<Vec<_>>(), ["b"]);
        assert!(
            refused["b"].contains("ServiceAccount builder is the own of the members that list it")
        );
        // Elsewhere the name is no member's own: carried from the hub as ever.
        assert!(refusals(&members, "TaskRun", "other", run.as_object().unwrap()).is_empty());
        let root = json!({"podTemplate": {"hostNetwork": true}});
        assert_eq!(
            refusals(&members, "TaskRun", "ci", root.as_object().unwrap()).len(),
            2
        );
    }

    #[test]
    fn tenancy_defaults_to_restricted_and_reads_levels() {
        let t: Tenancy = serde_json::from_value(json!({})).unwrap();
        assert_eq!(t.pod_security, PodSecurityLevel::Restricted);
        assert_eq!(namespace_labels(&t)[PSA_ENFORCE], "restricted");
        assert_eq!(
            "baseline".parse::<PodSecurityLevel>(),
            Ok(PodSecurityLevel::Baseline)
        );
        assert!(
            "root"
                .parse::<PodSecurityLevel>()
                .unwrap_err()
                .contains("privileged, baseline or restricted")
        );
        assert_eq!(
            cel_list(&["team-*".into(), "o'k".into()]),
            "['team-*', 'o\\'k']"
        );
    }

    #[test]
    fn the_policy_and_binding_build() {
        let policy = member_policy(&tenancy());
        let spec = policy.spec.unwrap();
        assert_eq!(spec.validations.unwrap().len(), 9);
        let text = serde_json::to_string(&spec.variables).unwrap();
        assert!(text.contains("['team-*', 'ci']"), "{text}");
        assert!(member_binding().spec.param_ref.is_none());
    }
}
