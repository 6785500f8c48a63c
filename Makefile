# video2mp3 — every entry point. `make run` and `make test` work on a fresh clone.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
BUF   := node_modules/.bin/buf
PROTO_SRC := $(shell find protos -name '*.proto')
export PYTHONPATH := $(CURDIR):$(CURDIR)/gen/python

.PHONY: install protos lint run test test-fast bench-convert bench-workers soak k8s-validate clean

install: $(VENV)/.installed gen/.stamp

# Virtualenv + pip from pyproject.toml: the only Python install step.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# buf and the Node interop client come from npm.
node_modules/.installed: package.json package-lock.json
	# `npm install` (not `npm ci`): npm 11 calls a lock without the other
	# platforms' optional buf binaries "out of sync"; install still honours the lock.
	npm install --no-audit --no-fund --loglevel=error
	touch $@

# Python stubs (grpcio-tools) and the descriptor set Envoy's transcoder reads.
# google/api/*.proto come from the googleapis-common-protos wheel, copied to a
# git-ignored folder so buf and protoc can see them offline.
protos: gen/.stamp
gen/.stamp: $(PROTO_SRC) $(VENV)/.installed
	rm -rf gen && mkdir -p gen/python gen/third_party/google/api gen/third_party/google/rpc
	@site=$$($(PY) -c 'import google.api, os; print(os.path.dirname(os.path.dirname(google.api.__path__[0])))'); \
	  cp $$site/google/api/{annotations,http,httpbody,field_behavior}.proto gen/third_party/google/api/; \
	  cp $$site/google/rpc/status.proto gen/third_party/google/rpc/
	$(PY) -m grpc_tools.protoc -Iprotos -Igen/third_party \
	  --python_out=gen/python --pyi_out=gen/python --grpc_python_out=gen/python \
	  $(PROTO_SRC)
	$(PY) -m grpc_tools.protoc -Iprotos -Igen/third_party \
	  --include_imports --include_source_info --descriptor_set_out=gen/descriptor.pb \
	  $(PROTO_SRC) google/rpc/status.proto
	touch $@

lint: gen/.stamp node_modules/.installed
	$(BUF) lint
	$(BUF) build -o /dev/null

# Starts SecantusDB, auth, gateway, converter and Envoy in the foreground.
run: install
	$(PY) -m mesh

test: install node_modules/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

bench-convert: install
	$(PY) -m bench.convert

bench-workers: install
	$(PY) -m bench.workers

soak: install
	$(PY) -m bench.soak

k8s-validate: install
	$(VENV)/bin/kubernetes-validate deploy/k8s/*.yaml

clean:
	rm -rf gen $(VENV) node_modules .pytest_cache
