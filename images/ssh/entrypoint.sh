#!/bin/sh
# Runs as the login user (never root): make the host key once, then become sshd.
# The key lives in the home volume, so a re-created box keeps its identity and the
# pin devbox wrote on the laptop stays valid.
set -eu
state="$HOME/.devbox"
umask 077
mkdir -p "$state/hostkeys" "$state/jobs"
key="$state/hostkeys/ssh_host_ed25519_key"
if [ ! -s "$key" ]; then
    ssh-keygen -q -t ed25519 -N '' -C "devbox-host-key" -f "$key"
fi
# Arguments are sshd options devbox adds (`-o AllowAgentForwarding=yes` for forward_agent).
exec /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config -h "$key" "$@"
