//! Who is asking: the hub API server's aggregator proves itself with its
//! front-proxy client certificate and names the user in request headers
//! (the "request header" authentication every aggregated API server
//! uses); the hub then asks its API server whether that user may read the
//! run (a SubjectAccessReview). Settings come from the ConfigMap the API
//! server publishes for extension servers,
//! `kube-system/extension-apiserver-authentication`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::HeaderMap;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, PostParams};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Where the API server publishes request-header settings.
const CONFIG_MAP: (&str, &str) = ("kube-system", "extension-apiserver-authentication");

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("reading ConfigMap {ns}/{name}: {0}", ns = CONFIG_MAP.0, name = CONFIG_MAP.1)]
    Read(#[source] kube::Error),
    #[error(
        "ConfigMap {ns}/{name} has no requestheader-client-ca-file: start the hub API server with --requestheader-client-ca-file (and the other --requestheader-* and --proxy-client-* flags) so it can call aggregated APIs",
        ns = CONFIG_MAP.0,
        name = CONFIG_MAP.1
    )]
    NoFrontProxyCa,
    #[error("the front-proxy CA in {ns}/{name} is not usable: {0}", ns = CONFIG_MAP.0, name = CONFIG_MAP.1)]
    BadCa(String),
}

/// The request-header settings of the hub API server.
#[derive(Clone, Debug)]
pub struct FrontProxy {
    pub roots: Arc<RootCertStore>,
    /// Client certificate common names allowed; empty means any the CA signed.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub group_headers: Vec<String>,
    pub extra_prefixes: Vec<String>,
}

impl FrontProxy {
    pub async fn load(hub: &Client) -> Result<Self, AuthSetupError> {
        let cm = Api::<ConfigMap>::namespaced(hub.clone(), CONFIG_MAP.0)
            .get(CONFIG_MAP.1)
            .await
            .map_err(AuthSetupError::Read)?;
        Self::from_data(&cm.data.unwrap_or_default())
    }

    /// From the ConfigMap's data (values of list keys are JSON arrays).
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, AuthSetupError> {
        let ca = data
            .get("requestheader-client-ca-file")
            .filter(|s| !s.trim().is_empty())
            .ok_or(AuthSetupError::NoFrontProxyCa)?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            let cert = cert.map_err(|e| AuthSetupError::BadCa(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| AuthSetupError::BadCa(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(AuthSetupError::BadCa("it holds no certificate".into()));
        }
        let list = |key: &str, default: &[&str]| -> Vec<String> {
            data.get(key)
                .and_then(|v| serde_json::from_str::<Vec<String>>(v).ok())
                .unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect())
        };
        Ok(FrontProxy {
            roots: Arc::new(roots),
            allowed_names: list("requestheader-allowed-names", &[]),
            username_headers: list("requestheader-username-headers", &["X-Remote-User"]),
            group_headers: list("requestheader-group-headers", &["X-Remote-Group"]),
            extra_prefixes: list("requestheader-extra-headers-prefix", &["X-Remote-Extra-"]),
        })
    }

    /// Whether a client certificate with this common name (already
    /// verified against the front-proxy CA) may name users.
    pub fn allows(&self, common_name: Option<&str>) -> bool {
        self.allowed_names.is_empty()
            || common_name.is_some_and(|cn| self.allowed_names.iter().any(|n| n == cn))
    }

    /// The user the aggregator names, if any.
    pub fn user(&self, headers: &HeaderMap) -> Option<User> {
        let name = self
            .username_headers
            .iter()
            .find_map(|h| headers.get(h.as_str())?.to_str().ok())
            .filter(|n| !n.is_empty())?
            .to_owned();
        let groups = self
            .group_headers
            .iter()
            .flat_map(|h| headers.get_all(h.as_str()))
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (key, value) in headers {
            let key = key.as_str();
            for prefix in &self.extra_prefixes {
                let prefix = prefix.to_ascii_lowercase();
                if let (Some(rest), Ok(value)) = (key.strip_prefix(&prefix), value.to_str()) {
                    extra
                        .entry(unescape(rest))
                        .or_default()
                        .push(value.to_owned());
                }
            }
        }
        Some(User {
            name,
            groups,
            extra,
        })
    }
}

/// `%xx` escapes in an extra header's key, as the API server writes them.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if bytes[i] == b'%'
            && let Some(b) = hex
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A user as the aggregator named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Whether `user` may `get` the run `name` (of `resource`, group
/// `tekfed.io`) in `namespace`, as the hub API server decides; the
/// reason it gives when not.
pub async fn may_get(
    hub: &Client,
    user: &User,
    resource: &str,
    namespace: &str,
    name: &str,
) -> Result<(bool, String), kube::Error> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            groups: Some(user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                group: Some(tekfed_api::GROUP.into()),
                resource: Some(resource.into()),
                verb: Some("get".into()),
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(hub.clone())
        .create(&PostParams::default(), &review)
        .await?;
    let status = answer.status.unwrap_or_default();
    Ok((status.allowed, status.reason.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn settings() -> FrontProxy {
        FrontProxy {
            roots: Arc::new(RootCertStore::empty()),
            allowed_names: vec!["front-proxy-client".into()],
            username_headers: vec!["X-Remote-User".into()],
            group_headers: vec!["X-Remote-Group".into()],
            extra_prefixes: vec!["X-Remote-Extra-".into()],
        }
    }

    #[test]
    fn only_the_allowed_front_proxy_names_users() {
        let s = settings();
        assert!(s.allows(Some("front-proxy-client")));
        assert!(!s.allows(Some("someone-else")));
        assert!(!s.allows(None));
        let any = FrontProxy {
            allowed_names: vec![],
            ..s
        };
        assert!(any.allows(Some("whoever-the-ca-signed")));
    }

    #[test]
    fn the_user_its_groups_and_extras_come_from_the_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-remote-user", HeaderValue::from_static("alice"));
        headers.append("x-remote-group", HeaderValue::from_static("dev"));
        headers.append(
            "x-remote-group",
            HeaderValue::from_static("system:authenticated"),
        );
        headers.insert(
            "x-remote-extra-scopes%2fa",
            HeaderValue::from_static("read"),
        );
        let user = settings().user(&headers).unwrap();
        assert_eq!(user.name, "alice");
        assert_eq!(user.groups, ["dev", "system:authenticated"]);
        assert_eq!(user.extra["scopes/a"], ["read"]);
        assert!(
            settings().user(&HeaderMap::new()).is_none(),
            "no user header: nobody"
        );
    }

    #[test]
    fn the_settings_need_a_front_proxy_ca() {
        let err = FrontProxy::from_data(&BTreeMap::new()).unwrap_err();
        assert!(
            err.to_string().contains("--requestheader-client-ca-file"),
            "{err}"
        );
        let bad = BTreeMap::from([(
            "requestheader-client-ca-file".to_owned(),
            "not a pem".to_owned(),
        )]);
        assert!(FrontProxy::from_data(&bad).is_err());
    }
}
