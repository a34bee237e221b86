#!/usr/bin/env bash
# Builds the agent's container image without a container daemon:
#   1. the static Linux x86_64 binary (glibc linked statically; no test bed in it);
#   2. the image builder (e2e/image, go-containerregistry pinned in e2e/versions.env),
#      cached in e2e/bin/ and rebuilt only when its sources change;
#   3. one layer (the binary, the machine's CA certificates, a passwd entry for UID
#      65532) on an empty base, as an OCI image archive:
#      target/image/ztunnel-rollout.oci.tar (or $1).
# Load it with `docker load`/`podman load`, or push it with `crane push` or
# `skopeo copy oci-archive:...`. manifests/image/Dockerfile builds the same image with a
# container daemon.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=versions.env
source e2e/versions.env
output=${1:-$root/target/image/ztunnel-rollout.oci.tar}
target=x86_64-unknown-linux-gnu
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[[ -f "$ca_bundle" ]] || { echo "error: $ca_bundle is missing (apt-get install ca-certificates)" >&2; exit 1; }
command -v go >/dev/null || { echo "error: Go is required to build the image builder" >&2; exit 1; }
pinned=$(sed -n 's#^require github.com/google/go-containerregistry \(v[^ ]*\)$#\1#p' e2e/image/go.mod)
[[ "$pinned" == "$GO_CONTAINERREGISTRY_VERSION" ]] || {
  echo "error: e2e/image/go.mod requires go-containerregistry $pinned, e2e/versions.env pins $GO_CONTAINERREGISTRY_VERSION" >&2
  exit 1
}

started=$(date +%s)
log() { echo "[build-image $(( $(date +%s) - started ))s] $*" >&2; }

builder="$root/e2e/bin/image-builder"
want=$(cat e2e/image/go.mod e2e/image/go.sum e2e/image/main.go | sha256sum | cut -c1-16)
if [[ ! -x "$builder" || "$(cat "$builder.pins" 2>/dev/null)" != "$want" ]]; then
  log "building the image builder"
  mkdir -p "$(dirname "$builder")"
  (cd e2e/image && GOWORK=off CGO_ENABLED=0 go build -trimpath -o "$builder" .)
  echo "$want" >"$builder.pins"
fi

log "building the static binary ($target, release)"
RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" \
  cargo build --locked --quiet --release --target "$target" --bin ztunnel-rollout
binary="$root/target/$target/release/ztunnel-rollout"
if file_info=$(command -v file >/dev/null && file -b "$binary"); then
  [[ "$file_info" == *"statically linked"* || "$file_info" == *"static-pie linked"* ]] \
    || { echo "error: $binary is not statically linked: $file_info" >&2; exit 1; }
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
mkdir -p "$(dirname "$output")"
log "writing $output"
"$builder" --binary "$binary" --ca-bundle "$ca_bundle" --output "$output" \
  --ref "ztunnel-rollout:$version" --version "$version" --revision "$revision"
