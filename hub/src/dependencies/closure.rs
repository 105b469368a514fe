//! A run's dependency closure (pure): everything its template names that
//! must be on its cluster before it runs, found by walking Tekton's shapes
//! through a [`Lookup`] of what the hub holds.
//!
//! - a TaskRun's `taskRef`, a PipelineRun's `pipelineRef`, and the
//!   `taskRef`s of a Pipeline's `tasks` and `finally` (inline or referred
//!   to), each Task walked in turn;
//! - StepActions named by steps' `ref` (in Tasks and inline `taskSpec`s);
//! - the ServiceAccount of `serviceAccountName`,
//!   `taskRunTemplate.serviceAccountName` and
//!   `taskRunSpecs[].serviceAccountName`, with that ServiceAccount's
//!   `secrets` and `imagePullSecrets`;
//! - `podTemplate.imagePullSecrets` (the run's, `taskRunTemplate`'s and
//!   `taskRunSpecs[]`'s);
//! - the ConfigMaps and Secrets of workspaces and volumes (`configMap`,
//!   `secret`, `projected` sources), in the run's bindings, Tasks'
//!   `volumes` and pod templates' `volumes`. An `optional` one that does
//!   not exist is not needed.
//!
//! References through a resolver (git, bundles, hub, cluster, http) are
//! left to the member's Tekton and listed in [`Closure::remote`]. The
//! `default` ServiceAccount is the member's own and never carried.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};
use tekfed_api::RunKind;

/// The kinds a run can need, in the order they are put on a member: a
/// ServiceAccount after its Secrets, a Pipeline after its Tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DepKind {
    Secret,
    ConfigMap,
    ServiceAccount,
    StepAction,
    Task,
    Pipeline,
}

impl DepKind {
    /// The kind on the member.
    pub fn member_kind(self) -> &'static str {
        match self {
            DepKind::Secret => "Secret",
            DepKind::ConfigMap => "ConfigMap",
            DepKind::ServiceAccount => "ServiceAccount",
            DepKind::StepAction => "StepAction",
            DepKind::Task => "Task",
            DepKind::Pipeline => "Pipeline",
        }
    }

    /// The kind the hub keeps it as: Tekton objects as their federated
    /// kind (with placement and overrides), the rest as themselves.
    pub fn hub_kind(self) -> &'static str {
        match self {
            DepKind::StepAction => "FederatedStepAction",
            DepKind::Task => "FederatedTask",
            DepKind::Pipeline => "FederatedPipeline",
            other => other.member_kind(),
        }
    }

    /// A Tekton kind, carried as a federated template.
    pub fn is_template(self) -> bool {
        matches!(
            self,
            DepKind::StepAction | DepKind::Task | DepKind::Pipeline
        )
    }
}

/// One object a run needs, by kind and name, in the run's namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dep {
    pub kind: DepKind,
    pub name: String,
}

impl Dep {
    pub fn new(kind: DepKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for Dep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.hub_kind(), self.name)
    }
}

/// What the hub holds in the run's namespace, as the closure needs it.
pub trait Lookup {
    /// A `FederatedTask`'s template spec.
    fn task(&self, name: &str) -> Option<Map<String, Value>>;
    /// A `FederatedPipeline`'s template spec.
    fn pipeline(&self, name: &str) -> Option<Map<String, Value>>;
    /// Whether a `FederatedStepAction` exists.
    fn step_action(&self, name: &str) -> bool;
    /// A ServiceAccount's `secrets` and `imagePullSecrets`, by name.
    fn service_account(&self, name: &str) -> Option<Vec<String>>;
    /// Whether a member lists this ServiceAccount as its own
    /// (`MemberCluster.spec.tenancy.serviceAccounts`): never carried, the
    /// scheduler sends the run only to members that list it.
    fn member_owned(&self, _name: &str) -> bool {
        false
    }
    fn config_map(&self, name: &str) -> bool;
    /// A Secret: `Some(carriable)` when it exists.
    fn secret(&self, name: &str) -> Option<bool>;
}

/// A run's dependency closure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Closure {
    /// On the hub and allowed to travel: carried before the run.
    pub needs: BTreeSet<Dep>,
    /// Named, but not on the hub.
    pub missing: BTreeSet<Dep>,
    /// Secrets on the hub that may not leave it (no consent).
    pub refused: BTreeSet<String>,
    /// References left to the member's Tekton (resolvers), described.
    pub remote: BTreeSet<String>,
}

impl Closure {
    /// Every object named, carried or not: what may be on a member
    /// because of this run.
    pub fn named(&self) -> impl Iterator<Item = Dep> + '_ {
        self.needs
            .iter()
            .cloned()
            .chain(self.missing.iter().cloned())
            .chain(self.refused.iter().map(|s| Dep::new(DepKind::Secret, s)))
    }

    /// Why the run cannot go yet: `(reason, message)`, or `None`.
    pub fn blocked(&self, namespace: &str) -> Option<(&'static str, String)> {
        use tekfed_api::dependencies::*;
        if !self.missing.is_empty() {
            let names: Vec<String> = self.missing.iter().map(Dep::to_string).collect();
            return Some((
                REASON_DEPENDENCY_MISSING,
                format!(
                    "the run needs {} in namespace {namespace} on the hub; it waits until {} created",
                    names.join(", "),
                    if names.len() == 1 {
                        "it is"
                    } else {
                        "they are"
                    }
                ),
            ));
        }
        if !self.refused.is_empty() {
            let names: Vec<&str> = self.refused.iter().map(String::as_str).collect();
            return Some((
                REASON_SECRET_NOT_CARRIED,
                format!(
                    "the run needs Secret {} but namespace {namespace} does not let Secrets leave the hub; to allow it, label the namespace {LABEL_CARRY_SECRETS}=true or the Secret {LABEL_CARRY}=true",
                    names.join(", ")
                ),
            ));
        }
        None
    }

    /// The `DependenciesReady=True` message.
    pub fn resolved_message(&self) -> String {
        let mut message = if self.needs.is_empty() {
            "the run needs nothing from the hub besides itself".to_owned()
        } else {
            let names: Vec<String> = self.needs.iter().map(Dep::to_string).collect();
            format!("carried to its cluster: {}", names.join(", "))
        };
        if !self.remote.is_empty() {
            let remote: Vec<&str> = self.remote.iter().map(String::as_str).collect();
            message.push_str(&format!(
                "; left to the member's Tekton: {}",
                remote.join(", ")
            ));
        }
        message
    }
}

/// The closure of a run of `kind` whose template spec is `spec`.
pub fn closure(kind: RunKind, spec: &Map<String, Value>, lookup: &impl Lookup) -> Closure {
    let mut walk = Walk {
        lookup,
        closure: Closure::default(),
        seen: BTreeSet::new(),
    };
    match kind {
        RunKind::TaskRun => {
            if let Some(name) = walk.reference(spec.get("taskRef"), "Task", "taskRef") {
                walk.task(&name);
            }
            if let Some(inline) = spec.get("taskSpec").and_then(Value::as_object) {
                walk.task_spec(inline);
            }
            walk.service_account(spec.get("serviceAccountName"));
            walk.pod_template(spec.get("podTemplate"));
        }
        RunKind::PipelineRun => {
            if let Some(name) = walk.reference(spec.get("pipelineRef"), "Pipeline", "pipelineRef") {
                walk.pipeline(&name);
            }
            if let Some(inline) = spec.get("pipelineSpec").and_then(Value::as_object) {
                walk.pipeline_spec(inline);
            }
            if let Some(template) = spec.get("taskRunTemplate") {
                walk.service_account(template.get("serviceAccountName"));
                walk.pod_template(template.get("podTemplate"));
            }
            for task_spec in array(spec.get("taskRunSpecs")) {
                walk.service_account(task_spec.get("serviceAccountName"));
                walk.pod_template(task_spec.get("podTemplate"));
            }
        }
    }
    for binding in array(spec.get("workspaces")) {
        walk.volume(binding);
    }
    walk.closure
}

fn array(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_array).into_iter().flatten()
}

fn string<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key)?.as_str().filter(|s| !s.is_empty())
}

struct Walk<'a, L> {
    lookup: &'a L,
    closure: Closure,
    /// Tasks, Pipelines and ServiceAccounts already walked.
    seen: BTreeSet<Dep>,
}

impl<L: Lookup> Walk<'_, L> {
    /// The name a `taskRef`/`pipelineRef`/step `ref` gives, if it is to an
    /// object of `kind` by name. A resolver is the member's business; any
    /// other kind (a custom task) is not tekfed's.
    fn reference(&mut self, r: Option<&Value>, kind: &str, field: &str) -> Option<String> {
        let r = r?;
        if let Some(resolver) = string(r, "resolver") {
            self.closure
                .remote
                .insert(format!("{field} (resolver {resolver})"));
            return None;
        }
        if r.get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k != kind)
        {
            return None;
        }
        string(r, "name").map(str::to_owned)
    }

    fn first_visit(&mut self, dep: &Dep) -> bool {
        self.seen.insert(dep.clone())
    }

    fn task(&mut self, name: &str) {
        let dep = Dep::new(DepKind::Task, name);
        if !self.first_visit(&dep) {
            return;
        }
        match self.lookup.task(name) {
            Some(spec) => {
                self.closure.needs.insert(dep);
                self.task_spec(&spec);
            }
            None => {
                self.closure.missing.insert(dep);
            }
        }
    }

    fn pipeline(&mut self, name: &str) {
        let dep = Dep::new(DepKind::Pipeline, name);
        if !self.first_visit(&dep) {
            return;
        }
        match self.lookup.pipeline(name) {
            Some(spec) => {
                self.closure.needs.insert(dep);
                self.pipeline_spec(&spec);
            }
            None => {
                self.closure.missing.insert(dep);
            }
        }
    }

    fn pipeline_spec(&mut self, spec: &Map<String, Value>) {
        for task in array(spec.get("tasks")).chain(array(spec.get("finally"))) {
            if let Some(name) = self.reference(task.get("taskRef"), "Task", "taskRef") {
                self.task(&name);
            }
            if let Some(inline) = task.get("taskSpec").and_then(Value::as_object) {
                self.task_spec(inline);
            }
        }
    }

    /// A Task's spec, or an inline `taskSpec` (embedded in a Pipeline, its
    /// fields are the same).
    fn task_spec(&mut self, spec: &Map<String, Value>) {
        for step in array(spec.get("steps")) {
            if let Some(name) = self.reference(step.get("ref"), "StepAction", "step ref") {
                let dep = Dep::new(DepKind::StepAction, name);
                if self.lookup.step_action(&dep.name) {
                    self.closure.needs.insert(dep);
                } else {
                    self.closure.missing.insert(dep);
                }
            }
        }
        for volume in array(spec.get("volumes")) {
            self.volume(volume);
        }
        let containers = array(spec.get("steps"))
            .chain(array(spec.get("sidecars")))
            .chain(spec.get("stepTemplate"));
        for container in containers {
            self.env(container);
        }
    }

    /// A step's, sidecar's or step template's `env[].valueFrom` and
    /// `envFrom` references.
    fn env(&mut self, container: &Value) {
        let optional = |v: &Value| v.get("optional").and_then(Value::as_bool) == Some(true);
        for var in array(container.get("env")) {
            let Some(from) = var.get("valueFrom") else {
                continue;
            };
            if let Some(r) = from.get("configMapKeyRef")
                && let Some(name) = string(r, "name")
            {
                self.config_map(name, optional(r));
            }
            if let Some(r) = from.get("secretKeyRef")
                && let Some(name) = string(r, "name")
            {
                self.secret(name, optional(r));
            }
        }
        for source in array(container.get("envFrom")) {
            if let Some(r) = source.get("configMapRef")
                && let Some(name) = string(r, "name")
            {
                self.config_map(name, optional(r));
            }
            if let Some(r) = source.get("secretRef")
                && let Some(name) = string(r, "name")
            {
                self.secret(name, optional(r));
            }
        }
    }

    /// A name Tekton substitutes on the member (`$(params.x)`): not
    /// tekfed's to resolve; said in the status.
    fn substituted(&mut self, what: &str, name: &str) -> bool {
        if name.contains("$(") {
            self.closure
                .remote
                .insert(format!("{what} {name} (substituted by Tekton)"));
            return true;
        }
        false
    }

    fn service_account(&mut self, name: Option<&Value>) {
        let Some(name) = name.and_then(Value::as_str).filter(|n| !n.is_empty()) else {
            return;
        };
        if name == "default"
            || self.substituted("ServiceAccount", name)
            || self.lookup.member_owned(name)
        {
            return;
        }
        let dep = Dep::new(DepKind::ServiceAccount, name);
        if !self.first_visit(&dep) {
            return;
        }
        match self.lookup.service_account(name) {
            Some(secrets) => {
                self.closure.needs.insert(dep);
                for secret in secrets {
                    self.secret(&secret, false);
                }
            }
            None => {
                self.closure.missing.insert(dep);
            }
        }
    }

    fn pod_template(&mut self, template: Option<&Value>) {
        let Some(template) = template else { return };
        for secret in array(template.get("imagePullSecrets")) {
            if let Some(name) = string(secret, "name") {
                self.secret(name, false);
            }
        }
        for volume in array(template.get("volumes")) {
            self.volume(volume);
        }
    }

    /// A volume or a workspace binding: its `configMap`, `secret` and
    /// `projected` sources.
    fn volume(&mut self, volume: &Value) {
        let optional = |v: &Value| v.get("optional").and_then(Value::as_bool) == Some(true);
        if let Some(cm) = volume.get("configMap")
            && let Some(name) = string(cm, "name")
        {
            self.config_map(name, optional(cm));
        }
        if let Some(secret) = volume.get("secret")
            && let Some(name) = string(secret, "secretName")
        {
            self.secret(name, optional(secret));
        }
        for source in array(volume.get("projected").and_then(|p| p.get("sources"))) {
            if let Some(cm) = source.get("configMap")
                && let Some(name) = string(cm, "name")
            {
                self.config_map(name, optional(cm));
            }
            if let Some(secret) = source.get("secret")
                && let Some(name) = string(secret, "name")
            {
                self.secret(name, optional(secret));
            }
        }
    }

    fn config_map(&mut self, name: &str, optional: bool) {
        if self.substituted("ConfigMap", name) {
            return;
        }
        let dep = Dep::new(DepKind::ConfigMap, name);
        if self.lookup.config_map(name) {
            self.closure.needs.insert(dep);
        } else if !optional {
            self.closure.missing.insert(dep);
        }
    }

    fn secret(&mut self, name: &str, optional: bool) {
        if self.substituted("Secret", name) {
            return;
        }
        match self.lookup.secret(name) {
            Some(true) => {
                self.closure.needs.insert(Dep::new(DepKind::Secret, name));
            }
            Some(false) => {
                self.closure.refused.insert(name.to_owned());
            }
            None if optional => {}
            None => {
                self.closure.missing.insert(Dep::new(DepKind::Secret, name));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    /// A hub namespace in memory.
    #[derive(Default)]
    struct Hub {
        tasks: BTreeMap<String, Value>,
        pipelines: BTreeMap<String, Value>,
        step_actions: BTreeSet<String>,
        service_accounts: BTreeMap<String, Vec<String>>,
        config_maps: BTreeSet<String>,
        /// name → carriable
        secrets: BTreeMap<String, bool>,
        /// ServiceAccounts a member lists as its own.
        member_owned: BTreeSet<String>,
    }

    impl Lookup for Hub {
        fn task(&self, name: &str) -> Option<Map<String, Value>> {
            self.tasks.get(name)?.as_object().cloned()
        }
        fn pipeline(&self, name: &str) -> Option<Map<String, Value>> {
            self.pipelines.get(name)?.as_object().cloned()
        }
        fn step_action(&self, name: &str) -> bool {
            self.step_actions.contains(name)
        }
        fn service_account(&self, name: &str) -> Option<Vec<String>> {
            self.service_accounts.get(name).cloned()
        }
        fn member_owned(&self, name: &str) -> bool {
            self.member_owned.contains(name)
        }
        fn config_map(&self, name: &str) -> bool {
            self.config_maps.contains(name)
        }
        fn secret(&self, name: &str) -> Option<bool> {
            self.secrets.get(name).copied()
        }
    }

    fn spec(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn deps(list: &[(DepKind, &str)]) -> BTreeSet<Dep> {
        list.iter().map(|(k, n)| Dep::new(*k, *n)).collect()
    }

    use DepKind::*;

    /// The pipeline: Pipeline → Tasks → StepAction, run as a
    /// ServiceAccount with a git Secret and an image pull Secret, a
    /// ConfigMap workspace and a Secret workspace.
    fn ci_hub() -> Hub {
        let mut hub = Hub::default();
        hub.pipelines.insert(
            "ci".into(),
            json!({
                "tasks": [
                    {"name": "fetch", "taskRef": {"name": "git-clone"}},
                    {"name": "build", "taskRef": {"name": "build", "kind": "Task"}, "runAfter": ["fetch"]},
                    {"name": "scan", "taskSpec": {"steps": [{"name": "scan", "ref": {"name": "trivy"}}]}},
                ],
                "finally": [{"name": "notify", "taskRef": {"name": "notify"}}],
            }),
        );
        hub.tasks.insert(
            "git-clone".into(),
            json!({"steps": [{"name": "clone", "ref": {"name": "git-clone-step"}}]}),
        );
        hub.tasks.insert(
            "build".into(),
            json!({"steps": [{"name": "build", "image": "golang"}],
                   "volumes": [{"name": "cache", "configMap": {"name": "build-cache"}}]}),
        );
        hub.tasks.insert(
            "notify".into(),
            json!({"steps": [{"name": "n", "image": "curl"}]}),
        );
        hub.step_actions.insert("git-clone-step".into());
        hub.step_actions.insert("trivy".into());
        hub.service_accounts.insert(
            "builder".into(),
            vec!["git-credentials".into(), "registry".into()],
        );
        hub.config_maps.insert("build-cache".into());
        hub.config_maps.insert("settings".into());
        for s in ["git-credentials", "registry", "signing-key"] {
            hub.secrets.insert(s.into(), true);
        }
        hub
    }

    fn ci_run() -> Map<String, Value> {
        spec(json!({
            "pipelineRef": {"name": "ci"},
            "taskRunTemplate": {"serviceAccountName": "builder"},
            "workspaces": [
                {"name": "settings", "configMap": {"name": "settings"}},
                {"name": "signing", "secret": {"secretName": "signing-key"}},
                {"name": "scratch", "emptyDir": {}},
            ],
        }))
    }

    #[test]
    fn a_pipeline_run_needs_its_pipeline_tasks_step_actions_service_account_secrets_and_workspaces()
    {
        let c = closure(RunKind::PipelineRun, &ci_run(), &ci_hub());
        assert_eq!(
            c.needs,
            deps(&[
                (Pipeline, "ci"),
                (Task, "git-clone"),
                (Task, "build"),
                (Task, "notify"),
                (StepAction, "git-clone-step"),
                (StepAction, "trivy"),
                (ServiceAccount, "builder"),
                (Secret, "git-credentials"),
                (Secret, "registry"),
                (Secret, "signing-key"),
                (ConfigMap, "settings"),
                (ConfigMap, "build-cache"),
            ])
        );
        assert!(c.missing.is_empty() && c.refused.is_empty() && c.remote.is_empty());
        assert_eq!(c.blocked("ci"), None);
        // Applied in an order where what refers comes after what it names.
        let kinds: Vec<DepKind> = c.needs.iter().map(|d| d.kind).collect();
        assert!(kinds.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn a_task_run_needs_its_task_service_account_pull_secrets_and_volumes() {
        let mut hub = ci_hub();
        hub.secrets.insert("pull".into(), true);
        let run = spec(json!({
            "taskRef": {"name": "git-clone"},
            "serviceAccountName": "builder",
            "podTemplate": {"imagePullSecrets": [{"name": "pull"}],
                            "volumes": [{"name": "p", "projected": {"sources": [
                                {"configMap": {"name": "settings"}},
                                {"secret": {"name": "signing-key"}},
                                {"serviceAccountToken": {"path": "token"}}]}}]},
        }));
        let c = closure(RunKind::TaskRun, &run, &hub);
        assert_eq!(
            c.needs,
            deps(&[
                (Task, "git-clone"),
                (StepAction, "git-clone-step"),
                (ServiceAccount, "builder"),
                (Secret, "git-credentials"),
                (Secret, "registry"),
                (Secret, "pull"),
                (ConfigMap, "settings"),
                (Secret, "signing-key"),
            ])
        );
    }

    #[test]
    fn task_run_specs_and_inline_specs_count_too() {
        let mut hub = ci_hub();
        hub.service_accounts.insert("deployer".into(), vec![]);
        let run = spec(json!({
            "pipelineSpec": {"tasks": [{"name": "a", "taskSpec": {"steps": [{"name": "s", "ref": {"name": "trivy"}}]}},
                                       {"name": "b", "taskRef": {"name": "notify"}}]},
            "taskRunSpecs": [{"pipelineTaskName": "b", "serviceAccountName": "deployer",
                              "podTemplate": {"imagePullSecrets": [{"name": "registry"}]}}],
        }));
        let c = closure(RunKind::PipelineRun, &run, &hub);
        assert_eq!(
            c.needs,
            deps(&[
                (Task, "notify"),
                (StepAction, "trivy"),
                (ServiceAccount, "deployer"),
                (Secret, "registry"),
            ])
        );
    }

    #[test]
    fn a_service_account_a_member_lists_as_its_own_is_never_carried_nor_missing() {
        let mut hub = ci_hub();
        hub.member_owned.insert("builder".into());
        let c = closure(RunKind::PipelineRun, &ci_run(), &hub);
        assert!(!c.needs.contains(&Dep::new(ServiceAccount, "builder")));
        hub.service_accounts.remove("builder");
        let c = closure(RunKind::PipelineRun, &ci_run(), &hub);
        assert!(c.missing.is_empty(), "{:?}", c.missing);
    }

    #[test]
    fn what_is_not_on_the_hub_is_missing_and_named() {
        let mut hub = ci_hub();
        hub.tasks.remove("build");
        hub.step_actions.remove("trivy");
        hub.service_accounts.remove("builder");
        let c = closure(RunKind::PipelineRun, &ci_run(), &hub);
        assert_eq!(
            c.missing,
            deps(&[
                (Task, "build"),
                (StepAction, "trivy"),
                (ServiceAccount, "builder")
            ])
        );
        let (reason, message) = c.blocked("ci").unwrap();
        assert_eq!(reason, "DependencyMissing");
        assert!(
            message.contains("FederatedTask build")
                && message.contains("FederatedStepAction trivy")
                && message.contains("ServiceAccount builder")
                && message.contains("namespace ci"),
            "{message}"
        );
        // What is missing is still named: a copy of it may be on a member.
        assert!(c.named().any(|d| d == Dep::new(Task, "build")));
    }

    #[test]
    fn a_secret_without_consent_is_refused_and_says_how_to_allow_it() {
        let mut hub = ci_hub();
        hub.secrets.insert("git-credentials".into(), false);
        let c = closure(RunKind::PipelineRun, &ci_run(), &hub);
        assert_eq!(c.refused, BTreeSet::from(["git-credentials".to_owned()]));
        assert!(!c.needs.contains(&Dep::new(Secret, "git-credentials")));
        let (reason, message) = c.blocked("ci").unwrap();
        assert_eq!(reason, "SecretNotCarried");
        assert!(
            message.contains("Secret git-credentials")
                && message.contains("tekfed.io/carry-secrets=true")
                && message.contains("tekfed.io/carry=true"),
            "{message}"
        );
    }

    #[test]
    fn remote_references_are_left_to_the_member_and_said() {
        let hub = ci_hub();
        let run = spec(json!({
            "pipelineSpec": {"tasks": [
                {"name": "a", "taskRef": {"resolver": "git", "params": []}},
                {"name": "b", "taskRef": {"resolver": "bundles"}},
                {"name": "c", "taskSpec": {"steps": [{"name": "s", "ref": {"resolver": "hub"}}]}},
                {"name": "d", "taskRef": {"apiVersion": "example.dev/v1", "kind": "Wait", "name": "w"}},
            ]},
        }));
        let c = closure(RunKind::PipelineRun, &run, &hub);
        assert!(c.needs.is_empty() && c.missing.is_empty());
        assert_eq!(c.remote.len(), 3, "{:?}", c.remote);
        assert!(c.resolved_message().contains("resolver git"));
        let run = spec(json!({"pipelineRef": {"resolver": "cluster", "params": []}}));
        let c = closure(RunKind::PipelineRun, &run, &hub);
        assert!(c.remote.contains("pipelineRef (resolver cluster)"));
    }

    #[test]
    fn the_default_service_account_and_optional_sources_are_not_needed() {
        let hub = Hub::default();
        let run = spec(json!({
            "taskSpec": {"steps": [{"name": "s", "image": "alpine"}],
                         "volumes": [{"name": "v", "configMap": {"name": "maybe", "optional": true}}]},
            "serviceAccountName": "default",
            "workspaces": [{"name": "w", "secret": {"secretName": "maybe-secret", "optional": true}}],
        }));
        let c = closure(RunKind::TaskRun, &run, &hub);
        assert_eq!(c, Closure::default());
        assert!(c.resolved_message().contains("nothing"));
    }

    #[test]
    fn env_references_count_and_parameter_names_are_left_to_tekton() {
        let mut hub = Hub::default();
        hub.secrets.insert("password".into(), true);
        hub.config_maps.insert("env".into());
        let run = spec(json!({
            "taskSpec": {
                "steps": [{"name": "s", "image": "alpine",
                           "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "password", "key": "p"}}},
                                   {"name": "Q", "valueFrom": {"configMapKeyRef": {"name": "maybe", "key": "q", "optional": true}}}],
                           "envFrom": [{"configMapRef": {"name": "env"}}]}],
                "volumes": [{"name": "v", "secret": {"secretName": "$(params.SCNAME)"}}],
            },
        }));
        let c = closure(RunKind::TaskRun, &run, &hub);
        assert_eq!(c.needs, deps(&[(Secret, "password"), (ConfigMap, "env")]));
        assert!(c.missing.is_empty(), "{:?}", c.missing);
        assert!(
            c.resolved_message().contains("Secret $(params.SCNAME)"),
            "{}",
            c.resolved_message()
        );
    }

    #[test]
    fn a_task_shared_by_many_pipeline_tasks_is_walked_once() {
        let mut hub = ci_hub();
        hub.pipelines.insert(
            "fan".into(),
            json!({"tasks": (0..50).map(|i| json!({"name": format!("t{i}"), "taskRef": {"name": "build"}})).collect::<Vec<_>>()}),
        );
        let run = spec(json!({"pipelineRef": {"name": "fan"}}));
        let c = closure(RunKind::PipelineRun, &run, &hub);
        assert_eq!(
            c.needs,
            deps(&[
                (Pipeline, "fan"),
                (Task, "build"),
                (ConfigMap, "build-cache")
            ])
        );
    }
}
