#!/bin/sh
# Makes the secrets of the proxy-config golden test with openssl, with fixed
# serial numbers and validity (openssl ca's -startdate/-enddate), so the
# golden table does not change: a root CA (serial 0xFF01, valid 2025-2035)
# and a workload certificate (serial 0xFF02, expired on 2026-01-01), then
# the two SDS files Envoy reads them from (inline bytes, as istio-agent
# serves them).
set -eu
dir=$1
cd "$dir"
cat > ca.cnf <<CNF
[ ca ]
default_ca = ca_default
[ ca_default ]
database = $dir/index.txt
new_certs_dir = $dir
serial = $dir/serial
default_md = sha256
policy = any
unique_subject = no
[ any ]
commonName = supplied
[ root ]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
[ leaf ]
basicConstraints = critical,CA:FALSE
subjectAltName = URI:spiffe://cluster.local/ns/default/sa/reviews
CNF
: > index.txt
echo FF01 > serial
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout ca.key -subj /CN=root -out ca.csr 2>/dev/null
openssl ca -batch -config ca.cnf -selfsign -keyfile ca.key -in ca.csr -out ca.pem \
  -extensions root -startdate 20250101000000Z -enddate 20350101000000Z -notext 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout leaf.key -subj /CN=reviews -out leaf.csr 2>/dev/null
openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in leaf.csr -out leaf.pem \
  -extensions leaf -startdate 20250601000000Z -enddate 20260101000000Z -notext 2>/dev/null
b64() { base64 -w0 "$1"; }
cat > sds-default.yaml <<SDS
version_info: "1"
resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: default
  tls_certificate:
    certificate_chain: {inline_bytes: "$(b64 leaf.pem)"}
    private_key: {inline_bytes: "$(b64 leaf.key)"}
SDS
cat > sds-rootca.yaml <<SDS
version_info: "1"
resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: ROOTCA
  validation_context:
    trusted_ca: {inline_bytes: "$(b64 ca.pem)"}
SDS
