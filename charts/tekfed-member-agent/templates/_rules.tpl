{{/* Generated from api/src/rbac.rs by `make crds`: do not edit. */}}

{{/* The agent's ClusterRole on its member. */}}
{{- define "tekfed-member-agent.rules.member" -}}
# Runs, watched for their status and counted for load; a started run the hub
# took off this cluster (cluster lost, then back) is cancelled (patch
# spec.status).
- apiGroups: [tekton.dev]
  resources: [taskruns]
  verbs: [get, list, watch, patch]
# A held PipelineRun is started (patch spec.status) once the hub released
# it, or deleted unstarted when the hub revoked it.
- apiGroups: [tekton.dev]
  resources: [pipelineruns]
  verbs: [get, list, watch, patch, delete]
# Only the start-up check that the member serves the Tekton APIs tekfed uses
# (tekfed_runtime::connect::tekton_apis lists one object of each kind).
- apiGroups: [tekton.dev]
  resources: [tasks, pipelines, stepactions]
  verbs: [list]
# Load: pending pods, and requested vs allocatable CPU and memory, from
# watch caches (a heartbeat lists nothing).
- apiGroups: [""]
  resources: [pods, nodes]
  verbs: [list, watch]
{{- end }}

{{/* The agent's Role in Tekton's namespace. */}}
{{- define "tekfed-member-agent.rules.tektonVersion" -}}
# Tekton's version, reported to the hub, from the one ConfigMap Tekton
# publishes it in; no other ConfigMap.
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [pipelines-info]
  verbs: [get]
{{- end }}

{{/* The agent's Role on its Lease: (dict "lease" <the Lease's name>). */}}
{{- define "tekfed-member-agent.rules.leaderElection" -}}
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

{{/* The agent's Role on the Secret of its hub kubeconfig: (dict "secret" <the Secret's name>). */}}
{{- define "tekfed-member-agent.rules.hubKubeconfig" -}}
# The Secret holding the agent's hub kubeconfig: the agent writes its
# renewed hub token into it (read, then patched with the version read), so
# the mounted file and a restarted agent have it. No other Secret.
- apiGroups: [""]
  resources: [secrets]
  resourceNames: [{{ .secret | quote }}]
  verbs: [get, patch]
{{- end }}
