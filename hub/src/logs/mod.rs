//! Run logs served from the hub: the aggregated API `logs.tekfed.io`
//! (`tekfed_api::logs`). The hub API server authenticates the user and
//! authorizes `get` on `federated*runs/log`, then proxies the request here
//! over TLS with its front-proxy client certificate; the hub checks that
//! certificate ([`auth`]), asks whether the user may `get` the run itself,
//! finds the run's cluster, and reads the run's pods' step logs there with
//! the member's log-reader identity (pods and `pods/log`, nothing else),
//! in execution order ([`plan`]), streaming them back prefixed as `tkn`
//! does.
//!
//! Why an aggregated API and not a proxy of the hub's own: the user keeps
//! their hub credentials and `kubectl`, the hub API server's own
//! authentication, audit and RBAC apply (an admin grants `.../log` as they
//! grant `pods/log`), and the hub never sees a user's token.

pub mod auth;
pub mod plan;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header::CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures::AsyncReadExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, LogParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tekfed_api::logs::{GROUP, VERSION, kind_of_plural};
use tekfed_api::tekton::is_final;
use tekfed_api::{MemberCluster, RunKind, RunStatus};
use tokio::sync::mpsc;

use crate::clusters::controller::DEFAULT_SECRET_KEY;
use crate::clusters::registry::client_from_kubeconfig;
use crate::errors::one_line;
use auth::{FrontProxy, may_get};
use plan::{Filter, Next, PodView, next, pod_selector, prefix_lines};

/// How often a followed run's pods and status are looked at again.
const POLL: Duration = Duration::from_secs(1);
/// How many times reading one container's log is tried before giving up on it.
const READ_TRIES: u32 = 10;

/// Where and with what certificate to serve.
#[derive(Clone, Debug)]
pub struct LogServerOptions {
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Where member Secrets live when a `secretRef` names no namespace.
    pub namespace: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("reading the log API's {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the log API's {what} is not usable: {message}")]
    Pem { what: &'static str, message: String },
    #[error(transparent)]
    Auth(#[from] auth::AuthSetupError),
    #[error("the log API's TLS settings: {0}")]
    Tls(String),
    #[error("binding the log API to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

struct Server {
    hub: Client,
    front_proxy: FrontProxy,
    namespace: String,
}

/// What the TLS handshake established about the caller.
#[derive(Clone, Copy)]
struct Peer {
    /// A front-proxy certificate allowed to name users.
    front_proxy: bool,
}

/// Serve the log API until the hub stops. Fails at once when it cannot
/// start (certificate, front-proxy settings, address).
pub async fn serve(hub: Client, options: LogServerOptions) -> Result<(), SetupError> {
    let front_proxy = FrontProxy::load(&hub).await?;
    let tls = tls_config(&options, &front_proxy)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|source| SetupError::Bind {
            addr: options.addr,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| SetupError::Bind {
        addr: options.addr,
        source,
    })?;
    tracing::info!(addr = %bound, "serving run logs (APIService {})", tekfed_api::logs::API_SERVICE);
    let server = Arc::new(Server {
        hub,
        front_proxy,
        namespace: options.namespace,
    });
    let base = format!("/apis/{GROUP}/{VERSION}");
    let app = Router::new()
        .route(&base, get(discovery))
        .route(
            &format!("{base}/namespaces/{{namespace}}/{{plural}}/{{name}}/log"),
            get(logs),
        )
        .route(
            &format!("{base}/namespaces/{{namespace}}/{{plural}}/{{name}}/steps"),
            get(steps),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .fallback(|| async { status(StatusCode::NOT_FOUND, "NotFound", "not found".into()) })
        .with_state(server.clone());
    loop {
        let (tcp, peer_addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a log API connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, app, server) = (acceptor.clone(), app.clone(), server.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(peer = %peer_addr, error = %e, "log API TLS handshake failed");
                    return;
                }
            };
            let common_name = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| common_name(c.as_ref()));
            let peer = Peer {
                front_proxy: server.front_proxy.allows(common_name.as_deref()),
            };
            let service = hyper_util::service::TowerToHyperService::new(app.layer(Extension(peer)));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(peer = %peer_addr, error = %e, "log API connection ended");
            }
        });
    }
}

/// TLS with the hub's serving certificate, requiring a client certificate
/// the front-proxy CA signed (no other caller has any business here).
fn tls_config(
    options: &LogServerOptions,
    front_proxy: &FrontProxy,
) -> Result<rustls::ServerConfig, SetupError> {
    let read = |what: &'static str, path: &PathBuf| {
        std::fs::read(path).map_err(|source| SetupError::Read {
            what,
            path: path.clone(),
            source,
        })
    };
    let cert_pem = read("certificate", &options.cert)?;
    let key_pem = read("key", &options.key)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SetupError::Pem {
            what: "certificate",
            message: e.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| SetupError::Pem {
        what: "key",
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        front_proxy.roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| SetupError::Tls(e.to_string()))?;
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SetupError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| SetupError::Tls(e.to_string()))
}

/// The subject common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// A Kubernetes `Status`, as clients of an API server expect an error.
fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, [(CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// 503: something the hub needs to answer is out of reach.
fn unavailable(message: String) -> Response {
    status(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        message,
    )
}

fn unauthorized() -> Response {
    status(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "only the hub API server may call this API (a front-proxy client certificate naming the user)".into(),
    )
}

/// The resources of the group: only the `log` subresources, never the
/// runs themselves (they are `tekfed.io`'s; listing them here would make
/// `kubectl get ftr` ambiguous).
async fn discovery(Extension(peer): Extension<Peer>) -> Response {
    if !peer.front_proxy {
        return unauthorized();
    }
    let resource = |name: String, kind: &str| {
        serde_json::json!({"name": name, "singularName": "", "namespaced": true,
                           "kind": kind, "verbs": ["get"]})
    };
    let body = serde_json::json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [
            resource("federatedtaskruns/log".into(), "FederatedTaskRunLog"),
            resource("federatedpipelineruns/log".into(), "FederatedPipelineRunLog"),
            resource("federatedtaskruns/steps".into(), "RunSteps"),
            resource("federatedpipelineruns/steps".into(), "RunSteps"),
        ],
    });
    ([(CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The query string of a log request.
#[derive(serde::Deserialize, Default)]
struct LogQuery {
    #[serde(default)]
    follow: Option<String>,
    task: Option<String>,
    step: Option<String>,
    cluster: Option<String>,
}

async fn logs(
    State(server): State<Arc<Server>>,
    Extension(peer): Extension<Peer>,
    Path((namespace, plural, name)): Path<(String, String, String)>,
    Query(query): Query<LogQuery>,
    headers: HeaderMap,
) -> Response {
    let kind = match server
        .authorize(peer, &headers, &plural, &namespace, &name)
        .await
    {
        Ok(kind) => kind,
        Err(refusal) => return refusal,
    };
    match server.answer(kind, &namespace, &name, query).await {
        Ok(body) => (
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            Body::from_stream(body),
        )
            .into_response(),
        Err(refusal) => refusal,
    }
}

/// The run's TaskRuns and their steps' states on its cluster.
async fn steps(
    State(server): State<Arc<Server>>,
    Extension(peer): Extension<Peer>,
    Path((namespace, plural, name)): Path<(String, String, String)>,
    Query(query): Query<LogQuery>,
    headers: HeaderMap,
) -> Response {
    let kind = match server
        .authorize(peer, &headers, &plural, &namespace, &name)
        .await
    {
        Ok(kind) => kind,
        Err(refusal) => return refusal,
    };
    let answer = async {
        let run = server.run(kind, &namespace, &name).await?;
        let cluster =
            pick_cluster(&run, query.cluster.as_deref()).map_err(|p| p.response(&name))?;
        let member = server.log_reader(&cluster).await?;
        let pods = Api::<Pod>::namespaced(member, &namespace)
            .list(&ListParams::default().labels(&pod_selector(kind, &name)))
            .await
            .map_err(|e| {
                unavailable(format!(
                    "cannot list the run's pods on {cluster}: {}",
                    one_line(&e)
                ))
            })?;
        let body =
            serde_json::to_string(&plan::run_steps(&cluster, &pods.items)).unwrap_or_default();
        Ok::<_, Response>(([(CONTENT_TYPE, "application/json")], body).into_response())
    };
    answer.await.unwrap_or_else(|refusal| refusal)
}

/// A stream of log bytes.
type LogStream = tokio_stream::wrappers::ReceiverStream<Result<Bytes, std::io::Error>>;

impl Server {
    /// The caller is the hub API server naming a user who may `get` the
    /// run; the run's kind. Or the refusal.
    async fn authorize(
        &self,
        peer: Peer,
        headers: &HeaderMap,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Result<RunKind, Response> {
        if !peer.front_proxy {
            return Err(unauthorized());
        }
        let user = self.front_proxy.user(headers).ok_or_else(unauthorized)?;
        let kind = kind_of_plural(plural).ok_or_else(|| {
            status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{plural} has no log here: use federatedtaskruns or federatedpipelineruns"),
            )
        })?;
        let (allowed, reason) = may_get(&self.hub, &user, plural, namespace, name)
            .await
            .map_err(|e| unavailable(format!("cannot check access: {}", one_line(&e))))?;
        if !allowed {
            let why = if reason.is_empty() {
                String::new()
            } else {
                format!(": {reason}")
            };
            return Err(status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "{plural}.{} \"{name}\" is forbidden: User \"{}\" cannot get {plural} in the namespace \"{namespace}\", so not its log or steps either{why}",
                    tekfed_api::GROUP,
                    user.name
                ),
            ));
        }
        Ok(kind)
    }

    /// Find the run's cluster and start streaming; or the error response.
    async fn answer(
        self: &Arc<Self>,
        kind: RunKind,
        namespace: &str,
        name: &str,
        query: LogQuery,
    ) -> Result<LogStream, Response> {
        let follow = query
            .follow
            .as_deref()
            .is_some_and(|f| f == "true" || f == "1");
        // Following a queued run waits for it to be scheduled.
        let cluster = loop {
            let run = self.run(kind, namespace, name).await?;
            match pick_cluster(&run, query.cluster.as_deref()) {
                Ok(cluster) => break cluster,
                Err(Pick::NotYet(_)) if follow => tokio::time::sleep(POLL).await,
                Err(other) => return Err(other.response(name)),
            }
        };
        let member = self.log_reader(&cluster).await?;
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        let filter = Filter {
            task: query.task,
            step: query.step,
        };
        tokio::spawn(async move {
            let stream = Stream {
                server: &me,
                member,
                kind,
                namespace: &namespace,
                name: &name,
                cluster: &cluster,
                filter,
                follow,
                tx,
            };
            stream.run().await;
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// The run's status as the hub has it.
    async fn run(&self, kind: RunKind, namespace: &str, name: &str) -> Result<RunStatus, Response> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.hub.clone(), namespace, &kind.federated_resource());
        let object = api
            .get_opt(name)
            .await
            .map_err(|e| unavailable(format!("cannot read the run: {}", one_line(&e))))?
            .ok_or_else(|| {
                status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!(
                        "{} \"{name}\" not found in namespace {namespace}",
                        kind.federated_kind()
                    ),
                )
            })?;
        Ok(RunStatus::of(&object.data))
    }

    /// A client for `cluster` as its log reader.
    async fn log_reader(&self, cluster: &str) -> Result<Client, Response> {
        let mc = Api::<MemberCluster>::all(self.hub.clone())
            .get_opt(cluster)
            .await
            .map_err(|e| {
                unavailable(format!(
                    "cannot read MemberCluster {cluster}: {}",
                    one_line(&e)
                ))
            })?
            .ok_or_else(|| {
                unavailable(format!(
                    "MemberCluster {cluster} is gone; the run's logs went with it"
                ))
            })?;
        let Some(r) = mc.spec.logs_secret_ref else {
            return Err(unavailable(format!(
                "member {cluster} has no log reader (MemberCluster spec.logsSecretRef): run `kubectl tekfed join {cluster}` again to create it"
            )));
        };
        let ns = r
            .namespace
            .clone()
            .unwrap_or_else(|| self.namespace.clone());
        let key = r
            .key
            .clone()
            .unwrap_or_else(|| DEFAULT_SECRET_KEY.to_owned());
        let secret = Api::<Secret>::namespaced(self.hub.clone(), &ns)
            .get_opt(&r.name)
            .await
            .map_err(|e| {
                unavailable(format!(
                    "cannot read Secret {ns}/{}: {}",
                    r.name,
                    one_line(&e)
                ))
            })?
            .ok_or_else(|| {
                unavailable(format!(
                    "the log reader Secret {ns}/{} of member {cluster} is missing",
                    r.name
                ))
            })?;
        let text = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .ok_or_else(|| {
                unavailable(format!(
                    "Secret {ns}/{} has no kubeconfig under key {key}",
                    r.name
                ))
            })?;
        client_from_kubeconfig(&text, Duration::from_secs(5))
            .await
            .map(|(client, _)| client)
            .map_err(|u| unavailable(format!("member {cluster}'s log reader: {}", u.message)))
    }
}

/// Why a run's cluster cannot be named.
#[derive(Debug, PartialEq)]
enum Pick {
    /// Not scheduled yet (its phase).
    NotYet(String),
    /// `mode: All` with several clusters and none asked for.
    Which(Vec<String>),
    /// Asked for a cluster the run did not go to.
    NotThere {
        asked: String,
        clusters: Vec<String>,
    },
}

impl Pick {
    fn response(self, name: &str) -> Response {
        match self {
            Pick::NotYet(phase) => status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("run {name} is {phase}: it has no logs yet (follow to wait for them)"),
            ),
            Pick::Which(clusters) => status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!(
                    "run {name} runs on every selected cluster ({}); say which with cluster=NAME (--cluster)",
                    clusters.join(", ")
                ),
            ),
            Pick::NotThere { asked, clusters } => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!(
                    "run {name} did not run on {asked}; it ran on: {}",
                    if clusters.is_empty() {
                        "none yet".into()
                    } else {
                        clusters.join(", ")
                    }
                ),
            ),
        }
    }
}

/// The cluster whose copy of the run to read.
fn pick_cluster(run: &RunStatus, asked: Option<&str>) -> Result<String, Pick> {
    let clusters: Vec<String> = if run.clusters.is_empty() {
        run.cluster.iter().cloned().collect()
    } else {
        run.clusters.iter().map(|c| c.cluster.clone()).collect()
    };
    match (asked, clusters.as_slice()) {
        (Some(a), _) if clusters.iter().any(|c| c == a) => Ok(a.to_owned()),
        (Some(a), _) if !clusters.is_empty() => Err(Pick::NotThere {
            asked: a.to_owned(),
            clusters,
        }),
        (_, []) => Err(Pick::NotYet(
            run.phase
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "Queued".into()),
        )),
        (None, [one]) => Ok(one.clone()),
        (None, _) => Err(Pick::Which(clusters)),
        (Some(_), _) => unreachable!("handled above"),
    }
}

/// Whether the run's copy on `cluster` is over.
fn finished_on(run: &RunStatus, cluster: &str) -> bool {
    if run.clusters.is_empty() {
        run.phase.is_some_and(is_final)
    } else {
        run.clusters
            .iter()
            .any(|c| c.cluster == cluster && is_final(c.phase))
    }
}

/// One log request being answered.
struct Stream<'a> {
    server: &'a Server,
    member: Client,
    kind: RunKind,
    namespace: &'a str,
    name: &'a str,
    cluster: &'a str,
    filter: Filter,
    follow: bool,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl Stream<'_> {
    async fn run(&self) {
        if let Err(message) = self.steps().await {
            let _ = self
                .tx
                .send(Ok(Bytes::from(format!("tekfed: {message}\n"))))
                .await;
        }
    }

    /// Read every step in order; `Err` carries what to tell the user.
    async fn steps(&self) -> Result<(), String> {
        let pods: Api<Pod> = Api::namespaced(self.member.clone(), self.namespace);
        let selector = pod_selector(self.kind, self.name);
        let mut done = BTreeSet::new();
        loop {
            let listed = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| {
                    format!(
                        "cannot list the run's pods on {}: {}",
                        self.cluster,
                        one_line(&e)
                    )
                })?;
            let views: Vec<PodView> = listed.items.iter().map(PodView::from_pod).collect();
            let finished = if self.follow {
                match self.server.run(self.kind, self.namespace, self.name).await {
                    Ok(run) => finished_on(&run, self.cluster),
                    Err(_) => true,
                }
            } else {
                true
            };
            match next(
                self.kind,
                &views,
                &done,
                &self.filter,
                self.follow,
                finished,
            ) {
                Next::Done => return Ok(()),
                Next::Wait => {
                    if self.tx.is_closed() {
                        return Ok(());
                    }
                    tokio::time::sleep(POLL).await;
                }
                Next::Read(read) => match self.read(&pods, &read).await {
                    Ok(()) => {
                        done.insert((read.pod, read.container));
                    }
                    Err(Closed) => return Ok(()),
                },
            }
        }
    }

    /// Stream one container's log, each line prefixed. A running
    /// container is followed until it ends: a kubelet closes the stream
    /// then, but not every log server does, so the pod is watched too, and
    /// once the container has ended what the stream had not brought yet is
    /// read in one go.
    async fn read(&self, pods: &Api<Pod>, read: &plan::Read) -> Result<(), Closed> {
        let mut text = Text {
            prefix: &read.prefix,
            buffer: Vec::new(),
            received: 0,
        };
        if read.follow {
            let params = LogParams {
                container: Some(read.container.clone()),
                follow: true,
                ..Default::default()
            };
            if let Ok(stream) = pods.log_stream(&read.pod, &params).await {
                let mut stream = Box::pin(stream);
                let followed = async {
                    let mut chunk = vec![0u8; 16 * 1024];
                    while let Ok(n) = stream.read(&mut chunk).await {
                        if n == 0 {
                            return Ok(true);
                        }
                        self.send_lines(&mut text, &chunk[..n]).await?;
                    }
                    Ok(false)
                };
                tokio::select! {
                    ended = followed => {
                        if ended? {
                            return self.finish(text).await;
                        }
                    }
                    () = ended(pods, &read.pod, &read.container) => {}
                }
            }
        }
        // Not followed, or the container ended: all of it, past what came.
        let params = LogParams {
            container: Some(read.container.clone()),
            ..Default::default()
        };
        let mut last_error = String::new();
        for attempt in 0..READ_TRIES {
            if attempt > 0 {
                tokio::time::sleep(POLL).await;
            }
            match pods.logs(&read.pod, &params).await {
                Ok(all) => {
                    let rest = all.as_bytes().get(text.received..).unwrap_or_default();
                    let rest = rest.to_vec();
                    self.send_lines(&mut text, &rest).await?;
                    return self.finish(text).await;
                }
                Err(e) => last_error = one_line(&e),
            }
        }
        let message = format!(
            "{}tekfed: could not read {} of pod {} on {}: {last_error}\n",
            read.prefix, read.container, read.pod, self.cluster
        );
        self.send(message.into_bytes()).await
    }

    /// Send the complete lines of what came so far.
    async fn send_lines(&self, text: &mut Text<'_>, bytes: &[u8]) -> Result<(), Closed> {
        text.received += bytes.len();
        text.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        prefix_lines(text.prefix, &mut text.buffer, &mut out);
        if out.is_empty() {
            return Ok(());
        }
        self.send(out).await
    }

    /// Send a last line that had no newline.
    async fn finish(&self, mut text: Text<'_>) -> Result<(), Closed> {
        if text.buffer.is_empty() {
            return Ok(());
        }
        text.buffer.push(b'\n');
        let mut out = Vec::new();
        prefix_lines(text.prefix, &mut text.buffer, &mut out);
        self.send(out).await
    }

    async fn send(&self, bytes: Vec<u8>) -> Result<(), Closed> {
        self.tx
            .send(Ok(Bytes::from(bytes)))
            .await
            .map_err(|_| Closed)
    }
}

/// The caller went away.
struct Closed;

/// One container's log on its way: lines are sent whole.
struct Text<'a> {
    prefix: &'a str,
    /// What came after the last newline.
    buffer: Vec<u8>,
    /// Bytes of the log received so far.
    received: usize,
}

/// Returns once `container` of `pod` has ended, or the pod is gone.
async fn ended(pods: &Api<Pod>, pod: &str, container: &str) {
    loop {
        tokio::time::sleep(POLL).await;
        match pods.get_opt(pod).await {
            Ok(None) => return,
            Ok(Some(p)) => {
                let view = PodView::from_pod(&p);
                let done = view
                    .steps
                    .iter()
                    .find(|s| s.container == container)
                    .is_none_or(|s| s.state == plan::StepState::Terminated);
                if done || view.finished {
                    return;
                }
            }
            // A member that cannot be read is tried again.
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tekfed_api::{RunClusterStatus, RunPhase};

    fn all(clusters: &[(&str, RunPhase)]) -> RunStatus {
        RunStatus {
            clusters: clusters
                .iter()
                .map(|(c, p)| RunClusterStatus {
                    cluster: c.to_string(),
                    phase: *p,
                    reason: None,
                    message: None,
                    start_time: None,
                    completion_time: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_one_cluster_run_is_read_where_it_was_scheduled() {
        let run = RunStatus {
            cluster: Some("member-1".into()),
            phase: Some(RunPhase::Running),
            ..Default::default()
        };
        assert_eq!(pick_cluster(&run, None), Ok("member-1".into()));
        assert_eq!(pick_cluster(&run, Some("member-1")), Ok("member-1".into()));
        assert!(matches!(
            pick_cluster(&run, Some("member-2")),
            Err(Pick::NotThere { .. })
        ));
        assert!(!finished_on(&run, "member-1"));
        let queued = RunStatus {
            phase: Some(RunPhase::Queued),
            ..Default::default()
        };
        assert_eq!(
            pick_cluster(&queued, None),
            Err(Pick::NotYet("Queued".into()))
        );
    }

    #[test]
    fn a_run_on_every_cluster_needs_one_named() {
        let run = all(&[("a", RunPhase::Succeeded), ("b", RunPhase::Running)]);
        assert_eq!(
            pick_cluster(&run, None),
            Err(Pick::Which(vec!["a".into(), "b".into()]))
        );
        assert_eq!(pick_cluster(&run, Some("b")), Ok("b".into()));
        assert!(finished_on(&run, "a"));
        assert!(!finished_on(&run, "b"));
        assert_eq!(
            pick_cluster(&all(&[("a", RunPhase::Running)]), None),
            Ok("a".into())
        );
    }

    #[test]
    fn the_common_name_of_a_certificate_is_read() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "front-proxy-client");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            common_name(cert.der()).as_deref(),
            Some("front-proxy-client")
        );
        assert_eq!(common_name(b"junk"), None);
    }
}
