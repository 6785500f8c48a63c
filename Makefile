# video2mp3 — every entry point. `make run` and `make test` work on a fresh clone.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
PIP   := $(PY) -m pip
BUF   := node_modules/.bin/buf
PROTO_SRC := $(shell find protos -name '*.proto')

.PHONY: install protos web lock lint docs run test test-unit bench-convert bench-workers bench-watch bench-big bench-uploads bench-e2e bench-loudness bench-day bench-fair bench-load bench-latency soak k8s-validate clean \
        images compose-up compose-down kube-up kube-down test-containers

install: $(VENV)/.installed

# The only Python install steps: exact versions from the lock file, the
# generated stubs, then the project itself (editable; its `video2mp3` package
# is gen/python/video2mp3, so nothing needs a search path set).
$(VENV)/.deps: requirements/dev.txt
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements/dev.txt
	touch $@

# --no-build-isolation: the build tools (setuptools, grpcio-tools) are in the
# lock already, so this step needs no index.
$(VENV)/.installed: pyproject.toml setup.py gen/.stamp
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	touch $@

# buf and the Node interop client come from npm.
node_modules/.installed: package.json package-lock.json
	# `npm install` (not `npm ci`): npm 11 calls a lock without the other
	# platforms' optional buf binaries "out of sync"; install still honours the lock.
	npm install --no-audit --no-fund --loglevel=error
	touch $@

# The web page's tus client (resumable uploads): tus-js-client's own browser
# bundle from npm (the version package-lock.json pins), its source-map comment
# dropped. Committed, so that `make run` and the images need no npm; this
# regenerates it after an upgrade, and tests/unit/test_web_bundle.py checks it
# is the locked version's.
web: web/tus.min.js
web/tus.min.js: node_modules/.installed
	sed -e 's|//# sourceMappingURL=[^ ]*$$||' node_modules/tus-js-client/dist/tus.min.js > $@

# Python stubs, Envoy's descriptor set and the OpenAPI document:
# tools/codegen.py, the one recipe (the Dockerfile runs it too).
protos: gen/.stamp
gen/.stamp: $(PROTO_SRC) tools/codegen.py tools/openapi.py $(VENV)/.deps
	$(PY) tools/codegen.py gen
	touch $@

# Re-pin every dependency after editing pyproject.toml's ranges.
lock: $(VENV)/.deps
	$(VENV)/bin/pip-compile -q --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
	  --extra mesh --extra dev -o requirements/dev.txt pyproject.toml
	$(VENV)/bin/pip-compile -q --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
	  -o requirements/runtime.txt pyproject.toml

# Protos (buf STANDARD), then Python lint/import order (ruff), types (mypy: the
# package in its installed layout, built by tools/typecheck_tree.py, and the
# tests, tools and benchmarks from the checkout) and the layer rules
# (import-linter, over the installed layout).
lint: install node_modules/.installed
	$(BUF) lint
	$(BUF) build -o /dev/null
	$(VENV)/bin/ruff check .
	$(PY) tools/typecheck_tree.py gen/typecheck
	$(VENV)/bin/mypy
	PYTHONPATH=gen/typecheck $(VENV)/bin/lint-imports

# docs/configuration.md from the settings classes' help= (tools/settings_doc.py);
# a unit test fails while it is out of date.
docs: install
	$(PY) tools/settings_doc.py docs/configuration.md

# Starts SecantusDB, auth, gateway, converter and Envoy in the foreground.
run: install
	$(PY) -m localmesh

# Every test, each level in its folder (tests/conftest.py): lint and types
# first, as CI enforces them; the tests against containers (tests/containers,
# marker `containers`) last, in their own target. The browser tests need
# Debian's Chromium, the container tests podman (CONTRIBUTING.md; .ci/run
# installs both on CI's machine).
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) test-containers

# The service and Envoy images from deploy/docker/Dockerfile, with podman (or
# docker where its daemon runs); base images Docker Hub cannot give here are
# made from Debian packages (deploy/images.sh, deploy/standins/). Prints sizes.
images:
	bash deploy/images.sh build

# The whole stack of deploy/docker-compose.yaml, Envoy on
# 127.0.0.1:$${COMPOSE_PORT:-8080}; waits for /health (deploy/compose.py).
compose-up: install
	$(PY) deploy/compose.py up

# Removes it: containers, network and volumes.
compose-down: install
	$(PY) deploy/compose.py down

# deploy/k8s/overlays/local as far as `podman kube play` runs it, Envoy on
# 127.0.0.1:$${KUBE_PORT:-8081} (deploy/kube_play.py says what needs a cluster).
kube-up: install
	$(PY) deploy/kube_play.py up

kube-down: install
	$(PY) deploy/kube_play.py down

# Images, compose and podman kube play, end to end (tests/containers; run
# their documented commands from docs/operations.md).
test-containers: install
	$(PY) -m pytest -m containers tests/containers $(PYTEST_ARGS)

# The edit loop: every unit test, no server needed, well under a minute.
test-unit: install node_modules/.installed
	$(PY) -m pytest -q -n auto -m unit tests/unit $(PYTEST_ARGS)

bench-convert: install
	$(PY) -m bench.convert

bench-workers: install
	$(PY) -m bench.workers

bench-watch: install
	$(PY) -m bench.watch

# Five phone-sized videos (1.5 GB each) through `make run`: peak RSS per
# process, store disk, API latency under load (bench/big.py; BIG_* options).
bench-big: install
	$(PY) -m bench.big

# Each way in (raw GridFS, gRPC, REST, the seed's form) timed side by side
# through `make run`, and the gateway's peak RSS during a 2 GB upload (bench/uploads.py).
bench-uploads: install
	$(PY) -m bench.uploads

# Time to MP3 as a user sees it, through make run, against the ffmpeg command
# line; uploads against raw GridFS; workers (bench/e2e.py). About 15 minutes.
bench-e2e: install
	$(PY) -m bench.e2e

# Loudness normalisation's cost per minute of audio: with and without, side by side (bench/loudness.py).
bench-loudness: install
	$(PY) -m bench.loudness

# A day of use through `make run` (720p and phone uploads, the upload benchmark,
# three phone videos at once; ~15 GB, every video deleted once DONE): the data
# folder, the store's RSS and GetJob's p99 before and after (bench/day.py; DAY_* options).
bench-day: install
	$(PY) -m bench.day

# A 10-second clip behind another user's backlog of twelve 3-minute videos,
# against an idle mesh, through make run; the ratio last (bench/fair.py).
bench-fair: install
	$(PY) -m bench.fair
# Many users at once: 24 three-minute ffmpeg-written videos from 8 REST clients
# (upload -> watch -> download) against ffmpeg two at a time (bench/load.py; LOAD_* options).
bench-load: install
	$(PY) -m bench.load

# A 10-second clip from upload start to MP3 in hand, against the ffmpeg CLI
# (bench/latency.py; LATENCY_* options).
bench-latency: install
	$(PY) -m bench.latency

soak: install
	$(PY) -m bench.soak

# Every kustomize overlay built and checked offline, compose, Dockerfile, Envoy configs.
k8s-validate: install
	$(PY) -m pytest -q tests/unit/test_deploy.py

clean:
	rm -rf gen $(VENV) node_modules .pytest_cache
