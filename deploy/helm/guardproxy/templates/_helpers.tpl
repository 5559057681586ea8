{{/* Names and labels shared by every template. */}}

{{- define "guardproxy.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "guardproxy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: "proxy", "upstream", "flexguard", "reasoningshield". */}}
{{- define "guardproxy.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "guardproxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "guardproxy.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference: by digest when one is given. */}}
{{- define "guardproxy.image" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{/* A model server's base URLs as a TOML array: the chart's Service, or the external ones. */}}
{{- define "guardproxy.baseUrls" -}}
{{- $model := index .root.Values.models .name -}}
{{- if $model.enabled -}}
["http://{{ include "guardproxy.fullname" .root }}-{{ .name }}:8000/v1"]
{{- else -}}
{{- if not $model.externalBaseUrls -}}
{{- fail (printf "models.%s: enabled is false, so externalBaseUrls must name the endpoint to use" .name) -}}
{{- end -}}
[{{- range $i, $url := $model.externalBaseUrls }}{{ if $i }}, {{ end }}{{ $url | quote }}{{ end -}}]
{{- end -}}
{{- end -}}

{{/* Does the Secret hold the upstream's key? */}}
{{- define "guardproxy.hasUpstreamKey" -}}
{{- if .Values.secrets.existingSecret -}}
{{- if .Values.secrets.existingSecretHasUpstreamKey }}yes{{ end -}}
{{- else if .Values.secrets.upstreamApiKey }}yes{{ end -}}
{{- end -}}

{{- define "guardproxy.hasProxyKeys" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.proxyApiKeys }}yes{{ end -}}
{{- end -}}

{{- define "guardproxy.secretName" -}}
{{- default (printf "%s-keys" (include "guardproxy.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The pod and container security settings every container of this chart runs with. */}}
{{- define "guardproxy.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
