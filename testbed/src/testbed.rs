//! A federation's worth of real control planes: one `etcd`, and one
//! `kube-apiserver` for the hub and for each member (each with its own
//! `--etcd-prefix`, its own service-account keys and issuer), with TLS,
//! an admin client certificate and RBAC authorization on.
//!
//! The hub gets the tekfed CRDs, generated from the types in `crds/`; the
//! members get Tekton's own eight CRDs, and each runs the real Tekton
//! controller and webhook, a scheduler, a controller-manager and kwok
//! playing the pods (see [`crate::member`]).
//! One kubeconfig holds a context per cluster: `hub`, `member-1`, ….
//!
//! The hub's API server is also an aggregator, as a real one is: it
//! proxies an API group registered by an `APIService` to an extension API
//! server (the hub process's own logs API) over TLS, with the front-proxy
//! client certificate and the caller's identity in `X-Remote-*` headers
//! (see [`TestBed::register_hub_api`]). What it sends, as seen on this
//! bed: the availability check and discovery (`GET /apis` with the
//! aggregated-discovery Accept, then `/apis/<group>/<version>`) as user
//! `system:kube-aggregator`, `/openapi/v2` as `system:aggregator`, and a
//! user's request with their name, groups and percent-encoded extras.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceSpec};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::{
    APIService, APIServiceSpec, ServiceReference,
};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::process::{Process, Reaper};
use crate::{POLL_INTERVAL, TestBedError, bins, pki};

/// The name of the hub's context in the test bed's kubeconfig.
pub const HUB: &str = "hub";
/// Field manager the test bed installs CRDs with.
const MANAGER: &str = "tekfed-testbed";
/// The front-proxy CA's file in the test bed's folder.
const FRONT_PROXY_CA_FILE: &str = "front-proxy-ca.crt";
/// How long a server may take to become ready on a busy 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// The hub namespace of the Service an extension API server registered
/// with [`TestBed::register_hub_api`] stands behind (the hub's own).
pub const HUB_API_NAMESPACE: &str = "tekfed-system";
/// That Service's name.
pub const HUB_API_SERVICE: &str = "tekfed-hub";
/// The name the aggregator expects in the extension API server's serving
/// certificate: it verifies `<service>.<namespace>.svc`, whatever address
/// it dials. (Spelt out, as consts cannot be formatted; the log API
/// test, `tests/tests/logs.rs`, fails if it drifts from the two above.)
pub const HUB_API_SERVER_NAME: &str = "tekfed-hub.tekfed-system.svc";

/// One cluster of the test bed.
#[derive(Clone, Debug)]
pub struct ClusterInfo {
    /// Context name in the kubeconfig: `hub`, `member-1`, ….
    pub name: String,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
}

/// A running test bed. Dropping it stops every process and removes its
/// folder.
pub struct TestBed {
    dir: PathBuf,
    kubeconfig: PathBuf,
    clusters: Vec<ClusterInfo>,
    processes: Mutex<Vec<Process>>,
    reaper: Mutex<Reaper>,
    bin_dir: PathBuf,
    /// From the first process started to every CRD `Established`.
    pub started_in: Duration,
}

impl TestBed {
    /// Start a hub and `members` member clusters, and wait until every API
    /// server is ready and every CRD is established.
    pub async fn start(members: usize) -> Result<Self, TestBedError> {
        Self::start_in(members, None).await
    }

    /// [`TestBed::start`] in the folder `dir` (created; a temporary one
    /// when `None`).
    pub async fn start_in(members: usize, dir: Option<PathBuf>) -> Result<Self, TestBedError> {
        Self::start_with(members, dir, true).await
    }

    /// [`TestBed::start`] with a hub that has none of tekfed's CRDs and
    /// admission policies, for a test that installs them itself (the hub
    /// chart). Deleting CRDs after the fact is not the same: their
    /// cleanup finalizer can keep them for minutes on a busy machine.
    pub async fn start_without_tekfed_api(members: usize) -> Result<Self, TestBedError> {
        Self::start_with(members, None, false).await
    }

    async fn start_with(
        members: usize,
        dir: Option<PathBuf>,
        tekfed_api: bool,
    ) -> Result<Self, TestBedError> {
        let bin_dir = bins::bin_dir()?;
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| TestBedError::Io { what, source }
        };
        let dir = match dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir).map_err(io("creating the test bed folder"))?;
                dir
            }
            None => tempfile::Builder::new()
                .prefix("tekfed-testbed-")
                .tempdir()
                .map_err(io("creating the test bed folder"))?
                .keep(),
        };
        let mut reaper = Reaper::start(&dir)?;
        let began = Instant::now();
        let mut processes = Vec::new();

        let pki = pki::Pki::generate().map_err(TestBedError::Pki)?;
        let write = |name: &str, text: &str| -> Result<PathBuf, TestBedError> {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(io(&format!("writing {}", path.display())))?;
            Ok(path)
        };
        let ca = write("ca.crt", &pki.ca_pem)?;
        write("ca.key", &pki.ca_key_pem)?;
        let serving_cert = write("serving.crt", &pki.serving.cert_pem)?;
        let serving_key = write("serving.key", &pki.serving.key_pem)?;
        let front_proxy_ca = write(FRONT_PROXY_CA_FILE, &pki.front_proxy_ca_pem)?;
        let front_proxy_cert = write("front-proxy-client.crt", &pki.front_proxy_client.cert_pem)?;
        let front_proxy_key = write("front-proxy-client.key", &pki.front_proxy_client.key_pem)?;

        // etcd, shared by every API server under a prefix of its own.
        let [etcd_port, etcd_peer] = [free_port()?, free_port()?];
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd_args = [
            "--name=tekfed-testbed".to_owned(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=tekfed-testbed={peer_url}"),
            "--unsafe-no-fsync".to_owned(),
            "--quota-backend-bytes=8589934592".to_owned(),
            "--log-level=warn".to_owned(),
        ];
        processes.push(Process::spawn(
            "etcd",
            &bin_dir.join("etcd"),
            &etcd_args,
            &[],
            dir.join("etcd.log"),
            &mut reaper,
        )?);

        let names: Vec<String> = std::iter::once(HUB.to_owned())
            .chain((1..=members).map(|i| format!("member-{i}")))
            .collect();
        let mut clusters = Vec::new();
        for name in &names {
            let port = free_port()?;
            let (sa_private, sa_public) = pki::service_account_key().map_err(TestBedError::Pki)?;
            let sa_key = write(&format!("{name}-sa.key"), &sa_private)?;
            let sa_pub = write(&format!("{name}-sa.pub"), &sa_public)?;
            let cert_dir = dir.join(format!("{name}-certs"));
            let mut args = vec![
                format!("--etcd-servers={etcd_url}"),
                format!("--etcd-prefix=/{name}"),
                format!("--cert-dir={}", cert_dir.display()),
                format!("--tls-cert-file={}", serving_cert.display()),
                format!("--tls-private-key-file={}", serving_key.display()),
                format!("--client-ca-file={}", ca.display()),
                format!("--secure-port={port}"),
                "--bind-address=127.0.0.1".to_owned(),
                "--advertise-address=127.0.0.1".to_owned(),
                "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
                "--authorization-mode=RBAC".to_owned(),
                // Members admit pods as a real cluster does (ServiceAccount
                // on), but no node lifecycle controller runs to lift the
                // not-ready taint TaintNodesByCondition puts on a new Node.
                if name == HUB {
                    "--disable-admission-plugins=ServiceAccount".to_owned()
                } else {
                    "--disable-admission-plugins=TaintNodesByCondition".to_owned()
                },
                format!("--service-account-issuer=https://{name}.tekfed.test"),
                format!("--service-account-key-file={}", sa_pub.display()),
                format!("--service-account-signing-key-file={}", sa_key.display()),
                "--endpoint-reconciler-type=none".to_owned(),
                "--profiling=false".to_owned(),
            ];
            // Only the hub serves an aggregated API (the hub process's logs).
            // Without `--enable-aggregator-routing` the aggregator resolves
            // an APIService's Service as kube-proxy would see it: an
            // ExternalName Service for 127.0.0.1 is dialled at 127.0.0.1 and
            // the APIService's port, which is all a test bed without
            // kube-proxy can route (EndpointSlices refuse loopback addresses).
            if name == HUB {
                args.extend([
                    format!(
                        "--requestheader-client-ca-file={}",
                        front_proxy_ca.display()
                    ),
                    format!("--requestheader-allowed-names={}", pki::FRONT_PROXY_CLIENT),
                    "--requestheader-username-headers=X-Remote-User".to_owned(),
                    "--requestheader-group-headers=X-Remote-Group".to_owned(),
                    "--requestheader-extra-headers-prefix=X-Remote-Extra-".to_owned(),
                    format!("--proxy-client-cert-file={}", front_proxy_cert.display()),
                    format!("--proxy-client-key-file={}", front_proxy_key.display()),
                ]);
            }
            processes.push(Process::spawn(
                &format!("kube-apiserver ({name})"),
                &bin_dir.join("kube-apiserver"),
                &args,
                &[],
                dir.join(format!("{name}-apiserver.log")),
                &mut reaper,
            )?);
            clusters.push(ClusterInfo {
                name: name.clone(),
                server: format!("https://127.0.0.1:{port}"),
            });
        }

        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&pki, &clusters))
            .map_err(io("writing the kubeconfig"))?;

        let mut bed = Self {
            dir,
            kubeconfig,
            clusters,
            processes: Mutex::new(processes),
            reaper: Mutex::new(reaper),
            bin_dir,
            started_in: Duration::ZERO,
        };
        bed.wait_ready().await?;
        bed.install_crds(tekfed_api).await?;
        let members: Vec<ClusterInfo> = bed
            .clusters
            .iter()
            .filter(|c| c.name != HUB)
            .cloned()
            .collect();
        futures::future::try_join_all(members.iter().map(|m| bed.start_member_stack(m))).await?;
        bed.started_in = began.elapsed();
        Ok(bed)
    }

    /// The kubeconfig with one context per cluster (`hub`, `member-1`, …),
    /// all authenticating as an admin (`system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The folder with the built Kubernetes binaries (kubectl is there).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The test bed's own folder (logs, certificates, etcd data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The front-proxy CA (PEM): an extension API server behind the hub
    /// trusts a client certificate it signed to assert the caller's
    /// identity in `X-Remote-*` headers. The hub's API server also
    /// publishes it, with the header names, in ConfigMap
    /// `kube-system/extension-apiserver-authentication`.
    pub fn front_proxy_ca(&self) -> PathBuf {
        self.dir.join(FRONT_PROXY_CA_FILE)
    }

    /// Register an extension API server listening on `127.0.0.1:port` as
    /// the hub's API `group`/`version`: an ExternalName Service
    /// [`HUB_API_SERVICE`] for `127.0.0.1` in [`HUB_API_NAMESPACE`]
    /// (created if absent) and the `APIService` `<version>.<group>` naming
    /// it. The aggregator verifies the server's certificate against
    /// `ca_bundle_pem` for the name [`HUB_API_SERVER_NAME`]. Returns once
    /// the objects exist; the API is served once the `APIService` is
    /// `Available`, which the aggregator decides by calling the server.
    pub async fn register_hub_api(
        &self,
        group: &str,
        version: &str,
        port: u16,
        ca_bundle_pem: &str,
    ) -> Result<(), TestBedError> {
        let client = self.client(HUB).await?;
        let apply = PatchParams::apply(MANAGER).force();
        let kube_error = |what: String| move |source| TestBedError::Kube { what, source };
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(HUB_API_NAMESPACE.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .patch(HUB_API_NAMESPACE, &apply, &Patch::Apply(&namespace))
            .await
            .map_err(kube_error(format!(
                "creating namespace {HUB_API_NAMESPACE} on the hub"
            )))?;
        // No port on the Service: for an ExternalName Service the aggregator
        // dials the APIService's port.
        let service = Service {
            metadata: ObjectMeta {
                name: Some(HUB_API_SERVICE.to_owned()),
                namespace: Some(HUB_API_NAMESPACE.to_owned()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ExternalName".to_owned()),
                external_name: Some("127.0.0.1".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        };
        Api::<Service>::namespaced(client.clone(), HUB_API_NAMESPACE)
            .patch(HUB_API_SERVICE, &apply, &Patch::Apply(&service))
            .await
            .map_err(kube_error(format!(
                "creating Service {HUB_API_NAMESPACE}/{HUB_API_SERVICE} on the hub"
            )))?;
        let name = format!("{version}.{group}");
        let api_service = APIService {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            spec: Some(APIServiceSpec {
                group: Some(group.to_owned()),
                version: Some(version.to_owned()),
                service: Some(ServiceReference {
                    namespace: Some(HUB_API_NAMESPACE.to_owned()),
                    name: Some(HUB_API_SERVICE.to_owned()),
                    port: Some(i32::from(port)),
                }),
                ca_bundle: Some(ByteString(ca_bundle_pem.as_bytes().to_vec())),
                // Discovery lists the group after the built-in ones (the
                // `*.k8s.io` groups are at 18000); the only version needs
                // no more than a positive priority.
                group_priority_minimum: 1000,
                version_priority: 15,
                insecure_skip_tls_verify: None,
            }),
            status: None,
        };
        Api::<APIService>::all(client)
            .patch(&name, &apply, &Patch::Apply(&api_service))
            .await
            .map_err(kube_error(format!("creating APIService {name} on the hub")))?;
        Ok(())
    }

    /// Every cluster, the hub first.
    pub fn clusters(&self) -> &[ClusterInfo] {
        &self.clusters
    }

    /// The members' context names: `member-1`, ….
    pub fn members(&self) -> Vec<String> {
        self.clusters
            .iter()
            .filter(|c| c.name != HUB)
            .map(|c| c.name.clone())
            .collect()
    }

    /// A kube `Config` for one cluster, as admin.
    pub async fn config(&self, cluster: &str) -> Result<Config, TestBedError> {
        let kubeconfig =
            Kubeconfig::read_from(&self.kubeconfig).map_err(|e| TestBedError::Kubeconfig {
                cluster: cluster.to_owned(),
                message: e.to_string(),
            })?;
        let options = KubeConfigOptions {
            context: Some(cluster.to_owned()),
            ..Default::default()
        };
        Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| TestBedError::Kubeconfig {
                cluster: cluster.to_owned(),
                message: e.to_string(),
            })
    }

    /// A new admin client for one cluster. Each test makes its own: a kube
    /// `Client` belongs to the tokio runtime it was made on.
    pub async fn client(&self, cluster: &str) -> Result<Client, TestBedError> {
        Client::try_from(self.config(cluster).await?).map_err(|source| TestBedError::Kube {
            what: format!("building a client for {cluster}"),
            source,
        })
    }

    /// Create a namespace with a unique name starting with `prefix` on each
    /// of `clusters`, so tests sharing a test bed never see each other.
    pub async fn namespace(&self, prefix: &str, clusters: &[&str]) -> Result<String, TestBedError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        for cluster in clusters {
            let api: Api<Namespace> = Api::all(self.client(cluster).await?);
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..Default::default()
                },
                ..Default::default()
            };
            api.create(&PostParams::default(), &ns)
                .await
                .map_err(|source| TestBedError::Kube {
                    what: format!("creating namespace {name} on {cluster}"),
                    source,
                })?;
        }
        Ok(name)
    }

    /// Resident memory of each process now: `(process, bytes)`.
    pub fn memory(&self) -> Vec<(String, u64)> {
        let processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        processes
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.rss_bytes()?)))
            .collect()
    }

    /// Stop one cluster's API server (to test an unreachable member). The
    /// process is not restarted; the rest of the test bed keeps running.
    pub fn stop_cluster(&self, cluster: &str) {
        self.stop(&format!("kube-apiserver ({cluster})"));
    }

    /// Start a process that lives as long as the test bed (a hub, an
    /// agent), logging to `<dir>/<name>.log`: its pid.
    pub fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<u32, TestBedError> {
        let log = self.dir.join(format!("{name}.log"));
        let mut reaper = self.reaper.lock().unwrap_or_else(|p| p.into_inner());
        let process = Process::spawn(name, program, args, env, log, &mut reaper)?;
        let pid = process.pid();
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(process);
        Ok(pid)
    }

    /// Stop the processes named `name` and start them again with the same
    /// command line (an API server keeps its etcd data).
    pub fn restart(&self, name: &str) -> Result<(), TestBedError> {
        let mut reaper = self.reaper.lock().unwrap_or_else(|p| p.into_inner());
        let mut processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        for p in processes.iter_mut().filter(|p| p.name == name) {
            p.restart(&mut reaper)?;
        }
        Ok(())
    }

    /// Whether every process named `name` is running (false when one
    /// exited, or there is none).
    pub fn alive(&self, name: &str) -> bool {
        let mut processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        let mut named = processes.iter_mut().filter(|p| p.name == name).peekable();
        named.peek().is_some() && named.all(|p| p.check_alive().is_ok())
    }

    /// Send `signal` (`KILL`, `STOP`, `CONT`) to the processes named `name`,
    /// as a fault would: no grace, no cleanup. After `KILL` they are gone
    /// until [`TestBed::restart`].
    pub fn signal(&self, name: &str, signal: &str) {
        let mut processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        for p in processes.iter_mut().filter(|p| p.name == name) {
            p.signal(signal);
        }
    }

    /// [`TestBed::restart`] with its arguments changed by `change` first.
    pub fn restart_with(
        &self,
        name: &str,
        change: impl Fn(&mut Vec<String>),
    ) -> Result<(), TestBedError> {
        {
            let mut processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
            for p in processes.iter_mut().filter(|p| p.name == name) {
                change(p.args_mut());
            }
        }
        self.restart(name)
    }

    /// Stop the processes named `name` (SIGTERM, then SIGKILL).
    pub fn stop(&self, name: &str) {
        let mut processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        for p in processes.iter_mut().filter(|p| p.name == name) {
            p.stop();
        }
    }

    /// The last lines of a process's log, for failure messages.
    /// The pid of the running process `name`, if there is one.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        let processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        processes.iter().find(|p| p.name == name).map(|p| p.pid())
    }

    pub fn log_of(&self, name: &str) -> String {
        crate::process::log_tail(&self.dir.join(format!("{name}.log")))
    }

    async fn wait_ready(&self) -> Result<(), TestBedError> {
        for cluster in &self.clusters {
            let client = self.client(&cluster.name).await?;
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                let request = http::Request::get("/readyz")
                    .body(Vec::new())
                    .map_err(|e| TestBedError::Timeout {
                        what: format!("building a /readyz request: {e}"),
                    })?;
                match client.request_text(request).await {
                    Ok(text) if text.trim() == "ok" => break,
                    _ if Instant::now() > deadline => {
                        return Err(TestBedError::Timeout {
                            what: format!(
                                "kube-apiserver for {} to answer /readyz (log: {})",
                                cluster.name,
                                self.dir
                                    .join(format!("{}-apiserver.log", cluster.name))
                                    .display()
                            ),
                        });
                    }
                    _ => {
                        self.check_alive()?;
                        tokio::time::sleep(POLL_INTERVAL).await;
                    }
                }
            }
        }
        Ok(())
    }

    pub(crate) fn check_alive(&self) -> Result<(), TestBedError> {
        let mut processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        processes.iter_mut().try_for_each(Process::check_alive)
    }

    async fn install_crds(&self, tekfed_api: bool) -> Result<(), TestBedError> {
        let tekton = tekton_crds(&self.bin_dir)?;
        for cluster in &self.clusters {
            let crds = if cluster.name == HUB {
                if tekfed_api {
                    tekfed_api::manifests::crds()
                } else {
                    Vec::new()
                }
            } else {
                tekton.clone()
            };
            self.apply_crds(&cluster.name, &crds).await?;
        }
        if tekfed_api {
            self.install_admission_policies().await?;
        }
        Ok(())
    }

    /// The hub's admission policies (`api/manifests/admission-policies.yaml`),
    /// and a wait until the API server enforces them: a policy is loaded
    /// asynchronously after it is created.
    async fn install_admission_policies(&self) -> Result<(), TestBedError> {
        use k8s_openapi::api::admissionregistration::v1::{
            ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
        };
        let client = self.client(HUB).await?;
        let kube_error = |what: String| move |source| TestBedError::Kube { what, source };
        let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
        for policy in tekfed_api::admission::policies() {
            let name = policy.metadata.name.clone().unwrap_or_default();
            policies
                .patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&policy),
                )
                .await
                .map_err(kube_error(format!("installing admission policy {name}")))?;
        }
        let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
        for binding in tekfed_api::admission::bindings() {
            let name = binding.metadata.name.clone().unwrap_or_default();
            bindings
                .patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&binding),
                )
                .await
                .map_err(kube_error(format!("installing admission binding {name}")))?;
        }
        // The native-runs mutating policy, probed below like the others.
        use k8s_openapi::api::admissionregistration::v1::{
            MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding,
        };
        let (policy, binding) = (
            tekfed_api::native::mutating_policy(),
            tekfed_api::native::mutating_binding(),
        );
        let name = tekfed_api::native::MUTATING_POLICY;
        Api::<MutatingAdmissionPolicy>::all(client.clone())
            .patch(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&policy),
            )
            .await
            .map_err(kube_error(format!("installing admission policy {name}")))?;
        Api::<MutatingAdmissionPolicyBinding>::all(client.clone())
            .patch(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&binding),
            )
            .await
            .map_err(kube_error(format!("installing admission binding {name}")))?;

        // Probe with a dry-run object the overrides policy refuses.
        let probe: tekfed_api::FederatedTask = serde_json::from_value(serde_json::json!({
            "apiVersion": "tekfed.io/v1alpha1",
            "kind": "FederatedTask",
            "metadata": {"name": "admission-probe", "namespace": "default"},
            "spec": {
                "template": {"spec": {}},
                "placement": {"clusters": [{"name": "probe"}]},
                "overrides": [{"clusterName": "probe", "clusterOverrides": [{"op": "remove", "path": "/spec/x", "value": 1}]}],
            },
        }))
        .expect("the probe is a valid FederatedTask");
        let tasks: Api<tekfed_api::FederatedTask> = Api::namespaced(client, "default");
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match tasks.create(&dry_run, &probe).await {
                Err(kube::Error::Api(status)) if status.message.contains("clusterOverrides") => {
                    return Ok(());
                }
                _ if Instant::now() > deadline => {
                    return Err(TestBedError::Timeout {
                        what: "the hub to enforce the tekfed admission policies".into(),
                    });
                }
                _ => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    }

    /// Tekton's CRDs on the hub too (no Tekton runs there unless a test
    /// starts its controller, `start_hub_tekton_controller`): the hub
    /// federates the TaskRuns and PipelineRuns there that tekfed.io/hub
    /// manages (native runs). Call it before starting the hub, which looks
    /// for them once at start. Returns once the native-runs admission
    /// policy applies to them.
    pub async fn install_tekton_on_hub(&self) -> Result<(), TestBedError> {
        self.apply_crds(HUB, &tekton_crds(&self.bin_dir)?).await?;
        self.probe_native_runs_policy(&self.client(HUB).await?)
            .await
    }

    /// Apply `crds` on `cluster` and wait until each is established.
    async fn apply_crds(
        &self,
        cluster: &str,
        crds: &[CustomResourceDefinition],
    ) -> Result<(), TestBedError> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client(cluster).await?);
        for crd in crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(crd),
            )
            .await
            .map_err(|source| TestBedError::Kube {
                what: format!("installing CRD {name} on {cluster}"),
                source,
            })?;
        }
        for crd in crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            wait_established(&api, &name, cluster).await?;
        }
        Ok(())
    }

    /// Wait until a dry-run TaskRun in a namespace that opted in comes back
    /// with `managedBy` set: a mutating policy is loaded asynchronously,
    /// and one not loaded yet lets runs through unchanged.
    async fn probe_native_runs_policy(&self, client: &Client) -> Result<(), TestBedError> {
        let ns = "tekfed-native-probe";
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {tekfed_api::native::LABEL_FEDERATE: "true"}},
        }))
        .expect("a valid Namespace");
        Api::<Namespace>::all(client.clone())
            .patch(
                ns,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&namespace),
            )
            .await
            .map_err(|source| TestBedError::Kube {
                what: format!("creating namespace {ns}"),
                source,
            })?;
        let runs: Api<kube::api::DynamicObject> = Api::namespaced_with(
            client.clone(),
            ns,
            &tekfed_runtime::connect::tekton_resource("TaskRun"),
        );
        let probe: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
            "metadata": {"name": "probe", "namespace": ns},
            "spec": {"taskRef": {"name": "probe"}},
        }))
        .expect("a valid TaskRun");
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(run) = runs.create(&dry_run, &probe).await
                && run.data["spec"]["managedBy"] == tekfed_api::native::MANAGED_BY_HUB
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TestBedError::Timeout {
                    what: "the hub to apply the native-runs admission policy".into(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl TestBed {
    /// Leave every process running and the folder in place, and return
    /// the processes' names and pids (`kubectl tekfed dev up`).
    pub fn detach(self) -> Vec<(String, u32)> {
        let me = std::mem::ManuallyDrop::new(self);
        let processes =
            std::mem::take(&mut *me.processes.lock().unwrap_or_else(|p| p.into_inner()));
        me.reaper.lock().unwrap_or_else(|p| p.into_inner()).detach();
        processes
            .iter()
            .map(|p| (p.name.clone(), p.pid()))
            .collect()
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        let mut processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        // API servers first, etcd last, so no server logs etcd errors.
        for p in processes.iter_mut().rev() {
            p.stop();
        }
        // TEKFED_KEEP_BED=1 keeps the folder (every process's log) to read
        // after a failure or a benchmark.
        let mut reaper = self.reaper.lock().unwrap_or_else(|p| p.into_inner());
        if std::env::var_os("TEKFED_KEEP_BED").is_some() {
            eprintln!("test bed kept (TEKFED_KEEP_BED): {}", self.dir.display());
            // The processes are stopped; the reaper keeps the folder.
            reaper.detach();
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
            reaper.finish();
        }
    }
}

pub(crate) async fn wait_established(
    api: &Api<CustomResourceDefinition>,
    name: &str,
    cluster: &str,
) -> Result<(), TestBedError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let established = api
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|crd| crd.status)
            .and_then(|s| s.conditions)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(TestBedError::Timeout {
                what: format!("CRD {name} to be Established on {cluster}"),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Tekton's eight CRDs as `hack/k8s-bins.sh` left them (conversion webhook
/// removed).
pub fn tekton_crds(bin_dir: &Path) -> Result<Vec<CustomResourceDefinition>, TestBedError> {
    [
        "task",
        "taskrun",
        "pipeline",
        "pipelinerun",
        "customrun",
        "stepaction",
        "resolutionrequest",
        "verificationpolicy",
    ]
    .into_iter()
    .map(|kind| read_yaml(&bin_dir.join("tekton-crds").join(format!("{kind}.yaml"))))
    .collect()
}

/// One YAML document from a file.
pub(crate) fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TestBedError> {
    let text = std::fs::read_to_string(path).map_err(|source| TestBedError::Io {
        what: format!("reading {}", path.display()),
        source,
    })?;
    serde_saphyr::from_str(&text).map_err(|e| TestBedError::Yaml {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// A port for a server of the test bed. Not one the kernel hands out for
/// outgoing connections (those come from 32768 up, and one of them could
/// take a port between picking it here and the server binding it; seen
/// once on CI), and never the same twice in one process.
pub(crate) fn free_port() -> Result<u16, TestBedError> {
    use std::sync::atomic::AtomicU16;
    const FIRST: u16 = 20000;
    const SPAN: u16 = 12000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Start where another test process (one per test binary) is unlikely to be.
    let _ = NEXT.compare_exchange(
        0,
        (std::process::id() % u32::from(SPAN)) as u16 + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let port = FIRST + offset;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(TestBedError::Io {
        what: "finding a free port".into(),
        source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "no free port in 20000-31999"),
    })
}

fn kubeconfig_yaml(pki: &pki::Pki, clusters: &[ClusterInfo]) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": HUB,
        "clusters": clusters.iter().map(|c| serde_json::json!({
            "name": c.name,
            "cluster": {"server": c.server, "certificate-authority-data": b64(&pki.ca_pem)},
        })).collect::<Vec<_>>(),
        "users": [{
            "name": "admin",
            "user": {
                "client-certificate-data": b64(&pki.admin.cert_pem),
                "client-key-data": b64(&pki.admin.key_pem),
            },
        }],
        "contexts": clusters.iter().map(|c| serde_json::json!({
            "name": c.name,
            "context": {"cluster": c.name, "user": "admin"},
        })).collect::<Vec<_>>(),
    });
    serde_saphyr::to_string(&kubeconfig).expect("a JSON value always serializes to YAML")
}
