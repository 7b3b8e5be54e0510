{{/*
Names are fixed, not prefixed with the release name: the Mesh is a cluster-wide singleton
(`default`) and the data plane finds the operator at ambit-operator.<namespace>.svc:15012.
*/}}
{{- define "ambit.operatorName" -}}ambit-operator{{- end }}

{{- define "ambit.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/part-of: ambit
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{- define "ambit.operatorSelectorLabels" -}}
app.kubernetes.io/name: ambit-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ambit.operatorLabels" -}}
{{ include "ambit.labels" . }}
{{ include "ambit.operatorSelectorLabels" . }}
app.kubernetes.io/component: control-plane
{{- end }}

{{/*
An image reference: "ambit.image" (list $ .Values.ztunnel.image).
registry and tag fall back to global.imageRegistry / global.imageTag / the chart's appVersion.
*/}}
{{- define "ambit.image" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- $registry := $img.registry | default $root.Values.global.imageRegistry -}}
{{- $tag := $img.tag | default $root.Values.global.imageTag | default $root.Chart.AppVersion -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $registry) $img.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" $img.repository $tag -}}
{{- end -}}
{{- end }}

{{- define "ambit.pullPolicy" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- $img.pullPolicy | default $root.Values.global.imagePullPolicy -}}
{{- end }}

{{/* A component's log level, defaulting to mesh.logLevel. */}}
{{- define "ambit.operatorLogLevel" -}}
{{- .Values.operator.logLevel | default .Values.mesh.logLevel -}}
{{- end }}
