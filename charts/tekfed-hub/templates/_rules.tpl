{{/* Generated from api/src/rbac.rs by `make crds`: do not edit. */}}

{{/* The hub's rules on its Lease: (dict "lease" <the Lease's name>). */}}
{{- define "tekfed-hub.rules.leaderElection" -}}
# Leader election: create the Lease when it does not exist yet (create
# cannot be limited by name).
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
# Then read and renew (or take over) that Lease only.
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [{{ .lease | quote }}]
  verbs: [get, update]
{{- end }}

{{/* The hub's rules on the member kubeconfig Secrets in its namespace. */}}
{{- define "tekfed-hub.rules.memberSecrets" -}}
# Member kubeconfig Secrets (MemberCluster spec.secretRef and
# spec.logsSecretRef; kubectl tekfed join writes them here): watched, so a
# new kubeconfig is used at once.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
# The hub writes the tokens it renews into those Secrets. Not limited by
# name: the names are the MemberClusters', known only when members join, and
# this Role reaches no other namespace.
- apiGroups: [""]
  resources: [secrets]
  verbs: [patch]
{{- end }}
