{{- define "archiva.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "archiva.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "archiva.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
archiva.io/region: {{ .Values.region }}
{{- end -}}

{{- define "archiva.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "archiva.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "archiva.fullname" .)) -}}
{{- end -}}

{{/* The environment every role shares: settings, and each secret as NAME_FILE. */}}
{{- define "archiva.env" -}}
- name: ARCHIVA_REGION
  value: {{ .Values.region | quote }}
- name: SITE_ROOT
  value: {{ .Values.siteRoot | quote }}
- name: ALLOWED_HOSTS
  value: {{ .Values.allowedHosts | quote }}
- name: ARCHIVA_DATA_DIR
  value: /data
{{- range $name, $value := .Values.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- range $name, $key := .Values.secrets.keys }}
- name: {{ $name }}_FILE
  value: /run/secrets/archiva/{{ $key }}
{{- end }}
{{- with .Values.secrets.s3CredentialsKey }}
- name: AWS_SHARED_CREDENTIALS_FILE
  value: /run/secrets/archiva/{{ . }}
{{- end }}
{{- end -}}

{{- define "archiva.volumeMounts" -}}
- name: secrets
  mountPath: /run/secrets/archiva
  readOnly: true
- name: data
  mountPath: /data
{{- end -}}

{{- define "archiva.volumes" -}}
- name: secrets
  secret:
    secretName: {{ include "archiva.secretName" . }}
    defaultMode: 0440
- name: data
  emptyDir: {}
{{- end -}}

{{- define "archiva.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{- define "archiva.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  capabilities:
    drop: ["ALL"]
{{- end -}}
