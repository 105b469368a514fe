//! ServiceAccount tokens from the TokenRequest API, reused while they
//! still authenticate and are not due for renewal, issued anew otherwise.
//! Due is the hub's and the agent's rule (`tekfed_runtime::tokens`): less
//! than a third of the lifetime left; those two renew their own tokens
//! before that, so a join finds one due only after a long outage.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tekfed_runtime::tokens::{Claims, renewal_due};

use super::kubeconfig::{Endpoint, kubeconfig_token, token_kubeconfig};

/// The shortest lifetime the TokenRequest API issues (`expirationSeconds`
/// at least 600).
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(600);

/// Whether a join keeps `token` (when it still authenticates): it is not
/// due for renewal at `now`, and not issued for longer than `ttl` (a
/// shorter `--token-ttl` takes effect at the next join).
pub fn keep(token: &str, ttl: Duration, now: i64) -> bool {
    let Some(claims) = Claims::of(token) else {
        return false;
    };
    let (Some(iat), Some(exp)) = (claims.iat, claims.exp) else {
        return false;
    };
    !renewal_due(iat, exp, now, None) && claims.lifetime().is_some_and(|l| l <= ttl)
}

/// A token for `sa` in `ns`, reusing the one in `existing` (a kubeconfig)
/// while it still authenticates as `sa` and is far from expiry.
pub(super) async fn token_for(
    client: &Client,
    endpoint: &Endpoint,
    ns: &str,
    sa: &str,
    existing: Option<&str>,
    ttl: Duration,
) -> anyhow::Result<String> {
    let user = format!("system:serviceaccount:{ns}:{sa}");
    if let Some((seen, token)) = existing.and_then(kubeconfig_token)
        && seen == *endpoint
        && keep(&token, ttl, k8s_openapi::jiff::Timestamp::now().as_second())
        && authenticates_as(endpoint, &token).await.as_deref() == Some(user.as_str())
    {
        return Ok(token);
    }
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(ttl.as_secs() as i64),
            ..Default::default()
        }),
        ..Default::default()
    };
    let issued = api
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for ServiceAccount {ns}/{sa}"))?;
    issued
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| anyhow!("the API server returned no token for {ns}/{sa}"))
}

/// Who a token authenticates as, if it does.
async fn authenticates_as(endpoint: &Endpoint, token: &str) -> Option<String> {
    let yaml = token_kubeconfig("check", endpoint, "check", token);
    let kc: Kubeconfig = serde_saphyr::from_str(&yaml).ok()?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .ok()?;
    let client = Client::try_from(config).ok()?;
    let api: Api<SelfSubjectReview> = Api::all(client);
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .ok()?;
    review.status?.user_info?.username
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;

    fn token(iat: i64, exp: i64) -> String {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            r#"{{"iat":{iat},"exp":{exp},"sub":"system:serviceaccount:tekfed-system:tekfed-hub"}}"#
        ));
        format!("h.{claims}.s")
    }

    #[test]
    fn a_join_keeps_a_token_until_a_third_of_its_life_is_left() {
        let week = Duration::from_secs(7 * 24 * 3600);
        let issued = token(0, week.as_secs() as i64);
        assert!(keep(&issued, week, 3600));
        let two_thirds = (week.as_secs() * 2 / 3) as i64;
        assert!(keep(&issued, week, two_thirds - 1));
        assert!(!keep(&issued, week, two_thirds));
        assert!(!keep("not-a-jwt", week, 0));
    }

    #[test]
    fn a_shorter_token_ttl_takes_effect_at_the_next_join() {
        let year = token(0, 365 * 24 * 3600);
        assert!(!keep(&year, Duration::from_secs(7 * 24 * 3600), 3600));
        assert!(keep(&year, Duration::from_secs(365 * 24 * 3600), 3600));
    }
}
