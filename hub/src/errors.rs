//! Kubernetes errors as people read them.
//!
//! Whatever the hub writes into a status or a condition says which cluster
//! refused what and why, in one line:
//! `member-1 refused Task corpus/echo: spec.steps[0].name: Required value`.
//! Never a Rust `Debug` dump: `kube::Error`'s own `Display` of an API error
//! embeds one (`ApiError: … (Status { status: Some(Failure), … })`), so
//! nothing here formats a `kube::Error` with `{}` or `{:?}`. Pure, so every
//! case is a unit test.
//!
//! What a member answers is not trusted either: a member (or whatever sits
//! in front of it) may answer with any body. An answer that is not a
//! Kubernetes `Status` (an HTML error page, a proxy's text) is reported by
//! its HTTP code alone, never its body; a `Status`'s own words are kept,
//! but on one line, without control characters, and at most
//! [`MAX_MESSAGE`] characters; a body that does not parse is described by
//! where it failed, not by what it held.

use kube::runtime::{controller, watcher};

/// The longest text taken from an answer into a status, a condition or a
/// log line: enough for any Kubernetes validation message, short enough
/// that a hostile answer cannot fill a status.
pub const MAX_MESSAGE: usize = 512;

/// The `reason` kube gives an error answer whose body is not a Kubernetes
/// `Status` (it then puts the whole body in `message`).
const NOT_A_STATUS: &str = "Failed to parse error data";

/// What went wrong with a request, in one line. For an answer of the API
/// server (`kube::Error::Api`): the `field: message` of each cause it lists
/// (a 422 `Invalid` names the fields), joined with `; `, else its message;
/// for an answer that is not a Kubernetes `Status`, its HTTP code only; for
/// a body that does not parse, where it failed; for anything else (no
/// answer) the error's `Display`. Always one line of at most
/// [`MAX_MESSAGE`] characters, without control characters.
pub fn one_line(error: &kube::Error) -> String {
    let text = match error {
        kube::Error::Api(status) if status.reason == NOT_A_STATUS => format!(
            "HTTP {} (its body, not a Kubernetes Status, is not shown)",
            status.code
        ),
        kube::Error::SerdeError(e) => format!(
            "the answer could not be read ({} error at line {}, column {}; not shown)",
            match e.classify() {
                serde_json::error::Category::Io => "I/O",
                serde_json::error::Category::Syntax => "syntax",
                serde_json::error::Category::Data => "data",
                serde_json::error::Category::Eof => "end of input",
            },
            e.line(),
            e.column()
        ),
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
    sanitize(&text)
}

/// `text` on one line: control characters dropped, runs of white space
/// made one space, at most [`MAX_MESSAGE`] characters (cut with `…`).
pub fn sanitize(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let line: String = words
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    match line.char_indices().nth(MAX_MESSAGE) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
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
            sanitize(&status.message),
            status.code
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

    /// A marker no message of tekfed's contains.
    const MARKER: &str = "tekfed-hostile-body-7f3a";

    #[test]
    fn a_body_that_is_not_a_status_is_never_shown() {
        // What kube makes of an HTML error page (see its handle_api_errors).
        let page =
            format!("<html><body><h1>500</h1><p>{MARKER}</p>\n<script>x()</script></body></html>");
        let e = api(500, NOT_A_STATUS, &page, &[]);
        for text in [
            one_line(&e),
            member_refusal("member-1", "reading Task corpus/echo", &e),
        ] {
            assert!(!text.contains(MARKER), "{text}");
            assert!(!text.contains("<html>"), "{text}");
            assert!(text.contains("HTTP 500"), "{text}");
        }
        assert_eq!(
            member_refusal("member-1", "Task corpus/echo", &e),
            "member-1 refused Task corpus/echo: HTTP 500 (its body, not a Kubernetes Status, is not shown)"
        );
    }

    #[test]
    fn a_status_message_is_kept_but_bounded_and_on_one_line() {
        let long = format!("{MARKER}\u{1b}[31m\r\n{}", "x".repeat(10_000));
        let text = one_line(&api(500, "InternalError", &long, &[]));
        assert!(text.chars().count() <= MAX_MESSAGE + 1, "{}", text.len());
        assert!(text.ends_with('…'));
        assert!(!text.chars().any(char::is_control), "{text:?}");
        // A Status's own words are the member's explanation: kept, bounded.
        assert!(text.starts_with(MARKER), "{text}");
        let cause = format!("{}\u{7}", "y".repeat(2_000));
        let causes = one_line(&api(422, "Invalid", "m", &[("spec.a", cause.as_str())]));
        assert!(causes.chars().count() <= MAX_MESSAGE + 1);
        assert!(!causes.contains('\u{7}'));
    }

    #[test]
    fn an_unreadable_body_is_described_not_quoted() {
        let e = kube::Error::SerdeError(
            serde_json::from_str::<Vec<u32>>(&format!("[\"{MARKER}\"]")).unwrap_err(),
        );
        let text = one_line(&e);
        assert!(!text.contains(MARKER), "{text}");
        assert!(text.contains("line 1"), "{text}");
    }

    #[test]
    fn a_watch_ended_by_a_hostile_status_is_bounded() {
        let status = kube::core::Status::failure(&"z\n".repeat(5_000), "Expired").with_code(410);
        let text = watch_failure(&watcher::Error::WatchError(Box::new(status)));
        assert!(!text.contains('\n'));
        assert!(text.len() < MAX_MESSAGE * 4 + 100, "{}", text.len());
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
