{{/* The chart's name, or nameOverride. */}}
{{- define "tekfed-hub.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: the release name when it already holds the chart
name (helm install tekfed-hub …), else <release>-<chart>; or fullnameOverride.
*/}}
{{- define "tekfed-hub.fullname" -}}
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

{{- define "tekfed-hub.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "tekfed-hub.labels" -}}
helm.sh/chart: {{ include "tekfed-hub.chart" . }}
{{ include "tekfed-hub.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: hub
app.kubernetes.io/part-of: tekfed
{{- end }}

{{/* Labels that select the hub's pods. */}}
{{- define "tekfed-hub.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tekfed-hub.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tekfed-hub.serviceAccountName" -}}
{{- default (include "tekfed-hub.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "tekfed-hub.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Refuse settings that would run two active hubs. */}}
{{- define "tekfed-hub.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicas > 1 needs leaderElection.enabled=true: without it every replica would schedule runs" }}
{{- end }}
{{- end }}
