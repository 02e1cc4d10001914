{{/*
Name prefix of every object: the release name, with the chart name appended
unless the release name already contains it. Kubernetes names are capped at
63 characters for labels, so it is truncated there.
*/}}
{{- define "modelguard.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "modelguard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "modelguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
Selector labels of the operator pods. They never change between releases,
because a Deployment's selector is immutable.
*/}}
{{- define "modelguard.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: manager
{{- end -}}

{{- define "modelguard.serviceAccountName" -}}
{{ include "modelguard.fullname" . }}-controller-manager
{{- end -}}

{{/*
The key-release Service, the serving certificate's Secret and the CA bundle's
ConfigMap, all in the release namespace. The manager gets the names as flags
and its namespace Role names the Secret and the ConfigMap.
*/}}
{{- define "modelguard.keyReleaseServiceName" -}}
{{ include "modelguard.fullname" . | trunc 51 | trimSuffix "-" }}-key-release
{{- end -}}

{{- define "modelguard.servingCertSecretName" -}}
{{ include "modelguard.fullname" . }}-serving-cert
{{- end -}}

{{- define "modelguard.caConfigMapName" -}}
{{ include "modelguard.fullname" . }}-ca
{{- end -}}

{{/*
With certManager.enabled, cert-manager issues the serving certificate: a
self-signed Issuer signs a CA Certificate, whose Secret backs a CA Issuer,
which signs the serving Certificate into the serving-cert Secret. The
Certificate is named like its Secret.
*/}}
{{- define "modelguard.selfSignedIssuerName" -}}
{{ include "modelguard.fullname" . }}-selfsigned
{{- end -}}

{{- define "modelguard.rootCAName" -}}
{{ include "modelguard.fullname" . }}-root-ca
{{- end -}}

{{- define "modelguard.caIssuerName" -}}
{{ include "modelguard.fullname" . }}-ca-issuer
{{- end -}}

{{/*
The key-release Service's names, as the manager derives them from
--key-release-service and its namespace; the serving certificate names
them, then the admission guard's (modelguard.webhookDNSNames).
*/}}
{{- define "modelguard.keyReleaseDNSNames" -}}
- {{ include "modelguard.keyReleaseServiceName" . }}.{{ .Release.Namespace }}.svc
- {{ include "modelguard.keyReleaseServiceName" . }}.{{ .Release.Namespace }}.svc.cluster.local
{{- end -}}

{{/*
The admission guard: its ValidatingWebhookConfiguration (cluster-scoped,
named after the release) and the Service through which the API server calls
it, on the manager's key-release port. The manager gets both names as flags,
keeps the configuration's caBundle, and has its serving certificate issued
for the Service too.
*/}}
{{- define "modelguard.webhookServiceName" -}}
{{ include "modelguard.fullname" . | trunc 55 | trimSuffix "-" }}-webhook
{{- end -}}

{{- define "modelguard.webhookConfigurationName" -}}
{{ include "modelguard.fullname" . }}-admission-guard
{{- end -}}

{{- define "modelguard.webhookDNSNames" -}}
- {{ include "modelguard.webhookServiceName" . }}.{{ .Release.Namespace }}.svc
- {{ include "modelguard.webhookServiceName" . }}.{{ .Release.Namespace }}.svc.cluster.local
{{- end -}}

{{- define "modelguard.image" -}}
{{- $repo := .Values.image.repository -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "modelguard.unsealImage" -}}
{{- default (include "modelguard.image" .) .Values.unsealImage -}}
{{- end -}}

{{/*
The manager's rules, copied from config/rbac/role.yaml (generated from the
controllers' +kubebuilder:rbac markers) by `make helm-sync`, so that the chart
grants exactly what the kustomize install grants.
*/}}
{{- define "modelguard.managerRules" -}}
{{- $role := .Files.Get "files/manager-role.yaml" | fromYaml -}}
{{- if not $role.rules -}}
{{- fail "files/manager-role.yaml has no rules: run `make helm-sync`" -}}
{{- end -}}
{{- toYaml $role.rules -}}
{{- end -}}

{{/*
The cluster-scoped part of the manager's rules, for the ClusterRole that
goes with watchNamespaces: the same verbs on the resources listed here,
nothing namespaced. A new cluster-scoped resource in config/rbac/role.yaml
must be added to the list.
*/}}
{{- define "modelguard.clusterScopedManagerRules" -}}
{{- $clusterScoped := list "namespaces" "modelkeys" "modelkeys/status" "tokenreviews" -}}
{{- $role := .Files.Get "files/manager-role.yaml" | fromYaml -}}
{{- $rules := list -}}
{{- range $role.rules -}}
{{- $resources := list -}}
{{- range .resources -}}
{{- if has . $clusterScoped -}}
{{- $resources = append $resources . -}}
{{- end -}}
{{- end -}}
{{- if $resources -}}
{{- $rules = append $rules (dict "apiGroups" .apiGroups "resources" $resources "verbs" .verbs) -}}
{{- end -}}
{{- end -}}
{{- if not $rules -}}
{{- fail "files/manager-role.yaml grants nothing cluster-scoped: run `make helm-sync`" -}}
{{- end -}}
{{- toYaml $rules -}}
{{- end -}}
