{{/* Names, labels and the image reference shared by every template. */}}

{{- define "localai-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "localai-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "localai-operator.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "localai-operator.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "localai-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "localai-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Selector labels: immutable on the Deployment, so only name, instance and component. */}}
{{- define "localai-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "localai-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "localai-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "localai-operator.selectorLabels" . }}
app.kubernetes.io/part-of: localai-operator
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The image reference; the operator also puts it into the routers it creates. */}}
{{- define "localai-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The fetch-models init container's image: pinned apart from the operator's tag (downloader.image.tag), so that
upgrading the operator does not restart every LocalAI pod. The repository defaults to the operator's.
*/}}
{{- define "localai-operator.downloaderImage" -}}
{{- $repository := default .Values.image.repository .Values.downloader.image.repository -}}
{{- if .Values.downloader.image.digest -}}
{{- printf "%s@%s" $repository .Values.downloader.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository .Values.downloader.image.tag -}}
{{- end -}}
{{- end -}}

{{/*
Rules for the namespaced resources the operator reads and writes: a ClusterRole when it watches every
namespace, a Role in each watched namespace otherwise.
*/}}
{{- define "localai-operator.namespacedRules" -}}
- apiGroups: [llm.localai-operator.io]
  resources: [llmmodels, inferencepools, fallbackroutes]
  verbs: [get, list, watch, patch, update]
- apiGroups: [llm.localai-operator.io]
  resources: [llmmodels/status, inferencepools/status, fallbackroutes/status]
  verbs: [get, patch, update]
- apiGroups: [""]
  resources: [configmaps, services, persistentvolumeclaims]
  verbs: [get, list, watch, create, update, patch, delete]
# Only the Secrets the resources name, by name: their resourceVersion and key names (the pods read the keys
# themselves). No list or watch: the operator reads no other Secret of the namespace.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, update, patch, delete]
# Read only: the autoscaler stands aside for a user's HPA (or KEDA's) that targets a pool.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch]
# Read only: the router Services' slices say where the router pods are, whose /metrics the autoscaler reads
# once a pod's ReplicaSet shows that the route's router Deployment controls it.
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [get]
# One NetworkPolicy per pool, admitting only the routers to LocalAI, and one per route, admitting its clients.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, update, patch, delete]
# A pool route's router reads the pool's EndpointSlices with a ServiceAccount and a namespaced read-only Role
# of its own; the operator holds what that Role grants (endpointslices get/list/watch above), as RBAC's
# escalation check requires.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, update, patch, delete]
{{- end -}}

{{/* Operator arguments after `run`: the namespaces to watch, ports, leader election, verbosity. */}}
{{- define "localai-operator.args" -}}
- run
{{- if .Values.watchNamespaces }}
{{- range .Values.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
{{- else }}
- --all-namespaces
{{- end }}
- --metrics-port={{ .Values.metrics.port }}
- --health-port={{ .Values.health.port }}
{{- if .Values.leaderElection.enabled }}
- --leader-election
{{- else }}
- --no-leader-election
{{- end }}
{{- if eq .Values.logLevel "debug" }}
- --verbose
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}
