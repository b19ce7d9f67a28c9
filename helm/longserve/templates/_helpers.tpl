{{- define "longserve.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "longserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "longserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "longserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "longserve.serverSelectorLabels" -}}
{{ include "longserve.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "longserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "longserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "longserve.apiKeySecret" -}}
{{- .Values.apiKey.existingSecret | default (printf "%s-api-key" (include "longserve.fullname" .)) -}}
{{- end -}}

{{- define "longserve.redisUrl" -}}
{{- printf "redis://%s-redis:6379" (include "longserve.fullname" .) -}}
{{- end -}}
