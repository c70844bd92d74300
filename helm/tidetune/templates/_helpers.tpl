{{/* Names, labels and the few computed values every template shares. */}}

{{- define "tidetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tidetune.fullname" -}}
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

{{- define "tidetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tidetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "tidetune.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tidetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tidetune
{{- end -}}

{{- define "tidetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tidetune.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tidetune.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The launched kind's API group and plural (config.launcher), for RBAC. */}}
{{- define "tidetune.launcherGroup" -}}
{{- if eq .Values.config.launcher "TrainJob" -}}trainer.kubeflow.org{{- else -}}kubeflow.org{{- end -}}
{{- end -}}
{{- define "tidetune.launcherPlural" -}}
{{- if eq .Values.config.launcher "TrainJob" -}}trainjobs{{- else -}}pytorchjobs{{- end -}}
{{- end -}}

{{/* The operator's config file: values.config plus the watched namespaces. */}}
{{- define "tidetune.config" -}}
{{- $config := omit .Values.config "defaultOutputUri" -}}
{{- if .Values.config.defaultOutputUri -}}
{{- $_ := set $config "defaultOutputUri" .Values.config.defaultOutputUri -}}
{{- end -}}
{{- $_ := set $config "namespaces" .Values.namespaces -}}
{{- toYaml $config -}}
{{- end -}}

{{/*
RBAC rules on namespaced resources: what the operator does inside a job's namespace.
Each rule is justified in README.md ("RBAC") and checked against what the operator really
used in the lab's end-to-end run (tests/e2e/test_zz_rbac.py).
*/}}
{{- define "tidetune.namespacedRules" -}}
# FineTuneJobs: kopf lists and watches them; the operator writes only their status.
- apiGroups: ["tidetune.io"]
  resources: ["finetunejobs"]
  verbs: ["list", "watch"]
- apiGroups: ["tidetune.io"]
  resources: ["finetunejobs/status"]
  verbs: ["patch"]
# What it creates for a job carries an ownerReference with blockOwnerDeletion: true; the API
# server's OwnerReferencesPermissionEnforcement admission plugin allows that only to who may
# update the owner's finalizers. No request goes there.
- apiGroups: ["tidetune.io"]
  resources: ["finetunejobs/finalizers"]
  verbs: ["update"]
# The launched training job: watched by kopf; created (or read back after a restart),
# suspended/resumed by patch, deleted when superseded.
- apiGroups: [{{ include "tidetune.launcherGroup" . | quote }}]
  resources: [{{ include "tidetune.launcherPlural" . | quote }}]
  verbs: ["create", "delete", "get", "list", "patch", "watch"]
# The spec ConfigMap it creates per job, and reward-function ConfigMaps it reads by name.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "get"]
# The launched job's pods, listed by label while they do not run (why: Unschedulable,
# ErrImagePull, …, shown in the PodsReady condition) and once it failed (exit codes, OOMKilled,
# termination messages). Never watched, never written.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# A failed pod's last log lines, kept in the job's run location before the attempt is deleted.
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# The job's storage Secret, read by name only: never list or watch.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# The timeline as Events (ours and kopf's).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{/* RBAC rules on cluster-scoped resources (needed in every mode). */}}
{{- define "tidetune.clusterRules" -}}
# IdlePools are cluster-scoped: watched, and their status written.
- apiGroups: ["tidetune.io"]
  resources: ["idlepools"]
  verbs: ["list", "watch"]
- apiGroups: ["tidetune.io"]
  resources: ["idlepools/status"]
  verbs: ["patch"]
# A job's Kueue WorkloadPriorityClass (cluster-scoped) must exist before it is launched.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloadpriorityclasses"]
  verbs: ["get"]
# kopf watches CRDs to notice served resources appear and disappear.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if eq .Values.config.launcher "TrainJob" }}
# The ClusterTrainingRuntime its TrainJobs reference, which the operator keeps: server-side
# applied at start-up (created the first time) with the operator's grace period and image.
# That one by name, nothing else.
- apiGroups: ["trainer.kubeflow.org"]
  resources: ["clustertrainingruntimes"]
  resourceNames: ["tidetune"]
  verbs: ["create", "patch"]
{{- end }}
{{- if .Values.namespaces }}
# With explicit namespaces kopf lists and watches namespaces to notice them come and go.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end -}}
