#!/usr/bin/env bash
# Makes membrane's certificates with openssl, for clusters without
# cert-manager: the same Secrets that manifests/components/cert-manager has
# cert-manager issue, written as one YAML file to `kubectl apply -f`.
#
#   scripts/cluster-certs.sh --out DIR [--ca-dir DIR] [--namespace NS]
#       [--trust-domain DOMAIN] [--days N] [--workload NS/SA]...
#
# DIR/secrets.yaml then holds, in namespace NS (default membrane-system):
#   membrane-xds-tls         kubernetes.io/tls + ca.crt: membrane-xds's pair for
#                            the mTLS xDS port and the injection webhook, for
#                            membrane-xds.NS.svc; ca.crt verifies clients
#   membrane.membrane-agent  the agents' client certificate (SPIFFE id
#                            spiffe://DOMAIN/ns/NS/sa/membrane-agent), in
#                            Istio's layout (cert-chain.pem, key.pem, root-cert.pem)
#   membrane.membrane-relay  the relay's certificate (SPIFFE id
#                            spiffe://DOMAIN/ns/NS/sa/membrane-relay, and
#                            membrane-relay.NS.svc for its 4245), Istio's layout
#   membrane-etcd-tls        the etcd members' serving and peer certificate
#                            (*.membrane-etcd.NS.svc, localhost, 127.0.0.1)
#   membrane-etcd-client     membrane-xds's client certificate for etcd
# and for each --workload NS/SA the sidecar workload certificate, Secret
# membrane.SA in namespace NS (Istio's layout, what the injector mounts).
# DIR/ca-bundle.b64 is the webhook's caBundle (see manifests/README.md).
#
# The CA is DIR/ca/ca-cert.pem and ca-key.pem, made here (ECDSA P-256, ten
# years) unless --ca-dir names an existing one: ca-cert.pem and ca-key.pem,
# plus, for an intermediate CA such as Istio's plug-in `cacerts`,
# cert-chain.pem (appended to every chain) and root-cert.pem (the trust
# anchor written as ca.crt / root-cert.pem). Keep the CA key out of the
# cluster; re-run with --ca-dir DIR/ca to renew before --days (default 365)
# runs out. Leaf keys are ECDSA P-256, PKCS#8.
set -euo pipefail

usage() { sed -n '6,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
help() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; }
die() { echo "cluster-certs: $*" >&2; exit 1; }

OUT="" CA_DIR="" NS=membrane-system DOMAIN=cluster.local DAYS=365 WORKLOADS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=${2:?}; shift 2 ;;
    --ca-dir) CA_DIR=${2:?}; shift 2 ;;
    --namespace) NS=${2:?}; shift 2 ;;
    --trust-domain) DOMAIN=${2:?}; shift 2 ;;
    --days) DAYS=${2:?}; shift 2 ;;
    --workload) WORKLOADS+=("${2:?}"); shift 2 ;;
    -h|--help) help ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ -n "$OUT" ] || usage
case "$DAYS" in ''|*[!0-9]*) die "--days $DAYS: not a number of days" ;; esac
for w in "${WORKLOADS[@]+"${WORKLOADS[@]}"}"; do
  [[ "$w" =~ ^[a-z0-9-]+/[a-z0-9.-]+$ ]] || die "--workload $w: expected NAMESPACE/SERVICE_ACCOUNT"
done
command -v openssl >/dev/null || die "openssl is not installed"

mkdir -p "$OUT"
umask 077

# The CA: given, or made once.
if [ -n "$CA_DIR" ]; then
  for f in ca-cert.pem ca-key.pem; do
    [ -s "$CA_DIR/$f" ] || die "--ca-dir $CA_DIR: no $f"
  done
  CA="$CA_DIR"
else
  CA="$OUT/ca"
  if [ ! -s "$CA/ca-key.pem" ]; then
    mkdir -p "$CA"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$CA/ca-key.pem"
    openssl req -x509 -new -key "$CA/ca-key.pem" -sha256 -days 3650 \
      -subj "/O=membrane/CN=membrane workload CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out "$CA/ca-cert.pem" 2>/dev/null
  fi
fi
ROOT="$CA/ca-cert.pem"
[ -s "$CA/root-cert.pem" ] && ROOT="$CA/root-cert.pem"
CHAIN=""
[ -s "$CA/cert-chain.pem" ] && CHAIN="$CA/cert-chain.pem"
openssl verify -CAfile "$ROOT" ${CHAIN:+-untrusted "$CHAIN"} "$CA/ca-cert.pem" >/dev/null \
  || die "$CA/ca-cert.pem does not chain to $ROOT"

# issue NAME SUBJECT_CN SAN EXTENDED_KEY_USAGE: DIR/NAME/{cert.pem,key.pem,chain.pem}
issue() {
  local name=$1 cn=$2 san=$3 eku=$4 d="$OUT/$1"
  mkdir -p "$d"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/key.pem"
  openssl req -new -key "$d/key.pem" -subj "/O=membrane/CN=$cn" -out "$d/req.csr"
  cat >"$d/ext.cnf" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$eku
subjectAltName=$san
EOF
  openssl x509 -req -in "$d/req.csr" -CA "$CA/ca-cert.pem" -CAkey "$CA/ca-key.pem" \
    -CAcreateserial -CAserial "$OUT/ca.srl" -days "$DAYS" -sha256 \
    -extfile "$d/ext.cnf" -out "$d/cert.pem" 2>/dev/null
  cat "$d/cert.pem" ${CHAIN:+"$CHAIN"} >"$d/chain.pem"
  rm -f "$d/req.csr" "$d/ext.cnf"
}

b64() { base64 -w0 <"$1"; }

# secret NAME NAMESPACE TYPE KEY=FILE...: one Secret document.
secret() {
  local name=$1 ns=$2 type=$3; shift 3
  printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\n' "$name" "$ns"
  printf '  labels:\n    app.kubernetes.io/part-of: membrane\ntype: %s\ndata:\n' "$type"
  for kv in "$@"; do
    printf '  %s: %s\n' "${kv%%=*}" "$(b64 "${kv#*=}")"
  done
}

spiffe() { echo "URI:spiffe://$DOMAIN/ns/$1/sa/$2"; }

issue membrane-xds membrane-xds \
  "DNS:membrane-xds.$NS.svc,DNS:membrane-xds.$NS.svc.cluster.local,$(spiffe "$NS" membrane-xds)" \
  serverAuth,clientAuth
issue membrane-agent membrane-agent "$(spiffe "$NS" membrane-agent)" clientAuth
issue membrane-relay membrane-relay \
  "DNS:membrane-relay.$NS.svc,DNS:membrane-relay.$NS.svc.cluster.local,$(spiffe "$NS" membrane-relay)" \
  serverAuth,clientAuth
issue membrane-etcd membrane-etcd \
  "DNS:*.membrane-etcd.$NS.svc,DNS:*.membrane-etcd.$NS.svc.cluster.local,DNS:membrane-etcd.$NS.svc,DNS:localhost,IP:127.0.0.1" \
  serverAuth,clientAuth
issue membrane-etcd-client membrane-xds "$(spiffe "$NS" membrane-xds)" clientAuth

{
  echo "# Made by scripts/cluster-certs.sh; holds private keys: apply, then keep or delete."
  secret membrane-xds-tls "$NS" kubernetes.io/tls \
    tls.crt="$OUT/membrane-xds/chain.pem" tls.key="$OUT/membrane-xds/key.pem" ca.crt="$ROOT"
  secret membrane.membrane-agent "$NS" Opaque \
    cert-chain.pem="$OUT/membrane-agent/chain.pem" key.pem="$OUT/membrane-agent/key.pem" root-cert.pem="$ROOT"
  secret membrane.membrane-relay "$NS" Opaque \
    cert-chain.pem="$OUT/membrane-relay/chain.pem" key.pem="$OUT/membrane-relay/key.pem" root-cert.pem="$ROOT"
  secret membrane-etcd-tls "$NS" kubernetes.io/tls \
    tls.crt="$OUT/membrane-etcd/chain.pem" tls.key="$OUT/membrane-etcd/key.pem" ca.crt="$ROOT"
  secret membrane-etcd-client "$NS" kubernetes.io/tls \
    tls.crt="$OUT/membrane-etcd-client/chain.pem" tls.key="$OUT/membrane-etcd-client/key.pem" ca.crt="$ROOT"
  for w in "${WORKLOADS[@]+"${WORKLOADS[@]}"}"; do
    wns=${w%%/*} sa=${w#*/}
    issue "workload-$wns-$sa" "$sa" "$(spiffe "$wns" "$sa")" serverAuth,clientAuth
    secret "membrane.$sa" "$wns" Opaque \
      cert-chain.pem="$OUT/workload-$wns-$sa/chain.pem" key.pem="$OUT/workload-$wns-$sa/key.pem" root-cert.pem="$ROOT"
  done
} >"$OUT/secrets.yaml"
b64 "$ROOT" >"$OUT/ca-bundle.b64"
echo "cluster-certs: wrote $OUT/secrets.yaml (CA $CA/ca-cert.pem) and $OUT/ca-bundle.b64"
