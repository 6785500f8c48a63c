#!/bin/sh
# The envoy image's entrypoint: its config, rendered at build time with what
# a deployment sets left as @@NAME:default@@ (video2mp3.ops.envoy_config
# --for-image), completed from the environment, then Envoy on it.
#
#   ENVOY_PORT          8000             REST, gRPC and the web page
#   ENVOY_METRICS_PORT  9902             /stats/prometheus and /ready
#   AUTH_ADDR           auth:50051       AuthService, HOST:PORT
#   MEDIA_ADDR          gateway:50052    MediaService, HOST:PORT
#   ENVOY_LOGIN_LIMIT   200/10           Login requests per seconds, per Envoy (whole numbers)
#   ENVOY_SIGNUP_LIMIT  100/10           SignUp, the same way
#   ENVOY_LOG_LEVEL     info
#   ENVOY_CONCURRENCY   2                worker threads; 0: one per core
#
# Arguments go to Envoy; `--print-config` prints the config instead.
# Nothing is written: the config is handed to Envoy as --config-yaml, so the
# root filesystem can be read-only without a writable /tmp.
set -eu
TEMPLATE=${ENVOY_TEMPLATE:-/etc/envoy/envoy.yaml.in}

die() { echo "video2mp3-envoy: $*" >&2; exit 2; }
number() {  # NAME VALUE
  case $2 in ''|*[!0-9]*) die "$1: expected a whole number, got '$2'" ;; esac
}
script=
set_value() {  # PLACEHOLDER VALUE
  script="${script}s|@@$1:[^@]*@@|$2|g;"
}
port() {  # VARIABLE
  eval "value=\${$1:-}"
  [ -z "$value" ] && return
  number "$1" "$value"
  set_value "$1" "$value"
}
address() {  # VARIABLE, HOST:PORT
  eval "value=\${$1:-}"
  [ -z "$value" ] && return
  case $value in *:*) ;; *) die "$1: expected HOST:PORT, got '$value'" ;; esac
  host=${value%:*} port=${value##*:}
  case $host in ''|*[!A-Za-z0-9.-]*) die "$1: expected HOST:PORT, got '$value'" ;; esac
  number "$1" "$port"
  set_value "${1}_HOST" "$host"
  set_value "${1}_PORT" "$port"
}
limit() {  # VARIABLE, REQUESTS/SECONDS
  eval "value=\${$1:-}"
  [ -z "$value" ] && return
  requests=${value%%/*} seconds=${value#*/}
  number "$1 (REQUESTS/SECONDS)" "$requests"
  number "$1 (REQUESTS/SECONDS)" "$seconds"
  [ "$requests" -ge 1 ] && [ "$seconds" -ge 1 ] || die "$1: expected REQUESTS/SECONDS of at least 1/1, got '$value'"
  set_value "${1}_REQUESTS" "$requests"
  set_value "${1}_SECONDS" "$seconds"
}

port ENVOY_PORT
port ENVOY_METRICS_PORT
address AUTH_ADDR
address MEDIA_ADDR
limit ENVOY_LOGIN_LIMIT
limit ENVOY_SIGNUP_LIMIT
concurrency=${ENVOY_CONCURRENCY:-2}
number ENVOY_CONCURRENCY "$concurrency"

# Then every placeholder left gets its default.
config=$(sed -e "$script" -e 's|@@[A-Z_]*:\([^@]*\)@@|\1|g' "$TEMPLATE")
if [ "${1:-}" = --print-config ]; then
  printf '%s\n' "$config"
  exit 0
fi
if [ "$concurrency" -gt 0 ]; then set -- --concurrency "$concurrency" "$@"; fi
# No hot restart in a container: no shared memory to set up or collide on.
exec envoy --config-yaml "$config" --disable-hot-restart --log-level "${ENVOY_LOG_LEVEL:-info}" "$@"
