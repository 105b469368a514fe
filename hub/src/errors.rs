//! Kubernetes errors as people read them.
//!
//! Whatever the hub writes into a status or a condition says which cluster
//! refused what and why, in one line:
//! `member-1 refused Task corpus/echo: spec.steps[0].name: Required value`.
//! Never a Rust `Debug` dump: `kube::Error`'s own `Display` of an API error
//! embeds one (`ApiError: … (Status { status: Some(Failure), … })`), so
//! nothing here formats a `kube::Error` with `{}` or `{:?}`. Pure, so every
//! case is a unit test.

use kube::runtime::{controller, watcher};

/// What went wrong with a request, in one line. For an answer of the API
/// server (`kube::Error::Api`): the `field: message` of each cause it lists
/// (a 422 `Invalid` names the fields), joined with `; `, else its message;
/// for anything else (no answer, an unreadable one) the error's `Display`.
pub fn one_line(error: &kube::Error) -> String {
    let text = match error {
        kube::Error::Api(status) => {
            let causes: Vec<String> = status
                .details
                .iter()
                .flat_map(|d| &d.causes)
                .filter(|c| !c.message.is_empty())
                .map(|c| match c.field.as_str() {
                    "" => c.message.clone(),
                    field => format!("{field}: {}", c.message),
                })
                .collect();
            if !causes.is_empty() {
                causes.join("; ")
            } else if !status.message.is_empty() {
                status.message.clone()
            } else if !status.reason.is_empty() {
                format!("{} (HTTP {})", status.reason, status.code)
            } else {
                format!("HTTP {}", status.code)
            }
        }
        other => other.to_string(),
    };
    // Some admission webhooks answer with several lines.
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A member cluster's refusal, for a status: `member-1 refused Task
/// corpus/echo: …` when its API server answered, `Task corpus/echo on
/// member-1 failed: …` when it did not (or not readably). `what` is the
/// object, or what was done to it (`reading Task corpus/echo`).
pub fn member_refusal(cluster: &str, what: &str, error: &kube::Error) -> String {
    match error {
        kube::Error::Api(_) => format!("{cluster} refused {what}: {}", one_line(error)),
        _ => format!("{what} on {cluster} failed: {}", one_line(error)),
    }
}

/// A failed watch in one line, for a log (the watcher retries it).
pub fn watch_failure(error: &watcher::Error) -> String {
    match error {
        watcher::Error::InitialListFailed(e) => format!("listing failed: {}", one_line(e)),
        watcher::Error::WatchStartFailed(e) => {
            format!("starting the watch failed: {}", one_line(e))
        }
        watcher::Error::WatchError(status) => format!(
            "the API server ended the watch: {} (HTTP {})",
            status.message, status.code
        ),
        watcher::Error::WatchFailed(e) => format!("the watch failed: {}", one_line(e)),
        watcher::Error::NoResourceVersion => error.to_string(),
    }
}

/// What a controller's loop does with each reconcile's outcome: a failed
/// watch at warn, in one line (the watcher retries it); anything else at
/// debug (the error policy logged it, or the object went meanwhile).
/// `watching` names what is watched, for the log line.
pub fn log_outcome<T, R: std::error::Error + 'static>(
    kind: &str,
    watching: &str,
    result: Result<T, controller::Error<R, watcher::Error>>,
) -> futures::future::Ready<()> {
    match result {
        Ok(_) => {}
        Err(controller::Error::QueueError(e)) => {
            tracing::warn!(kind, error = %watch_failure(&e), "watching {watching} failed; retrying")
        }
        Err(e) => tracing::debug!(kind, error = %e, "reconcile did not finish"),
    }
    futures::future::ready(())
}

#[cfg(test)]
mod tests {
    use kube::core::Status;
    use kube::core::response::{StatusCause, StatusDetails, StatusSummary};

    use super::*;

    fn api(code: u16, reason: &str, message: &str, causes: &[(&str, &str)]) -> kube::Error {
        let details = (!causes.is_empty()).then(|| StatusDetails {
            name: "echo".into(),
            group: "tekton.dev".into(),
            kind: "tasks".into(),
            uid: String::new(),
            causes: causes
                .iter()
                .map(|(field, message)| StatusCause {
                    reason: "FieldValueRequired".into(),
                    message: (*message).into(),
                    field: (*field).into(),
                })
                .collect(),
            retry_after_seconds: 0,
        });
        kube::Error::Api(Box::new(Status {
            status: Some(StatusSummary::Failure),
            code,
            message: message.into(),
            metadata: None,
            reason: reason.into(),
            details,
        }))
    }

    #[test]
    fn an_invalid_object_names_its_fields() {
        let e = api(
            422,
            "Invalid",
            "Task.tekton.dev \"echo\" is invalid: spec.steps[0].name: Required value",
            &[("spec.steps[0].name", "Required value")],
        );
        assert_eq!(one_line(&e), "spec.steps[0].name: Required value");
        assert_eq!(
            member_refusal("member-1", "Task corpus/echo", &e),
            "member-1 refused Task corpus/echo: spec.steps[0].name: Required value"
        );
        let two = api(
            422,
            "Invalid",
            "invalid",
            &[("spec.a", "Required value"), ("", "and something else")],
        );
        assert_eq!(one_line(&two), "spec.a: Required value; and something else");
    }

    #[test]
    fn a_refusal_without_causes_is_its_message_on_one_line() {
        let e = api(
            400,
            "BadRequest",
            "admission webhook \"validation.webhook.pipeline.tekton.dev\" denied the request:\n  validation failed: missing field(s): spec.steps",
            &[],
        );
        assert_eq!(
            one_line(&e),
            "admission webhook \"validation.webhook.pipeline.tekton.dev\" denied the request: validation failed: missing field(s): spec.steps"
        );
        let bare = api(503, "ServiceUnavailable", "", &[]);
        assert_eq!(one_line(&bare), "ServiceUnavailable (HTTP 503)");
        assert_eq!(one_line(&api(500, "", "", &[])), "HTTP 500");
    }

    #[test]
    fn never_a_debug_dump() {
        let e = api(
            403,
            "Forbidden",
            "tasks.tekton.dev \"echo\" is forbidden: User \"hub\" cannot patch resource \"tasks\"",
            &[],
        );
        for text in [
            one_line(&e),
            member_refusal("member-1", "Task corpus/echo", &e),
        ] {
            assert!(!text.contains("Status {"), "{text}");
            assert!(!text.contains("ApiError"), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
        let watch = watcher::Error::WatchFailed(e);
        assert!(!watch_failure(&watch).contains("Status {"));
    }

    #[test]
    fn no_answer_is_not_called_a_refusal() {
        let e = kube::Error::LinesCodecMaxLineLengthExceeded;
        assert_eq!(
            member_refusal("member-1", "reading Task corpus/echo", &e),
            "reading Task corpus/echo on member-1 failed: Error finding newline character"
        );
    }
}
