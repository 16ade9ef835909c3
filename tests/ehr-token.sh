#!/usr/bin/env bash
# How an EHR system registers with Carapace and gets an access token (SMART Backend Services), with
# nothing but openssl, python3 and curl. README.md shows this script; tests/e2e/auth.rs and readme.rs run it.
#
#   CARAPACE_URL      server origin (default http://127.0.0.1:8080)
#   CONSOLE           the console command (default: carapace-console on PATH, else the newest one
#                     cargo built in this checkout or CARGO_TARGET_DIR, else `cargo run` builds
#                     it); needs an operator sign-in, e.g. CARAPACE_ADMIN_TOKEN from
#                     `carapace-console login`
# Prints the token response JSON.
set -euo pipefail
url=${CARAPACE_URL:-http://127.0.0.1:8080}
checkout=$(dirname "$0")/..
console=${CONSOLE:-$(command -v carapace-console || ls -t "${CARGO_TARGET_DIR:-$checkout/target}"/*/carapace-console 2>/dev/null | head -n1 || true)}
console=${console:-cargo run -q --release --manifest-path $checkout/Cargo.toml -p carapace-console --}
work=$(mktemp -d)
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

# 1. The EHR's key pair (RS384); the public half goes into a JWKS.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/ehr-key.pem" 2>/dev/null
n=$(openssl rsa -in "$work/ehr-key.pem" -noout -modulus | cut -d= -f2 \
    | python3 -c 'import sys,base64; print(base64.urlsafe_b64encode(bytes.fromhex(sys.stdin.read().strip())).rstrip(b"=").decode())')
printf '{"keys":[{"kty":"RSA","kid":"ehr-1","alg":"RS384","use":"sig","n":"%s","e":"AQAB"}]}' "$n" > "$work/jwks.json"

# 2. An administrator registers the client with the scopes it may ask for.
client_id=$($console client register --name "Ward EHR" --jwks-file "$work/jwks.json" --scope 'system/*.cruds')

# 3. A signed client assertion (iss = sub = client id, aud = token URL, exp <= 5 min, fresh jti)...
header=$(printf '{"alg":"RS384","kid":"ehr-1","typ":"JWT"}' | b64url)
claims=$(printf '{"iss":"%s","sub":"%s","aud":"%s/auth/token","exp":%d,"jti":"%s"}' \
    "$client_id" "$client_id" "$url" $(( $(date +%s) + 240 )) "$(cat /proc/sys/kernel/random/uuid)" | b64url)
signature=$(printf '%s.%s' "$header" "$claims" | openssl dgst -sha384 -sign "$work/ehr-key.pem" | b64url)

# 4. ...exchanged for a 5-minute access token.
curl -s "$url/auth/token" \
  -d grant_type=client_credentials \
  -d scope='system/*.rs' \
  -d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
  -d client_assertion="$header.$claims.$signature"
echo
rm -rf "$work"
