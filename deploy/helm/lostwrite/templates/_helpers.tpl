{{/*
The objects' name: fullnameOverride, else the release name when it already says lostwrite
(`helm install lostwrite`), else "<release>-lostwrite".
*/}}
{{- define "lostwrite.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
What the DaemonSet selects its pods by, and the Service, the monitors and the NetworkPolicy
select them by: the name alone, as in deploy/kubernetes (a DaemonSet's selector cannot change
after it is created). One release per cluster: each node needs one agent.
*/}}
{{- define "lostwrite.selectorLabels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{/*
Every object's labels: the selector's, and Helm's own, which deploy/kubernetes does not carry.
*/}}
{{- define "lostwrite.labels" -}}
{{ include "lostwrite.selectorLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}
