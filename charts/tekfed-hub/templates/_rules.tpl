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
