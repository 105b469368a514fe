//! ServiceAccount tokens from the TokenRequest API, reused while they
//! still authenticate and are far from expiry, renewed otherwise.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use base64::Engine;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::Value;

use super::kubeconfig::{Endpoint, kubeconfig_token, token_kubeconfig};

/// Renew a token that expires sooner than this.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Seconds since the epoch when a JWT expires (unverified: only to decide
/// whether to renew; the API server is the judge of validity).
pub fn jwt_expiry(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?["exp"].as_i64()
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
        && jwt_expiry(&token).is_some_and(|exp| {
            exp > k8s_openapi::jiff::Timestamp::now().as_second() + RENEW_BEFORE.as_secs() as i64
        })
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
    use super::*;

    #[test]
    fn the_expiry_of_a_token_is_read_from_its_claims() {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            br#"{"exp":1893456000,"sub":"system:serviceaccount:tekfed-system:tekfed-hub"}"#,
        );
        assert_eq!(jwt_expiry(&format!("h.{claims}.s")), Some(1893456000));
        assert_eq!(jwt_expiry("not-a-jwt"), None);
    }
}
