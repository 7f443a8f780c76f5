{{- define "agent.fullname" -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "agent.labels" -}}
app.kubernetes.io/name: federator-agent
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "agent.selector" -}}
app.kubernetes.io/name: federator-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The agent's ServiceAccount. */}}
{{- define "agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "agent.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "true" when any part talks to the cluster's Kubernetes API. */}}
{{- define "agent.usesKubernetes" -}}
{{- if or .Values.kubernetes.exports .Values.kubernetes.serviceImports .Values.kubernetes.clusterTrustBundles -}}
true
{{- else -}}
false
{{- end -}}
{{- end -}}
