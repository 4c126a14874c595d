# devbox: export devbox.toml's `env` and `secrets` from the read-only volume the host writes
# (/etc/devbox/secrets/current: one file per variable). Sourced by login shells (profile.d),
# bash run by sshd (/etc/bash.bashrc) and devbox jobs; builtins only, so no value is ever on
# a command line.
for __devbox_f in /etc/devbox/secrets/current/env/* /etc/devbox/secrets/current/secret/*; do
    [ -f "$__devbox_f" ] && [ -r "$__devbox_f" ] || continue
    IFS= read -r __devbox_v < "$__devbox_f" || true
    export "${__devbox_f##*/}=$__devbox_v"
done
unset __devbox_f __devbox_v
