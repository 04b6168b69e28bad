#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: the
# noise-free companion of benches/load.sh on a shared machine (where req/s
# and CPU time move by ±10 % between runs). Each proxy runs under callgrind,
# gets 200 warm-up requests, then its counters are zeroed and it serves N
# requests on 4 keep-alive connections; the figure is the user-space
# instructions of the whole process (every thread) divided by N.
#
#   benches/instructions.sh                 # prints a Markdown table
#   SG_OLD=/path/to/older/stepgate benches/instructions.sh   # adds its rows
#
# Knobs: N=2000 (measured requests) SKIP_BUILD=0, KEEP=DIR keeps each
# row's callgrind profile there (DIR/<row>.callgrind, for callgrind_annotate
# --inclusive=yes).
# Read with care: valgrind counts every byte a `rep movsb` copies as one
# instruction, so large memcpys (Pingora moving a request's future into a
# Box) weigh more here than on the CPU; compare rows, not to nanoseconds.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
N="${N:-2000}"
SKIP_BUILD="${SKIP_BUILD:-0}"
log() { printf '[instructions] %s\n' "$*" >&2; }
command -v valgrind >/dev/null || scripts/install-deps.sh bench
command -v valgrind >/dev/null || { log "valgrind is missing"; exit 1; }
if [ "$SKIP_BUILD" != 1 ]; then
  log "building release (stepgate, bare_proxy)"
  cargo build --release --quiet --bin stepgate --example bare_proxy
fi
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SG="$TARGET_DIR/release/stepgate"
BARE="$TARGET_DIR/release/examples/bare_proxy"

W="$(mktemp -d /tmp/stepgate-instr.XXXXXX)"
# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
mkdir -p "$W/tmp"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r P_UP P_PROXY < <(python3 - <<'EOF'
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
for s in ss: s.close()
EOF
)
wait_port() {
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  log "nothing listens on 127.0.0.1:$1"; return 1
}
wait_closed() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || return 0
    sleep 0.1
  done
}

temps() { # the nginx temp paths, so nothing is written outside $W
  echo "client_body_temp_path $W/tmp/b; proxy_temp_path $W/tmp/p; fastcgi_temp_path $W/tmp/f; uwsgi_temp_path $W/tmp/u; scgi_temp_path $W/tmp/s;"
}
cat >"$W/up.conf" <<EOF
worker_processes 1; daemon off; pid $W/up.pid; error_log $W/up-error.log warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000; $(temps)
  server { listen 127.0.0.1:$P_UP; location / { return 200 "ok"; } } }
EOF
nginx -c "$W/up.conf" -p "$W" -e "$W/up-error.log" >"$W/up.log" 2>&1 &
PIDS+=("$!")
cat >"$W/pass.conf" <<EOF
worker_processes 1; daemon off; master_process off; pid $W/pass.pid; error_log $W/pass-error.log warn;
events { worker_connections 1024; }
http { access_log $W/pass-access.log; keepalive_requests 1000000; $(temps)
  upstream app { server 127.0.0.1:$P_UP; keepalive 128; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$P_PROXY; location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
bench_policy "$W/policy.yaml"
sg_conf sg "$P_PROXY" ""
wait_port "$P_UP"

# A signed-in user with a PIN and a step-up token, from a gateway run
# normally (the same config and store serve the measured runs).
(cd "$W" && exec "$SG" serve --config "$W/sg.yaml" >"$W/setup.log" 2>&1) &
SETUP=$!
wait_port "$P_PROXY"
bench_signed_in "$SG" "$W/sg.yaml" "http://127.0.0.1:$P_PROXY"
kill "$SETUP"; wait "$SETUP" 2>/dev/null || true
wait_closed "$P_PROXY"

cat >"$W/client.py" <<'EOF'
import socket, sys
port, path, n, cookie = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
       "User-Agent: bench\r\nAccept: */*\r\n\r\n").encode()
ok = 0
for i in range(n):
    c = conns[i % 4]
    c.sendall(req)
    data = b""
    while True:
        chunk = c.recv(65536)
        if not chunk:
            sys.exit("connection closed")
        data += chunk
        h = data.find(b"\r\n\r\n")
        if h >= 0:
            cl = 0
            for line in data[:h].decode().split("\r\n")[1:]:
                k, _, v = line.partition(":")
                if k.lower() == "content-length":
                    cl = int(v)
            if len(data) >= h + 4 + cl:
                break
    ok += data.startswith(b"HTTP/1.1 200")
if ok != n:
    sys.exit(f"{n - ok} of {n} requests were not answered 200")
EOF

measure() { # measure PATH CMD...: instructions per request
  local path="$1"; shift
  local out="$W/cg.out"
  rm -f "$out"*
  (cd "$W" && exec valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no "$@" >"$W/cg.log" 2>&1) &
  local vpid=$!
  wait_port "$P_PROXY"
  python3 "$W/client.py" "$P_PROXY" "$path" 200 "$COOKIE"
  callgrind_control -z "$vpid" >/dev/null
  python3 "$W/client.py" "$P_PROXY" "$path" "$N" "$COOKIE"
  callgrind_control -d "$vpid" >/dev/null
  kill "$vpid" 2>/dev/null; wait "$vpid" 2>/dev/null || true
  wait_closed "$P_PROXY"
  if [ -n "${KEEP:-}" ]; then
    mkdir -p "$KEEP"
    cp "$out".*1 "$KEEP/$(printf '%s' "$ROW_NAME" | tr -c 'A-Za-z0-9' '-').callgrind"
  fi
  # The dump taken after the measured requests is part 1.
  awk '/^summary:|^totals:/ {print $2; exit}' "$out".*1 | awk -v n="$N" '{printf "%.0f\n", $1 / n}'
}

row() { # row NAME PATH CMD...
  local name="$1" path="$2"; shift 2
  log "measuring $name"
  ROW_NAME="$name"
  local v; v="$(measure "$path" "$@")"
  ROWS+=("$name|$v")
}
ROWS=()
row "nginx proxy_pass" /admin/x nginx -c "$W/pass.conf" -p "$W" -e "$W/pass-error.log"
row "bare Pingora proxy (work stealing, Pingora's defaults)" /admin/x "$BARE" --listen "127.0.0.1:$P_PROXY" --upstream "127.0.0.1:$P_UP" --threads 1 --dir "$W"
row "bare Pingora proxy, tuned as stepgate runs" /admin/x "$BARE" --listen "127.0.0.1:$P_PROXY" --upstream "127.0.0.1:$P_UP" --threads 1 --dir "$W" --no-work-stealing --l4-read-buffer 0
row "stepgate, public route" /public/x "$SG" serve --config "$W/sg.yaml"
row "stepgate, step-up route, valid token" /admin/x "$SG" serve --config "$W/sg.yaml"
if [ -n "${SG_OLD:-}" ]; then
  row "SG_OLD, public route" /public/x "$SG_OLD" serve --config "$W/sg.yaml"
  row "SG_OLD, step-up route, valid token" /admin/x "$SG_OLD" serve --config "$W/sg.yaml"
fi

base=""
for r in "${ROWS[@]}"; do
  IFS='|' read -r name v <<<"$r"
  case "$name" in "bare Pingora proxy, tuned"*) base="$v" ;; esac
done
echo "Instructions per request (callgrind, user space, all threads; $N requests on 4 keep-alive connections; $(valgrind --version))"
echo
echo "| target | instructions / request | × tuned bare Pingora | above tuned bare |"
echo "|---|---|---|---|"
for r in "${ROWS[@]}"; do
  IFS='|' read -r name v <<<"$r"
  awk -v n="$name" -v v="$v" -v b="$base" 'BEGIN {printf "| %s | %\047d | %.2f | %+\047d |\n", n, v, v / b, v - b}'
done
