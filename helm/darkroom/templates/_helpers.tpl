{{/*
Names, labels and the pieces every Deployment shares. Every template includes these, so a
reader who knows one Deployment knows all six.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "darkroom.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: fullnameOverride, else the release name if it contains the
chart name, else "<release>-<chart>". Kept to 50 characters so "<fullname>-frontend" and
the other role suffixes still fit in 63.
*/}}
{{- define "darkroom.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "darkroom.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "darkroom.namespace" -}}
{{- .Release.Namespace }}
{{- end }}

{{/*
The role table, the same as the code's (services/darkroom/contract/roles.py; tests/deploy/
test_roles.py checks they agree). Per role: its fixed port; its health port (/healthz and
/readyz alone, with threads of their own, for the probes: no Service or NetworkPolicy names it,
kubelet probes are not subject to NetworkPolicy); its kind (public: reached from
outside the release; internal: called by other roles only; stateful: internal, one pod on its
own volume; background: calls others, called by none, serves health and metrics only); the
registry key it advertises its address under; the roles it calls besides the registry, which
every other role calls. Templates range over it: include "darkroom.roles" . | fromYamlArray
*/}}
{{- define "darkroom.roles" -}}
- {name: registry, port: 3000, healthPort: 3100, kind: internal, registryKey: "", calls: []}
- {name: database, port: 3001, healthPort: 3101, kind: stateful, registryKey: databaseAddress, calls: []}
- {name: storage, port: 3002, healthPort: 3102, kind: stateful, registryKey: storageAddress, calls: []}
- {name: master, port: 3003, healthPort: 3103, kind: public, registryKey: masterAddress, calls: [database, storage]}
- {name: worker, port: 9100, healthPort: 9101, kind: background, registryKey: "", calls: [database, storage]}
- {name: frontend, port: 8080, healthPort: 8180, kind: public, registryKey: frontendAddress, calls: [master]}
{{- end }}

{{/* One role's entry of the table, as YAML. Call with the role name; use with fromYaml. */}}
{{- define "darkroom.role" -}}
{{- $name := . }}
{{- $found := dict }}
{{- range include "darkroom.roles" . | fromYamlArray }}
{{- if eq .name $name }}
{{- $found = . }}
{{- end }}
{{- end }}
{{- if not $found }}
{{- fail (printf "unknown role %q" $name) }}
{{- end }}
{{- toYaml $found }}
{{- end }}

{{/* The fixed port of each role (the role table). Call with the role name. */}}
{{- define "darkroom.port" -}}
{{- (include "darkroom.role" . | fromYaml).port | int }}
{{- end }}

{{/* "<fullname>-<role>": the name of a role's Deployment, Service, ... Call with (dict "root" $ "role" ROLE). */}}
{{- define "darkroom.roleName" -}}
{{- printf "%s-%s" (include "darkroom.fullname" .root) .role }}
{{- end }}

{{/* The address other services use for a role: its Service and port, "darkroom-master:3003". */}}
{{- define "darkroom.address" -}}
{{- printf "%s:%s" (include "darkroom.roleName" .) (include "darkroom.port" .role) }}
{{- end }}

{{/* The selector labels of the whole release (no component). Call with the root context. */}}
{{- define "darkroom.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "darkroom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one component. Call with (dict "root" $ "role" ROLE). */}}
{{- define "darkroom.selectorLabels" -}}
{{ include "darkroom.releaseSelectorLabels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{/* The recommended labels. Call with (dict "root" $ "role" ROLE); ROLE may be a part name. */}}
{{- define "darkroom.labels" -}}
{{ include "darkroom.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: darkroom
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "darkroom.chart" .root }}
{{- end }}

{{/* The image of a role: ROLE.image if set, else <registry>/<repository>-<role>:<tag>. */}}
{{- define "darkroom.image" -}}
{{- $values := index .root.Values .role }}
{{- if $values.image }}
{{- $values.image }}
{{- else }}
{{- $image := .root.Values.image }}
{{- $name := printf "%s-%s:%s" $image.repository .role (default .root.Chart.AppVersion $image.tag) }}
{{- if $image.registry }}
{{- printf "%s/%s" (trimSuffix "/" $image.registry) $name }}
{{- else }}
{{- $name }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Secret with the internal token and API keys. */}}
{{- define "darkroom.authSecretName" -}}
{{- default (printf "%s-auth" (include "darkroom.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* The Secret with the webhook signing secrets. */}}
{{- define "darkroom.webhookSecretName" -}}
{{- default (printf "%s-webhooks" (include "darkroom.fullname" .)) .Values.webhooks.existingSecret }}
{{- end }}

{{/*
A chart-made Secret's value, base64 as in `data`: what the Secret already holds under that key
(read back with lookup, so upgrades keep it), else "new", encoded. `helm template` has no cluster
to look in and renders a new one each time. Call with (dict "root" $ "name" NAME "key" KEY "new" VALUE).
*/}}
{{- define "darkroom.keptSecretValue" -}}
{{- $existing := lookup "v1" "Secret" (include "darkroom.namespace" .root) .name }}
{{- if and $existing $existing.data (hasKey $existing.data .key) }}
{{- index $existing.data .key }}
{{- else }}
{{- .new | b64enc }}
{{- end }}
{{- end }}

{{- define "darkroom.registryConfigMapName" -}}
{{- printf "%s-registry" (include "darkroom.fullname" .) }}
{{- end }}

{{/* The service account of every pod but the registry's: it mounts no token. */}}
{{- define "darkroom.serviceAccountName" -}}
{{- include "darkroom.fullname" . }}
{{- end }}

{{/*
Whether a stateful role's state is shared by all its pods, so that it runs replicas with rolling
updates and a PodDisruptionBudget: the database's tasks in PostgreSQL, the storage's files on a
ReadWriteMany claim (an emptyDir is each pod's own). "true" or "". Call with (dict "root" $ "role" ROLE).
*/}}
{{- define "darkroom.sharedState" -}}
{{- $values := index .root.Values .role }}
{{- if eq .role "database" }}
{{- if eq $values.backend "postgresql" }}true{{ end }}
{{- else if eq .role "storage" }}
{{- if and $values.persistence.enabled (eq $values.persistence.accessMode "ReadWriteMany") }}true{{ end }}
{{- end }}
{{- end }}

{{/*
The PersistentVolumeClaim a stateful role keeps /data on, or "" for an emptyDir: none when
persistence is off, and none for the database on PostgreSQL (it keeps nothing of its own).
Call with (dict "root" $ "role" ROLE).
*/}}
{{- define "darkroom.dataClaim" -}}
{{- $values := index .root.Values .role }}
{{- $postgresql := and (eq .role "database") (eq $values.backend "postgresql") }}
{{- if and $values.persistence.enabled (not $postgresql) }}
{{- default (include "darkroom.roleName" .) $values.persistence.existingClaim }}
{{- end }}
{{- end }}

{{/* The CloudNativePG Cluster's name. Call with the root. */}}
{{- define "darkroom.cnpgClusterName" -}}
{{- printf "%s-postgresql" (include "darkroom.fullname" .) }}
{{- end }}

{{/*
DARKROOM_DATABASE_URL with backend postgresql: from database.postgresql.existingSecret, else from
the Secret CloudNativePG makes for its Cluster's application user ("<cluster>-app", key uri);
and DARKROOM_DATABASE_POOL_SIZE. With the chart's CloudNativePG Cluster, the pools of all database
pods, one more during a rolling update (maxSurge 1), must fit its max_connections less the 3
PostgreSQL keeps for superusers (superuser_reserved_connections): past it, a pod's connections are
refused at start or under load. Call with the root.
*/}}
{{- define "darkroom.databaseUrlEnv" -}}
{{- $postgresql := .Values.database.postgresql }}
{{- if not (or $postgresql.existingSecret .Values.postgresql.cnpg.enabled) }}
{{- fail "database.backend=postgresql needs the URL's Secret: set database.postgresql.existingSecret, or postgresql.cnpg.enabled=true for a CloudNativePG Cluster" }}
{{- end }}
{{- if and .Values.postgresql.cnpg.enabled (not $postgresql.existingSecret) }}
{{- $limit := int (.Values.postgresql.cnpg.parameters.max_connections | default "100") }}
{{- $pods := add (int .Values.database.replicas) 1 }}
{{- $wanted := mul $pods (int $postgresql.poolSize) }}
{{- if gt $wanted (sub $limit 3) }}
{{- fail (printf "database.postgresql.poolSize=%d on %d database pods (database.replicas, and one more while rolling) needs %d PostgreSQL connections; the CloudNativePG Cluster takes %d (postgresql.cnpg.parameters.max_connections, less 3 kept for superusers): lower the pool or raise max_connections" (int $postgresql.poolSize) $pods $wanted (sub $limit 3)) }}
{{- end }}
{{- end }}
- name: DARKROOM_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if $postgresql.existingSecret }}
      name: {{ $postgresql.existingSecret }}
      key: {{ $postgresql.key }}
      {{- else }}
      name: {{ include "darkroom.cnpgClusterName" . }}-app
      key: uri
      {{- end }}
- name: DARKROOM_DATABASE_POOL_SIZE
  value: {{ $postgresql.poolSize | quote }}
{{- end }}

{{/* Pod-level security context: the `restricted` Pod Security profile. Call with the root. */}}
{{- define "darkroom.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security context: the `restricted` profile and a read-only root. */}}
{{- define "darkroom.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The credentials every pod gets from the auth Secret. Call with the root. */}}
{{- define "darkroom.authEnv" -}}
- name: DARKROOM_INTERNAL_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "darkroom.authSecretName" . }}
      key: {{ .Values.auth.internalTokenKey }}
{{- if .Values.auth.apiKeys.enabled }}
- name: DARKROOM_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "darkroom.authSecretName" . }}
      key: {{ .Values.auth.apiKeys.secretKey }}
{{- end }}
{{- end }}

{{/*
The master's webhook settings (webhooks.enabled): the signing secrets from their Secret, the
networks and limits as values. Empty lists are left out, as an empty variable means the code's
default. Call with the root.
*/}}
{{- define "darkroom.webhookEnv" -}}
{{- $webhooks := .Values.webhooks }}
- name: DARKROOM_WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "darkroom.webhookSecretName" . }}
      key: {{ $webhooks.secretKey }}
- name: DARKROOM_WEBHOOK_DENY
  value: {{ join " " $webhooks.clusterNetworks | quote }}
{{- with $webhooks.allow }}
- name: DARKROOM_WEBHOOK_ALLOW
  value: {{ join " " . | quote }}
{{- end }}
- name: DARKROOM_WEBHOOK_ALLOW_HTTP
  value: {{ ternary "1" "0" $webhooks.allowHttp | quote }}
- name: DARKROOM_WEBHOOK_RETRY_SECONDS
  value: {{ $webhooks.retrySeconds | quote }}
- name: DARKROOM_WEBHOOK_CONCURRENCY
  value: {{ $webhooks.concurrency | int | quote }}
{{- end }}

{{/*
The master's egress to webhook receivers (webhooks.enabled), as NetworkPolicy rules: any
address but the cluster's networks (each in the except of its family's whole range), then the
networks webhooks.allow lets through anyway (rules add up, as the guard's allow list beats its
deny list), on webhooks.ports and 80 with allowHttp. Call with the root.
*/}}
{{- define "darkroom.webhookEgress" -}}
{{- $webhooks := .Values.webhooks }}
{{- $ports := list }}
{{- range $port := $webhooks.ports }}
{{- $ports = append $ports ($port | int) }}
{{- end }}
{{- if $webhooks.allowHttp }}
{{- $ports = append $ports 80 | uniq }}
{{- end }}
{{- $ipv4 := list }}
{{- $ipv6 := list }}
{{- range $network := $webhooks.clusterNetworks }}
{{- if contains ":" $network }}
{{- $ipv6 = append $ipv6 $network }}
{{- else }}
{{- $ipv4 = append $ipv4 $network }}
{{- end }}
{{- end }}
{{- $peers := list }}
{{- range $whole, $except := dict "0.0.0.0/0" $ipv4 "::/0" $ipv6 }}
{{- $block := dict "cidr" $whole }}
{{- with $except }}
{{- $_ := set $block "except" . }}
{{- end }}
{{- $peers = append $peers (dict "ipBlock" $block) }}
{{- end }}
{{- $rulePorts := list }}
{{- range $port := $ports }}
{{- $rulePorts = append $rulePorts (dict "port" $port "protocol" "TCP") }}
{{- end }}
# Webhook receivers: anywhere but the cluster's own networks.
- to:
    {{- toYaml $peers | nindent 4 }}
  ports:
    {{- toYaml $rulePorts | nindent 4 }}
{{- with $webhooks.allow }}
# The networks webhooks.allow lets webhooks reach although they are internal.
- to:
    {{- range $network := . }}
    - ipBlock:
        cidr: {{ $network }}
    {{- end }}
  ports:
    {{- toYaml $rulePorts | nindent 4 }}
{{- end }}
{{- end }}

{{/*
One role's Deployment. Call with (dict "root" $ "role" ROLE). The differences between roles
are few and all here: the registry's service account and ConfigMap settings, what a role's
values give (replicas or an autoscaler, concurrency, grace period, the database's URL), the
kinds' differences (a background role advertises no address; a stateful one has the data
volume, and Recreate unless its state is shared).
*/}}
{{- define "darkroom.deployment" -}}
{{- $root := .root }}
{{- $role := .role }}
{{- $entry := include "darkroom.role" $role | fromYaml }}
{{- $values := index $root.Values $role }}
{{- $port := $entry.port | int }}
{{- $healthPort := $entry.healthPort | int }}
{{- $stateful := eq $entry.kind "stateful" }}
{{- $shared := and $stateful (include "darkroom.sharedState" .) }}
{{- $autoscaled := or (dig "autoscaling" "enabled" false $values) (dig "keda" "enabled" false $values) }}
{{- $isRegistry := eq $role "registry" }}
{{- /* The storage's claim, mounted by the master and the worker too (storage.mountInMasterAndWorker). */}}
{{- $imagesClaim := "" }}
{{- $affinity := deepCopy ($root.Values.affinity | default dict) }}
{{- if and (has $role (list "master" "worker")) $root.Values.storage.mountInMasterAndWorker }}
{{- $imagesClaim = include "darkroom.dataClaim" (dict "root" $root "role" "storage") }}
{{- if ne $root.Values.storage.persistence.accessMode "ReadWriteMany" }}
{{- /* A ReadWriteOnce claim mounts on one node only: these pods go to the storage pod's. */}}
{{- $storagePods := include "darkroom.selectorLabels" (dict "root" $root "role" "storage") | fromYaml }}
{{- $sameNode := dict "labelSelector" (dict "matchLabels" $storagePods) "topologyKey" "kubernetes.io/hostname" }}
{{- $podAffinity := get $affinity "podAffinity" | default dict }}
{{- $required := get $podAffinity "requiredDuringSchedulingIgnoredDuringExecution" | default list }}
{{- $_ := set $podAffinity "requiredDuringSchedulingIgnoredDuringExecution" (append $required $sameNode) }}
{{- $_ = set $affinity "podAffinity" $podAffinity }}
{{- end }}
{{- end }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "darkroom.roleName" . }}
  namespace: {{ include "darkroom.namespace" $root }}
  labels:
    {{- include "darkroom.labels" . | nindent 4 }}
spec:
  {{- if and $stateful (not $shared) }}
  # One pod at a time on the ReadWriteOnce volume: the old pod stops before the new one starts.
  replicas: 1
  strategy:
    type: Recreate
  {{- else }}
  {{- if not $autoscaled }}
  replicas: {{ $values.replicas }}
  {{- end }}
  {{- if $shared }}
  # The state is shared (PostgreSQL, a ReadWriteMany volume): a new pod is ready before an
  # old one stops.
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  {{- end }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "darkroom.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "darkroom.labels" . | nindent 8 }}
      {{- if or $root.Values.metrics.podAnnotations $root.Values.podAnnotations }}
      annotations:
        {{- if $root.Values.metrics.podAnnotations }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $port | quote }}
        prometheus.io/path: /metrics
        {{- end }}
        {{- with $root.Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
    spec:
      {{- if $isRegistry }}
      serviceAccountName: {{ include "darkroom.roleName" . }}
      # The registry alone talks to the Kubernetes API (its ConfigMap), so it alone has a token.
      automountServiceAccountToken: true
      {{- else }}
      serviceAccountName: {{ include "darkroom.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- end }}
      # No SERVICE_HOST/PORT variables: "darkroom-registry" would inject DARKROOM_REGISTRY_*.
      enableServiceLinks: false
      {{- with $values.terminationGracePeriodSeconds }}
      terminationGracePeriodSeconds: {{ . }}
      {{- end }}
      securityContext:
        {{- include "darkroom.podSecurityContext" $root | nindent 8 }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ $role }}
          image: {{ include "darkroom.image" . | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          ports:
            - name: http
              containerPort: {{ $port }}
              protocol: TCP
            # /healthz and /readyz with threads of their own: probes answer while http is
            # flooded. The kubelet alone calls it; no Service or NetworkPolicy names it.
            - name: health
              containerPort: {{ $healthPort }}
              protocol: TCP
          env:
            - name: DARKROOM_HOST
              value: "0.0.0.0"
            - name: DARKROOM_PORT
              value: {{ $port | quote }}
            - name: DARKROOM_HEALTH_PORT
              value: {{ $healthPort | quote }}
            {{- if ne $entry.kind "background" }}
            - name: DARKROOM_ADVERTISE_ADDRESS
              value: {{ include "darkroom.address" . | quote }}
            {{- end }}
            - name: DARKROOM_REGISTRY_ADDRESS
              value: {{ include "darkroom.address" (dict "root" $root "role" "registry") | quote }}
            - name: DARKROOM_DATA_DIR
              value: /data
            - name: DARKROOM_LOG_LEVEL
              value: {{ $root.Values.logLevel | quote }}
            {{- if $isRegistry }}
            - name: DARKROOM_REGISTRY_BACKEND
              value: configmap
            - name: DARKROOM_REGISTRY_CONFIGMAP
              value: {{ include "darkroom.registryConfigMapName" $root | quote }}
            - name: DARKROOM_REGISTRY_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
            {{- end }}
            {{- if $values.presetsOnly }}
            - name: DARKROOM_PRESETS_ONLY
              value: "1"
            {{- end }}
            {{- if hasKey $values "concurrency" }}
            - name: DARKROOM_CONCURRENCY
              value: {{ $values.concurrency | quote }}
            {{- end }}
            {{- if $imagesClaim }}
            - name: DARKROOM_STORAGE_VOLUME
              value: /images
            {{- end }}
            {{- if and (eq $role "database") $shared }}
            {{- include "darkroom.databaseUrlEnv" $root | nindent 12 }}
            {{- end }}
            {{- include "darkroom.authEnv" $root | nindent 12 }}
            {{- if and (eq $role "master") $root.Values.webhooks.enabled }}
            {{- include "darkroom.webhookEnv" $root | nindent 12 }}
            {{- end }}
            {{- with $values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          startupProbe:
            httpGet:
              path: /healthz
              port: health
            periodSeconds: 2
            timeoutSeconds: 3
            failureThreshold: 30
          livenessProbe:
            httpGet:
              path: /healthz
              port: health
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /readyz
              port: health
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 3
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          securityContext:
            {{- include "darkroom.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if $stateful }}
            - name: data
              mountPath: /data
            {{- end }}
            {{- if $imagesClaim }}
            - name: images
              mountPath: /images
            {{- end }}
      volumes:
        # Waitress spools large request bodies here; the root filesystem is read-only.
        - name: tmp
          emptyDir:
            sizeLimit: {{ $root.Values.tmpSizeLimit }}
        {{- if $stateful }}
        - name: data
          {{- with include "darkroom.dataClaim" . }}
          persistentVolumeClaim:
            claimName: {{ . }}
          {{- else }}
          emptyDir: {}
          {{- end }}
        {{- end }}
        {{- if $imagesClaim }}
        - name: images
          persistentVolumeClaim:
            claimName: {{ $imagesClaim }}
        {{- end }}
{{- end }}
