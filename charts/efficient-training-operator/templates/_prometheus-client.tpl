{{/*
The operator's Prometheus client (values telemetry.prometheus): its ETJ_PROMETHEUS_* variables, and the sources
of the projected volume mounted at /etc/etj/prometheus that holds its credentials. Every variable is always
set (empty when unused): the chart sets exactly the variables the operator reads.
*/}}

{{- define "etj.prometheusClientCheck" -}}
{{- $p := .Values.telemetry.prometheus -}}
{{- if and $p.bearerToken.secretName $p.bearerToken.serviceAccountToken -}}
{{- fail "telemetry.prometheus.bearerToken: set secretName or serviceAccountToken, not both" -}}
{{- end -}}
{{- if and (or $p.bearerToken.secretName $p.bearerToken.serviceAccountToken) (or $p.basicAuth.username $p.basicAuth.passwordSecretName) -}}
{{- fail "telemetry.prometheus: a bearer token or basicAuth, not both" -}}
{{- end -}}
{{- if ne (not $p.basicAuth.username) (not $p.basicAuth.passwordSecretName) -}}
{{- fail "telemetry.prometheus.basicAuth needs both username and passwordSecretName" -}}
{{- end -}}
{{- if and $p.ca.configMapName $p.ca.secretName -}}
{{- fail "telemetry.prometheus.ca: set configMapName or secretName, not both" -}}
{{- end -}}
{{- end -}}

{{- define "etj.prometheusClientEnv" -}}
{{- include "etj.prometheusClientCheck" . -}}
{{- $p := .Values.telemetry.prometheus -}}
{{- $dir := "/etc/etj/prometheus" -}}
- name: ETJ_PROMETHEUS_BEARER_TOKEN_FILE
  value: {{ ternary (printf "%s/token" $dir) "" (or (not (empty $p.bearerToken.secretName)) $p.bearerToken.serviceAccountToken) | quote }}
- name: ETJ_PROMETHEUS_USERNAME
  value: {{ $p.basicAuth.username | quote }}
- name: ETJ_PROMETHEUS_PASSWORD_FILE
  value: {{ ternary (printf "%s/password" $dir) "" (not (empty $p.basicAuth.passwordSecretName)) | quote }}
- name: ETJ_PROMETHEUS_CA_FILE
  value: {{ ternary (printf "%s/ca.crt" $dir) "" (or (not (empty $p.ca.configMapName)) (not (empty $p.ca.secretName))) | quote }}
- name: ETJ_PROMETHEUS_CERT_FILE
  value: {{ ternary (printf "%s/tls.crt" $dir) "" (not (empty $p.clientCert.secretName)) | quote }}
- name: ETJ_PROMETHEUS_KEY_FILE
  value: {{ ternary (printf "%s/tls.key" $dir) "" (not (empty $p.clientCert.secretName)) | quote }}
- name: ETJ_PROMETHEUS_HEADERS
  value: {{ $p.headers | toJson | quote }}
- name: ETJ_PROMETHEUS_TLS_VERIFY
  value: {{ $p.tlsVerify | quote }}
- name: ETJ_PROMETHEUS_ALLOWED_URLS
  value: {{ join "," $p.allowedUrls | quote }}
- name: ETJ_PROMETHEUS_INTENSITY_QUERIES
  value: {{ $p.intensityQueries | toJson | quote }}
- name: ETJ_PROMETHEUS_ALLOW_ANY_INTENSITY_QUERY
  value: {{ $p.allowAnyIntensityQuery | quote }}
{{- end -}}

{{- define "etj.prometheusClientSources" -}}
{{- $p := .Values.telemetry.prometheus -}}
{{- with $p.bearerToken.secretName }}
- secret:
    name: {{ . | quote }}
    items:
      - key: {{ $p.bearerToken.key | quote }}
        path: token
{{- end }}
{{- if $p.bearerToken.serviceAccountToken }}
- serviceAccountToken:
    path: token
    expirationSeconds: {{ int $p.bearerToken.expirationSeconds }}
    {{- with $p.bearerToken.audience }}
    audience: {{ . | quote }}
    {{- end }}
{{- end }}
{{- with $p.basicAuth.passwordSecretName }}
- secret:
    name: {{ . | quote }}
    items:
      - key: {{ $p.basicAuth.passwordKey | quote }}
        path: password
{{- end }}
{{- with $p.ca.configMapName }}
- configMap:
    name: {{ . | quote }}
    items:
      - key: {{ $p.ca.key | quote }}
        path: ca.crt
{{- end }}
{{- with $p.ca.secretName }}
- secret:
    name: {{ . | quote }}
    items:
      - key: {{ $p.ca.key | quote }}
        path: ca.crt
{{- end }}
{{- with $p.clientCert.secretName }}
- secret:
    name: {{ . | quote }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end -}}
