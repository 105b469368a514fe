//! ServiceAccount tokens as tekfed renews them: the claims that say when a
//! token expires and whose it is, when it is due for renewal, and the
//! token inside a kubeconfig, read and replaced. Pure, so every case is a
//! unit test; `kubectl tekfed join`, the hub (its member tokens) and the
//! agent (its hub token) share them.
//!
//! The claims are read without verifying the signature: only to decide
//! when to ask for a new token and for whom. Whether a token is valid is
//! the API server's to judge, at every request.

use std::time::Duration;

use base64::Engine;
use serde_json::Value;

/// A token is never renewed before it is this old, whatever
/// `renew_before` says: a `renew_before` at least as long as the tokens'
/// lifetime would otherwise renew each new token at once, in a loop.
pub const MIN_AGE_BEFORE_RENEWAL: Duration = Duration::from_secs(10);

/// What a JWT says of itself (times in seconds since the epoch).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// Issued at.
    pub iat: Option<i64>,
    /// Expires at.
    pub exp: Option<i64>,
    /// Whose it is: `system:serviceaccount:NAMESPACE:NAME` for a
    /// ServiceAccount's.
    pub sub: Option<String>,
}

impl Claims {
    /// The claims of `token`, if it is a JWT whose payload is a JSON object.
    pub fn of(token: &str) -> Option<Self> {
        let payload = token.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        let claims: Value = serde_json::from_slice(&bytes).ok()?;
        claims.as_object()?;
        Some(Self {
            iat: claims["iat"].as_i64(),
            exp: claims["exp"].as_i64(),
            sub: claims["sub"].as_str().map(str::to_owned),
        })
    }

    /// `(namespace, name)` of the ServiceAccount the token is of.
    pub fn service_account(&self) -> Option<(String, String)> {
        let rest = self
            .sub
            .as_deref()?
            .strip_prefix("system:serviceaccount:")?;
        let (namespace, name) = rest.split_once(':')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains(':'))
            .then(|| (namespace.to_owned(), name.to_owned()))
    }

    /// How long the token was issued for (`exp - iat`).
    pub fn lifetime(&self) -> Option<Duration> {
        let seconds = self.exp? - self.iat?;
        (seconds > 0).then(|| Duration::from_secs(seconds as u64))
    }

    /// When the token is due for renewal ([`renews_at`]), if it says when
    /// it was issued and when it expires.
    pub fn renews_at(&self, renew_before: Option<Duration>) -> Option<i64> {
        Some(renews_at(self.iat?, self.exp?, renew_before))
    }
}

/// When a token issued at `iat` that expires at `exp` is due for renewal:
/// when less than `renew_before` of it is left, or without one, less than
/// a third of its lifetime; never before it is
/// [`MIN_AGE_BEFORE_RENEWAL`] old.
pub fn renews_at(iat: i64, exp: i64, renew_before: Option<Duration>) -> i64 {
    let lifetime = (exp - iat).max(0);
    let before = match renew_before {
        Some(before) => i64::try_from(before.as_secs()).unwrap_or(i64::MAX),
        None => lifetime / 3,
    };
    let floor = iat + MIN_AGE_BEFORE_RENEWAL.as_secs() as i64;
    exp.saturating_sub(before).max(floor)
}

/// Whether a token issued at `iat` that expires at `exp` is due for
/// renewal at `now` ([`renews_at`]).
pub fn renewal_due(iat: i64, exp: i64, now: i64, renew_before: Option<Duration>) -> bool {
    now >= renews_at(iat, exp, renew_before)
}

/// What is wrong with a kubeconfig whose token is read or replaced. The
/// text itself is never quoted: it holds credentials.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KubeconfigTokenError {
    #[error("the kubeconfig does not parse as YAML (its text is not shown)")]
    NotYaml,
    #[error("the kubeconfig has no current-context")]
    NoCurrentContext,
    #[error("the kubeconfig has no context {0:?}")]
    NoContext(String),
    #[error("the kubeconfig has no user {0:?} (named by context {1:?})")]
    NoUser(String, String),
    #[error("user {0:?} of the kubeconfig has no token")]
    NoToken(String),
}

/// The token of the user that `context` (else the current context) of the
/// kubeconfig `text` names.
pub fn kubeconfig_token(text: &str, context: Option<&str>) -> Result<String, KubeconfigTokenError> {
    let config = parse(text)?;
    let index = user_index(&config, context)?;
    let user = &config["users"][index];
    user["user"]["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| KubeconfigTokenError::NoToken(name_of(user)))
}

/// The kubeconfig `text` with the token of the user that `context` (else
/// the current context) names replaced by `token`; nothing else changes
/// but the layout (the YAML is written anew, keys in order).
pub fn with_token(
    text: &str,
    context: Option<&str>,
    token: &str,
) -> Result<String, KubeconfigTokenError> {
    let mut config = parse(text)?;
    let index = user_index(&config, context)?;
    let user = &mut config["users"][index];
    if user["user"]["token"].as_str().is_none() {
        return Err(KubeconfigTokenError::NoToken(name_of(user)));
    }
    user["user"]["token"] = Value::String(token.to_owned());
    Ok(serde_saphyr::to_string(&config).expect("JSON serializes to YAML"))
}

fn parse(text: &str) -> Result<Value, KubeconfigTokenError> {
    let config: Value = serde_saphyr::from_str(text).map_err(|_| KubeconfigTokenError::NotYaml)?;
    if config.is_object() {
        Ok(config)
    } else {
        Err(KubeconfigTokenError::NotYaml)
    }
}

fn name_of(entry: &Value) -> String {
    entry["name"].as_str().unwrap_or_default().to_owned()
}

/// Where in `users` the user of `context` (else the current context) is.
fn user_index(config: &Value, context: Option<&str>) -> Result<usize, KubeconfigTokenError> {
    let context = match context {
        Some(c) => c.to_owned(),
        None => config["current-context"]
            .as_str()
            .filter(|c| !c.is_empty())
            .ok_or(KubeconfigTokenError::NoCurrentContext)?
            .to_owned(),
    };
    let entries = |key: &str| config[key].as_array().cloned().unwrap_or_default();
    let user = entries("contexts")
        .iter()
        .find(|c| c["name"].as_str() == Some(context.as_str()))
        .ok_or_else(|| KubeconfigTokenError::NoContext(context.clone()))?["context"]["user"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    entries("users")
        .iter()
        .position(|u| u["name"].as_str() == Some(user.as_str()))
        .ok_or(KubeconfigTokenError::NoUser(user, context))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(claims))
    }

    #[test]
    fn claims_are_read_from_the_payload() {
        let token = jwt(
            r#"{"iat":1000,"exp":1600,"sub":"system:serviceaccount:tekfed-system:tekfed-hub"}"#,
        );
        let claims = Claims::of(&token).unwrap();
        assert_eq!((claims.iat, claims.exp), (Some(1000), Some(1600)));
        assert_eq!(
            claims.service_account(),
            Some(("tekfed-system".into(), "tekfed-hub".into()))
        );
        assert_eq!(claims.lifetime(), Some(Duration::from_secs(600)));
        assert_eq!(Claims::of("not-a-jwt"), None);
        assert_eq!(Claims::of("a.bm90IGpzb24.c"), None, "not JSON");
        assert_eq!(Claims::of(&jwt("[1]")), None, "not an object");
        // Padding some issuers leave is accepted.
        let padded = format!("h.{}==.s", token.split('.').nth(1).unwrap());
        assert_eq!(Claims::of(&padded), Some(claims));
    }

    #[test]
    fn only_a_service_accounts_subject_names_one() {
        let of = |sub: &str| {
            Claims {
                sub: Some(sub.into()),
                ..Default::default()
            }
            .service_account()
        };
        assert_eq!(
            of("system:serviceaccount:ns:sa"),
            Some(("ns".into(), "sa".into()))
        );
        assert_eq!(of("system:node:n1"), None);
        assert_eq!(of("alice"), None);
        assert_eq!(of("system:serviceaccount:ns"), None);
        assert_eq!(of("system:serviceaccount::sa"), None);
        assert_eq!(of("system:serviceaccount:ns:a:b"), None);
        assert_eq!(Claims::default().service_account(), None);
    }

    #[test]
    fn by_default_a_token_is_renewed_with_a_third_of_its_life_left() {
        // Issued at 0 for 900 s: due from 600 on.
        assert!(!renewal_due(0, 900, 599, None));
        assert!(renewal_due(0, 900, 600, None));
        assert!(renewal_due(0, 900, 1000, None), "expired: due");
        // A week's token is renewed with 56 hours left.
        let week = 7 * 24 * 3600;
        assert_eq!(renews_at(0, week, None), week - week / 3);
    }

    #[test]
    fn renew_before_overrides_the_third() {
        assert!(!renewal_due(0, 600, 29, Some(Duration::from_secs(570))));
        assert!(renewal_due(0, 600, 30, Some(Duration::from_secs(570))));
        assert!(!renewal_due(0, 600, 539, Some(Duration::from_secs(60))));
        assert!(renewal_due(0, 600, 540, Some(Duration::from_secs(60))));
    }

    #[test]
    fn a_renew_before_longer_than_the_lifetime_does_not_renew_in_a_loop() {
        let long = Some(Duration::from_secs(3600));
        assert_eq!(renews_at(100, 700, long), 110);
        assert!(!renewal_due(100, 700, 105, long));
        assert!(renewal_due(100, 700, 110, long));
        assert_eq!(renews_at(0, 600, Some(Duration::MAX)), 10);
    }

    #[test]
    fn claims_without_times_give_no_renewal_time() {
        let claims = Claims {
            exp: Some(10),
            ..Default::default()
        };
        assert_eq!(claims.renews_at(None), None);
        assert_eq!(claims.lifetime(), None);
    }

    const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
current-context: member-1
clusters:
- name: member-1
  cluster:
    server: https://10.0.0.1:6443
    certificate-authority-data: Q0E=
users:
- name: other
  user:
    token: other-token
- name: tekfed-hub
  user:
    token: old-token
contexts:
- name: member-1
  context:
    cluster: member-1
    user: tekfed-hub
- name: second
  context:
    cluster: member-1
    user: other
"#;

    #[test]
    fn the_token_of_the_current_or_given_context_is_read() {
        assert_eq!(kubeconfig_token(KUBECONFIG, None).unwrap(), "old-token");
        assert_eq!(
            kubeconfig_token(KUBECONFIG, Some("second")).unwrap(),
            "other-token"
        );
        assert_eq!(
            kubeconfig_token(KUBECONFIG, Some("nope")),
            Err(KubeconfigTokenError::NoContext("nope".into()))
        );
    }

    #[test]
    fn only_the_token_changes() {
        let renewed = with_token(KUBECONFIG, None, "new-token").unwrap();
        assert_eq!(kubeconfig_token(&renewed, None).unwrap(), "new-token");
        assert_eq!(
            kubeconfig_token(&renewed, Some("second")).unwrap(),
            "other-token"
        );
        let before: Value = serde_saphyr::from_str(KUBECONFIG).unwrap();
        let mut after: Value = serde_saphyr::from_str(&renewed).unwrap();
        after["users"][1]["user"]["token"] = "old-token".into();
        assert_eq!(before, after);
    }

    #[test]
    fn a_kubeconfig_without_a_token_is_refused_without_quoting_it() {
        let certificate = KUBECONFIG.replace("token: old-token", "client-key-data: c2VjcmV0");
        assert_eq!(
            with_token(&certificate, None, "t"),
            Err(KubeconfigTokenError::NoToken("tekfed-hub".into()))
        );
        let broken = "users: [secret-material";
        let e = kubeconfig_token(broken, None).unwrap_err();
        assert_eq!(e, KubeconfigTokenError::NotYaml);
        assert!(!e.to_string().contains("secret-material"));
        let no_context = KUBECONFIG.replace("current-context: member-1", "");
        assert_eq!(
            kubeconfig_token(&no_context, None),
            Err(KubeconfigTokenError::NoCurrentContext)
        );
        let no_user = KUBECONFIG.replace("user: tekfed-hub", "user: ghost");
        assert_eq!(
            kubeconfig_token(&no_user, None),
            Err(KubeconfigTokenError::NoUser(
                "ghost".into(),
                "member-1".into()
            ))
        );
    }
}
