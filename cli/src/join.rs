//! `kubectl tekfed join` and `unjoin`: everything a member needs to be part
//! of the federation, on both sides, with the least privilege each side
//! needs.
//!
//! On the member: namespace `tekfed-system`, the ServiceAccount `tekfed-hub`
//! bound to a ClusterRole that reaches Tekton's objects and namespaces and
//! nothing else, and the Secret `tekfed-hub-kubeconfig` holding the agent's
//! hub identity (optionally the agent itself). On the hub: the member's
//! kubeconfig Secret (server, CA and a token of `tekfed-hub`; no key of
//! the user's), the `MemberCluster`, the cluster's namespace
//! `tekfed-cluster-<name>`, and the agent's ServiceAccount with a Role
//! confined to that namespace.
//!
//! Every object is read first and written only when it differs, so a
//! second join changes nothing and says so. Tokens come from the
//! TokenRequest API and are renewed by a join when they expire within 30
//! days or no longer authenticate.

use std::fmt::Debug;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tekfed_api::tekton::is_final;
use tekfed_api::{MemberCluster, RunAssignment, cluster_namespace};
use tekfed_runtime::connect::{require_apis, tekfed_apis, tekton_apis, tekton_resource};

/// The namespace tekfed uses on the hub (member Secrets, agent identities)
/// and on members (the hub's ServiceAccount, the agent).
pub const SYSTEM_NAMESPACE: &str = "tekfed-system";
const HUB_SA: &str = "tekfed-hub";
const AGENT_SECRET: &str = "tekfed-hub-kubeconfig";
const AGENT: &str = "tekfed-agent";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "tekfed");
const MEMBER_LABEL: &str = "tekfed.io/member";
/// Renew a token that expires sooner than this.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// What `join` is asked to do.
pub struct JoinOptions {
    pub name: String,
    pub kubeconfig: Option<PathBuf>,
    pub cluster_context: String,
    pub hub_context: Option<String>,
    pub labels: Vec<(String, String)>,
    pub install_agent: bool,
    pub agent_image: String,
    pub member_server: Option<String>,
    pub hub_server: Option<String>,
    pub token_ttl: Duration,
    /// Only the summary, not a line per object (`dev up`).
    pub quiet: bool,
}

/// Is `name` a DNS-1123 label (what a MemberCluster name must be)?
pub fn dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// `k=v` → a pair, for `--labels` (clap splits the list at commas).
pub fn parse_label(pair: &str) -> Result<(String, String), String> {
    let (k, v) = pair
        .split_once('=')
        .ok_or_else(|| format!("label {pair:?} is not key=value"))?;
    if k.trim().is_empty() {
        return Err(format!("label {pair:?} has no key"));
    }
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

/// The server and CA (base64 PEM; `None`: the system's roots) of a context.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub server: String,
    pub ca_data: Option<String>,
}

/// A context's cluster endpoint from a kubeconfig, refusing one that skips
/// TLS verification.
pub fn endpoint(kubeconfig: &Kubeconfig, context: &str) -> anyhow::Result<Endpoint> {
    let names: Vec<&str> = kubeconfig
        .contexts
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let ctx = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| {
            anyhow!(
                "there is no context {context:?} in the kubeconfig (it has: {}); `kubectl config get-contexts` lists them",
                names.join(", ")
            )
        })?;
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| {
            anyhow!(
                "context {context:?} names cluster {:?}, which the kubeconfig does not define",
                ctx.cluster
            )
        })?;
    if cluster.insecure_skip_tls_verify == Some(true) {
        bail!(
            "context {context:?} skips TLS verification; tekfed verifies every connection, so give the cluster's certificate-authority in the kubeconfig"
        );
    }
    let server = cluster
        .server
        .clone()
        .ok_or_else(|| anyhow!("cluster {:?} has no server", ctx.cluster))?;
    let ca_data = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => Some(data.clone()),
        (None, Some(path)) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the CA file {path} of context {context:?}"))?;
            Some(base64::engine::general_purpose::STANDARD.encode(pem))
        }
        (None, None) => None,
    };
    Ok(Endpoint { server, ca_data })
}

/// A kubeconfig holding one token for one server.
pub fn token_kubeconfig(name: &str, endpoint: &Endpoint, user: &str, token: &str) -> String {
    let mut cluster = json!({"server": endpoint.server});
    if let Some(ca) = &endpoint.ca_data {
        cluster["certificate-authority-data"] = json!(ca);
    }
    let config = json!({
        "apiVersion": "v1", "kind": "Config", "current-context": name,
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": user}}],
    });
    serde_saphyr::to_string(&config).expect("JSON serializes to YAML")
}

/// The token inside a kubeconfig [`token_kubeconfig`] wrote, and its server.
fn kubeconfig_token(yaml: &str) -> Option<(Endpoint, String)> {
    let kc: Kubeconfig = serde_saphyr::from_str(yaml).ok()?;
    let cluster = kc.clusters.first()?.cluster.clone()?;
    let token = kc.auth_infos.first()?.auth_info.clone()?.token?;
    use secrecy::ExposeSecret;
    Some((
        Endpoint {
            server: cluster.server?,
            ca_data: cluster.certificate_authority_data,
        },
        token.expose_secret().to_owned(),
    ))
}

/// Seconds since the epoch when a JWT expires (unverified: only to decide
/// whether to renew; the API server is the judge of validity).
pub fn jwt_expiry(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?["exp"].as_i64()
}

/// What join did to each object, to report it.
#[derive(Default)]
pub struct Report {
    lines: Vec<String>,
    changed: usize,
    quiet: bool,
}

impl Report {
    fn note(&mut self, verb: &str, what: String) {
        if verb != "unchanged" {
            self.changed += 1;
        }
        let line = format!("  {verb:<9} {what}");
        if !self.quiet {
            println!("{line}");
        }
        self.lines.push(line);
    }
}

fn meta_labels(name: &str) -> Value {
    json!({MANAGED_BY.0: MANAGED_BY.1, MEMBER_LABEL: name})
}

/// Create `desired` if absent; replace it if `differs(existing, desired)`.
async fn ensure<K>(
    api: &Api<K>,
    desired: Value,
    differs: impl Fn(&Value, &Value) -> bool,
    report: &mut Report,
    what: String,
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
fn fields(keys: &'static [&'static str]) -> impl Fn(&Value, &Value) -> bool {
    move |current, desired| keys.iter().any(|k| current[*k] != desired[*k])
}

/// Differs in labels tekfed sets (others a user added are kept as they are).
fn labels_differ(current: &Value, desired: &Value) -> bool {
    desired["metadata"]["labels"]
        .as_object()
        .is_some_and(|want| {
            want.iter()
                .any(|(k, v)| current["metadata"]["labels"][k] != *v)
        })
}

/// The ClusterRole the hub gets on a member: Tekton's objects and the
/// namespaces it creates for them. No Secrets, no pods, nothing else.
pub fn hub_rules() -> Value {
    json!([
        {"apiGroups": ["tekton.dev"], "resources": ["tasks", "pipelines"],
         "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
        {"apiGroups": ["tekton.dev"], "resources": ["taskruns", "pipelineruns"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch", "create"]},
        // A run goes into a new namespace only once its default
        // ServiceAccount exists (Tekton reads it for every run).
        {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]},
    ])
}

/// The Role the agent's hub identity gets in its cluster's namespace.
pub fn agent_hub_rules() -> Value {
    json!([
        {"apiGroups": ["tekfed.io"], "resources": ["runassignments", "memberreports"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["tekfed.io"], "resources": ["runassignments/status", "memberreports/status"], "verbs": ["get", "update", "patch"]},
    ])
}

/// The ClusterRole of the agent on its member (as the Helm chart's).
pub fn agent_member_rules() -> Value {
    json!([
        {"apiGroups": ["tekton.dev"], "resources": ["taskruns"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": ["tekton.dev"], "resources": ["pipelineruns"], "verbs": ["get", "list", "watch", "patch", "delete"]},
        {"apiGroups": ["tekton.dev"], "resources": ["tasks", "pipelines"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["list"]},
    ])
}

struct Side {
    client: Client,
    endpoint: Endpoint,
    context: String,
}

async fn connect(kubeconfig: &Kubeconfig, context: &str, role: &str) -> anyhow::Result<Side> {
    let endpoint = endpoint(kubeconfig, context)?;
    let options = KubeConfigOptions {
        context: Some(context.to_owned()),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(kubeconfig.clone(), &options)
        .await
        .with_context(|| format!("using context {context:?} for the {role}"))?;
    let client = Client::try_from(config)?;
    client.apiserver_version().await.with_context(|| {
        format!(
            "the {role} ({context:?}, {}) did not answer; is it running and is the context right?",
            endpoint.server
        )
    })?;
    Ok(Side {
        client,
        endpoint,
        context: context.to_owned(),
    })
}

fn read_kubeconfig(path: &Option<PathBuf>) -> anyhow::Result<Kubeconfig> {
    match path {
        Some(p) => {
            Kubeconfig::read_from(p).with_context(|| format!("reading kubeconfig {}", p.display()))
        }
        None => Kubeconfig::read()
            .context("reading the kubeconfig ($KUBECONFIG or ~/.kube/config); pass --kubeconfig"),
    }
}

/// A token for `sa` in `ns`, reusing the one in `existing` (a kubeconfig)
/// while it still authenticates as `sa` and is far from expiry.
async fn token_for(
    client: &Client,
    endpoint: &Endpoint,
    ns: &str,
    sa: &str,
    existing: Option<&str>,
    ttl: Duration,
) -> anyhow::Result<(String, bool)> {
    let user = format!("system:serviceaccount:{ns}:{sa}");
    if let Some((seen, token)) = existing.and_then(kubeconfig_token)
        && seen == *endpoint
        && jwt_expiry(&token).is_some_and(|exp| {
            exp > k8s_openapi::jiff::Timestamp::now().as_second() + RENEW_BEFORE.as_secs() as i64
        })
        && authenticates_as(endpoint, &token).await.as_deref() == Some(user.as_str())
    {
        return Ok((token, false));
    }
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(ttl.as_secs() as i64),
            ..Default::default()
        }),
        ..Default::default()
    };
    let issued = api
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for ServiceAccount {ns}/{sa}"))?;
    let token = issued
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| anyhow!("the API server returned no token for {ns}/{sa}"))?;
    Ok((token, true))
}

/// Who a token authenticates as, if it does.
async fn authenticates_as(endpoint: &Endpoint, token: &str) -> Option<String> {
    let yaml = token_kubeconfig("check", endpoint, "check", token);
    let kc: Kubeconfig = serde_saphyr::from_str(&yaml).ok()?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .ok()?;
    let client = Client::try_from(config).ok()?;
    let api: Api<SelfSubjectReview> = Api::all(client);
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .ok()?;
    review.status?.user_info?.username
}

pub async fn join(options: JoinOptions) -> anyhow::Result<()> {
    let name = options.name.as_str();
    if !dns_label(name) {
        bail!(
            "{name:?} is not a valid member name: use lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit (e.g. member-1)"
        );
    }
    let kubeconfig = read_kubeconfig(&options.kubeconfig)?;
    let hub_context = match &options.hub_context {
        Some(c) => c.clone(),
        None => kubeconfig.current_context.clone().ok_or_else(|| {
            anyhow!("the kubeconfig has no current context; pass --hub-context (or --context)")
        })?,
    };
    if hub_context == options.cluster_context {
        bail!(
            "--cluster-context and the hub context are both {hub_context:?}; the member must be another cluster"
        );
    }
    let member = connect(&kubeconfig, &options.cluster_context, "member").await?;
    let hub = connect(&kubeconfig, &hub_context, "hub").await?;
    require_apis(&hub.client, &hub.endpoint.server, &tekfed_apis()).await?;
    require_apis(&member.client, &member.endpoint.server, &tekton_apis()).await?;
    let member_endpoint = Endpoint {
        server: options
            .member_server
            .clone()
            .unwrap_or_else(|| member.endpoint.server.clone()),
        ..member.endpoint.clone()
    };
    let hub_endpoint = Endpoint {
        server: options
            .hub_server
            .clone()
            .unwrap_or_else(|| hub.endpoint.server.clone()),
        ..hub.endpoint.clone()
    };
    println!(
        "joining {name}: member {:?} ({}), hub {:?} ({})",
        member.context, member_endpoint.server, hub.context, hub_endpoint.server
    );
    let mut report = Report {
        quiet: options.quiet,
        ..Default::default()
    };
    let labels = meta_labels(name);

    // --- member: the hub's identity there -------------------------------
    let m = &member.client;
    let on_member = |what: &str| format!("member {name}: {what}");
    ensure::<Namespace>(
        &Api::all(m.clone()),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE, "labels": {MANAGED_BY.0: MANAGED_BY.1}}}),
        |_, _| false,
        &mut report,
        on_member(&format!("Namespace {SYSTEM_NAMESPACE}")),
    )
    .await?;
    ensure::<ServiceAccount>(
        &Api::namespaced(m.clone(), SYSTEM_NAMESPACE),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": HUB_SA, "namespace": SYSTEM_NAMESPACE, "labels": labels}}),
        labels_differ,
        &mut report,
        on_member(&format!("ServiceAccount {SYSTEM_NAMESPACE}/{HUB_SA}")),
    )
    .await?;
    ensure::<ClusterRole>(
        &Api::all(m.clone()),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": HUB_SA, "labels": labels}, "rules": hub_rules()}),
        fields(&["rules"]),
        &mut report,
        on_member(&format!("ClusterRole {HUB_SA} (Tekton objects and namespaces only)")),
    )
    .await?;
    ensure::<ClusterRoleBinding>(
        &Api::all(m.clone()),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": HUB_SA, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": HUB_SA},
               "subjects": [{"kind": "ServiceAccount", "name": HUB_SA, "namespace": SYSTEM_NAMESPACE}]}),
        fields(&["roleRef", "subjects"]),
        &mut report,
        on_member(&format!("ClusterRoleBinding {HUB_SA}")),
    )
    .await?;

    // --- hub: the member's kubeconfig and MemberCluster -----------------
    let h = &hub.client;
    let on_hub = |what: &str| format!("hub: {what}");
    ensure::<Namespace>(
        &Api::all(h.clone()),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}}),
        |_, _| false,
        &mut report,
        on_hub(&format!("Namespace {SYSTEM_NAMESPACE}")),
    )
    .await?;
    let secret_name = format!("tekfed-member-{name}");
    let hub_secrets: Api<Secret> = Api::namespaced(h.clone(), SYSTEM_NAMESPACE);
    let existing = secret_kubeconfig(&hub_secrets, &secret_name).await?;
    let (token, _) = token_for(
        m,
        &member_endpoint,
        SYSTEM_NAMESPACE,
        HUB_SA,
        existing.as_deref(),
        options.token_ttl,
    )
    .await?;
    let member_kubeconfig = token_kubeconfig(name, &member_endpoint, HUB_SA, &token);
    ensure::<Secret>(
        &hub_secrets,
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": secret_name, "namespace": SYSTEM_NAMESPACE, "labels": labels},
               "stringData": {"kubeconfig": member_kubeconfig}}),
        |current, _| secret_value(current, "kubeconfig").as_deref() != Some(member_kubeconfig.as_str()),
        &mut report,
        on_hub(&format!("Secret {SYSTEM_NAMESPACE}/{secret_name} (member kubeconfig: server, CA, token of {HUB_SA})")),
    )
    .await?;
    let mut mc_labels = labels.clone();
    for (k, v) in &options.labels {
        mc_labels[k] = json!(v);
    }
    ensure_member_cluster(h, name, &secret_name, mc_labels, &mut report).await?;

    // --- hub: the agent's identity, confined to its cluster's namespace -
    let cluster_ns = cluster_namespace(name);
    let agent_sa = format!("tekfed-agent-{name}");
    ensure::<Namespace>(
        &Api::all(h.clone()),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": cluster_ns, "labels": labels}}),
        |_, _| false,
        &mut report,
        on_hub(&format!("Namespace {cluster_ns}")),
    )
    .await?;
    ensure::<ServiceAccount>(
        &Api::namespaced(h.clone(), SYSTEM_NAMESPACE),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": agent_sa, "namespace": SYSTEM_NAMESPACE, "labels": labels}}),
        labels_differ,
        &mut report,
        on_hub(&format!("ServiceAccount {SYSTEM_NAMESPACE}/{agent_sa} (the agent's hub identity)")),
    )
    .await?;
    ensure::<Role>(
        &Api::namespaced(h.clone(), &cluster_ns),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": AGENT, "namespace": cluster_ns, "labels": labels}, "rules": agent_hub_rules()}),
        fields(&["rules"]),
        &mut report,
        on_hub(&format!("Role {cluster_ns}/{AGENT} (its assignments and report only)")),
    )
    .await?;
    ensure::<RoleBinding>(
        &Api::namespaced(h.clone(), &cluster_ns),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": AGENT, "namespace": cluster_ns, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": AGENT},
               "subjects": [{"kind": "ServiceAccount", "name": agent_sa, "namespace": SYSTEM_NAMESPACE}]}),
        fields(&["roleRef", "subjects"]),
        &mut report,
        on_hub(&format!("RoleBinding {cluster_ns}/{AGENT}")),
    )
    .await?;

    // --- member: the agent's hub kubeconfig (and the agent) -------------
    let member_secrets: Api<Secret> = Api::namespaced(m.clone(), SYSTEM_NAMESPACE);
    let existing = secret_kubeconfig(&member_secrets, AGENT_SECRET).await?;
    let (agent_token, _) = token_for(
        h,
        &hub_endpoint,
        SYSTEM_NAMESPACE,
        &agent_sa,
        existing.as_deref(),
        options.token_ttl,
    )
    .await?;
    let agent_kubeconfig = token_kubeconfig("hub", &hub_endpoint, &agent_sa, &agent_token);
    ensure::<Secret>(
        &member_secrets,
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": AGENT_SECRET, "namespace": SYSTEM_NAMESPACE, "labels": labels},
               "stringData": {"kubeconfig": agent_kubeconfig}}),
        |current, _| {
            secret_value(current, "kubeconfig").as_deref() != Some(agent_kubeconfig.as_str())
        },
        &mut report,
        on_member(&format!(
            "Secret {SYSTEM_NAMESPACE}/{AGENT_SECRET} (the agent's hub kubeconfig)"
        )),
    )
    .await?;
    if options.install_agent {
        install_agent(m, name, &options.agent_image, &labels, &mut report).await?;
    }

    if report.changed == 0 {
        println!("{name} is already joined; nothing changed");
    } else {
        println!(
            "joined {name}: {} object(s) created or updated, {} unchanged",
            report.changed,
            report.lines.len() - report.changed
        );
    }
    if options.quiet {
        return Ok(());
    }
    if !options.install_agent {
        println!(
            "\nInstall the agent on {name} (it reads its hub kubeconfig from Secret {SYSTEM_NAMESPACE}/{AGENT_SECRET}):\n  \
             helm upgrade --install tekfed-member-agent charts/tekfed-member-agent --kube-context {} -n {SYSTEM_NAMESPACE} --set clusterName={name}\n\
             or run it anywhere with that kubeconfig:\n  \
             kubectl --context {} -n {SYSTEM_NAMESPACE} get secret {AGENT_SECRET} -o jsonpath='{{.data.kubeconfig}}' | base64 -d > {name}-hub.kubeconfig\n  \
             tekfed-agent --cluster-name {name} --context {} --hub-kubeconfig {name}-hub.kubeconfig",
            member.context, member.context, member.context
        );
    }
    println!(
        "Then `kubectl get mc {name}` shows it Ready once the agent reports; `kubectl tekfed status` lists every member."
    );
    Ok(())
}

/// The MemberCluster: created, or its labels and secretRef brought in line;
/// the rest of its spec (cordon, taints, cap) is the operator's and kept.
async fn ensure_member_cluster(
    h: &Client,
    name: &str,
    secret_name: &str,
    labels: Value,
    report: &mut Report,
) -> anyhow::Result<()> {
    let api: Api<MemberCluster> = Api::all(h.clone());
    let secret_ref = json!({"name": secret_name, "namespace": SYSTEM_NAMESPACE});
    let what = format!("hub: MemberCluster {name}");
    match api
        .get_opt(name)
        .await
        .with_context(|| format!("reading {what}"))?
    {
        None => {
            let mc: MemberCluster = serde_json::from_value(json!({
                "apiVersion": "tekfed.io/v1alpha1", "kind": "MemberCluster",
                "metadata": {"name": name, "labels": labels},
                "spec": {"secretRef": secret_ref},
            }))?;
            api.create(&PostParams::default(), &mc)
                .await
                .with_context(|| format!("creating {what}"))?;
            report.note("created", what);
        }
        Some(existing) => {
            let current = serde_json::to_value(&existing)?;
            let desired =
                json!({"metadata": {"labels": labels}, "spec": {"secretRef": secret_ref}});
            if labels_differ(&current, &desired) || current["spec"]["secretRef"] != secret_ref {
                api.patch(name, &PatchParams::default(), &Patch::Merge(&desired))
                    .await
                    .with_context(|| format!("updating {what}"))?;
                report.note("updated", what);
            } else {
                report.note("unchanged", what);
            }
        }
    }
    Ok(())
}

async fn install_agent(
    m: &Client,
    name: &str,
    image: &str,
    labels: &Value,
    report: &mut Report,
) -> anyhow::Result<()> {
    let on_member = |what: &str| format!("member {name}: {what}");
    ensure::<ServiceAccount>(
        &Api::namespaced(m.clone(), SYSTEM_NAMESPACE),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": AGENT, "namespace": SYSTEM_NAMESPACE, "labels": labels}}),
        labels_differ,
        report,
        on_member(&format!("ServiceAccount {SYSTEM_NAMESPACE}/{AGENT}")),
    )
    .await?;
    ensure::<ClusterRole>(
        &Api::all(m.clone()),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": AGENT, "labels": labels}, "rules": agent_member_rules()}),
        fields(&["rules"]),
        report,
        on_member(&format!("ClusterRole {AGENT}")),
    )
    .await?;
    ensure::<ClusterRoleBinding>(
        &Api::all(m.clone()),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": AGENT, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": AGENT},
               "subjects": [{"kind": "ServiceAccount", "name": AGENT, "namespace": SYSTEM_NAMESPACE}]}),
        fields(&["roleRef", "subjects"]),
        report,
        on_member(&format!("ClusterRoleBinding {AGENT}")),
    )
    .await?;
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": AGENT, "namespace": SYSTEM_NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": AGENT}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": AGENT}},
                "spec": {
                    "serviceAccountName": AGENT,
                    "securityContext": {"runAsNonRoot": true},
                    "containers": [{
                        "name": "agent",
                        "image": image,
                        "command": ["tekfed-agent"],
                        "args": ["--cluster-name", name, "--hub-kubeconfig", "/etc/tekfed/hub/kubeconfig"],
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "hub", "mountPath": "/etc/tekfed/hub", "readOnly": true}],
                    }],
                    "volumes": [{"name": "hub", "secret": {"secretName": AGENT_SECRET}}],
                },
            },
        },
    });
    ensure::<Deployment>(
        &Api::namespaced(m.clone(), SYSTEM_NAMESPACE),
        deployment,
        |current, desired| {
            current["spec"]["template"]["spec"]["containers"][0]["image"]
                != desired["spec"]["template"]["spec"]["containers"][0]["image"]
                || current["spec"]["template"]["spec"]["containers"][0]["args"]
                    != desired["spec"]["template"]["spec"]["containers"][0]["args"]
        },
        report,
        on_member(&format!("Deployment {SYSTEM_NAMESPACE}/{AGENT} ({image})")),
    )
    .await?;
    Ok(())
}

async fn secret_kubeconfig(api: &Api<Secret>, name: &str) -> anyhow::Result<Option<String>> {
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
fn secret_value(secret: &Value, key: &str) -> Option<String> {
    let b64 = secret["data"][key].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

/// What `unjoin` is asked to do.
pub struct UnjoinOptions {
    pub name: String,
    pub kubeconfig: Option<PathBuf>,
    pub cluster_context: Option<String>,
    pub hub_context: Option<String>,
    pub force: bool,
}

/// Delete, saying what went; absent is fine.
async fn remove<K>(
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

/// Runs still active on a member: assignments neither finished nor revoked.
async fn active_runs(hub: &Client, name: &str) -> anyhow::Result<Vec<String>> {
    let records: Api<RunAssignment> = Api::namespaced(hub.clone(), &cluster_namespace(name));
    let list = match records.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(kube::Error::Api(s)) if s.code == 404 => vec![],
        Err(e) => return Err(e).context("listing the member's assignments"),
    };
    Ok(list
        .into_iter()
        .filter(|r| {
            let s = r.status.clone().unwrap_or_default();
            !s.is_revoked() && !s.phase.is_some_and(is_final)
        })
        .map(|r| format!("{}/{}", r.spec.run.namespace, r.spec.run.name))
        .collect())
}

pub async fn unjoin(options: UnjoinOptions) -> anyhow::Result<()> {
    let name = options.name.as_str();
    let kubeconfig = read_kubeconfig(&options.kubeconfig)?;
    let hub_context = match &options.hub_context {
        Some(c) => c.clone(),
        None => kubeconfig.current_context.clone().ok_or_else(|| {
            anyhow!("the kubeconfig has no current context; pass --hub-context (or --context)")
        })?,
    };
    let hub = connect(&kubeconfig, &hub_context, "hub").await?;
    let h = &hub.client;
    let active = active_runs(h, name).await?;
    if !active.is_empty() && !options.force {
        bail!(
            "{} run(s) are active on {name} ({}); drain it first (kubectl tekfed drain {name}), or pass --force to unjoin anyway",
            active.len(),
            active
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let member = match &options.cluster_context {
        Some(ctx) => Some(connect(&kubeconfig, ctx, "member").await?),
        None => None,
    };
    let mut report = Report::default();
    println!("unjoining {name}");
    remove(
        &Api::<MemberCluster>::all(h.clone()),
        name,
        format!("hub: MemberCluster {name}"),
        &mut report,
    )
    .await?;
    remove(
        &Api::<Secret>::namespaced(h.clone(), SYSTEM_NAMESPACE),
        &format!("tekfed-member-{name}"),
        format!("hub: Secret {SYSTEM_NAMESPACE}/tekfed-member-{name}"),
        &mut report,
    )
    .await?;
    remove(
        &Api::<ServiceAccount>::namespaced(h.clone(), SYSTEM_NAMESPACE),
        &format!("tekfed-agent-{name}"),
        format!("hub: ServiceAccount {SYSTEM_NAMESPACE}/tekfed-agent-{name}"),
        &mut report,
    )
    .await?;
    let cluster_ns = cluster_namespace(name);
    remove(
        &Api::<Namespace>::all(h.clone()),
        &cluster_ns,
        format!("hub: Namespace {cluster_ns} (its assignments, report and the agent's Role)"),
        &mut report,
    )
    .await?;
    match member {
        None => println!(
            "The member side was left as it is; unjoin again with --cluster-context to remove tekfed's objects there."
        ),
        Some(member) => unjoin_member(&member.client, name, &mut report).await?,
    }
    println!("unjoined {name}");
    Ok(())
}

async fn unjoin_member(m: &Client, name: &str, report: &mut Report) -> anyhow::Result<()> {
    let on_member = |what: &str| format!("member {name}: {what}");
    // What the hub put there: tekfed's Tekton objects, in every namespace.
    let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    for kind in ["TaskRun", "PipelineRun", "Task", "Pipeline"] {
        let api: Api<kube::api::DynamicObject> = Api::all_with(m.clone(), &tekton_resource(kind));
        let items = api
            .list_metadata(&ListParams::default().labels(&selector))
            .await
            .with_context(|| format!("listing tekfed's {kind}s"))?;
        for item in items {
            let ns = item.namespace().unwrap_or_default();
            let api: Api<kube::api::DynamicObject> =
                Api::namespaced_with(m.clone(), &ns, &tekton_resource(kind));
            remove(
                &api,
                &item.name_any(),
                on_member(&format!("{kind} {ns}/{}", item.name_any())),
                report,
            )
            .await?;
        }
    }
    // Namespaces the hub created are kept (they may hold your objects) but
    // are no longer marked as tekfed's.
    let namespaces: Api<Namespace> = Api::all(m.clone());
    for ns in namespaces
        .list_metadata(&ListParams::default().labels(&selector))
        .await?
    {
        let ns_name = ns.name_any();
        if ns_name == SYSTEM_NAMESPACE {
            continue;
        }
        let patch = json!({"metadata": {"labels": {MANAGED_BY.0: null}}});
        namespaces
            .patch(&ns_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        report.note(
            "unmarked",
            on_member(&format!("Namespace {ns_name} (kept)")),
        );
    }
    for cr in [HUB_SA, AGENT] {
        remove(
            &Api::<ClusterRoleBinding>::all(m.clone()),
            cr,
            on_member(&format!("ClusterRoleBinding {cr}")),
            report,
        )
        .await?;
        remove(
            &Api::<ClusterRole>::all(m.clone()),
            cr,
            on_member(&format!("ClusterRole {cr}")),
            report,
        )
        .await?;
    }
    remove(
        &Api::<Namespace>::all(m.clone()),
        SYSTEM_NAMESPACE,
        on_member(&format!(
            "Namespace {SYSTEM_NAMESPACE} (the hub's ServiceAccount, the agent and its hub kubeconfig)"
        )),
        report,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_dns_labels() {
        for ok in ["member-1", "a", "eu-west-2b"] {
            assert!(dns_label(ok), "{ok}");
        }
        for bad in ["", "Member", "-a", "a-", "a_b", "a.b", &"x".repeat(64)] {
            assert!(!dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn labels_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_label("region=eu").unwrap(),
            ("region".into(), "eu".into())
        );
        assert_eq!(parse_label("empty=").unwrap(), ("empty".into(), "".into()));
        assert!(parse_label("region").unwrap_err().contains("\"region\""));
        assert!(parse_label("=x").is_err());
    }

    #[test]
    fn the_expiry_of_a_token_is_read_from_its_claims() {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            br#"{"exp":1893456000,"sub":"system:serviceaccount:tekfed-system:tekfed-hub"}"#,
        );
        assert_eq!(jwt_expiry(&format!("h.{claims}.s")), Some(1893456000));
        assert_eq!(jwt_expiry("not-a-jwt"), None);
    }

    #[test]
    fn a_token_kubeconfig_round_trips() {
        let ep = Endpoint {
            server: "https://10.0.0.1:6443".into(),
            ca_data: Some("Q0E=".into()),
        };
        let yaml = token_kubeconfig("member-1", &ep, "tekfed-hub", "tok");
        assert_eq!(kubeconfig_token(&yaml), Some((ep, "tok".to_owned())));
        assert!(!yaml.contains("client-key"), "no keys, only the token");
    }

    #[test]
    fn the_hub_gets_no_secrets_pods_or_wildcards_on_a_member() {
        let rules = hub_rules();
        for rule in rules.as_array().unwrap() {
            let text = rule.to_string();
            assert!(
                !text.contains("secrets") && !text.contains("pods") && !text.contains('*'),
                "{text}"
            );
        }
    }
}
