#!/usr/bin/env bash
shift
exec /tmp/hp-target/release/ztunnel-rollout "$@"
