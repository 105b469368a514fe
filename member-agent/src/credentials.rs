//! The agent's hub credential: a ServiceAccount token that expires, kept
//! valid without a restart.
//!
//! The agent's hub client never changes; its token does. The client's
//! stack has a layer ([`BearerLayer`]) that puts the token in use into
//! every request, read from [`HubToken`] at the request, so a new token
//! takes effect at the next request, watches included (a watch already
//! open goes on: the API server authenticates a request when it starts).
//! The token in use changes when
//! - the `--hub-kubeconfig` file changes (polled every [`FILE_POLL`]; the
//!   kubelet rewrites a mounted Secret when it changes, as after a join),
//!   or the hub answers 401 (the file is read again at once);
//! - the agent renews it ([`HubCredentials::keep_renewed`], while leading):
//!   when it is due (`tekfed_runtime::tokens`: a third of its lifetime
//!   left, or `--renew-before`), a TokenRequest on the hub for its own
//!   ServiceAccount (the token's `sub`) with the same lifetime, written
//!   first into the member Secret that holds the hub kubeconfig
//!   (`--hub-kubeconfig-secret`; the mounted file and a restarted agent get
//!   it from there), then used.
//!
//! When the token expires and whether its last renewal failed go into the
//! agent's `MemberReport` ([`HubCredentials::report`]), which the hub turns
//! into the `CredentialsExpiring` condition.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http::header::{AUTHORIZATION, HeaderValue};
use http::{Request, Response, StatusCode};
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};
use tekfed_runtime::tokens::{Claims, kubeconfig_token, with_token};
use tokio::sync::Notify;

use crate::agent::bounded;
use crate::metrics::{Metrics, OutcomeLabel};

/// How often the `--hub-kubeconfig` file is read for a change.
pub const FILE_POLL: Duration = Duration::from_secs(3);
/// How often renewal is considered.
const RENEW_CHECK: Duration = Duration::from_secs(2);
/// How long after a failed renewal the next is tried.
const RENEW_RETRY: Duration = Duration::from_secs(30);

/// The token the hub client sends, shared with its [`BearerLayer`].
#[derive(Default)]
pub struct HubToken {
    /// `None`: the kubeconfig's own credentials (a client certificate),
    /// which the client's stack sends; nothing to put in or renew.
    current: RwLock<Option<String>>,
    /// Notified when the hub answers 401.
    unauthorized: Notify,
}

impl HubToken {
    pub fn current(&self) -> Option<String> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, token: String) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(token);
    }

    /// Put `new` in use if `old` still is; false when another took its
    /// place meanwhile (a new file), which then stays.
    fn replace(&self, old: &str, new: String) -> bool {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.as_deref() != Some(old) {
            return false;
        }
        *current = Some(new);
        true
    }
}

/// A `tower` layer putting [`HubToken`]'s token into every request, and
/// telling it of a 401.
#[derive(Clone)]
pub struct BearerLayer(Arc<HubToken>);

impl<S> tower::Layer<S> for BearerLayer {
    type Service = Bearer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bearer {
            inner,
            token: self.0.clone(),
        }
    }
}

/// The service of a [`BearerLayer`].
#[derive(Clone)]
pub struct Bearer<S> {
    inner: S,
    token: Arc<HubToken>,
}

impl<S, B, R> tower::Service<Request<B>> for Bearer<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if let Some(token) = self.token.current()
            && let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {token}"))
        {
            value.set_sensitive(true);
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        let response = self.inner.call(request);
        let token = self.token.clone();
        Box::pin(async move {
            let response = response.await?;
            if response.status() == StatusCode::UNAUTHORIZED {
                token.unauthorized.notify_one();
            }
            Ok(response)
        })
    }
}

/// The member Secret holding the agent's hub kubeconfig
/// (`--hub-kubeconfig-secret`, `--hub-kubeconfig-secret-key`).
#[derive(Clone, Debug)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

impl SecretRef {
    /// `NAMESPACE/NAME` (with `key`), for the flag.
    pub fn parse(text: &str, key: &str) -> Result<Self, String> {
        match text.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(Self {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    key: key.to_owned(),
                })
            }
            _ => Err(format!(
                "{text:?} is not NAMESPACE/NAME (such as tekfed-system/tekfed-hub-kubeconfig)"
            )),
        }
    }
}

/// The agent's hub credential: where it comes from, the token in use, and
/// how its renewal went.
pub struct HubCredentials {
    token: Arc<HubToken>,
    path: PathBuf,
    context: Option<String>,
    secret: Option<SecretRef>,
    renew_before: Option<Duration>,
    /// The file's text as last read.
    file_text: Mutex<String>,
    /// Why the last renewal failed, until one succeeds.
    failure: Mutex<Option<String>>,
}

impl HubCredentials {
    /// Read the hub kubeconfig at `path` (its `context`, else the current
    /// one): the credentials, and a client to the hub that sends their
    /// token as it is now.
    pub async fn load(
        path: PathBuf,
        context: Option<String>,
        secret: Option<SecretRef>,
        renew_before: Option<Duration>,
    ) -> anyhow::Result<(Arc<Self>, Client)> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the hub kubeconfig {}", path.display()))?;
        let kubeconfig = Kubeconfig::from_yaml(&text).map_err(|_| {
            anyhow::anyhow!(
                "the hub kubeconfig {} does not parse as YAML (its text is not shown)",
                path.display()
            )
        })?;
        let options = KubeConfigOptions {
            context: context.clone(),
            ..Default::default()
        };
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .with_context(|| format!("using the hub kubeconfig {}", path.display()))?;
        let token = Arc::new(HubToken::default());
        // A token the layer sends, so that it can change; anything else
        // (a client certificate) the client's own stack sends.
        if let Ok(t) = kubeconfig_token(&text, context.as_deref()) {
            token.set(t);
            config.auth_info.token = None;
        }
        let client = ClientBuilder::try_from(config)?
            .with_layer(&BearerLayer(token.clone()))
            .build();
        let credentials = Arc::new(Self {
            token,
            path,
            context,
            secret,
            renew_before,
            file_text: Mutex::new(text),
            failure: Mutex::default(),
        });
        Ok((credentials, client))
    }

    /// The token in use's claims.
    fn claims(&self) -> Option<Claims> {
        Claims::of(&self.token.current()?)
    }

    /// Read the file again every [`FILE_POLL`], and at once when the hub
    /// answers 401; use its token when it changed. Runs until dropped.
    pub async fn watch_file(self: Arc<Self>) {
        loop {
            let after_401 = tokio::select! {
                () = tokio::time::sleep(FILE_POLL) => false,
                () = self.token.unauthorized.notified() => true,
            };
            self.reload(after_401);
            if after_401 {
                // However many requests were refused, one read for them.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Use the file's token if it differs from the one in use: when the
    /// file changed, or (`after_401`) whatever it holds.
    fn reload(&self, after_401: bool) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot read the hub kubeconfig; keeping the token in use");
                return;
            }
        };
        {
            let mut last = self.file_text.lock().unwrap_or_else(|p| p.into_inner());
            if *last == text && !after_401 {
                return;
            }
            *last = text.clone();
        }
        let token = match kubeconfig_token(&text, self.context.as_deref()) {
            Ok(token) => token,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "the hub kubeconfig holds no token the agent can use; keeping the one in use");
                return;
            }
        };
        if self.token.current().as_deref() == Some(token.as_str()) {
            return;
        }
        let expires = Claims::of(&token)
            .and_then(|c| c.exp)
            .and_then(|e| Timestamp::from_second(e).ok());
        let why = if after_401 {
            "the hub refused the token in use (401)"
        } else {
            "the file changed"
        };
        tracing::info!(file = %self.path.display(), expires = ?expires.map(|t| t.to_string()), "using the hub token from the file: {why}");
        self.token.set(token);
        // A failed renewal was of the token this one replaces; if this one
        // is due too, its own renewal says so.
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Renew the token in use whenever it is due, with `hub` (the client
    /// that sends it) and `member` (which writes the Secret). Run while
    /// leading: a standby neither renews nor writes, it reads the file.
    pub async fn keep_renewed(&self, hub: &Client, member: &Client, metrics: &Metrics) {
        let mut retry_at: Option<Instant> = None;
        loop {
            if let Some(exp) = self.claims().and_then(|c| c.exp) {
                metrics.hub_token_expiry.set(exp);
            }
            let due = self
                .claims()
                .and_then(|c| c.renews_at(self.renew_before))
                .is_some_and(|at| Timestamp::now().as_second() >= at);
            if due && retry_at.is_none_or(|at| Instant::now() >= at) {
                let outcome = match self.renew(hub, member).await {
                    Ok(Some(expires)) => {
                        tracing::info!(expires = %expires, "renewed the agent's hub token");
                        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        retry_at = None;
                        "renewed"
                    }
                    // The Secret changed meanwhile (a join): look again.
                    Ok(None) => "conflict",
                    Err(why) => {
                        tracing::warn!(error = %why, "could not renew the agent's hub token");
                        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                        retry_at = Some(Instant::now() + RENEW_RETRY);
                        "failed"
                    }
                };
                metrics
                    .hub_token_renewals
                    .get_or_create(&OutcomeLabel { outcome })
                    .inc();
            }
            tokio::time::sleep(RENEW_CHECK).await;
        }
    }

    /// One renewal: a new token for the agent's own ServiceAccount, kept in
    /// the Secret, then used. `Ok(None)`: the Secret changed since it was
    /// read (nothing written); `Err` says why not, in one line.
    async fn renew(&self, hub: &Client, member: &Client) -> Result<Option<Timestamp>, String> {
        let in_use = self
            .token
            .current()
            .ok_or("the agent's hub credential is not a token")?;
        let claims = Claims::of(&in_use).ok_or("the agent's hub token is not a JWT")?;
        let (ns, sa) = claims
            .service_account()
            .ok_or("the agent's hub token is not a ServiceAccount's, so it cannot renew it")?;
        let lifetime = claims.lifetime().ok_or("its hub token says no lifetime")?;
        let secret = self.secret.as_ref().ok_or(
            "not renewed: the agent was started without --hub-kubeconfig-secret, so it has nowhere to keep a new token; pass it, or renew with `kubectl tekfed join`",
        )?;
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(lifetime.as_secs() as i64),
                ..Default::default()
            }),
            ..Default::default()
        };
        let accounts = Api::<ServiceAccount>::namespaced(hub.clone(), &ns);
        let issued = bounded(accounts.create_token_request(&sa, &PostParams::default(), &request))
            .await
            .map_err(|e| {
                format!(
                    "the hub refused a token for ServiceAccount {ns}/{sa}: {}",
                    short(&e)
                )
            })?;
        let token = issued
            .status
            .and_then(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("the hub issued no token for ServiceAccount {ns}/{sa}"))?;
        let expires = Claims::of(&token)
            .and_then(|c| c.exp)
            .and_then(|e| Timestamp::from_second(e).ok())
            .ok_or("the hub issued a token that says no expiry")?;
        // Into the Secret first: a token only in memory would be lost with
        // a restart.
        let secrets: Api<Secret> = Api::namespaced(member.clone(), &secret.namespace);
        let what = format!("Secret {}/{}", secret.namespace, secret.name);
        let current = bounded(secrets.get(&secret.name))
            .await
            .map_err(|e| format!("reading {what} on the member: {}", short(&e)))?;
        let held = current
            .data
            .as_ref()
            .and_then(|d| d.get(&secret.key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok());
        let base = match held {
            Some(text) => text,
            None => self
                .file_text
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        };
        let text = with_token(&base, self.context.as_deref(), &token)
            .map_err(|e| format!("{what} on the member: {e}"))?;
        let patch = json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "data": {&secret.key: ByteString(text.into_bytes())},
        });
        match bounded(secrets.patch(&secret.name, &PatchParams::default(), &Patch::Merge(&patch)))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(None),
            Err(e) => {
                return Err(format!(
                    "writing the renewed token into {what} on the member: {}",
                    short(&e)
                ));
            }
        }
        if !self.token.replace(&in_use, token) {
            tracing::info!(
                "the hub kubeconfig file brought another token while renewing: using the file's"
            );
        }
        Ok(Some(expires))
    }

    /// The `credential` of the agent's `MemberReport` status: when the
    /// token in use expires and why its last renewal failed (`null` when
    /// the credential is no token that says).
    pub fn report(&self) -> Value {
        let Some(exp) = self.claims().and_then(|c| c.exp) else {
            return Value::Null;
        };
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .map(|f| {
                f.chars()
                    .take(tekfed_api::assignment::MAX_CREDENTIAL_MESSAGE)
                    .collect::<String>()
            });
        json!({
            "expirationTime": Timestamp::from_second(exp).ok().map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
            "renewalFailure": failure,
        })
    }
}

/// A failed request in one line: an API server's own message and code,
/// else the error with its causes.
fn short(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(s) if !s.message.is_empty() => format!("{} (HTTP {})", s.message, s.code),
        _ => crate::agent::describe(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_flag_is_namespace_slash_name() {
        let r = SecretRef::parse("tekfed-system/tekfed-hub-kubeconfig", "kubeconfig").unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.name.as_str(), r.key.as_str()),
            ("tekfed-system", "tekfed-hub-kubeconfig", "kubeconfig")
        );
        for bad in ["tekfed-hub-kubeconfig", "/x", "x/", "a/b/c"] {
            assert!(SecretRef::parse(bad, "k").is_err(), "{bad}");
        }
    }

    /// The layer sends the token in use at each request, and a 401 wakes
    /// the file watch.
    #[tokio::test]
    async fn each_request_carries_the_token_in_use() {
        use tower::{Layer, Service};
        let token = Arc::new(HubToken::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let inner = tower::service_fn(move |request: Request<()>| {
            let header = request
                .headers()
                .get(AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned());
            record.lock().unwrap().push(header);
            async move {
                let status = if request.uri() == "/refused" {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::OK
                };
                Ok::<_, std::convert::Infallible>(
                    Response::builder().status(status).body(()).unwrap(),
                )
            }
        });
        let mut service = BearerLayer(token.clone()).layer(inner);
        service.call(Request::new(())).await.unwrap();
        token.set("one".into());
        service.call(Request::new(())).await.unwrap();
        token.set("two".into());
        let refused = Request::builder().uri("/refused").body(()).unwrap();
        let response = service.call(refused).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            *seen.lock().unwrap(),
            [None, Some("Bearer one".into()), Some("Bearer two".into())]
        );
        // The 401 left a permit: the watch wakes at once.
        tokio::time::timeout(Duration::from_secs(1), token.unauthorized.notified())
            .await
            .expect("a 401 notifies");
    }
}
