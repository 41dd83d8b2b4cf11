{{/* Names and labels shared by every template. */}}
{{- define "callwarden.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "callwarden.labels" -}}
app.kubernetes.io/name: callwarden
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* selectorLabels: pass (dict "root" $ "component" "operator") */}}
{{- define "callwarden.selectorLabels" -}}
app.kubernetes.io/name: callwarden
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "callwarden.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "callwarden.extauthzService" -}}
{{ include "callwarden.fullname" . }}-extauthz
{{- end -}}

{{/* The Secret holding the DPoP nonce key (created by the chart, or the user's own). */}}
{{- define "callwarden.dpopNonceSecret" -}}
{{ .Values.extauthz.dpop.nonceKey.existingSecret | default (printf "%s-dpop-nonce" (include "callwarden.extauthzService" .)) }}
{{- end -}}

{{/* host:port of the ext_authz gRPC Service, as Envoys in other namespaces reach it. */}}
{{- define "callwarden.extauthzAddress" -}}
{{ include "callwarden.extauthzService" . }}.{{ .Release.Namespace }}.svc.cluster.local:{{ .Values.extauthz.grpcPort }}
{{- end -}}
