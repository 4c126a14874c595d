#!/bin/sh
# Healthy when sshd listens on 2222 (hex 08AE), read from /proc so the periodic check adds
# no log line. `--banner` also reads the SSH banner: devbox asks that once, before it swaps
# a new box in for the old one.
grep -Eq ':08AE [0-9A-F]+:0000 0A' /proc/net/tcp /proc/net/tcp6 2>/dev/null || exit 1
[ "${1:-}" = --banner ] && command -v bash >/dev/null 2>&1 || exit 0
exec timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/2222 && head -c 4 <&3 | grep -q "^SSH-"'
