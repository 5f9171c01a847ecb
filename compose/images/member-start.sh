#!/bin/bash
# Start one member of the HA data tier in its container: `member-start NAME`.
# compose/render.py writes, from the native stack's program definitions (iotctl up --ha):
#   /srv/iot/ha/cmd/NAME     the member's command, one argument per line
#   /srv/iot/ha/seed/NAME/*  first files (redis.conf, sentinel.conf) copied into the member's
#                            directory when missing: Redis and Sentinel rewrite them after a
#                            failover, and a restart must keep what they learned
#   /srv/iot/ha/user/NAME    present when the member runs as postgres (Patroni)
set -euo pipefail
name=${1:?usage: member-start NAME}
cmd=/srv/iot/ha/cmd/$name
[[ -f $cmd ]] || { echo "member-start: no command rendered for $name ($cmd)" >&2; exit 2; }
dir=/srv/iot/var/ha/$name
if [[ -d /srv/iot/ha/seed/$name ]]; then
  mkdir -p "$dir"
  for f in /srv/iot/ha/seed/"$name"/*; do
    [[ -e $dir/$(basename "$f") ]] || install -m 600 "$f" "$dir/"
  done
fi
mapfile -t argv <"$cmd"
if [[ -e /srv/iot/ha/user/$name ]]; then
  exec setpriv --reuid postgres --regid postgres --init-groups -- "${argv[@]}"
fi
exec "${argv[@]}"
