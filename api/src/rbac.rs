//! The RBAC rules of tekfed's identities, defined once: `kubectl tekfed
//! join` grants them, and the Helm charts' rules are generated from them
//! (`make crds` writes each chart's `templates/_rules.tpl`;
//! `api/tests/chart_rules_fresh.rs` fails when one is stale).
//!
//! - [`hub_on_member`]: the hub's ServiceAccount `tekfed-hub` on each
//!   member (join's ClusterRole; no chart).
//! - [`agent_on_member`], [`agent_tekton_version`], [`leader_election`]:
//!   the agent on its member (join `--install-agent`, and the
//!   `tekfed-member-agent` chart).
//! - [`logs_on_member`]: the identity the hub reads run logs with on each
//!   member (join's ClusterRole; no chart).
//! - [`agent_on_hub`]: the agent's hub identity, in its cluster's hub
//!   namespace (join's Role; no chart).
//! - [`leader_election`] is also the hub's, in the `tekfed-hub` chart.
//!
//! Tokens are short-lived and renewed by whoever uses them, each minting
//! only its own, by name, in `tekfed-system` (Roles, never ClusterRoles: a
//! ServiceAccount of the same name in a tenant's namespace stays out of
//! reach):
//! - [`hub_tokens_on_member`]: the hub's identity renews its own token and
//!   the log reader's on each member (join's Role);
//! - [`agent_token_on_hub`]: the agent's hub identity renews its own token
//!   (join's Role on the hub);
//! - [`agent_hub_kubeconfig`]: the agent writes its renewed token into the
//!   Secret on its member that holds its hub kubeconfig (join
//!   `--install-agent`'s Role, and the agent chart's);
//! - [`hub_member_secrets`]: the hub reads the member kubeconfig Secrets in
//!   its namespace and writes renewed tokens into them (the hub chart).
//!
//! Each [`Rule`] says why it is needed; the charts carry that as a comment
//! above the rule. No rule grants a wildcard or more RBAC. On a member,
//! Secrets are touched only by name: the hub's identity carries a run's
//! Secrets (no list, no watch), and the agent reads and writes the one
//! holding its own hub kubeconfig.

use k8s_openapi::api::rbac::v1::PolicyRule;

/// The namespace Tekton runs in, where it publishes its version.
pub const TEKTON_NAMESPACE: &str = "tekton-pipelines";
/// The ConfigMap, in [`TEKTON_NAMESPACE`], holding Tekton's version.
pub const TEKTON_VERSION_CONFIGMAP: &str = "pipelines-info";

/// A rule and why the identity holding it needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Why: the comment above the rule in the charts.
    pub why: &'static str,
    pub rule: PolicyRule,
}

fn rule(why: &'static str, api_groups: &[&str], resources: &[&str], verbs: &[&str]) -> Rule {
    let strings = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Rule {
        why,
        rule: PolicyRule {
            api_groups: Some(strings(api_groups)),
            resources: Some(strings(resources)),
            verbs: strings(verbs),
            ..Default::default()
        },
    }
}

impl Rule {
    /// Only the objects of these names.
    fn named(mut self, names: &[&str]) -> Self {
        self.rule.resource_names = Some(names.iter().map(|s| s.to_string()).collect());
        self
    }
}

/// The namespace of tekfed's own objects, on the hub (member kubeconfig
/// Secrets, the agents' hub identities) and on members (the hub's and the
/// log reader's ServiceAccounts, the agent).
pub const SYSTEM_NAMESPACE: &str = "tekfed-system";
/// The hub's ServiceAccount on each member, in [`SYSTEM_NAMESPACE`].
pub const HUB_ACCOUNT: &str = "tekfed-hub";
/// The ServiceAccount on each member the hub reads run logs with, in
/// [`SYSTEM_NAMESPACE`].
pub const LOGS_ACCOUNT: &str = "tekfed-logs";
/// The Secret on a member, in [`SYSTEM_NAMESPACE`], holding the agent's hub
/// kubeconfig (`kubectl tekfed join` writes it; the agent renews its token
/// there; the agent chart's default `hubKubeconfig.secretName`).
pub const AGENT_HUB_KUBECONFIG: &str = "tekfed-hub-kubeconfig";

/// The agent's hub ServiceAccount for member `cluster`, in
/// [`SYSTEM_NAMESPACE`] on the hub.
pub fn agent_hub_account(cluster: &str) -> String {
    format!("tekfed-agent-{cluster}")
}

/// The `PolicyRule`s of a Role or ClusterRole.
pub fn policy_rules(rules: impl IntoIterator<Item = Rule>) -> Vec<PolicyRule> {
    rules.into_iter().map(|r| r.rule).collect()
}

/// The hub's ClusterRole on a member (ServiceAccount
/// `tekfed-system/tekfed-hub`, which `kubectl tekfed join` creates): Tekton's
/// objects and the namespaces it creates for them. No Secrets, no pods,
/// nothing else.
pub fn hub_on_member() -> Vec<Rule> {
    vec![
        rule(
            "Federated Tasks, Pipelines and StepActions: the hub keeps a copy on each selected member (server-side apply), and carries those a run refers to onto the run's member; it watches tekfed's copies for drift and deletes them with their template.",
            &["tekton.dev"],
            &["tasks", "pipelines", "stepactions"],
            &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
        ),
        rule(
            "Runs: the hub creates a federated run's TaskRun or PipelineRun (a PipelineRun held) on the member it picked, watches its status, cancels it (patch spec.status) and deletes it when the federated run goes.",
            &["tekton.dev"],
            &["taskruns", "pipelineruns"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        rule(
            "A template's or run's namespace is created on the member when it does not exist there yet.",
            &[""],
            &["namespaces"],
            &["get", "list", "watch", "create"],
        ),
        rule(
            "What a run needs is carried to its member just before it (crate tekfed_hub::dependencies): ServiceAccounts, ConfigMaps and Secrets copied from the run's hub namespace (server-side apply), read by name to see whether tekfed's copy is there and current (and, for ServiceAccounts, that a new namespace's default one exists), and deleted once no run there needs them. Never listed or watched: the hub cannot enumerate a member's Secrets, and reads one only by a name a run gave.",
            &[""],
            &["serviceaccounts", "configmaps", "secrets"],
            &["get", "create", "patch", "delete"],
        ),
    ]
}

/// The ClusterRole on a member of the identity the hub reads run logs
/// with (ServiceAccount `tekfed-system/tekfed-logs`, which `kubectl
/// tekfed join` creates, kept apart from [`hub_on_member`]): pods and
/// their logs, read-only, nothing else.
pub fn logs_on_member() -> Vec<Rule> {
    vec![rule(
        "Run logs served on the hub (kubectl tekfed logs): a run's pods are found by Tekton's labels and their step containers' logs read. Read-only; no Secrets, no exec, nothing else.",
        &[""],
        &["pods", "pods/log"],
        &["get", "list", "watch"],
    )]
}

/// The agent's ClusterRole on its member. It creates nothing there: the
/// hub creates member runs with its own credentials ([`hub_on_member`]).
pub fn agent_on_member() -> Vec<Rule> {
    vec![
        rule(
            "Runs, watched for their status and counted for load; a started run the hub took off this cluster (cluster lost, then back) is cancelled (patch spec.status).",
            &["tekton.dev"],
            &["taskruns"],
            &["get", "list", "watch", "patch"],
        ),
        rule(
            "A held PipelineRun is started (patch spec.status) once the hub released it, or deleted unstarted when the hub revoked it.",
            &["tekton.dev"],
            &["pipelineruns"],
            &["get", "list", "watch", "patch", "delete"],
        ),
        rule(
            "Only the start-up check that the member serves the Tekton APIs tekfed uses (tekfed_runtime::connect::tekton_apis lists one object of each kind).",
            &["tekton.dev"],
            &["tasks", "pipelines", "stepactions"],
            &["list"],
        ),
        rule(
            "Load: pending pods, and requested vs allocatable CPU and memory, from watch caches (a heartbeat lists nothing).",
            &[""],
            &["pods", "nodes"],
            &["list", "watch"],
        ),
    ]
}

/// The agent's Role in [`TEKTON_NAMESPACE`] on its member.
pub fn agent_tekton_version() -> Vec<Rule> {
    vec![
        rule(
            "Tekton's version, reported to the hub, from the one ConfigMap Tekton publishes it in; no other ConfigMap.",
            &[""],
            &["configmaps"],
            &["get"],
        )
        .named(&[TEKTON_VERSION_CONFIGMAP]),
    ]
}

/// The agent's leader-election Lease for member `cluster` unless told
/// otherwise (`--leader-elect-lease-name`; the chart's default is the same).
pub fn agent_lease(cluster: &str) -> String {
    format!("tekfed-agent-{cluster}")
}

/// A Role for leader election on the Lease `lease`, in the Lease's
/// namespace: the agent's on its member, the hub's on the hub.
pub fn leader_election(lease: &str) -> Vec<Rule> {
    vec![
        rule(
            "Leader election: create the Lease when it does not exist yet (create cannot be limited by name).",
            &["coordination.k8s.io"],
            &["leases"],
            &["create"],
        ),
        rule(
            "Then read and renew (or take over) that Lease only.",
            &["coordination.k8s.io"],
            &["leases"],
            &["get", "update"],
        )
        .named(&[lease]),
    ]
}

/// The Role of the agent's hub identity (ServiceAccount
/// `tekfed-system/tekfed-agent-<cluster>` on the hub) in its cluster's
/// namespace `tekfed-cluster-<cluster>`, and nowhere else.
pub fn agent_on_hub() -> Vec<Rule> {
    vec![
        rule(
            "The RunAssignments the hub makes for this cluster, and the cluster's MemberReport.",
            &["tekfed.io"],
            &["runassignments", "memberreports"],
            &["get", "list", "watch"],
        ),
        rule(
            "Their status: an assignment's run status (and its release or cancellation acknowledged), the report's heartbeats and load.",
            &["tekfed.io"],
            &["runassignments/status", "memberreports/status"],
            &["get", "update", "patch"],
        ),
    ]
}

/// The hub identity's Role in [`SYSTEM_NAMESPACE`] on each member
/// (`kubectl tekfed join`): it renews its own token and the log reader's.
pub fn hub_tokens_on_member() -> Vec<Rule> {
    vec![
        rule(
            "The hub renews its own token on this member and the log reader's before they expire (TokenRequest), and only those two: a Role in tekfed-system, so a ServiceAccount of the same name in another namespace cannot be minted.",
            &[""],
            &["serviceaccounts/token"],
            &["create"],
        )
        .named(&[HUB_ACCOUNT, LOGS_ACCOUNT]),
    ]
}

/// The Role of the agent's hub identity in [`SYSTEM_NAMESPACE`] on the hub
/// (`kubectl tekfed join`): it renews its own token and no other.
pub fn agent_token_on_hub(cluster: &str) -> Vec<Rule> {
    vec![
        rule(
            "The agent renews its own hub token before it expires (TokenRequest); no other ServiceAccount's.",
            &[""],
            &["serviceaccounts/token"],
            &["create"],
        )
        .named(&[&agent_hub_account(cluster)]),
    ]
}

/// The agent's Role on its member, in the namespace of the Secret `secret`
/// that holds its hub kubeconfig ([`AGENT_HUB_KUBECONFIG`] as join makes
/// it): it writes its renewed token there, so the mounted file and a
/// restarted agent have it.
pub fn agent_hub_kubeconfig(secret: &str) -> Vec<Rule> {
    vec![
        rule(
            "The Secret holding the agent's hub kubeconfig: the agent writes its renewed hub token into it (read, then patched with the version read), so the mounted file and a restarted agent have it. No other Secret.",
            &[""],
            &["secrets"],
            &["get", "patch"],
        )
        .named(&[secret]),
    ]
}

/// The hub's rules on Secrets in its own namespace (the `tekfed-hub`
/// chart's Role): the member kubeconfig Secrets its `MemberCluster`s name.
pub fn hub_member_secrets() -> Vec<Rule> {
    vec![
        rule(
            "Member kubeconfig Secrets (MemberCluster spec.secretRef and spec.logsSecretRef; kubectl tekfed join writes them here): watched, so a new kubeconfig is used at once.",
            &[""],
            &["secrets"],
            &["get", "list", "watch"],
        ),
        rule(
            "The hub writes the tokens it renews into those Secrets. Not limited by name: the names are the MemberClusters', known only when members join, and this Role reaches no other namespace.",
            &[""],
            &["secrets"],
            &["patch"],
        ),
    ]
}

const CHART_HEADER: &str =
    "{{/* Generated from api/src/rbac.rs by `make crds`: do not edit. */}}\n";

/// `(path from the repository root, text)` of each chart's generated rules:
/// Helm `define`s of rule lists, which the chart's `rbac.yaml` includes
/// (`{{- include "…" . | nindent 2 }}`). Names the chart chooses are given
/// to the define: the Lease's as `(dict "lease" $name)`, the hub
/// kubeconfig Secret's as `(dict "secret" $name)`.
pub fn chart_templates() -> Vec<(&'static str, String)> {
    let lease = "{{ .lease | quote }}";
    let secret = "{{ .secret | quote }}";
    vec![
        (
            "charts/tekfed-member-agent/templates/_rules.tpl",
            [
                CHART_HEADER.to_owned(),
                define(
                    "tekfed-member-agent.rules.member",
                    "The agent's ClusterRole on its member.",
                    &agent_on_member(),
                ),
                define(
                    "tekfed-member-agent.rules.tektonVersion",
                    "The agent's Role in Tekton's namespace.",
                    &agent_tekton_version(),
                ),
                define(
                    "tekfed-member-agent.rules.leaderElection",
                    "The agent's Role on its Lease: (dict \"lease\" <the Lease's name>).",
                    &leader_election(lease),
                ),
                define(
                    "tekfed-member-agent.rules.hubKubeconfig",
                    "The agent's Role on the Secret of its hub kubeconfig: (dict \"secret\" <the Secret's name>).",
                    &agent_hub_kubeconfig(secret),
                ),
            ]
            .concat(),
        ),
        (
            "charts/tekfed-hub/templates/_rules.tpl",
            [
                CHART_HEADER.to_owned(),
                define(
                    "tekfed-hub.rules.leaderElection",
                    "The hub's rules on its Lease: (dict \"lease\" <the Lease's name>).",
                    &leader_election(lease),
                ),
                define(
                    "tekfed-hub.rules.memberSecrets",
                    "The hub's rules on the member kubeconfig Secrets in its namespace.",
                    &hub_member_secrets(),
                ),
            ]
            .concat(),
        ),
    ]
}

/// A Helm `define` of `rules` as a YAML list, each rule after its reason.
fn define(name: &str, what: &str, rules: &[Rule]) -> String {
    let mut text = format!("\n{{{{/* {what} */}}}}\n{{{{- define \"{name}\" -}}}}\n");
    for Rule { why, rule } in rules {
        for line in wrap(why, 74) {
            text.push_str(&format!("# {line}\n"));
        }
        let mut fields = vec![
            ("apiGroups", rule.api_groups.as_deref()),
            ("resources", rule.resources.as_deref()),
            ("resourceNames", rule.resource_names.as_deref()),
            ("nonResourceURLs", rule.non_resource_urls.as_deref()),
            ("verbs", Some(rule.verbs.as_slice())),
        ];
        fields.retain(|(_, values)| values.is_some());
        for (j, (key, values)) in fields.into_iter().enumerate() {
            let values: Vec<String> = values.unwrap_or_default().iter().map(scalar).collect();
            let lead = if j == 0 { "- " } else { "  " };
            text.push_str(&format!("{lead}{key}: [{}]\n", values.join(", ")));
        }
    }
    text.push_str("{{- end }}\n");
    text
}

/// A YAML flow scalar: plain when it is a simple name, a Helm action
/// (`{{ … }}`, filled in by the chart) as it is, else double-quoted.
fn scalar(value: &String) -> String {
    let helm_action = value.starts_with("{{") && value.ends_with("}}");
    let plain = value.starts_with(|c: char| c.is_ascii_alphabetic())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-./_".contains(c));
    if helm_action || plain {
        value.clone()
    } else {
        serde_json::to_string(value).expect("a string serializes")
    }
}

/// `text` in lines of at most `width` characters (a longer word stays whole).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.len() + 1 + word.len() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_rule() -> Vec<Rule> {
        [
            hub_on_member(),
            agent_on_member(),
            agent_tekton_version(),
            leader_election("lease"),
            agent_on_hub(),
            logs_on_member(),
            hub_tokens_on_member(),
            agent_token_on_hub("member-1"),
            agent_hub_kubeconfig(AGENT_HUB_KUBECONFIG),
            hub_member_secrets(),
        ]
        .concat()
    }

    #[test]
    fn no_rule_grants_a_wildcard_or_more_rbac() {
        for Rule { why, rule } in every_rule() {
            assert!(!why.is_empty());
            let text = serde_json::to_string(&rule).unwrap();
            assert!(!text.contains('*'), "{text}");
            for verb in ["escalate", "bind", "impersonate"] {
                assert!(!rule.verbs.iter().any(|v| v == verb), "{text}");
            }
        }
    }

    /// Secrets on a member: the hub's identity by name only (carrying a
    /// run's Secrets), never listed or watched; the agent only the one
    /// holding its hub kubeconfig; the log reader none.
    #[test]
    fn on_a_member_secrets_are_touched_only_by_name() {
        let touching = |rules: Vec<Rule>| -> Vec<PolicyRule> {
            policy_rules(rules)
                .into_iter()
                .filter(|r| r.resources.iter().flatten().any(|x| x == "secrets"))
                .collect()
        };
        let hub = touching(hub_on_member());
        assert_eq!(hub.len(), 1);
        assert_eq!(hub[0].verbs, ["get", "create", "patch", "delete"]);
        assert!(hub[0].resource_names.is_none());
        let agent = touching(agent_hub_kubeconfig(AGENT_HUB_KUBECONFIG));
        assert_eq!(agent.len(), 1);
        assert_eq!(agent[0].verbs, ["get", "patch"]);
        assert_eq!(
            agent[0].resource_names.as_deref(),
            Some(&[AGENT_HUB_KUBECONFIG.to_owned()][..])
        );
        for rules in [
            agent_on_member(),
            agent_tekton_version(),
            leader_election("lease"),
            agent_on_hub(),
            logs_on_member(),
            hub_tokens_on_member(),
            agent_token_on_hub("member-1"),
        ] {
            assert!(touching(rules).is_empty());
        }
    }

    /// Minting a token is limited to named ServiceAccounts, each identity
    /// its own (and the hub its log reader's).
    #[test]
    fn tokens_are_minted_only_by_name() {
        for rule in policy_rules(every_rule()) {
            if rule
                .resources
                .iter()
                .flatten()
                .any(|r| r == "serviceaccounts/token")
            {
                assert!(rule.resource_names.is_some(), "{rule:?}");
                assert_eq!(rule.verbs, ["create"]);
            }
        }
        let named = |rules: Vec<Rule>| -> Vec<String> {
            policy_rules(rules)
                .into_iter()
                .flat_map(|r| r.resource_names.unwrap_or_default())
                .collect()
        };
        assert_eq!(named(hub_tokens_on_member()), [HUB_ACCOUNT, LOGS_ACCOUNT]);
        assert_eq!(named(agent_token_on_hub("m")), ["tekfed-agent-m"]);
    }

    #[test]
    fn the_hub_gets_no_pods_on_a_member() {
        for rule in policy_rules(hub_on_member()) {
            let resources = rule.resources.unwrap_or_default();
            assert!(!resources.iter().any(|r| r == "pods"), "{resources:?}");
        }
    }

    /// The log reader reads pods and their logs and does nothing else.
    #[test]
    fn the_log_reader_only_reads_pods_and_their_logs() {
        for rule in policy_rules(logs_on_member()) {
            assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
            for resource in rule.resources.unwrap_or_default() {
                assert!(
                    ["pods", "pods/log"].contains(&resource.as_str()),
                    "{resource}"
                );
            }
            for verb in rule.verbs {
                assert!(["get", "list", "watch"].contains(&verb.as_str()), "{verb}");
            }
        }
    }

    /// Every Tekton kind the hub federates (tekfed_hub's `TEKTON_KINDS`) it
    /// may apply, watch and delete on a member.
    #[test]
    fn the_hub_keeps_every_federated_tekton_kind_on_a_member() {
        let rules = policy_rules(hub_on_member());
        for resource in ["tasks", "pipelines", "stepactions"] {
            for verb in ["get", "list", "watch", "create", "patch", "delete"] {
                assert!(
                    rules.iter().any(|r| {
                        r.api_groups.as_deref() == Some(&["tekton.dev".to_owned()])
                            && r.resources.iter().flatten().any(|x| x == resource)
                            && r.verbs.iter().any(|v| v == verb)
                    }),
                    "{verb} {resource}"
                );
            }
        }
    }

    /// The generated YAML reads back as the same rules (the Lease's name
    /// filled in as the chart does).
    #[test]
    fn the_chart_rules_are_the_rules() {
        let templates = chart_templates();
        let agent = &templates[0].1;
        let defined = |name: &str| -> Vec<PolicyRule> {
            let start = agent
                .find(&format!("{{{{- define \"{name}\" -}}}}\n"))
                .unwrap_or_else(|| panic!("no define {name}"));
            let body = &agent[start..];
            let body = &body[body.find('\n').unwrap() + 1..body.find("{{- end }}").unwrap()];
            let yaml = body
                .replace("{{ .lease | quote }}", "\"tekfed-agent-m\"")
                .replace("{{ .secret | quote }}", "\"tekfed-hub-kubeconfig\"");
            serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{name}: {e}\n{yaml}"))
        };
        assert_eq!(
            defined("tekfed-member-agent.rules.member"),
            policy_rules(agent_on_member())
        );
        assert_eq!(
            defined("tekfed-member-agent.rules.tektonVersion"),
            policy_rules(agent_tekton_version())
        );
        assert_eq!(
            defined("tekfed-member-agent.rules.leaderElection"),
            policy_rules(leader_election("tekfed-agent-m"))
        );
        assert_eq!(
            defined("tekfed-member-agent.rules.hubKubeconfig"),
            policy_rules(agent_hub_kubeconfig(AGENT_HUB_KUBECONFIG))
        );
    }

    #[test]
    fn long_reasons_wrap() {
        assert_eq!(wrap("a bb ccc", 4), ["a bb", "ccc"]);
        assert_eq!(wrap("", 4), Vec::<String>::new());
    }
}
