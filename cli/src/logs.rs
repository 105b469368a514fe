//! `kubectl tekfed logs`: a federated run's step logs, read through the
//! hub (its aggregated API `logs.tekfed.io`, `tekfed_api::logs`), with
//! nothing but the user's hub credentials.

use anyhow::{Context as _, anyhow, bail};
use futures::AsyncBufReadExt;
use kube::Client;
use kube::api::{Api, DynamicObject};
use tekfed_api::RunKind;
use tekfed_api::logs::{API_SERVICE, LogOptions, path};
use tokio::io::AsyncWriteExt;

/// `ftr/NAME`, `fpr/NAME`, the kinds' full names (`federatedtaskrun/NAME`,
/// also plural or with `.tekfed.io`), or a bare `NAME`.
pub fn parse_run(text: &str) -> Result<(Option<RunKind>, String), String> {
    let (kind, name) = match text.split_once('/') {
        None => (None, text),
        Some((kind, name)) => {
            let kind = kind.trim_end_matches(".tekfed.io");
            let kind = match kind {
                "ftr" | "federatedtaskrun" | "federatedtaskruns" => RunKind::TaskRun,
                "fpr" | "federatedpipelinerun" | "federatedpipelineruns" => RunKind::PipelineRun,
                other => {
                    return Err(format!(
                        "{other:?} is not a federated run kind: use ftr/NAME (FederatedTaskRun) or fpr/NAME (FederatedPipelineRun)"
                    ));
                }
            };
            (Some(kind), name)
        }
    };
    if name.is_empty() || name.contains('/') {
        return Err(format!("{text:?} names no run: use ftr/NAME or fpr/NAME"));
    }
    Ok((kind, name.to_owned()))
}

/// The run's kind, looked up on the hub when the user gave a bare name.
pub async fn resolve(
    client: &Client,
    namespace: &str,
    kind: Option<RunKind>,
    name: &str,
) -> anyhow::Result<RunKind> {
    if let Some(kind) = kind {
        return Ok(kind);
    }
    let mut found = Vec::new();
    for kind in [RunKind::TaskRun, RunKind::PipelineRun] {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &kind.federated_resource());
        if api
            .get_metadata_opt(name)
            .await
            .with_context(|| format!("looking up {} {namespace}/{name}", kind.federated_kind()))?
            .is_some()
        {
            found.push(kind);
        }
    }
    match found.as_slice() {
        [kind] => Ok(*kind),
        [] => bail!(
            "there is no FederatedTaskRun or FederatedPipelineRun {name} in namespace {namespace}"
        ),
        _ => bail!(
            "both a FederatedTaskRun and a FederatedPipelineRun are named {name}: say ftr/{name} or fpr/{name}"
        ),
    }
}

/// Print the run's log to stdout as it comes.
pub async fn logs(
    client: &Client,
    namespace: Option<String>,
    run: (Option<RunKind>, String),
    options: LogOptions,
) -> anyhow::Result<()> {
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
    let (kind, name) = run;
    let kind = resolve(client, &namespace, kind, &name).await?;
    let request = http::Request::get(path(kind, &namespace, &name, &options))
        .body(Vec::new())
        .context("building the log request")?;
    let stream = client
        .request_stream(request)
        .await
        .map_err(|e| explain(e, kind, &namespace, &name))?;
    let mut lines = stream.lines();
    let mut stdout = tokio::io::stdout();
    while let Some(line) = futures::StreamExt::next(&mut lines).await {
        let line = line.context("reading the log from the hub")?;
        stdout.write_all(line.as_bytes()).await?;
        stdout.write_all(b"\n").await?;
        stdout.flush().await?;
    }
    Ok(())
}

/// What an error from the hub means for the user.
pub fn explain(error: kube::Error, kind: RunKind, namespace: &str, name: &str) -> anyhow::Error {
    let kube::Error::Api(status) = &error else {
        return anyhow!(error).context(format!(
            "reading the log of {} {namespace}/{name}",
            kind.federated_kind()
        ));
    };
    match status.code {
        404 if status
            .message
            .contains("could not find the requested resource") =>
        {
            anyhow!(
                "the hub serves no run logs: is the APIService {API_SERVICE} installed and Available? (kubectl get apiservice {API_SERVICE}; the tekfed-hub chart installs it)"
            )
        }
        503 if status.message.contains(API_SERVICE) || status.message.is_empty() => anyhow!(
            "the hub's log API is not available ({}): kubectl get apiservice {API_SERVICE} says why",
            status.message
        ),
        _ => anyhow!("{}", status.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_named_as_kubectl_names_them() {
        assert_eq!(
            parse_run("fpr/build-42").unwrap(),
            (Some(RunKind::PipelineRun), "build-42".into())
        );
        assert_eq!(
            parse_run("federatedtaskrun.tekfed.io/t").unwrap(),
            (Some(RunKind::TaskRun), "t".into())
        );
        assert_eq!(parse_run("t").unwrap(), (None, "t".into()));
        assert!(parse_run("pod/x").unwrap_err().contains("ftr/NAME"));
        assert!(parse_run("fpr/").is_err());
        assert!(parse_run("fpr/a/b").is_err());
    }
}
