{{/*
Names and labels shared by every template.
*/}}
{{- define "etj.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "etj.fullname" -}}
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

{{- define "etj.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "etj.selectorLabels" -}}
app.kubernetes.io/name: {{ include "etj.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "etj.labels" -}}
helm.sh/chart: {{ include "etj.chart" . }}
{{ include "etj.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: efficient-training-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "etj.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "etj.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "etj.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
RBAC: the rules the operator needs, and nothing else (tests/chart/test_rbac.py runs the real operator through a
job's lifecycle and checks both directions).

Namespaced rules: what the operator does inside the namespaces it watches.
  - efficienttrainingjobs: kopf lists and watches them and patches them (finalizer, progress annotations); the
    operator deletes finished jobs (ttlSecondsAfterFinished). get is not used by the operator itself: it is held
    so that the operator may create each job's Role granting get/watch (RBAC forbids granting what one lacks).
  - efficienttrainingjobs/status: the operator patches status (it alone: the per-job Role grants nothing on it).
  - efficienttrainingjobreports: the operator creates each job's report, lists and watches them (the report
    informer); get reads a report whose create found the name taken (409, as for the children below) and is held
    for the per-job Role (the pods read their report); delete for the admission plugin below (the report carries
    an ownerReference) and for an orphaned report, as below. The operator never patches a report.
  - efficienttrainingjobreports/status: patch is held for the per-job Role only (the pods write their report's
    status); the operator reads reports and never writes them.
  - efficienttrainingjobs/finalizers: update, because every child carries a blockOwnerDeletion ownerReference
    to its job; with the OwnerReferencesPermissionEnforcement admission plugin (on in OpenShift) setting one
    needs update on the owner's finalizers, and every child create was refused (403) without it.
  - pods: kopf lists and watches worker pods; the operator creates them and deletes them (gang restart, suspend,
    cleanup).
  - services, serviceaccounts, roles, rolebindings: created once per job (owned by the job; garbage-collected).
    get: a create that finds the name taken (409) reads the object to see whose it is (another job's of the same
    name, its garbage collection pending, is never adopted). delete is held for the same admission plugin
    (setting an ownerReference on an object needs delete on it), and deletes an orphaned child of an earlier
    job of the same name once no pod uses it.
  - events: kopf posts Kubernetes events on jobs.
*/}}
{{- define "etj.rbac.namespacedRules" -}}
- apiGroups: ["efficienttraining.dev"]
  resources: ["efficienttrainingjobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["efficienttraining.dev"]
  resources: ["efficienttrainingjobs/status"]
  verbs: ["patch"]
- apiGroups: ["efficienttraining.dev"]
  resources: ["efficienttrainingjobreports"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: ["efficienttraining.dev"]
  resources: ["efficienttrainingjobreports/status"]
  verbs: ["patch"]
- apiGroups: ["efficienttraining.dev"]
  resources: ["efficienttrainingjobs/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["services", "serviceaccounts"]
  verbs: ["get", "create", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
Kueue (kueue.enabled, ETJ_KUEUE; docs/kueue.md): the operator is Kueue's job integration for its jobs.

Namespaced rules.
  - workloads: the Workload informer lists and watches them; the operator creates each queued job's Workload (owned
    by the job) and deletes it when it is outdated, the job is suspended or names no queue any more (delete is also
    what OwnerReferencesPermissionEnforcement checks when the Workload's ownerReference is set).
  - workloads/status: Finished when the job ends, PodsReady, and the admission cleared after an eviction.
*/}}
{{- define "etj.rbac.kueueNamespacedRules" -}}
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list", "watch", "create", "delete"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads/status"]
  verbs: ["patch"]
{{- end }}

{{/*
Kueue, cluster-scoped rules.
  - resourceflavors: the flavor informer (an admission's flavors give the pods' node selectors and tolerations).
  - workloadpriorityclasses, priorityclasses: read once per Workload, for the priority of the class the job names
    (label kueue.x-k8s.io/priority-class, or the template's priorityClassName).
*/}}
{{- define "etj.rbac.kueueClusterRules" -}}
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["resourceflavors"]
  verbs: ["list", "watch"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloadpriorityclasses"]
  verbs: ["get"]
- apiGroups: ["scheduling.k8s.io"]
  resources: ["priorityclasses"]
  verbs: ["get"]
{{- end }}

{{/*
Cluster-scoped rules.
  - customresourcedefinitions: kopf lists and watches CRDs to find the resources it serves.
  - namespaces: kopf lists and watches namespaces when it watches named namespaces only.
  - nodes: the placement policy watches nodes' power-pressure annotation (efficienttraining.dev/power-pressure).
*/}}
{{- define "etj.rbac.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.watchNamespaces }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
{{- end }}
