#!/usr/bin/env bash
# Install what stepgate's build and tests need, only what is missing.
# Debian/Ubuntu; as root, or with sudo. Usage: scripts/install-deps.sh [build|test|bench]
set -euo pipefail
what="${1:-test}"

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null && SUDO="sudo" || { echo "install-deps: run as root or install sudo" >&2; exit 1; }
fi

need=()
command -v cmake >/dev/null || need+=(cmake)            # Pingora's zlib-ng build
command -v cc >/dev/null || need+=(build-essential)
if [ "$what" = test ] || [ "$what" = bench ]; then
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v chromium >/dev/null || need+=(chromium)
  command -v chromedriver >/dev/null || need+=(chromium-driver)
  command -v openssl >/dev/null || need+=(openssl)
  command -v python3 >/dev/null || need+=(python3 python3-pip)
  # Upstreams that disagree, for the differential suite (tests/differential.rs).
  command -v nginx >/dev/null || need+=(nginx-light)
  command -v node >/dev/null || need+=(nodejs)
  command -v npm >/dev/null || need+=(npm)          # installs the test OpenID provider (tests/fixtures/oidc)
  command -v java >/dev/null || need+=(default-jre-headless)
  ls /usr/share/java/tomcat10-catalina.jar >/dev/null 2>&1 || need+=(libtomcat10-java)
fi
if [ "$what" = bench ]; then
  command -v wrk >/dev/null || need+=(wrk)
  command -v nginx >/dev/null || need+=(nginx-light)
  command -v curl >/dev/null || need+=(curl)
  command -v perf >/dev/null || need+=(linux-perf)     # profiles in benches/load.sh
  command -v valgrind >/dev/null || need+=(valgrind)  # instruction counts in benches/instructions.sh
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# A real SMTP server for the mail tests (aiosmtpd, from PyPI).
if [ "$what" = test ] && ! python3 -c "import aiosmtpd" 2>/dev/null; then
  echo "install-deps: installing aiosmtpd"
  python3 -m pip install -q aiosmtpd 2>/dev/null || python3 -m pip install -q --break-system-packages aiosmtpd
fi
# PyJWT, to verify upstream assertions the way an app in Python would (tests/assertion.rs).
if [ "$what" = test ] && ! python3 -c "import jwt, cryptography" 2>/dev/null; then
  echo "install-deps: installing pyjwt and cryptography"
  python3 -m pip install -q pyjwt cryptography 2>/dev/null || python3 -m pip install -q --break-system-packages pyjwt cryptography
fi
# Werkzeug/Flask, one of the differential suite's upstreams (tests/fixtures/diff/flask_app.py).
if [ "$what" = test ] && ! python3 -c "import flask" 2>/dev/null; then
  echo "install-deps: installing flask"
  python3 -m pip install -q flask 2>/dev/null || python3 -m pip install -q --break-system-packages flask
fi
# LoginRadius's own Python SDK, driven against the gateway by tests/loginradius_sdk.rs
# (module LoginRadius). It uses `requests` only when distutils imports (Python 3.11;
# from 3.12 on, setuptools' copy), else it falls back to urllib3.
if [ "$what" = test ] && ! python3 -c "import LoginRadius, distutils.version" 2>/dev/null; then
  echo "install-deps: installing loginradius-v2"
  lr_pkgs="loginradius-v2==11.7.0"
  python3 -c "import distutils.version" 2>/dev/null || lr_pkgs="$lr_pkgs setuptools"
  python3 -m pip install -q $lr_pkgs 2>/dev/null || python3 -m pip install -q --break-system-packages $lr_pkgs
fi
# A real OpenID provider for the OIDC tests (tests/fixtures/oidc: npm's oidc-provider, on Node.js 20.19+).
oidc_fixture="$(cd "$(dirname "$0")/.." && pwd)/tests/fixtures/oidc"
if [ "$what" = test ] && [ ! -f "$oidc_fixture/node_modules/.package-lock.json" ]; then
  echo "install-deps: installing the test OpenID provider's npm packages"
  node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' \
    || echo "install-deps: warning: Node.js $(node --version) is older than 20.19, which oidc-provider 9 needs" >&2
  (cd "$oidc_fixture" && npm ci --no-audit --no-fund --loglevel=error)
fi
# A real Express app with method-override for tests/attacks.rs (tests/fixtures/override).
override_fixture="$(cd "$(dirname "$0")/.." && pwd)/tests/fixtures/override"
if [ "$what" = test ] && [ ! -f "$override_fixture/node_modules/.package-lock.json" ]; then
  echo "install-deps: installing the Express test app's npm packages"
  (cd "$override_fixture" && npm ci --no-audit --no-fund --loglevel=error)
fi
# LoginRadius's own Node SDK for tests/loginradius_sdk.rs (tests/fixtures/loginradius: npm's loginradius-sdk).
lr_fixture="$(cd "$(dirname "$0")/.." && pwd)/tests/fixtures/loginradius"
if [ "$what" = test ] && [ ! -f "$lr_fixture/node_modules/.package-lock.json" ]; then
  echo "install-deps: installing LoginRadius's Node SDK"
  (cd "$lr_fixture" && npm ci --no-audit --no-fund --loglevel=error)
fi
