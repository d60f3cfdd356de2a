{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "dsm.name" -}}
{{- default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the operator's objects: <release>-dsm-operator unless the release is already called that. */}}
{{- define "dsm.fullname" -}}
{{- if contains "dsm-operator" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-dsm-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dsm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dsm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dsm.selectorLabels" -}}
app.kubernetes.io/name: dsm-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dsm.labels" -}}
{{ include "dsm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "dsm.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
