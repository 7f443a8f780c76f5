{{- define "federator.fullname" -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "federator.headless" -}}
{{ include "federator.fullname" . }}-headless
{{- end -}}

{{- define "federator.labels" -}}
app.kubernetes.io/name: federator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "federator.selector" -}}
app.kubernetes.io/name: federator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "federator.serviceAccountName" -}}
{{- default (include "federator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The host of HOST:PORT (an IPv6 address without its brackets). */}}
{{- define "federator.hostOf" -}}
{{- regexReplaceAll ":[0-9]+$" . "" | trimPrefix "[" | trimSuffix "]" -}}
{{- end -}}

{{/* Refuses externalAccess without one address per replica. */}}
{{- define "federator.checkExternalAccess" -}}
{{- if .Values.externalAccess.enabled -}}
{{- if ne (len .Values.externalAccess.advertise) (int .Values.replicas) -}}
{{- fail (printf "externalAccess.advertise: lists %d addresses for %d replicas; give one HOST:PORT per replica, replica 1 first" (len .Values.externalAccess.advertise) (int .Values.replicas)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "federator.certSecret" -}}
{{- if .Values.tls.certManager.enabled -}}
{{ include "federator.fullname" . }}-replica
{{- else -}}
{{ .Values.tls.existingSecret }}
{{- end -}}
{{- end -}}
