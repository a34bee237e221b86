{{/* Generated from src/api/chart.rs; do not edit. */}}
{{- define "ztunnel-rollout.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- end }}

{{- define "ztunnel-rollout.selectorLabels" -}}
app.kubernetes.io/name: ztunnel-rollout
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ztunnel-rollout.labels" -}}
{{ include "ztunnel-rollout.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "ztunnel-rollout.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end }}

{{- define "ztunnel-rollout.deniedNamespaces" -}}
[{{- range $i, $n := concat .Values.sidecarMigrations.deniedNamespaces (list .Values.ztunnel.namespace) | uniq }}{{ if $i }}, {{ end }}'{{ $n }}'{{- end }}]
{{- end }}

{{- define "ztunnel-rollout.ports" -}}
{{- range . }}
- protocol: TCP
  port: {{ . }}
{{- end }}
{{- end }}

{{- define "ztunnel-rollout.apiServerPeers" -}}
{{- range .Values.networkPolicy.apiServer.cidrs }}
- ipBlock:
    cidr: {{ . }}
{{- end }}
{{- end }}
