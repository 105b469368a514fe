//! How every tekfed binary reaches a cluster, and how it tells a user that
//! the cluster lacks the CRDs it needs.
//!
//! Precedence, as kubectl: `--kubeconfig` (else `KUBECONFIG`, else
//! `~/.kube/config`) with `--context` (else the current context); with
//! neither flag nor file, the in-cluster service account.

use std::path::{Path, PathBuf};

use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// For a watch stream's `.modify()`: stores of the hub and the agent hold
/// thousands of runs and records, and `managedFields` (who wrote which
/// field) is a good part of each and never read. A write of an object read
/// from such a store omits the field, and the API server keeps its own.
pub fn drop_managed_fields<K: kube::Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// Failing to build a client or to find a required API.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read kubeconfig {path}: {source}")]
    ReadKubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("cannot use context {context} from the kubeconfig: {source}")]
    Context {
        context: String,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no kubeconfig found and not running in a cluster ({0}); pass --kubeconfig or set KUBECONFIG"
    )]
    Infer(#[from] kube::config::InferConfigError),
    #[error("cannot build a client: {0}")]
    Client(#[source] kube::Error),
    #[error("the API server at {server} did not answer: {source}")]
    Unreachable { server: String, source: kube::Error },
    #[error("the cluster at {server} does not serve {missing}.\n{hint}")]
    MissingApis {
        server: String,
        missing: String,
        hint: String,
    },
}

/// The `--kubeconfig` / `--context` pair every binary takes.
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

impl Target {
    /// Resolve the kube `Config` this target names.
    pub async fn config(&self) -> Result<Config, ConnectError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let context_error = |source| ConnectError::Context {
            context: self.context.clone().unwrap_or_else(|| "(current)".into()),
            source,
        };
        match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let kubeconfig = read_kubeconfig(path)?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(context_error)
            }
            (None, Some(_)) => Config::from_kubeconfig(&options)
                .await
                .map_err(context_error),
            (None, None) => Ok(Config::infer().await?),
        }
    }

    /// A client for this target.
    pub async fn client(&self) -> Result<Client, ConnectError> {
        Client::try_from(self.config().await?).map_err(ConnectError::Client)
    }
}

fn read_kubeconfig(path: &Path) -> Result<Kubeconfig, ConnectError> {
    Kubeconfig::read_from(path).map_err(|source| ConnectError::ReadKubeconfig {
        path: path.to_owned(),
        source,
    })
}

/// An API a binary cannot work without, and what to do when it is missing.
pub struct RequiredApi {
    pub resource: ApiResource,
    /// Said to the user when the API is missing: how to install it.
    pub hint: &'static str,
}

/// Check that `client`'s cluster serves every API in `required`, by listing
/// one object of each: that needs only the `list` permission the binary
/// must have anyway, not read access to CRDs.
pub async fn require_apis(
    client: &Client,
    server: &str,
    required: &[RequiredApi],
) -> Result<(), ConnectError> {
    let mut missing = Vec::new();
    let mut hints = Vec::new();
    for api in required {
        let list: Api<DynamicObject> = Api::all_with(client.clone(), &api.resource);
        match list.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {
                missing.push(format!("{}.{}", api.resource.plural, api.resource.group));
                if !hints.contains(&api.hint) {
                    hints.push(api.hint);
                }
            }
            Err(source) => {
                return Err(ConnectError::Unreachable {
                    server: server.to_owned(),
                    source,
                });
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ConnectError::MissingApis {
            server: server.to_owned(),
            missing: missing.join(", "),
            hint: hints.join("\n"),
        })
    }
}

/// Every tekfed kind, for [`require_apis`] on the hub.
pub fn tekfed_apis() -> Vec<RequiredApi> {
    use kube::Resource;
    const HINT: &str =
        "Install the tekfed CRDs on the hub: kubectl apply --server-side -f api/manifests/";
    vec![
        RequiredApi {
            resource: ApiResource::erase::<tekfed_api::MemberCluster>(&()),
            hint: HINT,
        },
        RequiredApi {
            resource: ApiResource::erase::<tekfed_api::FederatedTask>(&()),
            hint: HINT,
        },
        RequiredApi {
            resource: ApiResource::erase::<tekfed_api::FederatedPipeline>(&()),
            hint: HINT,
        },
        RequiredApi {
            resource: ApiResource::erase::<tekfed_api::FederatedStepAction>(&()),
            hint: HINT,
        },
        RequiredApi {
            resource: ApiResource::erase::<tekfed_api::FederatedTaskRun>(&()),
            hint: HINT,
        },
        RequiredApi {
            resource: ApiResource::erase::<tekfed_api::FederatedPipelineRun>(&()),
            hint: HINT,
        },
        RequiredApi {
            resource: ApiResource::erase::<tekfed_api::RunAssignment>(&()),
            hint: HINT,
        },
        RequiredApi {
            resource: ApiResource::erase::<tekfed_api::MemberReport>(&()),
            hint: HINT,
        },
    ]
    .into_iter()
    .inspect(|api| debug_assert_eq!(api.resource.group, tekfed_api::FederatedTask::group(&())))
    .collect()
}

/// The Tekton kinds a member must serve, for [`require_apis`] on a member.
pub fn tekton_apis() -> Vec<RequiredApi> {
    const HINT: &str = "Install Tekton Pipelines on the member (its CRDs at tekton.dev/v1, StepActions at tekton.dev/v1beta1).";
    ["Task", "TaskRun", "Pipeline", "PipelineRun", "StepAction"]
        .into_iter()
        .map(|kind| RequiredApi {
            resource: tekton_resource(kind),
            hint: HINT,
        })
        .collect()
}

/// The resource of a Tekton kind: `tekton.dev/v1`, but for `StepAction`,
/// which Tekton serves at `tekton.dev/v1beta1` only.
pub fn tekton_resource(kind: &str) -> ApiResource {
    let version = match kind {
        "StepAction" => "v1beta1",
        _ => "v1",
    };
    ApiResource {
        group: "tekton.dev".into(),
        version: version.into(),
        api_version: format!("tekton.dev/{version}"),
        kind: kind.into(),
        plural: format!("{}s", kind.to_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_actions_are_v1beta1_the_rest_v1() {
        let step_action = tekton_resource("StepAction");
        assert_eq!(step_action.api_version, "tekton.dev/v1beta1");
        assert_eq!(step_action.version, "v1beta1");
        assert_eq!(step_action.plural, "stepactions");
        for kind in ["Task", "TaskRun", "Pipeline", "PipelineRun"] {
            assert_eq!(tekton_resource(kind).api_version, "tekton.dev/v1", "{kind}");
        }
    }
}
