//! `kubectl tekfed join` and `unjoin`: everything a member needs to be part
//! of the federation, on both sides, with the least privilege each side
//! needs (the rules are `tekfed_api::rbac`'s, as the charts').
//!
//! A join, step by step ([`join`]):
//! 1. on the member, the hub's identity ([`member`]): namespace
//!    `tekfed-system`, the member guard (`tekfed_api::guard`: an admission
//!    policy confining that identity to the namespaces and Pod Security
//!    level the member allows), the ServiceAccount `tekfed-hub` bound to a
//!    ClusterRole that reaches Tekton's objects and namespaces and nothing
//!    else, the log reader `tekfed-logs`, and a Role letting `tekfed-hub`
//!    renew those two tokens (and no other);
//! 2. on the hub ([`hub`]), the member's kubeconfig Secret (server, CA and
//!    a token of `tekfed-hub`; no key of the user's), a second one for
//!    the log reader `tekfed-logs` (pods and `pods/log` only), and the
//!    `MemberCluster` naming both;
//! 3. on the hub, the agent's identity: the cluster's namespace
//!    `tekfed-cluster-<name>` and a ServiceAccount with a Role confined to
//!    it, and a Role in `tekfed-system` to renew its own token;
//! 4. on the member, the Secret `tekfed-hub-kubeconfig` holding that
//!    identity;
//! 5. with `--install-agent`, the agent itself ([`agent`]), as the
//!    `tekfed-member-agent` chart would install it (with the right to
//!    write its renewed token into that Secret).
//!
//! Every object is read first and written only when it differs
//! ([`objects`]), so a second join changes nothing and says so. Tokens come
//! from the TokenRequest API ([`tokens`]) with `--token-ttl`'s lifetime
//! (a week by default). The hub and the agent renew their own before they
//! expire (`tekfed_runtime::tokens`); a join issues new ones when they are
//! due anyway (less than a third of their lifetime left: the daemons were
//! down), were issued for longer than `--token-ttl`, or no longer
//! authenticate. [`unjoin`] revokes them by deleting their
//! ServiceAccounts, and says loudly when it could not.

mod agent;
mod hub;
mod kubeconfig;
mod member;
mod objects;
mod tokens;
mod unjoin;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use serde_json::Value;
use tekfed_api::rbac;
use tekfed_runtime::connect::{require_apis, tekfed_apis, tekton_apis};

use kubeconfig::{Endpoint, connect, hub_context, read_kubeconfig};
use objects::{Report, meta_labels};
pub use unjoin::{UnjoinOptions, unjoin};

/// The namespace tekfed uses on the hub (member Secrets, agent identities)
/// and on members (the hub's ServiceAccount, the agent).
pub const SYSTEM_NAMESPACE: &str = rbac::SYSTEM_NAMESPACE;
/// The hub's ServiceAccount (and ClusterRole) on a member.
const HUB_SA: &str = rbac::HUB_ACCOUNT;
/// The ServiceAccount (and ClusterRole) on a member the hub reads run logs
/// with: pods and `pods/log`, nothing else.
const LOGS_SA: &str = rbac::LOGS_ACCOUNT;
/// The Role (and binding) on a member, in [`SYSTEM_NAMESPACE`], with which
/// the hub renews its token and the log reader's.
const HUB_TOKENS_ROLE: &str = "tekfed-hub-tokens";
/// The Secret on a member holding the agent's hub kubeconfig.
const AGENT_SECRET: &str = rbac::AGENT_HUB_KUBECONFIG;
/// The agent's ServiceAccount, ClusterRole and Deployment on a member, and
/// its Role on the hub.
const AGENT: &str = "tekfed-agent";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "tekfed");
const MEMBER_LABEL: &str = "tekfed.io/member";

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
    /// What the member lets the hub do there (its guard, and the
    /// MemberCluster's `spec.tenancy`).
    pub tenancy: tekfed_api::guard::Tenancy,
    /// Only the summary, not a line per object (`dev up`).
    pub quiet: bool,
}

/// Is `name` a DNS-1123 label of at most
/// [`tekfed_api::common::MAX_CLUSTER_NAME`] characters (what a
/// MemberCluster name must be: names are derived from it)?
pub fn dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= tekfed_api::common::MAX_CLUSTER_NAME
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

/// The member being joined, as every step sees it: its name, the labels on
/// tekfed's objects for it, and what was done so far.
struct Joining<'a> {
    name: &'a str,
    tenancy: tekfed_api::guard::Tenancy,
    labels: Value,
    report: Report,
}

impl Joining<'_> {
    fn on_member(&self, what: &str) -> String {
        format!("member {}: {what}", self.name)
    }

    fn on_hub(&self, what: &str) -> String {
        format!("hub: {what}")
    }
}

pub async fn join(options: JoinOptions) -> anyhow::Result<()> {
    let name = options.name.as_str();
    if !dns_label(name) {
        bail!(
            "{name:?} is not a valid member name: use lowercase letters, digits and '-', at most {}, starting and ending with a letter or digit (e.g. member-1)",
            tekfed_api::common::MAX_CLUSTER_NAME
        );
    }
    if options.token_ttl < tokens::MIN_TOKEN_TTL {
        bail!(
            "--token-ttl {} is too short: the TokenRequest API issues tokens for 10m at least (the hub and the agent renew theirs before they expire, so a week, the default, is usual)",
            humantime::format_duration(options.token_ttl)
        );
    }
    let kubeconfig = read_kubeconfig(&options.kubeconfig)?;
    let hub_context = hub_context(&kubeconfig, &options.hub_context)?;
    if hub_context == options.cluster_context {
        bail!(
            "--cluster-context and the hub context are both {hub_context:?}; the member must be another cluster"
        );
    }
    let member = connect(&kubeconfig, &options.cluster_context, "member").await?;
    let hub = connect(&kubeconfig, &hub_context, "hub").await?;
    require_apis(&hub.client, &hub.endpoint.server, &tekfed_apis()).await?;
    require_apis(&member.client, &member.endpoint.server, &tekton_apis()).await?;
    // The servers as the other side reaches them (--member-server,
    // --hub-server), with the CA of the user's kubeconfig.
    let member_endpoint = Endpoint {
        server: (options.member_server.clone()).unwrap_or_else(|| member.endpoint.server.clone()),
        ..member.endpoint.clone()
    };
    let hub_endpoint = Endpoint {
        server: (options.hub_server.clone()).unwrap_or_else(|| hub.endpoint.server.clone()),
        ..hub.endpoint.clone()
    };
    println!(
        "joining {name}: member {:?} ({}), hub {:?} ({})",
        member.context, member_endpoint.server, hub.context, hub_endpoint.server
    );
    let (m, h) = (&member.client, &hub.client);
    let mut j = Joining {
        name,
        tenancy: options.tenancy.clone(),
        labels: meta_labels(name),
        report: Report {
            quiet: options.quiet,
            ..Default::default()
        },
    };

    // 1. On the member: the hub's identity there.
    member::hub_identity(m, &mut j).await?;
    // 2. On the hub: the member's kubeconfig (a token of that identity), and
    //    the MemberCluster naming it.
    let secrets =
        hub::member_kubeconfigs(h, m, &member_endpoint, options.token_ttl, &mut j).await?;
    hub::member_cluster(h, &secrets, &options.labels, &mut j).await?;
    // 3. On the hub: the agent's identity, confined to its cluster's namespace.
    let agent_sa = hub::agent_identity(h, &mut j).await?;
    // 4. On the member: the agent's hub kubeconfig (a token of that identity).
    member::agent_hub_kubeconfig(m, h, &hub_endpoint, &agent_sa, options.token_ttl, &mut j).await?;
    // 5. On the member: the agent itself, if asked.
    if options.install_agent {
        agent::install(m, &options.agent_image, &mut j).await?;
    }

    let report = &j.report;
    if report.changed == 0 {
        println!("{name} is already joined; nothing changed");
    } else {
        println!(
            "joined {name}: {} object(s) created or updated, {} unchanged",
            report.changed,
            report.lines.len() - report.changed
        );
    }
    if !options.quiet {
        print_next_steps(name, &member.context, options.install_agent);
    }
    Ok(())
}

/// How to run the agent (unless join installed it), and how to see the
/// member Ready.
fn print_next_steps(name: &str, member_context: &str, agent_installed: bool) {
    if !agent_installed {
        println!(
            "\nInstall the agent on {name} (it reads its hub kubeconfig from Secret {SYSTEM_NAMESPACE}/{AGENT_SECRET}):\n  \
             helm upgrade --install tekfed-member-agent charts/tekfed-member-agent --kube-context {member_context} -n {SYSTEM_NAMESPACE} --set clusterName={name} --set guard.create=false\n\
             (guard.create=false: join installed the member guard already)\n\
             or run it anywhere with that kubeconfig:\n  \
             kubectl --context {member_context} -n {SYSTEM_NAMESPACE} get secret {AGENT_SECRET} -o jsonpath='{{.data.kubeconfig}}' | base64 -d > {name}-hub.kubeconfig\n  \
             tekfed-agent --cluster-name {name} --context {member_context} --hub-kubeconfig {name}-hub.kubeconfig --hub-kubeconfig-secret {SYSTEM_NAMESPACE}/{AGENT_SECRET}"
        );
    }
    println!(
        "Then `kubectl get mc {name}` shows it Ready once the agent reports; `kubectl tekfed status` lists every member."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_dns_labels() {
        for ok in ["member-1", "a", "eu-west-2b"] {
            assert!(dns_label(ok), "{ok}");
        }
        assert!(dns_label(&"x".repeat(40)));
        for bad in ["", "Member", "-a", "a-", "a_b", "a.b", &"x".repeat(41)] {
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
}
