{{/* Names and labels shared by every template. */}}
{{- define "packgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "packgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "packgate.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "packgate.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "packgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "packgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "packgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "packgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "packgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "packgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "packgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "packgate.sidecarImage" -}}
{{- $repo := default .Values.image.repository .Values.sidecar.image.repository -}}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.sidecar.image.tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{- define "packgate.tlsSecretName" -}}
{{- printf "%s-tls" (include "packgate.fullname" .) -}}
{{- end -}}

{{- define "packgate.serviceHost" -}}
{{- printf "%s.%s.svc" (include "packgate.fullname" .) .Release.Namespace -}}
{{- end -}}

{{- define "packgate.signingSecretName" -}}
{{- default (printf "%s-signing" (include "packgate.fullname" .)) .Values.signing.existingSecret -}}
{{- end -}}

{{- define "packgate.collectorName" -}}
{{- printf "%s-audit-collector" (include "packgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "packgate.collectorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "packgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: audit-collector
{{- end -}}

{{- define "packgate.collectorLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "packgate.collectorSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "packgate.collectorHost" -}}
{{- printf "%s.%s.svc" (include "packgate.collectorName" .) .Release.Namespace -}}
{{- end -}}
