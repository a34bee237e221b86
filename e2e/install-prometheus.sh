#!/usr/bin/env bash
# The health-gate tests run a real Prometheus (Debian's `prometheus` package) on loopback.
# Installs it when missing and this runs as root; otherwise says how. Its service is not
# started: the tests start their own servers with their own configuration.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "prometheus not found: the health-gate tests need it. Install Debian's package:" >&2
  echo "  sudo apt-get install --no-install-recommends prometheus" >&2
  echo "(or set PROMETHEUS_BINARY to a prometheus binary)" >&2
  exit 0
fi
echo "installing Debian's prometheus package for the health-gate tests"
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod +x "$policy"
  trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
prometheus --version 2>&1 | head -1
