//! Kubeconfigs: reading the user's, the endpoint (server and CA) of one of
//! its contexts, connecting to it, and the one-token kubeconfigs join
//! writes into Secrets.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

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
        (None, None) => bail!(
            "context {context:?} gives no certificate-authority for cluster {:?}; tekfed verifies every connection against the cluster's own CA (the hub refuses a member kubeconfig without one), so add certificate-authority-data",
            ctx.cluster
        ),
    };
    if !server.starts_with("https://") {
        bail!(
            "context {context:?} reaches {server}, not over https; tekfed talks to API servers over TLS only"
        );
    }
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
pub(super) fn kubeconfig_token(yaml: &str) -> Option<(Endpoint, String)> {
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

/// `--kubeconfig`, or `$KUBECONFIG` and `~/.kube/config`.
pub(super) fn read_kubeconfig(path: &Option<PathBuf>) -> anyhow::Result<Kubeconfig> {
    match path {
        Some(p) => {
            Kubeconfig::read_from(p).with_context(|| format!("reading kubeconfig {}", p.display()))
        }
        None => Kubeconfig::read()
            .context("reading the kubeconfig ($KUBECONFIG or ~/.kube/config); pass --kubeconfig"),
    }
}

/// The hub's context: `--hub-context`, else the kubeconfig's current one.
pub(super) fn hub_context(
    kubeconfig: &Kubeconfig,
    hub_context: &Option<String>,
) -> anyhow::Result<String> {
    match hub_context {
        Some(c) => Ok(c.clone()),
        None => kubeconfig.current_context.clone().ok_or_else(|| {
            anyhow!("the kubeconfig has no current context; pass --hub-context (or --context)")
        }),
    }
}

/// A cluster join or unjoin talks to, as the user.
pub(super) struct Side {
    pub client: Client,
    pub endpoint: Endpoint,
    pub context: String,
}

/// Connect to `context` (the `role`'s: "hub" or "member") and check that
/// it answers.
pub(super) async fn connect(
    kubeconfig: &Kubeconfig,
    context: &str,
    role: &str,
) -> anyhow::Result<Side> {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A token the hub or the agent renewed leaves the kubeconfig as join
    /// writes it with that token: a later join finds nothing to change.
    #[test]
    fn a_renewed_kubeconfig_is_the_one_join_writes() {
        let ep = Endpoint {
            server: "https://10.0.0.1:6443".into(),
            ca_data: Some("Q0E=".into()),
        };
        let old = token_kubeconfig("member-1", &ep, "tekfed-hub", "old");
        let renewed = tekfed_runtime::tokens::with_token(&old, None, "new").unwrap();
        assert_eq!(
            renewed,
            token_kubeconfig("member-1", &ep, "tekfed-hub", "new")
        );
    }
}
