{{/*
Names and labels shared by every template. Label keys follow the Kubernetes recommended
labels; the selector set is a stable subset so that an upgrade never changes a selector
(selectors are immutable on Deployments and StatefulSets).
*/}}

{{- define "mailfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mailfleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The operator workload's name (Deployment, or StatefulSet in HA mode). */}}
{{- define "mailfleet.operatorName" -}}
{{- printf "%s-operator" (include "mailfleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mailfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mailfleet.labels" -}}
helm.sh/chart: {{ include "mailfleet.chart" . }}
app.kubernetes.io/name: {{ include "mailfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mailfleet
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "mailfleet.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "mailfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "mailfleet.operatorLabels" -}}
{{ include "mailfleet.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "mailfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mailfleet.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference: a digest wins over a tag; the tag defaults to the chart's appVersion. */}}
{{- define "mailfleet.image" -}}
{{- $registry := .image.registry -}}
{{- $ref := ternary .image.repository (printf "%s/%s" $registry .image.repository) (empty $registry) -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $ref .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (default .appVersion .image.tag) -}}
{{- end -}}
{{- end }}

{{- define "mailfleet.operatorImage" -}}
{{- include "mailfleet.image" (dict "image" .Values.image "appVersion" .Chart.AppVersion) -}}
{{- end }}

{{- define "mailfleet.senderImage" -}}
{{- include "mailfleet.image" (dict "image" .Values.senderImage "appVersion" .Chart.AppVersion) -}}
{{- end }}

{{/* True when the operator serves every namespace (no explicit list given). */}}
{{- define "mailfleet.clusterWide" -}}
{{- if empty .Values.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
Namespaces that get namespaced RBAC (Roles) when the operator does not watch the whole
cluster: the watched namespaces, de-duplicated.
*/}}
{{- define "mailfleet.watchedNamespaces" -}}
{{- toJson (uniq .Values.watchNamespaces) }}
{{- end }}
