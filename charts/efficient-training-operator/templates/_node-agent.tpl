{{/*
Names, labels and RBAC of the node agent (`etj node-agent`, docs/node-agent.md), the DaemonSet of node-agent.yaml.

Its pods carry another app.kubernetes.io/name than the operator's, so that none of the operator's selectors (its
Deployment, metrics Service, ServiceMonitor, NetworkPolicy) ever selects them.
*/}}
{{- define "etj.nodeAgent.fullname" -}}
{{- printf "%s-node-agent" (include "etj.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}

{{- define "etj.nodeAgent.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-node-agent" (include "etj.name" . | trunc 52 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "etj.nodeAgent.labels" -}}
helm.sh/chart: {{ include "etj.chart" . }}
{{ include "etj.nodeAgent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: node-agent
app.kubernetes.io/part-of: efficient-training-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "etj.nodeAgent.serviceAccountName" -}}
{{- if .Values.nodeAgent.serviceAccount.create }}
{{- default (include "etj.nodeAgent.fullname" .) .Values.nodeAgent.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.nodeAgent.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The agent's image: the operator's (`etj node-agent` is a command of the operator image) unless nodeAgent.image
names another. A digest wins over a tag; the operator's digest and tag apply only to the operator's repository.
*/}}
{{- define "etj.nodeAgent.image" -}}
{{- $own := .Values.nodeAgent.image }}
{{- if $own.repository }}
{{- if $own.digest }}
{{- printf "%s@%s" $own.repository $own.digest }}
{{- else }}
{{- printf "%s:%s" $own.repository (default .Chart.AppVersion $own.tag) }}
{{- end }}
{{- else if $own.digest }}
{{- printf "%s@%s" .Values.image.repository $own.digest }}
{{- else if $own.tag }}
{{- printf "%s:%s" .Values.image.repository $own.tag }}
{{- else }}
{{- include "etj.image" . }}
{{- end }}
{{- end }}

{{/*
RBAC of the node agent: exactly its two reads (operator/etj_operator/nodeagent/kube.py), and it writes nothing.
  - pods: list, across namespaces, always with the field selector spec.nodeName=<its node> (the API server serves
    that list from its watch cache). RBAC cannot restrict a list by field selector, so the grant is list on pods;
    no get, no watch.
  - efficienttrainingjobs: get, by namespace and name, for the job a pod holding a GPU belongs to (its UID is
    checked against the pod's ownerReference). Cluster-wide even with watchNamespaces: one agent per node serves
    every release's jobs (enable it in one release only, docs/deploy.md).
tests/chart/test_node_agent.py runs the agent's reader against the API emulator with these rules enforced and
checks both directions.
*/}}
{{- define "etj.nodeAgent.rbac.rules" -}}
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: ["efficienttraining.dev"]
  resources: ["efficienttrainingjobs"]
  verbs: ["get"]
{{- end }}
