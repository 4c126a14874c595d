#!/bin/sh
# Runs as the login user (never root): make the host key once, then run sshd.
# The key lives in the home volume, so a re-created box keeps its identity and the
# pin devbox wrote on the laptop stays valid.
set -eu
state="$HOME/.devbox"
umask 077
mkdir -p "$state/hostkeys" "$state/jobs" "$state/idle"
# What the idle watcher wrote in an earlier run does not describe this one.
rm -f "$state/idle/stopped" "$state/idle/state"
key="$state/hostkeys/ssh_host_ed25519_key"
if [ ! -s "$key" ]; then
    ssh-keygen -q -t ed25519 -N '' -C "devbox-host-key" -f "$key"
fi
# Arguments are sshd options devbox adds (`-o AllowAgentForwarding=yes` for forward_agent).
set -- /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config -h "$key" "$@"

# DEVBOX_IDLE_STOP=SECONDS (devbox.toml idle_stop), DEVBOX_IDLE_GPU_UTIL=PERCENT (default 5).
# Unset or 0: no watcher, and sshd is the box's process as it always was.
is_count() { case $1 in ''|*[!0-9]*|0?*) return 1 ;; esac; }
idle=${DEVBOX_IDLE_STOP:-0}
[ "$idle" = 0 ] && exec "$@"
if ! is_count "$idle" || ! is_count "${DEVBOX_IDLE_GPU_UTIL:-5}" || ! [ "${DEVBOX_IDLE_GPU_UTIL:-5}" -le 100 ]; then
    echo "devbox-idle: DEVBOX_IDLE_STOP=$idle DEVBOX_IDLE_GPU_UTIL=${DEVBOX_IDLE_GPU_UTIL:-}: want whole seconds and a percent 0-100; idle stop is off" >&2
    exec "$@"
fi

# With a watcher, sshd is a child: the watcher ends it with TERM when the box is idle (sshd
# exits 0, the box stays stopped under --restart on-failure); docker stop's TERM/INT reach this
# shell (tini forwards to it) and are passed on; a crashed sshd's code becomes the box's.
"$@" &
sshd_pid=$!
trap 'kill -TERM "$sshd_pid" 2>/dev/null || :' TERM INT
trap 'kill -HUP "$sshd_pid" 2>/dev/null || :' HUP    # sshd's own reload, as when it was exec'd
/usr/local/bin/devbox-idle-watch "$sshd_pid" &
watch_pid=$!
while kill -0 "$sshd_pid" 2>/dev/null; do
    wait "$sshd_pid" || :    # a trapped TERM/INT ends `wait` early: wait on until sshd is gone
done
wait "$sshd_pid" && code=0 || code=$?    # sshd's own status, which the shell keeps for it
kill "$watch_pid" 2>/dev/null || :
exit "$code"
