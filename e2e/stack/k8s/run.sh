# Start/stop/status of the local control plane; sourced by k8s.sh after lib.sh.

ETCD_LOG=$WEIR_RUN/logs/etcd.log
APISERVER_LOG=$WEIR_RUN/logs/kube-apiserver.log
CM_LOG=$WEIR_RUN/logs/kube-controller-manager.log
SCHED_LOG=$WEIR_RUN/logs/kube-scheduler.log

# cert NAME CN ORG [SANS]: a key and a certificate signed by the local CA.
cert() {
  local name=$1 cn=$2 org=$3 sans=${4:-}
  [[ -f $PKI/$name.crt ]] && return 0
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  local subj="/CN=$cn"; [[ -n $org ]] && subj="/O=$org/CN=$cn"
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  local ext=$PKI/$name.ext
  { echo "basicConstraints=CA:FALSE"; echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n $sans ]]; then echo "extendedKeyUsage=serverAuth,clientAuth"; echo "subjectAltName=$sans"
    else echo "extendedKeyUsage=clientAuth"; fi; } >"$ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
}

# kubeconfig NAME CERT: a kubeconfig for a client certificate.
kubeconfig() {
  local file=$K8S_RUN/$1.kubeconfig
  cat >"$file" <<KC
apiVersion: v1
kind: Config
clusters:
- name: weir-local
  cluster: {server: "https://127.0.0.1:$APISERVER_PORT", certificate-authority: "$PKI/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$PKI/$2.crt", client-key: "$PKI/$2.key"}
contexts:
- name: weir-local
  context: {cluster: weir-local, user: $1, namespace: default}
current-context: weir-local
KC
}

pki() {
  mkdir -p "$PKI"
  if [[ ! -f $PKI/ca.crt ]]; then
    openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=weir-local-ca" -days 3650 -out "$PKI/ca.crt" 2>/dev/null
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  cert apiserver kube-apiserver "" "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin admin system:masters
  cert controller-manager system:kube-controller-manager ""
  cert scheduler system:kube-scheduler ""
  kubeconfig admin admin
  kubeconfig controller-manager controller-manager
  kubeconfig scheduler scheduler
}

healthz() { curl -sf --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null; }

start() {
  install
  mkdir -p "$K8S_RUN"
  pki
  if ! is_running etcd; then
    port_open "$ETCD_PORT" && die "port $ETCD_PORT is taken by another process; set ETCD_PORT"
    log "starting etcd (log: $ETCD_LOG)"
    start_bg etcd "$ETCD_LOG" "$ETCD_BIN" --data-dir "$K8S_RUN/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
      --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" --initial-cluster "default=http://127.0.0.1:$((ETCD_PORT + 1))" \
      --quota-backend-bytes 2147483648 --unsafe-no-fsync
    wait_for etcd 30 "$ETCD_LOG" curl -sf "http://127.0.0.1:$ETCD_PORT/health"
  fi
  if ! is_running kube-apiserver; then
    port_open "$APISERVER_PORT" && die "port $APISERVER_PORT is taken by another process; set APISERVER_PORT"
    log "starting kube-apiserver (log: $APISERVER_LOG)"
    start_bg kube-apiserver "$APISERVER_LOG" "$K8S_BIN/kube-apiserver" \
      --etcd-servers "http://127.0.0.1:$ETCD_PORT" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
      --secure-port "$APISERVER_PORT" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
      --client-ca-file "$PKI/ca.crt" --service-account-key-file "$PKI/sa.pub" \
      --service-account-signing-key-file "$PKI/sa.key" --service-account-issuer https://kubernetes.default.svc \
      --api-audiences https://kubernetes.default.svc --service-cluster-ip-range 10.96.0.0/16 \
      --authorization-mode Node,RBAC --allow-privileged=true --cert-dir "$K8S_RUN/apiserver-certs" \
      --enable-priority-and-fairness=false --event-ttl 1h --endpoint-reconciler-type none
    wait_for kube-apiserver 120 "$APISERVER_LOG" healthz
  fi
  if ! is_running kube-controller-manager; then
    log "starting kube-controller-manager (log: $CM_LOG)"
    start_bg kube-controller-manager "$CM_LOG" "$K8S_BIN/kube-controller-manager" \
      --kubeconfig "$K8S_RUN/controller-manager.kubeconfig" \
      --authentication-kubeconfig "$K8S_RUN/controller-manager.kubeconfig" \
      --authorization-kubeconfig "$K8S_RUN/controller-manager.kubeconfig" \
      --bind-address 127.0.0.1 --secure-port 10257 --leader-elect=false \
      --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
      --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
      --use-service-account-credentials=true
  fi
  if ! is_running kube-scheduler; then
    log "starting kube-scheduler (log: $SCHED_LOG)"
    start_bg kube-scheduler "$SCHED_LOG" "$K8S_BIN/kube-scheduler" --kubeconfig "$K8S_RUN/scheduler.kubeconfig" \
      --authentication-kubeconfig "$K8S_RUN/scheduler.kubeconfig" --authorization-kubeconfig "$K8S_RUN/scheduler.kubeconfig" \
      --bind-address 127.0.0.1 --secure-port 10259 --leader-elect=false
  fi
  # The controller-manager creates each namespace's default ServiceAccount; Pods need it.
  wait_for kube-controller-manager 90 "$CM_LOG" kubectl get serviceaccount default -n default
  log "Kubernetes ready: https://127.0.0.1:$APISERVER_PORT  KUBECONFIG=$KUBECONFIG_ADMIN"
}

kubectl() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

stop() {
  for c in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_bg "$c"; done
}

status() {
  local rc=0 c
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler; do
    if is_running "$c"; then printf '%-24s up    log: %s\n' "$c" "$WEIR_RUN/logs/$c.log"
    else printf '%-24s down  log: %s\n' "$c" "$WEIR_RUN/logs/$c.log"; rc=1; fi
  done
  echo "kubernetes api           https://127.0.0.1:$APISERVER_PORT ($K8S_VERSION)  KUBECONFIG=$KUBECONFIG_ADMIN"
  return $rc
}

# The API server stopped and started again (the fault-injection suite); the rest keeps running.
restart_apiserver() {
  stop_bg kube-apiserver
  start
}
