#!/usr/bin/env bash
shift
exec /tmp/lto-target/release/ztunnel-rollout "$@"
