#!/bin/sh
# devbox-idle-watch SSHD_PID: stops an idle box from inside, so its GPUs go back to the host.
# Started by the entrypoint when DEVBOX_IDLE_STOP (seconds) is set; DEVBOX_IDLE_GPU_UTIL is the
# busy threshold in percent (default 5). Active = an SSH session (an established TCP connection
# to sshd's 2222 from anything but loopback: the health check connects over 127.0.0.1), a tmux
# session of this user (devbox jobs are tmux sessions) or, where nvidia-smi lists GPUs, one at or
# above the threshold. After a whole window with none of these it logs one line to the box's
# stdout (docker logs), writes it to ~/.devbox/idle/stopped and ends sshd with TERM: the box exits
# 0, which `--restart on-failure` leaves stopped. Every sample rewrites ~/.devbox/idle/state.
# Cheap on purpose: a sample forks only grep, mv and sleep, plus tmux when its socket exists and
# nvidia-smi when the box has one; the clock is /proc/uptime read by the shell itself.
set -u

sshd_pid=$1
window=$DEVBOX_IDLE_STOP
threshold=${DEVBOX_IDLE_GPU_UTIL:-5}
dir="$HOME/.devbox/idle"
interval=$((window / 10))
[ "$interval" -lt 1 ] && interval=1
[ "$interval" -gt 60 ] && interval=60
tmux_socket="${TMUX_TMPDIR:-/tmp}/tmux-$(id -u)/default"
smi=$(command -v nvidia-smi) || smi=
wait_smi=$(command -v timeout) && wait_smi="$wait_smi 20" || wait_smi=

if [ $((window % 86400)) -eq 0 ]; then window_text="$((window / 86400))d"
elif [ $((window % 3600)) -eq 0 ]; then window_text="$((window / 3600))h"
elif [ $((window % 60)) -eq 0 ]; then window_text="$((window / 60))m"
else window_text="${window}s"
fi

count_ssh() {  # -> ssh_sessions; addresses are hex, little-endian per 32-bit word
    ssh_sessions=0
    # grep reads the tables in a few syscalls (the shell's `read` takes a byte per syscall, and
    # /proc/net/tcp is rebuilt on each); it keeps ESTABLISHED (01) connections to 2222 (08AE).
    # Its status is not looked at: a kernel without IPv6 has no tcp6, and grep then says 2.
    established=$(grep -hE '^ *[0-9]+: [0-9A-F]+:08AE [0-9A-F]+:[0-9A-F]+ 01 ' /proc/net/tcp /proc/net/tcp6 2>/dev/null)
    while read -r _ _ remote _; do
        case $remote in                                 # 127.0.0.0/8, ::1, ::ffff:127.0.0.0/104
            ''|??????7F:*|00000000000000000000000001000000:*|0000000000000000FFFF0000??????7F:*) continue ;;
        esac
        ssh_sessions=$((ssh_sessions + 1))
    done <<EOF
$established
EOF
}

list_jobs() {  # -> jobs: tmux session names, commas made "_" (the state file's list separator)
    jobs=
    [ -S "$tmux_socket" ] || return 0
    names=$(tmux list-sessions -F '#{session_name}' 2>/dev/null) || return 0
    while IFS= read -r name; do
        [ -n "$name" ] || continue
        clean=
        while :; do
            case $name in
                *,*) clean="$clean${name%%,*}_"; name=${name#*,} ;;
                *) clean="$clean$name"; break ;;
            esac
        done
        jobs="${jobs:+$jobs,}$clean"
    done <<EOF
$names
EOF
}

read_gpus() {  # -> gpu_util ("0:87,1:3"), gpu_busy (0/1), gpu_note (for the stop line)
    gpu_util= gpu_busy=0
    [ -n "$smi" ] || return 0
    out=$($wait_smi "$smi" --query-gpu=index,utilization.gpu --format=csv,noheader,nounits 2>/dev/null) || return 0
    while IFS=', ' read -r index util _; do
        case $index in ''|*[!0-9]*) continue ;; esac
        case $util in ''|*[!0-9]*) continue ;; esac      # "[N/A]" (MIG, some boards): not a reading
        gpu_util="${gpu_util:+$gpu_util,}$index:$util"
        [ "$util" -ge "$threshold" ] && gpu_busy=1
        gpu_note=", GPUs under $threshold%"
    done <<EOF
$out
EOF
}

write_state() {  # atomic: a reader never sees half a file
    printf 'updated=%s\nwindow=%s\nthreshold=%s\nssh_sessions=%s\njobs=%s\ngpu_util=%s\nidle_since=%s\n' \
        "$now" "$window" "$threshold" "$ssh_sessions" "$jobs" "$gpu_util" "$idle_since" > "$dir/state.tmp" \
        && mv -f "$dir/state.tmp" "$dir/state"
}

clock() {  # -> now, epoch seconds without forking date: the start time plus uptime since
    read -r up _ < /proc/uptime
    now=$((epoch0 + ${up%.*} - up0))
}

stop_box() {
    since=$(date -u -d "@$idle_since" +%Y-%m-%dT%H:%M:%SZ)
    line="devbox-idle: stopped idle $window_text since $since (no ssh session, no job$gpu_note)"
    printf '%s\n' "$line"
    printf '%s\n' "$line" > "$dir/stopped.tmp" && mv -f "$dir/stopped.tmp" "$dir/stopped"
    kill -TERM "$sshd_pid"
    exit 0
}

mkdir -p "$dir" || echo "devbox-idle: cannot make $dir: no state file, the box still stops when idle" >&2
gpu_note=
epoch0=$(date +%s)
read -r up0 _ < /proc/uptime
up0=${up0%.*}
clock
idle_since=$now
echo "devbox-idle: watching: the box stops after $window_text with no ssh session, no job and no GPU at or above $threshold% (sampled every ${interval}s)"
while kill -0 "$sshd_pid" 2>/dev/null; do
    count_ssh
    list_jobs
    read_gpus
    clock
    if [ "$ssh_sessions" -gt 0 ] || [ -n "$jobs" ] || [ "$gpu_busy" = 1 ]; then
        idle_since=
    elif [ -z "$idle_since" ]; then
        idle_since=$now
    fi
    write_state 2>/dev/null
    if [ -n "$idle_since" ] && [ $((now - idle_since)) -ge "$window" ]; then
        stop_box
    fi
    sleep "$interval"
done
