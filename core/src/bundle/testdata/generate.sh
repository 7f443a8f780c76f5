#!/usr/bin/env bash
# Regenerates the certificate fixtures that rcgen cannot make: RSA keys, SHA-1 and MD5
# signatures, P-521, an X.509 v1 certificate and URI name constraints. The private keys are
# thrown away; the tests need only the certificates. Needs OpenSSL 3.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
days=36500

# ca KEY DIGEST OUT [EXTRA_EXTENSION_LINE...]: a self-signed v3 CA of example.org.
ca() {
  local key=$1 digest=$2 out=$3
  shift 3
  {
    printf '[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nO=example.org\n[ext]\n'
    printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n'
    printf 'subjectAltName=URI:spiffe://example.org\n'
    for line in "$@"; do printf '%s\n' "$line"; done
  } >"$tmp/req.cnf"
  openssl req -x509 -new -key "$key" "-$digest" -days "$days" -config "$tmp/req.cnf" \
    -extensions ext -out "$out"
}

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out "$tmp/rsa1024.key" 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/rsa2048.key" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/p256.key" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-521 -out "$tmp/p521.key" 2>/dev/null

ca "$tmp/rsa2048.key" sha256 rsa2048_ca.pem
ca "$tmp/rsa1024.key" sha256 rsa1024_ca.pem
ca "$tmp/p256.key" sha1 ecdsa_sha1_ca.pem
ca "$tmp/p521.key" sha512 p521_ca.pem
ca "$tmp/rsa2048.key" md5 rsa_md5_ca.pem
ca "$tmp/p256.key" sha256 uri_constraint_other_ca.pem \
  'nameConstraints=critical,permitted;URI:other.org'
ca "$tmp/p256.key" sha256 uri_constraint_own_ca.pem \
  'nameConstraints=critical,permitted;URI:example.org,excluded;URI:other.org,excluded;DNS:other.org'

# A v1 certificate: no extensions at all.
openssl req -new -key "$tmp/p256.key" -subj /O=example.org -out "$tmp/v1.csr"
openssl x509 -req -in "$tmp/v1.csr" -key "$tmp/p256.key" -sha256 -days "$days" -out v1_ca.pem
