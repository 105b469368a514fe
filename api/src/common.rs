//! What the federated kinds share: the Tekton template they carry, the
//! placement that names candidate clusters, the per-cluster JSON-patch
//! overrides, taints and tolerations, and the standard conditions list.
//!
//! The shapes follow KubeFed's `template` / `placement` / `overrides`, so a
//! KubeFed user changes only `apiVersion` and `kind`.
//!
//! Every list a user writes is bounded (`maxItems`), so no object can make
//! the hub's placement, override or admission work grow without limit:
//! `placement.clusters` ≤ 1000 (a large fleet named one by one),
//! `tolerations` and `taints` ≤ 64, `overrides` ≤ 1000 (one per cluster)
//! with ≤ 100 operations each, and a cluster selector's `matchLabels` ≤ 64,
//! `matchExpressions` ≤ 32 with ≤ 256 values each ([`bounded_selector`]).
//! Names are bounded too ([`federated_name_rule`],
//! [`member_cluster_name_rule`]): each is written where Kubernetes allows
//! fewer characters than a name may have.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::KubeSchema;
use kube::core::Rule;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A whole Tekton object minus `apiVersion` and `kind`: the hub fills those
/// in from the federated kind. `spec` is kept exactly as written (unknown
/// fields preserved), so any Tekton feature passes through untouched.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Template {
    /// Labels and annotations put on the object created in each member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// The Tekton object's `spec`, as Tekton documents it.
    #[schemars(schema_with = "preserved_object")]
    pub spec: serde_json::Map<String, Value>,
}

/// The parts of `metadata` a template may set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Which member clusters a template is kept on.
///
/// `clusters` and `clusterSelector` may be given together: the placement is
/// then their intersection.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.clusters) && size(self.clusters) > 0) || has(self.clusterSelector)").message("placement needs clusters or clusterSelector").field_path(".clusters"))]
pub struct Placement {
    /// Clusters by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub clusters: Vec<ClusterRef>,
    /// Clusters by the labels on their `MemberCluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "bounded_selector")]
    pub cluster_selector: Option<LabelSelector>,
    /// Taints of `MemberCluster`s this object tolerates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tolerations: Vec<Toleration>,
}

/// Which member clusters are candidates for a run, and how many get a copy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.clusters) && size(self.clusters) > 0) || has(self.clusterSelector)").message("placement needs clusters or clusterSelector").field_path(".clusters"))]
pub struct RunPlacement {
    /// Candidate clusters by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub clusters: Vec<ClusterRef>,
    /// Candidate clusters by the labels on their `MemberCluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "bounded_selector")]
    pub cluster_selector: Option<LabelSelector>,
    /// Taints of `MemberCluster`s this run tolerates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tolerations: Vec<Toleration>,
    /// `One` (default): the scheduler picks exactly one candidate.
    /// `All`: one copy of the run on every candidate.
    #[serde(default)]
    pub mode: PlacementMode,
}

/// How many clusters a run is created on.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PlacementMode {
    #[default]
    One,
    All,
}

/// A member cluster named in a placement.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ClusterRef {
    /// The `MemberCluster`'s name: a DNS-1123 label.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
}

/// Per-cluster changes to the template, as RFC 6902 JSON-patch operations.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterOverrides {
    /// The `MemberCluster` these operations apply to: a DNS-1123 label.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub cluster_name: String,
    /// Operations applied in order to the template before it is sent.
    #[schemars(length(max = 100))]
    pub cluster_overrides: Vec<OverrideOp>,
}

/// One JSON-patch operation on the template (`/spec/...`, `/metadata/...`).
///
/// `value` may be any JSON, so the schema cannot type it, and CEL in a CRD
/// schema cannot see an untyped field: the rule "a `remove` has no value,
/// `add` and `replace` have one" is in the admission policy instead
/// ([`crate::admission`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct OverrideOp {
    /// `add`, `replace` (default) or `remove`.
    #[serde(default)]
    pub op: OverrideOperation,
    /// A JSON pointer into the template, such as `/spec/steps/0/image`.
    #[schemars(length(min = 1, max = 1024), pattern(r"^/"))]
    pub path: String,
    /// The new value (any JSON) for `add` and `replace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub value: Option<Value>,
}

/// The JSON-patch operations an override may use.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OverrideOperation {
    Add,
    #[default]
    Replace,
    Remove,
}

/// A taint on a `MemberCluster`: objects that do not tolerate it stay off.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Taint {
    #[schemars(length(min = 1, max = 316))]
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub value: Option<String>,
    pub effect: TaintEffect,
}

/// What a taint does to objects that do not tolerate it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TaintEffect {
    /// No new objects or runs are placed on the cluster.
    #[default]
    NoSchedule,
    /// As `NoSchedule`, and what is there is moved off.
    NoExecute,
}

/// A toleration of a `MemberCluster` taint, as for pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.operator) || self.operator != 'Exists' || !has(self.value)").message("value must be empty when operator is Exists").field_path(".value"))]
pub struct Toleration {
    /// The taint key; empty with `operator: Exists` tolerates every taint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 316))]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<TolerationOperator>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub value: Option<String>,
    /// Empty tolerates every effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
}

/// How a toleration matches a taint's value.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TolerationOperator {
    #[default]
    Equal,
    Exists,
}

/// An object kept as written, unknown fields included.
pub(crate) fn preserved_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Any JSON value (string, number, object, list…), kept as written.
pub(crate) fn any_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// `metav1.Condition`s as a list-map keyed by `type`, so server-side apply
/// merges them one condition at a time.
pub(crate) fn conditions(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

/// At most this many `matchLabels` in a cluster selector.
pub const MAX_SELECTOR_LABELS: u32 = 64;
/// At most this many `matchExpressions` in a cluster selector.
pub const MAX_SELECTOR_EXPRESSIONS: u32 = 32;
/// At most this many `values` in one `matchExpressions` entry: enough to
/// name every cluster of a large region; a longer list of names belongs in
/// `placement.clusters`.
pub const MAX_SELECTOR_VALUES: u32 = 256;

/// A `metav1.LabelSelector` whose lists and maps are bounded (Kubernetes'
/// own schema bounds none of them), its keys and values as long as a label
/// key and value may be.
pub(crate) fn bounded_selector(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = <LabelSelector as JsonSchema>::json_schema(generator);
    let bounds = json_schema!({
        "properties": {
            "matchLabels": {
                "maxProperties": MAX_SELECTOR_LABELS,
                "additionalProperties": {"type": "string", "maxLength": 63},
            },
            "matchExpressions": {
                "maxItems": MAX_SELECTOR_EXPRESSIONS,
                "items": {"properties": {
                    "key": {"maxLength": 316},
                    "operator": {"maxLength": 16},
                    "values": {"maxItems": MAX_SELECTOR_VALUES, "items": {"maxLength": 63}},
                }},
            },
        },
    });
    merge(schema.as_object_mut(), bounds.as_object());
    schema.insert("nullable".into(), true.into());
    schema
}

/// Merge `from` into `into`, objects key by key, anything else replaced.
fn merge(
    into: Option<&mut serde_json::Map<String, Value>>,
    from: Option<&serde_json::Map<String, Value>>,
) {
    let (Some(into), Some(from)) = (into, from) else {
        return;
    };
    for (key, value) in from {
        match (into.get_mut(key), value) {
            (Some(Value::Object(existing)), Value::Object(more)) => {
                merge(Some(existing), Some(more))
            }
            _ => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

/// The longest name of a federated object (templates and runs): the hub
/// writes it as the value of label `tekfed.io/federated-name` on every
/// object it makes on a member, and a label value has at most 63
/// characters. Longer names are refused at admission, not by a member.
pub const MAX_FEDERATED_NAME: usize = 63;

/// The root rule bounding a federated object's name ([`MAX_FEDERATED_NAME`]).
pub fn federated_name_rule() -> Rule {
    let message = format!(
        "metadata.name: must be at most {MAX_FEDERATED_NAME} characters: tekfed writes it as a label value (tekfed.io/federated-name) on the objects it makes on members"
    );
    Rule::new(format!("size(self.metadata.name) <= {MAX_FEDERATED_NAME}")).message(message.as_str())
}

/// The longest `MemberCluster` name. Every name derived from a cluster's
/// name must stay valid: the hub namespace `tekfed-cluster-<name>` and the
/// label value `tekfed.io/cluster=<name>` (63 characters, so at most 48),
/// the agent's identity `tekfed-agent-<name>` (a ServiceAccount, a Lease,
/// and the common name of a client certificate, at most 64 characters, so
/// at most 51), the Secrets `tekfed-member-<name>-logs` (253). The
/// tightest is 48; 40 leaves 8 characters for the next name tekfed derives
/// (a `-<suffix>` on the namespace or the agent's identity) without
/// refusing clusters already joined, and keeps a Helm release named
/// `tekfed-agent-<name>` under Helm's 53.
pub const MAX_CLUSTER_NAME: usize = 40;

/// The root rule on a `MemberCluster`'s name: a DNS-1123 label (a namespace
/// is made of it, so no dots) of at most [`MAX_CLUSTER_NAME`] characters.
pub fn member_cluster_name_rule() -> Rule {
    let message = format!(
        "metadata.name: a MemberCluster's name must be a DNS-1123 label (lowercase letters, digits and '-') of at most {MAX_CLUSTER_NAME} characters: tekfed derives the hub namespace tekfed-cluster-<name> and the agent's identity tekfed-agent-<name> from it"
    );
    Rule::new(format!(
        "size(self.metadata.name) <= {MAX_CLUSTER_NAME} && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')"
    ))
    .message(message.as_str())
}
