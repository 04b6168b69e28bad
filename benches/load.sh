#!/usr/bin/env bash
# Load benchmark: stepgate side by side with a bare Pingora proxy, nginx
# proxy_pass and nginx auth_request, in one run on this machine (ratios, not
# absolute numbers). Also: RSS with 1,000 idle keep-alive connections, and
# pass-through p99 while Argon2 PIN checks are kept in flight, and throughput
# and latency while the policy is reloaded every 0.6 s.
#
#   benches/load.sh            # writes benches/RESULTS.md
#   SCENARIOS=reload benches/load.sh   # only the reload-under-load section
#
# Knobs (environment): ROUNDS=3 DURATION=10 (seconds per wrk run) CONNS=50
# WRK_THREADS=1 WORKERS=1 (threads / worker processes of every proxy)
# IDLE_CONNS=1000 STORM=32 (wrong-PIN submissions in flight) STORM_ROUNDS=3
# STORM_DURATION=10 PROFILE=1 (perf profiles of bare proxy and stepgate)
# QUIET_ROW=1 (extra stepgate row with the access log off) SKIP_BUILD=0
# ALLOC_PRELOAD= (a malloc .so to LD_PRELOAD into the two Pingora proxies, to try
# an allocator) QUIET_PCT=25 QUIET_MAX=0 (before each run, wait up to QUIET_MAX s
# for other processes to use < QUIET_PCT % of the machine; the share is recorded
# either way) NICE=-15 (priority of
# everything the benchmark starts, when run as root; below 0 it can keep the
# kernel's own threads, at nice 0, waiting for a CPU for hundreds of ms, which
# shows as storm 503s: NICE=0 for the storm's failure counts)
# OUT=benches/RESULTS.md
# SCENARIOS="proxies idle storm reload profile" (which parts run; the report
# rewrites only the sections of the parts that ran) RELOAD_ROUNDS=2
# RELOAD_DURATION=10 RELOAD_CONNS=16 RELOAD_EVERY=0.6 (seconds between policy
# rewrites + SIGHUP) RELOAD_PATHS=1000 (distinct paths of the signed-in
# target, each its own signed assertion; 0: public route only) RELOAD_RULES=0
# (extra rules in the reloaded policy, to measure a large one) SG_BIN= (the
# stepgate binary to measure, e.g. an older
# build for a before/after; default: the release build of this tree)
# Only loopback; everything started here is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
CONNS="${CONNS:-50}"
WRK_THREADS="${WRK_THREADS:-1}"
WORKERS="${WORKERS:-1}"
IDLE_CONNS="${IDLE_CONNS:-1000}"
STORM="${STORM:-32}"
STORM_ROUNDS="${STORM_ROUNDS:-3}"
STORM_DURATION="${STORM_DURATION:-10}"
PROFILE="${PROFILE:-1}"
QUIET_ROW="${QUIET_ROW:-1}"
SKIP_BUILD="${SKIP_BUILD:-0}"
ALLOC_PRELOAD="${ALLOC_PRELOAD:-}"
QUIET_PCT="${QUIET_PCT:-25}"
QUIET_MAX="${QUIET_MAX:-0}"
NICE="${NICE:--15}"
OUT="${OUT:-$ROOT/benches/RESULTS.md}"
SCENARIOS="${SCENARIOS:-proxies idle storm reload profile}"
RELOAD_ROUNDS="${RELOAD_ROUNDS:-2}"
RELOAD_DURATION="${RELOAD_DURATION:-10}"
RELOAD_CONNS="${RELOAD_CONNS:-16}"
RELOAD_EVERY="${RELOAD_EVERY:-0.6}"
RELOAD_RULES="${RELOAD_RULES:-0}"
RELOAD_PATHS="${RELOAD_PATHS:-1000}"
has() { case " $SCENARIOS " in *" $1 "*) return 0 ;; esac; return 1; }

log() { printf '[load] %s\n' "$*" >&2; }

[ -n "${LOAD_SH_INNER:-}" ] || scripts/install-deps.sh bench
if [ "$SKIP_BUILD" != 1 ]; then
  log "building release (stepgate, bare_proxy)"
  cargo build --release --quiet --bin stepgate --example bare_proxy
fi
# Run everything below at a higher priority than the rest of the machine (when
# root), so builds and tests running beside the benchmark disturb it less. With
# autogroup scheduling a process's nice only counts inside its session, so the
# benchmark runs in a session of its own whose autogroup gets the nice value.
if [ "$NICE" != 0 ] && [ "$(id -u)" = 0 ] && [ -z "${LOAD_SH_INNER:-}" ]; then
  if [ -w /proc/self/autogroup ] && command -v setsid >/dev/null; then
    LOAD_SH_INNER=1 SKIP_BUILD=1 setsid -w "$0" "$@" &
    inner=$!
    trap 'kill -TERM -- "-$inner" 2>/dev/null || kill -TERM "$inner" 2>/dev/null' INT TERM
    rc=0; wait "$inner" || rc=$?
    # wait returns early when a signal arrives: let the benchmark clean up
    while kill -0 "$inner" 2>/dev/null; do sleep 0.2; done
    exit "$rc"
  fi
  renice -n "$NICE" -p $$ >/dev/null
fi
if [ -n "${LOAD_SH_INNER:-}" ]; then
  echo "$NICE" >"/proc/$$/autogroup"
  log "running in $(cat "/proc/$$/autogroup")"
fi
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SG="${SG_BIN:-$TARGET_DIR/release/stepgate}"
BARE="$TARGET_DIR/release/examples/bare_proxy"

W="$(mktemp -d /tmp/stepgate-load.XXXXXX)"
# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
mkdir -p "$W/tmp"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

read -r P_UP P_AUTH P_PASS P_AREQ P_BARE P_SG P_SGM P_SGQ P_SGQM P_SGR P_SGRM P_BT < <(python3 - <<'EOF'
import socket
ss = [socket.socket() for _ in range(12)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
for s in ss: s.close()
EOF
)

wait_port() {
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  log "nothing listens on 127.0.0.1:$1"; tail -n 3 "$W"/*.log >&2; return 1
}
start() { # start NAME CMD...: run in background, log to $W/NAME.log, remember the pid
  local name="$1"; shift
  "$@" >"$W/$name.log" 2>&1 &
  PIDS+=("$!")
  eval "PID_$name=$!"
}

# --- nginx: upstream app, external auth endpoint, proxy_pass, auth_request ---
nginx_conf() { # nginx_conf NAME ACCESS_LOG HTTP_BODY
  cat >"$W/$1.conf" <<EOF
worker_processes $WORKERS;
daemon off;
pid $W/$1.pid;
error_log $W/$1-error.log warn;
events { worker_connections 8192; }
http {
  access_log $2;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  client_body_temp_path $W/tmp/body-$1;
  proxy_temp_path $W/tmp/proxy-$1;
  fastcgi_temp_path $W/tmp/fastcgi-$1;
  uwsgi_temp_path $W/tmp/uwsgi-$1;
  scgi_temp_path $W/tmp/scgi-$1;
  default_type text/plain;
  $3
}
EOF
}
# The app behind every proxy: one nginx worker answering 200 "ok".
nginx_conf up off "server { listen 127.0.0.1:$P_UP; location / { return 200 \"ok\"; } }"
# The forward-auth endpoint, its own process and listener (as Authelia/oauth2-proxy would be).
nginx_conf auth off "server { listen 127.0.0.1:$P_AUTH; location / { return 204; } }"
KEEP='proxy_http_version 1.1; proxy_set_header Connection "";'
nginx_conf pass "$W/pass-access.log" "
  upstream app { server 127.0.0.1:$P_UP; keepalive 128; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$P_PASS; location / { proxy_pass http://app; $KEEP } }"
nginx_conf areq "$W/areq-access.log" "
  upstream app { server 127.0.0.1:$P_UP; keepalive 128; keepalive_requests 1000000; }
  upstream authz { server 127.0.0.1:$P_AUTH; keepalive 128; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$P_AREQ;
    location = /_auth {
      internal;
      proxy_pass http://authz;
      proxy_pass_request_body off;
      proxy_set_header Content-Length \"\";
      proxy_set_header X-Original-URI \$request_uri;
      $KEEP
    }
    location / { auth_request /_auth; proxy_pass http://app; $KEEP }
  }"
for n in up auth pass areq; do
  start "nginx_$n" nginx -c "$W/$n.conf" -p "$W" -e "$W/$n-error.log"
done

# --- the bare Pingora proxy and stepgate ---
PRELOAD_ENV=()
[ -n "$ALLOC_PRELOAD" ] && PRELOAD_ENV=(env "LD_PRELOAD=$ALLOC_PRELOAD")
start bare "${PRELOAD_ENV[@]}" "$BARE" --listen "127.0.0.1:$P_BARE" --upstream "127.0.0.1:$P_UP" --threads "$WORKERS" --dir "$W"
# The floor stepgate actually runs on: the same proxy with stepgate's settings
# (one current-thread runtime per worker when WORKERS=1, no L4 read buffer).
BT_FLAGS=(--l4-read-buffer 0)
[ "$WORKERS" = 1 ] && BT_FLAGS+=(--no-work-stealing)
mkdir -p "$W/bt"
start bare_tuned "${PRELOAD_ENV[@]}" "$BARE" --listen "127.0.0.1:$P_BT" --upstream "127.0.0.1:$P_UP" --threads "$WORKERS" --dir "$W/bt" "${BT_FLAGS[@]}"

bench_policy "$W/policy.yaml"
sg_conf sg "$P_SG" "$P_SGM"
start sg "${PRELOAD_ENV[@]}" "$SG" serve --config "$W/sg.yaml"
if [ "$QUIET_ROW" = 1 ]; then
  sg_conf sgq "$P_SGQ" "$P_SGQM"
  start sgq env RUST_LOG=warn "${PRELOAD_ENV[@]}" "$SG" serve --config "$W/sgq.yaml"
fi
# The reload scenario's gateway: the same config with a policy file of its own,
# so its reloads touch no other gateway.
if has reload; then
  { cat "$W/policy.yaml"
    for ((i = 0; i < RELOAD_RULES; i++)); do
      printf '  - name: extra-%s\n    match: { path: "/extra/%s/**", methods: [GET, POST] }\n    require: step_up\n    step_up: { methods: [pin], max_age: 10m }\n' "$i" "$i"
    done
  } >"$W/policy-sgr-base.yaml"
  cp "$W/policy-sgr-base.yaml" "$W/policy-sgr.yaml"
  sg_conf sgr "$P_SGR" "$P_SGRM" policy-sgr.yaml
  start sgr "${PRELOAD_ENV[@]}" "$SG" serve --config "$W/sgr.yaml"
fi
for p in "$P_UP" "$P_AUTH" "$P_PASS" "$P_AREQ" "$P_BARE" "$P_BT" "$P_SG"; do wait_port "$p"; done
[ "$QUIET_ROW" = 1 ] && wait_port "$P_SGQ"
has reload && wait_port "$P_SGR"

# --- a first-factor token, a PIN, a step-up token (as a browser would get them) ---
SGURL="http://127.0.0.1:$P_SG"
bench_signed_in "$SG" "$W/sg.yaml" "$SGURL"

# name|port|path|pid-of-proxy
TARGETS=(
  "bare|$P_BARE|/admin/x|$PID_bare"
  "bare_tuned|$P_BT|/admin/x|$PID_bare_tuned"
  "nginx_pass|$P_PASS|/admin/x|$PID_nginx_pass"
  "nginx_areq|$P_AREQ|/admin/x|$PID_nginx_areq"
  "sg_public|$P_SG|/public/x|$PID_sg"
  "sg_stepup|$P_SG|/admin/x|$PID_sg"
)
[ "$QUIET_ROW" = 1 ] && TARGETS+=("sg_stepup_quiet|$P_SGQ|/admin/x|$PID_sgq")

check_targets() {
  local t name port path pid body
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r name port path pid <<<"$t"
    body="$(curl -s -w ' %{http_code}' -H "Cookie: $COOKIE" "http://127.0.0.1:$port$path")"
    [ "$body" = "ok 200" ] || { log "$name answered '$body', not 'ok 200'"; exit 1; }
  done
}
check_targets

# CPU ticks (utime stime) of a process and its children (nginx master + workers).
tree_pids() { echo "$1"; ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' '; }
cpu_ticks() {
  local u=0 s=0 p f
  for p in $(tree_pids "$1"); do
    f="$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null)" || continue
    set -- $f
    u=$((u + ${12})); s=$((s + ${13}))
  done
  echo "$u $s"
}
status_kb() { # status_kb PID FIELD: the largest FIELD (VmRSS/VmHWM) in the process tree
  local best=0 p v
  for p in $(tree_pids "$1"); do
    v="$(awk -v f="$2:" '$1==f {print $2}' "/proc/$p/status" 2>/dev/null)"
    [ -n "$v" ] && [ "$v" -gt "$best" ] && best="$v"
  done
  echo "$best"
}
metric() { # metric PORT DECISION
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v d="stepgate_requests_total{decision=\"$2\"}" '$1==d {print $2; f=1} END {if (!f) print 0}'
}
reloads_metric() { # reloads_metric PORT RESULT: stepgate_reloads_total{result=RESULT}
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v d="stepgate_reloads_total{result=\"$2\"}" '$1==d {print $2; f=1} END {if (!f) print 0}'
}
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /m$/) {sub(/m$/,"",v); v*=60000} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f\n", v}'; }

# Machine-wide CPU ticks: "busy total" (all CPUs, from /proc/stat; busy leaves out
# irq/softirq time, which is mostly our own loopback traffic).
sys_ticks() { awk '/^cpu / {b=$2+$3+$4+$9; print b, b+$5+$6+$7+$8}' /proc/stat; }
# CPU ticks of everything this script started, and of its finished children (wrk, curl).
our_ticks() {
  local t=0 p u s
  for p in "${PIDS[@]}"; do read -r u s <<<"$(cpu_ticks "$p")"; t=$((t + u + s)); done
  read -r u s <<<"$(sed 's/^.*) //' /proc/$$/stat | awk '{print $12+$14, $13+$15}')"
  echo $((t + u + s))
}
# Other people's CPU use, in % of the machine, over SECONDS while ours is idle.
background_pct() {
  local b0 t0 b1 t1
  read -r b0 t0 <<<"$(sys_ticks)"; sleep "$1"; read -r b1 t1 <<<"$(sys_ticks)"
  echo $(( (b1 - b0) * 100 / (t1 - t0 > 0 ? t1 - t0 : 1) ))
}
# Wait (at most QUIET_MAX s) until other processes use less than QUIET_PCT % of the machine.
wait_quiet() {
  local waited=0 bg
  bg="$(background_pct 1)"
  while [ "$bg" -ge "$QUIET_PCT" ] && [ "$waited" -lt "$QUIET_MAX" ]; do
    sleep 2; waited=$((waited + 3)); bg="$(background_pct 1)"
  done
  [ "$waited" -gt 0 ] && log "waited ${waited}s for other load to settle (now ${bg}%)"
  echo "$bg"
}

# run_wrk NAME PORT PATH PID SECONDS TSV [CONNS [LUA]]: one wrk run, one line
# appended to TSV (LUA: a wrk script choosing the requests). wrk counts a
# response slower than 2 s (--timeout) as a timeout and leaves it out of the
# latency figures.
run_wrk() {
  local name="$1" port="$2" path="$3" pid="$4" secs="$5" tsv="$6" conns="${7:-$CONNS}" out c0 c1 a0 a1 bg o0 o1 sb0 st0 sb1 st1
  local script=()
  [ -n "${8:-}" ] && script=(-s "$8")
  out="$W/wrk-$name.txt"
  if [ -n "${NO_WAIT:-}" ]; then bg="$(background_pct 1)"; else bg="$(wait_quiet)"; fi
  c0="$(cpu_ticks "$pid")"; a0="$(cpu_ticks "$PID_nginx_auth")"
  o0="$(our_ticks)"; read -r sb0 st0 <<<"$(sys_ticks)"
  wrk -t"$WRK_THREADS" -c"$conns" -d"${secs}s" --timeout 2s --latency "${script[@]}" -H "Cookie: $COOKIE" "http://127.0.0.1:$port$path" >"$out" 2>&1
  c1="$(cpu_ticks "$pid")"; a1="$(cpu_ticks "$PID_nginx_auth")"
  o1="$(our_ticks)"; read -r sb1 st1 <<<"$(sys_ticks)"
  local foreign=$(( ((sb1 - sb0) - (o1 - o0)) * 100 / (st1 - st0 > 0 ? st1 - st0 : 1) ))
  [ "$foreign" -lt 0 ] && foreign=0
  local rps p50 p99 reqs non2xx sockerr maxl timeouts
  rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
  p50="$(awk '$1=="50%" {print $2}' "$out" | to_ms)"
  p99="$(awk '$1=="99%" {print $2}' "$out" | to_ms)"
  reqs="$(awk '/requests in/ {print $1}' "$out")"
  non2xx="$(awk '/Non-2xx/ {print $NF}' "$out")"
  sockerr="$(awk '/Socket errors/ {print}' "$out" | tr -s ' ' | tr ' ' '_')"
  maxl="$(awk '$1=="Latency" && $2!="Distribution" {print $4; exit}' "$out" | to_ms)"
  timeouts="$(awk '/Socket errors/ {print $NF}' "$out")"
  read -r u0 s0 <<<"$c0"; read -r u1 s1 <<<"$c1"
  read -r au0 as0 <<<"$a0"; read -r au1 as1 <<<"$a1"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rps" "$p50" "$p99" "$reqs" \
    $((u1 - u0)) $((s1 - s0)) $(((au1 - au0) + (as1 - as0))) "${non2xx:-0}" "${sockerr:--}" "$bg" "$foreign" \
    "${maxl:-0}" "${timeouts:-0}" >>"$tsv"
  log "$(printf '%-16s %9s rps  p50 %7s ms  p99 %7s ms  max %7s ms  non2xx %s  timeouts %s  other load %s%% before, %s%% during' "$name" "$rps" "$p50" "$p99" "${maxl:-0}" "${non2xx:-0}" "${timeouts:-0}" "$bg" "$foreign")"
}

log "ports: upstream $P_UP auth $P_AUTH nginx $P_PASS/$P_AREQ bare $P_BARE stepgate $P_SG (quiet $P_SGQ)"
LOAD0="$(cut -d' ' -f1-3 /proc/loadavg)"
log "warm-up (2 s each)"
WARM=("${TARGETS[@]}")
has proxies || WARM=("sg_public|$P_SG|/public/x|$PID_sg")
for t in "${WARM[@]}"; do
  IFS='|' read -r name port path pid <<<"$t"
  wrk -t1 -c"$CONNS" -d2s -H "Cookie: $COOKIE" "http://127.0.0.1:$port$path" >/dev/null 2>&1
done

TSV="$W/runs.tsv"; : >"$TSV"
HWM="$W/hwm.tsv"; : >"$HWM"
m_step0=0 m_chal0=0 m_pub0=0 m_step1=0 m_chal1=0 m_pub1=0
if has proxies; then
m_step0="$(metric "$P_SGM" stepped_up)"; m_chal0="$(metric "$P_SGM" challenge)"; m_pub0="$(metric "$P_SGM" public)"
for r in $(seq "$ROUNDS"); do
  log "round $r/$ROUNDS (${DURATION}s per target, $CONNS connections, $WRK_THREADS wrk thread)"
  order=("${TARGETS[@]}")
  if [ $((r % 2)) = 0 ]; then  # alternate the order so no target always runs first
    order=(); for ((i = ${#TARGETS[@]} - 1; i >= 0; i--)); do order+=("${TARGETS[$i]}"); done
  fi
  for t in "${order[@]}"; do
    IFS='|' read -r name port path pid <<<"$t"
    run_wrk "$name" "$port" "$path" "$pid" "$DURATION" "$TSV"
  done
done
m_step1="$(metric "$P_SGM" stepped_up)"; m_chal1="$(metric "$P_SGM" challenge)"; m_pub1="$(metric "$P_SGM" public)"
check_targets

for t in "${TARGETS[@]}"; do
  IFS='|' read -r name port path pid <<<"$t"
  printf '%s\t%s\n' "$name" "$(status_kb "$pid" VmHWM)" >>"$HWM"
done
fi

# --- RSS with idle keep-alive connections ---
IDLE="$W/idle.tsv"; : >"$IDLE"
idle_check() { # idle_check NAME PORT PID
  local before during
  before="$(status_kb "$3" VmRSS)"
  python3 benches/idle_conns.py --port "$2" --path /admin/x --cookie "$COOKIE" -n "$IDLE_CONNS" --hold 30 >"$W/idle-$1.log" 2>&1 &
  local ic=$!; PIDS+=("$ic")
  for _ in $(seq 600); do grep -q '^held' "$W/idle-$1.log" 2>/dev/null && break; sleep 0.1; done
  grep -q '^held' "$W/idle-$1.log" || { log "idle connections never all answered: $(cat "$W/idle-$1.log")"; exit 1; }
  sleep 2
  during="$(status_kb "$3" VmRSS)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$before" "$during" "$(status_kb "$3" VmHWM)" "$(head -1 "$W/idle-$1.log")" >>"$IDLE"
  log "$1: VmRSS ${before} kB before, ${during} kB with $IDLE_CONNS idle connections ($(head -1 "$W/idle-$1.log"))"
  kill "$ic" 2>/dev/null || true; wait "$ic" 2>/dev/null || true
}
if has idle; then
  idle_check stepgate "$P_SG" "$PID_sg"
  idle_check bare "$P_BARE" "$PID_bare"
fi

# --- pass-through p99 while Argon2 PIN checks are in flight ---
STSV="$W/storm.tsv"; : >"$STSV"
: >"$W/storm-all.log"
if has storm; then
PCSRF="$(curl -sf -H "Cookie: access_token=$AT" -H 'Accept: text/html' "$SGURL/.stepgate/pin?return_to=/admin/x" | csrf_of)"
[ -n "$PCSRF" ] || { log "no csrf on the PIN page"; exit 1; }
# The store's operation times (stepgate_store_seconds) before and after the
# rounds: what the storm's submissions waited for in the store.
curl -sf "http://127.0.0.1:$P_SGM/metrics" >"$W/store-before.prom" || :
for r in $(seq "$STORM_ROUNDS"); do
  log "argon2 round $r/$STORM_ROUNDS"
  run_wrk idle "$P_SG" /public/x "$PID_sg" "$STORM_DURATION" "$STSV"
  python3 benches/pin_storm.py --port "$P_SG" --cookie "access_token=$AT" --csrf "$PCSRF" --right-pin "$BENCH_PIN" \
    --concurrency "$STORM" --seconds $((STORM_DURATION + 60)) >"$W/storm-$r.log" 2>&1 &
  st=$!; PIDS+=("$st")
  sleep 2  # let the hashing queue fill
  NO_WAIT=1 run_wrk storm "$P_SG" /public/x "$PID_sg" "$STORM_DURATION" "$STSV"
  kill -TERM "$st" 2>/dev/null || true
  wait "$st" || true
  log "$(cat "$W/storm-$r.log")"
  cat "$W/storm-$r.log" >>"$W/storm-all.log"
done
curl -sf "http://127.0.0.1:$P_SGM/metrics" >"$W/store-after.prom" || :
fi

# --- throughput and latency while the policy is reloaded ---
# wrk on a gateway of its own (RELOAD_CONNS connections), alternately without
# reloads and while a loop replaces the policy file (a sibling renamed over it,
# as deploy tools do) and sends SIGHUP every RELOAD_EVERY s. Every rewrite adds
# a differently named rule, so each reload builds and swaps in a new snapshot.
# Two targets: the public route, and a signed-in route (the policy's default)
# spread over RELOAD_PATHS paths, where every distinct path is forwarded with
# its own signed assertion (the signer reuses one for 5 s).
RTSV="$W/reload.tsv"; : >"$RTSV"
RCOUNTS="$W/reload-counts.tsv"; : >"$RCOUNTS"
cat >"$W/paths.lua" <<EOF
-- Requests spread over $RELOAD_PATHS signed-in paths.
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/app/p" .. (n % $RELOAD_PATHS))
end
EOF
# reload_pair ROUND NAME PATH [LUA]: a run without reloads, then one with.
reload_pair() {
  local r="$1" name="$2" path="$3" lua="${4:-}" ok0 err0 ok1 err1 stop rl
  run_wrk "${name}_none" "$P_SGR" "$path" "$PID_sgr" "$RELOAD_DURATION" "$RTSV" "$RELOAD_CONNS" "$lua"
  ok0="$(reloads_metric "$P_SGRM" ok)"; err0="$(reloads_metric "$P_SGRM" error)"
  stop="$W/reload-stop-$r-$name"
  reload_loop "$stop" &
  rl=$!; PIDS+=("$rl")
  NO_WAIT=1 run_wrk "${name}_hup" "$P_SGR" "$path" "$PID_sgr" "$RELOAD_DURATION" "$RTSV" "$RELOAD_CONNS" "$lua"
  touch "$stop"; wait "$rl" || true
  sleep 1  # the last SIGHUP's reload
  ok1="$(reloads_metric "$P_SGRM" ok)"; err1="$(reloads_metric "$P_SGRM" error)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$r" "$(cat "$stop.count")" $((ok1 - ok0)) $((err1 - err0)) "$name" >>"$RCOUNTS"
  log "reload round $r, $name: $(cat "$stop.count") policy rewrites + SIGHUP, $((ok1 - ok0)) reloads applied, $((err1 - err0)) refused"
  LAST_REWRITE="$(cat "$stop.count")"
}
reload_loop() { # reload_loop STOPFILE: until STOPFILE exists
  local i=0
  while [ ! -e "$1" ]; do
    i=$((i + 1))
    { cat "$W/policy-sgr-base.yaml"
      printf '  - name: pushed-%s\n    match: { path: "/pushed/%s/**" }\n    require: deny\n' "$i" "$i"
    } >"$W/policy-sgr.yaml.next"
    mv -f "$W/policy-sgr.yaml.next" "$W/policy-sgr.yaml"
    kill -HUP "$PID_sgr"
    sleep "$RELOAD_EVERY"
  done
  echo "$i" >"$1.count"
}
if has reload; then
  for r in $(seq "$RELOAD_ROUNDS"); do
    log "reload round $r/$RELOAD_ROUNDS (${RELOAD_DURATION}s each, $RELOAD_CONNS connections)"
    reload_pair "$r" reload /public/x
    if [ "$RELOAD_PATHS" -gt 0 ]; then reload_pair "$r" reload_paths /app/p0 "$W/paths.lua"; fi
  done
  # How long each reload took to build and swap (the gateway logs it).
  grep -o '"took_ms":[0-9.]*' "$W/sgr.log" | cut -d: -f2 >"$W/reload-took.txt" || true
  # The last rewrite's rule applies.
  code="$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $COOKIE" "http://127.0.0.1:$P_SGR/pushed/$LAST_REWRITE/x")"
  [ "$code" = 403 ] || { log "the reloaded policy did not apply: /pushed/$LAST_REWRITE/x answered $code, not 403"; exit 1; }
fi

# --- profiles (perf, cpu-clock sampling) of the bare proxy and the step-up route ---
PROF="$W/profiles"; mkdir -p "$PROF"
if has profile && [ "$PROFILE" = 1 ] && command -v perf >/dev/null; then
  for t in "bare|$P_BARE|/admin/x|$PID_bare" "sg_stepup|$P_SG|/admin/x|$PID_sg"; do
    IFS='|' read -r name port path pid <<<"$t"
    log "profiling $name"
    wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" -H "Cookie: $COOKIE" "http://127.0.0.1:$port$path" >"$PROF/$name-wrk.txt" 2>&1 &
    wk=$!
    sleep 1
    perf record -q -e cpu-clock -F 999 -p "$pid" -o "$PROF/$name.data" -- sleep $((DURATION - 2)) >/dev/null 2>&1 || true
    wait "$wk" || true
    perf report -q -i "$PROF/$name.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^$' | head -12 >"$PROF/$name-dso.txt" || true
    perf report -q -i "$PROF/$name.data" --no-children --sort sym --stdio -g none --percent-limit 0.7 2>/dev/null | grep -v '^$' | head -40 >"$PROF/$name-sym.txt" || true
  done
fi

# --- report ---
python3 benches/report.py --runs "$TSV" --hwm "$HWM" --idle "$IDLE" --storm "$STSV" \
  --storm-log "$W/storm-all.log" --store-before "$W/store-before.prom" --store-after "$W/store-after.prom" \
  --profiles "$PROF" --out "$OUT" \
  --reload "$RTSV" --reload-counts "$RCOUNTS" --reload-took "$W/reload-took.txt" \
  --meta "scenarios=$SCENARIOS" "reload_rounds=$RELOAD_ROUNDS" "reload_duration=$RELOAD_DURATION" \
  "reload_conns=$RELOAD_CONNS" "reload_every=$RELOAD_EVERY" "reload_rules=$RELOAD_RULES" "reload_paths=$RELOAD_PATHS" "sg_bin=${SG_BIN:-}" \
  "rounds=$ROUNDS" "duration=$DURATION" "conns=$CONNS" "wrk_threads=$WRK_THREADS" \
  "workers=$WORKERS" "idle_conns=$IDLE_CONNS" "storm=$STORM" "storm_rounds=$STORM_ROUNDS" \
  "storm_duration=$STORM_DURATION" "load_before=$LOAD0" "quiet_pct=$QUIET_PCT" "quiet_max=$QUIET_MAX" "nice=$NICE" "alloc_preload=$ALLOC_PRELOAD" \
  "stepped_up=$((m_step1 - m_step0))" "challenges=$((m_chal1 - m_chal0))" "public=$((m_pub1 - m_pub0))"
log "wrote $OUT"
