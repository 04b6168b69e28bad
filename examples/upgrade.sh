#!/usr/bin/env bash
# Zero-downtime upgrade of a running stepgate to the binary at $NEW_BIN:
# the new process waits on the upgrade socket, the old one hands over its
# listening sockets on SIGQUIT and finishes its in-flight requests.
set -euo pipefail
CONFIG="${CONFIG:-/etc/stepgate/gateway.yaml}"
NEW_BIN="${NEW_BIN:-/usr/local/bin/stepgate}"
OLD_PID="${1:?usage: upgrade.sh OLD_PID}"
"$NEW_BIN" check --config "$CONFIG"
"$NEW_BIN" serve --config "$CONFIG" --upgrade &
sleep 1
kill -QUIT "$OLD_PID"
echo "handed over from $OLD_PID to $!"
