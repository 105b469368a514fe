//! tekfed's test bed: real `etcd` and `kube-apiserver` processes for a hub
//! and its members, started from the binaries `hack/k8s-bins.sh` builds,
//! and helpers the end-to-end tests share.
//!
//! Why a harness of our own rather than the kube-rs `envtest` crate: that
//! crate wraps controller-runtime's envtest through Go and clang at build
//! time and starts one API server per environment; tekfed needs several API
//! servers on one etcd, each with its own service-account issuer, and a
//! build that needs nothing but Rust once the binaries are cached.
//!
//! Tests share one test bed per test binary through [`shared`] and each
//! work in namespaces of their own ([`TestBed::namespace`]).

pub mod access;
pub mod bins;
pub mod federation;
pub mod logs;
pub mod member;
pub mod pki;
mod process;
pub mod soak;
pub mod testbed;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use testbed::{
    ClusterInfo, HUB, HUB_API_NAMESPACE, HUB_API_SERVER_NAME, HUB_API_SERVICE, TestBed,
};

/// How often the harness and the tests poll for a condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What can go wrong starting or using the test bed.
#[derive(Debug, thiserror::Error)]
pub enum TestBedError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("generating certificates: {0}")]
    Pki(rcgen::Error),
    #[error("{process} exited ({status}); last lines of its log:\n{log_tail}")]
    Exited {
        process: String,
        status: String,
        log_tail: String,
    },
    #[error("timed out waiting for {what}")]
    Timeout { what: String },
    #[error("kubeconfig context {cluster}: {message}")]
    Kubeconfig { cluster: String, message: String },
    #[error("{what}: {source}")]
    Kube { what: String, source: kube::Error },
    #[error("parsing {path}: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("{0}")]
    Bins(String),
}

/// The test bed shared by every test in this test binary: a hub and three
/// members, started on first use. It is never dropped; its reaper stops the
/// processes and removes the folder when the test binary exits.
pub fn shared() -> &'static TestBed {
    static SHARED: OnceLock<Result<TestBed, String>> = OnceLock::new();
    let bed = SHARED.get_or_init(|| {
        // Start on a runtime of its own: tests run on many runtimes, and
        // the test bed must not belong to any one of them.
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(TestBed::start(3))
                .map_err(|e| e.to_string())
        })
        .join()
        .unwrap_or_else(|_| Err("the thread starting the test bed panicked".into()))
    });
    match bed {
        Ok(bed) => bed,
        Err(e) => panic!("the test bed did not start: {e}"),
    }
}

/// Poll `check` until it returns `Some`, or fail after `timeout` saying what
/// was awaited. The condition is what the test is about; the deadline only
/// keeps a broken run from hanging.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll_until(timeout, check, || {
        format!("timed out after {timeout:?} waiting for {what}")
    })
    .await
}

/// Poll `check` until it returns `Some`; after `timeout`, panic with `failure()`.
async fn poll_until<T, F, Fut>(
    timeout: Duration,
    mut check: F,
    failure: impl FnOnce() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("{}", failure());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// [`eventually`], and on timeout the end of the hub's and agents' logs too.
pub async fn eventually_logged<T, F, Fut>(
    bed: &TestBed,
    what: &str,
    timeout: Duration,
    check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll_until(timeout, check, || {
        let mut logs = String::new();
        let names = std::iter::once("tekfed-hub".to_owned())
            .chain(bed.members().into_iter().map(|m| format!("agent-{m}")));
        for name in names {
            let log = bed.log_of(&name);
            let tail: String = log
                .chars()
                .rev()
                .take(20000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            logs.push_str(&format!("\n--- {name} (end of log) ---\n{tail}"));
        }
        format!("timed out after {timeout:?} waiting for {what}{logs}")
    })
    .await
}

/// Run `kubectl-tekfed` with `args`: whether it succeeded, and what it
/// printed (stdout, then stderr).
pub fn kubectl_tekfed(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(binary("kubectl-tekfed"))
        .args(args)
        .output()
        .expect("running kubectl-tekfed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The path of one of tekfed's binaries (`tekfed-hub`, `tekfed-agent`,
/// `kubectl-tekfed`), built first if needed: tests run the real binaries
/// as a user would.
pub fn binary(name: &str) -> PathBuf {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    static BUILT: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    // `make bench` runs the daemons as release builds.
    let release = std::env::var("TEKFED_BIN_PROFILE").as_deref() == Ok("release");
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.contains(name) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut args = vec!["build", "--quiet", "--bin", name];
        if release {
            args.push("--release");
        }
        let status = std::process::Command::new(cargo)
            .args(&args)
            .current_dir(&root)
            .status()
            .unwrap_or_else(|e| panic!("running cargo build --bin {name}: {e}"));
        assert!(status.success(), "cargo build --bin {name} failed");
        built.insert(name.to_owned());
    }
    target
        .join(if release { "release" } else { "debug" })
        .join(name)
}

/// The Tekton CLI `tkn` that `make test` built (`hack/tkn-bin.sh`) and named
/// in `TEKFED_TKN`: tests that read runs as a Tekton user would run the real
/// client rather than a stand-in. Unlike [`binary`] it cannot be built from
/// here, since it is a Go program.
pub fn tkn() -> PathBuf {
    let Some(path) = std::env::var_os("TEKFED_TKN") else {
        panic!(
            "TEKFED_TKN is not set. Run the tests with `make test`, which builds tkn \
             (hack/tkn-bin.sh) and sets it, or set it yourself: \
             TEKFED_TKN=\"$(bash hack/tkn-bin.sh | tail -n1)/tkn\""
        );
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "TEKFED_TKN={} is not a file; run `make test` (hack/tkn-bin.sh builds it)",
        path.display()
    );
    path
}

/// One kind of write an API server counts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Write {
    pub resource: String,
    pub subresource: String,
    /// `POST`, `PUT`, `PATCH`, `APPLY` or `DELETE`.
    pub verb: String,
    /// The HTTP status code answered, e.g. `409` for a write whose
    /// precondition (resourceVersion) failed.
    pub code: String,
}

impl std::fmt::Display for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.resource)?;
        if !self.subresource.is_empty() {
            write!(f, "/{}", self.subresource)?;
        }
        write!(f, " {}", self.verb)?;
        if !self.code.starts_with('2') {
            write!(f, " ({})", self.code)?;
        }
        Ok(())
    }
}

/// Writes (create, update, patch, server-side apply, delete) an API server
/// has served, by [`Write`], from its own `apiserver_request_total`: how
/// tests and benchmarks count what tekfed costs without trusting tekfed's
/// own counters.
pub async fn writes_by_resource(client: &kube::Client) -> std::collections::BTreeMap<Write, u64> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a valid request");
    let text = client.request_text(request).await.unwrap_or_default();
    let mut counts = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |name: &str| -> String {
            let key = format!("{name}=\"");
            line.split(&key)
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default()
                .to_owned()
        };
        if !["POST", "PUT", "PATCH", "APPLY", "DELETE"].contains(&label("verb").as_str()) {
            continue;
        }
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        *counts
            .entry(Write {
                resource: label("resource"),
                subresource: label("subresource"),
                verb: label("verb"),
                code: label("code"),
            })
            .or_default() += value;
    }
    counts
}
