#!/bin/sh
# The box is healthy when its sshd answers with an SSH banner on 2222 (read, then hang up).
# Without bash (no /dev/tcp), a listening socket on 2222 (hex 08AE) is the next best sign.
if command -v bash >/dev/null 2>&1; then
    exec timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/2222 && head -c 4 <&3 | grep -q "^SSH-"'
fi
grep -Eq ':08AE [0-9A-F]+:0000 0A' /proc/net/tcp /proc/net/tcp6 2>/dev/null
