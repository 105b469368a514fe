//! What an identity may do on a cluster, as its API server answers a
//! SubjectAccessReview: for tests of tekfed's RBAC.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

/// `verb` on `resource` (`resource/subresource` names a subresource) of
/// API group `group`, cluster-wide; narrow it with [`in_namespace`] and
/// [`named`].
pub fn attributes(verb: &str, group: &str, resource: &str) -> ResourceAttributes {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_owned())),
        None => (resource, None),
    };
    ResourceAttributes {
        verb: Some(verb.into()),
        group: Some(group.into()),
        resource: Some(resource.into()),
        subresource,
        ..Default::default()
    }
}

/// `attributes` in namespace `ns`.
pub fn in_namespace(mut attributes: ResourceAttributes, ns: &str) -> ResourceAttributes {
    attributes.namespace = Some(ns.into());
    attributes
}

/// `attributes` of the object `name`.
pub fn named(mut attributes: ResourceAttributes, name: &str) -> ResourceAttributes {
    attributes.name = Some(name.into());
    attributes
}

/// Whether `user` may do `attributes` on `client`'s cluster. A
/// ServiceAccount (`system:serviceaccount:NS:NAME`) is asked about with
/// the groups its token authenticates with, as the API server would.
pub async fn may(client: &Client, user: &str, attributes: ResourceAttributes) -> bool {
    let groups = user
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, _)| {
            vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".to_owned(),
            ]
        });
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups,
            resource_attributes: Some(attributes),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("the API server answers a SubjectAccessReview")
        .status
        .is_some_and(|s| s.allowed)
}
