//! The member credentials the hub holds, renewed before they expire.
//!
//! Each `MemberCluster` names a kubeconfig Secret on the hub for the hub's
//! identity on the member (`spec.secretRef`) and one for its log reader
//! (`spec.logsSecretRef`); `kubectl tekfed join` puts a ServiceAccount
//! token in each. At every probe the clusters controller reads them
//! ([`KubeconfigSecret::read`]) and, when a token is due
//! (`tekfed_runtime::tokens`: a third of its lifetime left, or the hub's
//! `--renew-before`), asks the member for a new one for the same
//! ServiceAccount (its `sub` claim), with the same lifetime, as the hub's
//! identity there (join's Role lets it mint those two tokens and no
//! other), then writes it into the Secret: only the token changes, and
//! only if the Secret is still the version read. The new Secret version
//! makes the registry build the member's client anew.
//!
//! What came of each is a [`Credential`] for the `CredentialsExpiring`
//! condition ([`super::health::credentials_condition`]).

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Client, Resource};
use serde_json::json;
use tekfed_api::{MemberCluster, SecretRef};
use tekfed_runtime::tokens::{Claims, kubeconfig_token, with_token};

use super::Unreachable;
use super::controller::{ClusterContext, DEFAULT_SECRET_KEY};
use super::health::{Credential, CredentialOf};
use super::registry::client_from_kubeconfig;
use crate::errors::{member_refusal, one_line};

/// A member kubeconfig as a hub Secret holds it.
#[derive(Clone, Debug)]
pub struct KubeconfigSecret {
    pub namespace: String,
    pub name: String,
    pub key: String,
    pub text: String,
    pub resource_version: String,
}

impl KubeconfigSecret {
    /// Read the Secret `r` names (in `default_ns` when it names none).
    pub async fn read(hub: &Client, default_ns: &str, r: &SecretRef) -> Result<Self, Unreachable> {
        let ns = r.namespace.clone().unwrap_or_else(|| default_ns.to_owned());
        let key = r
            .key
            .clone()
            .unwrap_or_else(|| DEFAULT_SECRET_KEY.to_owned());
        let secrets: Api<Secret> = Api::namespaced(hub.clone(), &ns);
        let secret = secrets
            .get_opt(&r.name)
            .await
            .map_err(|e| Unreachable {
                reason: "SecretUnreadable",
                message: format!("cannot read Secret {ns}/{}: {}", r.name, one_line(&e)),
            })?
            .ok_or_else(|| Unreachable {
                reason: "SecretNotFound",
                message: format!(
                    "Secret {ns}/{} not found: create it with the member's kubeconfig under key {key} (kubectl tekfed join does this)",
                    r.name
                ),
            })?;
        let data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&key))
            .ok_or_else(|| Unreachable {
                reason: "KubeconfigInvalid",
                message: format!(
                    "Secret {ns}/{} has no key {key}; put the member's kubeconfig there",
                    r.name
                ),
            })?;
        let text = String::from_utf8(data.0.clone()).map_err(|_| Unreachable {
            reason: "KubeconfigInvalid",
            message: format!("Secret {ns}/{} key {key} is not text", r.name),
        })?;
        Ok(Self {
            namespace: ns,
            name: r.name.clone(),
            key,
            text,
            resource_version: secret.metadata.resource_version.unwrap_or_default(),
        })
    }

    /// The claims of the token the hub uses from this kubeconfig (its
    /// current context's), if it holds one that is a JWT.
    fn claims(&self) -> Option<Claims> {
        Claims::of(&kubeconfig_token(&self.text, None).ok()?)
    }

    /// Whether its token is due for renewal at `now`.
    fn due(&self, ctx: &ClusterContext, now: Timestamp) -> bool {
        self.claims()
            .and_then(|c| c.renews_at(ctx.renew_before))
            .is_some_and(|at| now.as_second() >= at)
    }
}

/// Renew the hub's token (in `hub`) and the log reader's (in `logs`) when
/// they are due, with the hub's identity on the member; returns what came
/// of each. `hub` is left as the Secret now is (its new token and
/// version), for the probe that follows.
pub async fn renew_member_tokens(
    mc: &MemberCluster,
    ctx: &ClusterContext,
    hub: &mut KubeconfigSecret,
    logs: Option<&mut KubeconfigSecret>,
) -> Vec<Credential> {
    let now = Timestamp::now();
    let due = hub.due(ctx, now) || logs.as_ref().is_some_and(|l| l.due(ctx, now));
    // The hub's identity mints both tokens (join's Role on the member); its
    // client is built only when one is due.
    let member = if due {
        client_from_kubeconfig(&hub.text, ctx.connect_timeout)
            .await
            .map(|(client, _)| client)
            .map_err(|u| {
                format!(
                    "the hub's kubeconfig for the member is not usable: {}",
                    u.message
                )
            })
    } else {
        Err(String::new())
    };
    let mut credentials = vec![renew(mc, ctx, CredentialOf::Hub, hub, &member, now).await];
    if let Some(logs) = logs {
        credentials.push(renew(mc, ctx, CredentialOf::LogReader, logs, &member, now).await);
    }
    credentials
}

/// Renew the token in `secret` if it is due at `now`, with `member`.
async fn renew(
    mc: &MemberCluster,
    ctx: &ClusterContext,
    of: CredentialOf,
    secret: &mut KubeconfigSecret,
    member: &Result<Client, String>,
    now: Timestamp,
) -> Credential {
    let cluster = mc.meta().name.clone().unwrap_or_default();
    let claims = secret.claims();
    let expires = claims
        .as_ref()
        .and_then(|c| c.exp)
        .and_then(|exp| Timestamp::from_second(exp).ok());
    let mut credential = Credential {
        of,
        expires,
        renewal_failure: None,
    };
    let Some(claims) = claims.filter(|_| secret.due(ctx, now)) else {
        return credential;
    };
    match renew_token(&cluster, ctx, secret, &claims, member).await {
        Ok(Renewed::Written(new_expiry)) => {
            tracing::info!(%cluster, credential = of.describe(), expires = %new_expiry, "renewed");
            credential.expires = Some(new_expiry);
            publish(
                ctx,
                mc,
                EventType::Normal,
                "CredentialsRenewed",
                format!("renewed {}; it now expires at {new_expiry}", of.describe()),
            );
        }
        // Someone else wrote the Secret (a join): its watch brings the
        // MemberCluster back, to look at the new token.
        Ok(Renewed::Conflict) => {}
        Err(why) => {
            tracing::warn!(%cluster, credential = of.describe(), error = %why, "renewal failed");
            credential.renewal_failure = Some(why);
        }
    }
    credential
}

enum Renewed {
    /// Written into the Secret; the new token expires then.
    Written(Timestamp),
    /// The Secret changed since it was read: nothing written.
    Conflict,
}

/// A new token for the ServiceAccount `claims` names, with its lifetime,
/// written into `secret`; `Err` says why not, in one line.
async fn renew_token(
    cluster: &str,
    ctx: &ClusterContext,
    secret: &mut KubeconfigSecret,
    claims: &Claims,
    member: &Result<Client, String>,
) -> Result<Renewed, String> {
    let (ns, sa) = claims.service_account().ok_or_else(|| {
        format!(
            "the token in Secret {}/{} is not a ServiceAccount's, so the hub cannot renew it",
            secret.namespace, secret.name
        )
    })?;
    let lifetime = claims.lifetime().ok_or("its token says no lifetime")?;
    let member = member.as_ref().map_err(Clone::clone)?;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(lifetime.as_secs() as i64),
            ..Default::default()
        }),
        ..Default::default()
    };
    let what = format!("a token for ServiceAccount {ns}/{sa}");
    let timeout = ctx.connect_timeout * 3;
    let issued = tokio::time::timeout(
        timeout,
        Api::<ServiceAccount>::namespaced(member.clone(), &ns).create_token_request(
            &sa,
            &PostParams::default(),
            &request,
        ),
    )
    .await
    .map_err(|_| format!("asking {cluster} for {what}: no answer within {timeout:?}"))?
    .map_err(|e| member_refusal(cluster, &what, &e))?;
    let token = issued
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("{cluster} answered the request for {what} with no token"))?;
    let expires = Claims::of(&token)
        .and_then(|c| c.exp)
        .and_then(|exp| Timestamp::from_second(exp).ok())
        .ok_or_else(|| format!("the token {cluster} issued for {ns}/{sa} says no expiry"))?;
    let text = with_token(&secret.text, None, &token).map_err(|e| e.to_string())?;
    // Only if the Secret is still the version read (a merge patch carrying
    // the resourceVersion is refused with a conflict otherwise).
    let patch = json!({
        "metadata": {"resourceVersion": secret.resource_version},
        "data": {&secret.key: ByteString(text.clone().into_bytes())},
    });
    let secrets: Api<Secret> = Api::namespaced(ctx.hub.clone(), &secret.namespace);
    match secrets
        .patch(&secret.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(written) => {
            secret.text = text;
            secret.resource_version = written.metadata.resource_version.unwrap_or_default();
            Ok(Renewed::Written(expires))
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Renewed::Conflict),
        Err(e) => Err(format!(
            "writing the renewed token into Secret {}/{} on the hub: {}",
            secret.namespace,
            secret.name,
            one_line(&e)
        )),
    }
}

/// Publish an Event on the MemberCluster in the background: a report,
/// not state, so one that fails is logged, not retried.
pub fn publish(
    ctx: &ClusterContext,
    mc: &MemberCluster,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let recorder = ctx.recorder.clone();
    let reference = mc.object_ref(&());
    // An Event's note holds at most 1 kB.
    let note = match note.char_indices().nth(1000) {
        Some((cut, _)) => format!("{}…", &note[..cut]),
        None => note,
    };
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(error = %one_line(&e), reason = %event.reason, "could not publish an event");
        }
    });
}
