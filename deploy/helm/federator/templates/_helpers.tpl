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

{{- define "federator.certSecret" -}}
{{- if .Values.tls.certManager.enabled -}}
{{ include "federator.fullname" . }}-replica
{{- else -}}
{{ .Values.tls.existingSecret }}
{{- end -}}
{{- end -}}
