{{/* The chart's name, or nameOverride. */}}
{{- define "tekfed-member-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: the release name when it already holds the chart
name (helm install tekfed-member-agent …), else <release>-<chart>; or fullnameOverride.
*/}}
{{- define "tekfed-member-agent.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tekfed-member-agent.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "tekfed-member-agent.labels" -}}
helm.sh/chart: {{ include "tekfed-member-agent.chart" . }}
{{ include "tekfed-member-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: member-agent
app.kubernetes.io/part-of: tekfed
{{- end }}

{{/* Labels that select the hub's pods. */}}
{{- define "tekfed-member-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tekfed-member-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tekfed-member-agent.serviceAccountName" -}}
{{- default (include "tekfed-member-agent.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "tekfed-member-agent.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The MemberCluster name, required and a DNS-1123 label. */}}
{{- define "tekfed-member-agent.clusterName" -}}
{{- $name := required "clusterName is required: the name of this cluster's MemberCluster on the hub (--set clusterName=member-1)" .Values.clusterName }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$" $name) }}
{{- fail (printf "clusterName %q is not a valid MemberCluster name: lowercase letters, digits and '-', at most 40 characters" $name) }}
{{- end }}
{{- $name }}
{{- end }}

{{/* Refuse settings that would run two active agents. */}}
{{- define "tekfed-member-agent.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicas > 1 needs leaderElection.enabled=true: without it every replica would act for the cluster" }}
{{- end }}
{{- if and .Values.hubKubeconfig.create (not .Values.hubKubeconfig.value) }}
{{- fail "hubKubeconfig.create=true needs hubKubeconfig.value (--set-file hubKubeconfig.value=agent-hub.yaml)" }}
{{- end }}
{{- end }}

{{/* The leader-election Lease's name. */}}
{{- define "tekfed-member-agent.leaseName" -}}
{{- default (printf "tekfed-agent-%s" (include "tekfed-member-agent.clusterName" .)) .Values.leaderElection.leaseName }}
{{- end }}

{{/* The guard's Pod Security level, one of Pod Security's three. */}}
{{- define "tekfed-member-agent.guardLevel" -}}
{{- $level := .Values.guard.podSecurity }}
{{- if not (has $level (list "restricted" "baseline" "privileged")) }}
{{- fail (printf "guard.podSecurity %q is not a Pod Security level: restricted, baseline or privileged" $level) }}
{{- end }}
{{- $level }}
{{- end }}

{{/* A CEL list literal of the names given (the guard's terms). */}}
{{- define "tekfed-member-agent.celList" -}}
[{{- range $i, $name := . }}{{ if $i }}, {{ end }}
{{- if not (regexMatch "^[a-z0-9*/.-]+$" $name) }}{{ fail (printf "guard: %q is not a namespace or ServiceAccount name (lowercase letters, digits, '-', '.', '/', '*')" $name) }}{{ end -}}
'{{ $name }}'{{- end }}]
{{- end }}
