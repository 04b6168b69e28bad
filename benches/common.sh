# Shared by benches/load.sh and benches/instructions.sh (sourced, not run):
# the benchmark's policy, its gateway config, and a signed-in user with a
# PIN and a step-up token, so both measure the same gateway the same way.
# Expects W (the work directory), P_UP (the upstream's port) and log();
# WORKERS defaults to 1.

# The PIN every benchmark user enrolls.
BENCH_PIN=2580

# bench_policy FILE: a public route and a PIN step-up route.
bench_policy() {
  cat >"$1" <<'POLICY'
default: authenticated
rules:
  - name: public
    match: { path: "/public/**" }
    require: none
  - name: admin
    match: { path: "/admin/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 1h }
POLICY
}

# sg_conf NAME PORT METRICS_PORT [POLICY_FILE]: $W/NAME.yaml, a gateway on
# the embedded store with lockouts out of the way (the storm's wrong PINs
# must not lock or suspend anyone); no metrics listener when METRICS_PORT is
# empty.
sg_conf() {
  local metrics=""
  [ -n "$3" ] && metrics=$'metrics:\n  listen: "127.0.0.1:'"$3"'"'
  cat >"$W/$1.yaml" <<CONF
listen: "127.0.0.1:$2"
threads: ${WORKERS:-1}
upstream: "http://127.0.0.1:$P_UP"
policy: ${4:-policy.yaml}
first_factor:
  cookie: access_token
  jwt:
    algorithms: [HS256]
    secret: "bench-first-factor-secret-0123456789abcdef"
signing:
  secret: "bench-signing-secret-0123456789abcdef0123"
store:
  kind: embedded
  path: $1.redb
$metrics
lockout: { max_failures: 1000000, ip_max_failures: 1000000, max_consecutive: 100 }
# A key file per gateway: gateways starting together would race to create one.
assertion:
  key_file: $1-assertion-key.pem
log:
  format: json
upgrade_sock: $W/$1.sock
pid_file: $W/$1.pid
CONF
}

csrf_of() { sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p' | head -1; }

# bench_signed_in SG CONFIG URL: a first-factor token, a PIN, a step-up token,
# as a browser gets them from the running gateway at URL; sets AT (the
# first-factor token) and COOKIE (both cookies).
bench_signed_in() {
  local sg="$1" config="$2" url="$3" csrf code su
  AT="$("$sg" token --config "$config" --sub bench --email bench@example.com --ttl 7200)"
  csrf="$(curl -sf -H "Cookie: access_token=$AT" -H 'Accept: text/html' "$url/.stepgate/pin/setup?return_to=/admin/x" | csrf_of)"
  [ -n "$csrf" ] || { log "no csrf on the PIN setup page"; exit 1; }
  code="$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: access_token=$AT" \
    --data-urlencode pin=$BENCH_PIN --data-urlencode pin_confirm=$BENCH_PIN --data-urlencode "csrf=$csrf" \
    --data-urlencode return_to=/admin/x "$url/.stepgate/pin/setup")"
  [ "$code" = 303 ] || { log "PIN setup answered $code"; exit 1; }
  su="$(curl -s -o /dev/null -D - -H "Cookie: access_token=$AT" \
    --data-urlencode pin=$BENCH_PIN --data-urlencode "csrf=$csrf" --data-urlencode return_to=/admin/x \
    "$url/.stepgate/pin" | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: stepgate_su=\([^;]*\).*/\1/p')"
  [ -n "$su" ] || { log "no stepgate_su cookie after the PIN"; exit 1; }
  COOKIE="access_token=$AT; stepgate_su=$su"
}
