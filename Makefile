# Two entry points a new user needs: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Override for a CUDA build, e.g. `make setup TORCH_SPEC="torch>=2.2,<3"`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-unit test-integration-kafka-python lint bench clean
.PHONY: bench-peers

$(STAMP): pyproject.toml deploy/constraints.txt
	$(PY) -m venv $(VENV)
	# uv (a pip-compatible installer) installs the package and its dependencies into the venv at
	# a fraction of pip's time; pip itself installs only uv and torch (and a current pip: the
	# tests drive `pip --python`).
	$(BIN)/pip install --quiet --upgrade pip "uv>=0.5,<1"
	# The CPU wheel first: the package's torch range would otherwise pull a multi-GB CUDA build.
	# Through pip, whose configuration (find-links, index) is where a machine keeps its CPU
	# build. --no-compile: Python compiles a module when it is first imported, and most of
	# torch's never are (compiling them took two thirds of its install's CPU time).
	$(BIN)/pip install --quiet --no-compile "$(TORCH_SPEC)"
	# Runtime dependencies at the versions the image pins (deploy/constraints.txt), so tests run
	# against what ships; the constraints file only narrows what the package already asks for.
	$(BIN)/uv pip install --quiet --python $(BIN)/python --only-binary scikit-learn \
		-c deploy/constraints.txt -e ".[broker,dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/streamtrain demo $(DEMO_ARGS)

# The suite runs in PYTEST_WORKERS processes (pytest-xdist), each with its own broker; more
# than the cores, since most of a test's time is spent waiting on the processes and broker it
# starts (tests/README.md, "Running in parallel"). PYTEST_WORKERS=0 runs it in one process.
# loadfile: a module's tests run on one worker, so a module fixture is made once; the longest
# modules first, in the order tests/scheduling.py gives (--no-loadscope-reorder keeps it).
PYTEST_WORKERS ?= 4
XDIST := -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Bytecode caches for the suite's processes, in .venv/pycache (`make clean` removes it; nothing
# lands in the checkout), even where the environment sets PYTHONDONTWRITEBYTECODE (this
# machine's does; an empty value is "unset" to Python). Torch is installed uncompiled and uv
# compiles nothing, so without a cache every trainer and server child compiles torch, numpy
# and the package afresh: ~5 CPU-s more per start, and a kill -9 test starts six to ten
# (tests/README.md, "What the suite spends").
PYCACHE_TARGETS := demo test test-unit test-integration-kafka-python
$(PYCACHE_TARGETS): export PYTHONDONTWRITEBYTECODE :=
$(PYCACHE_TARGETS): export PYTHONPYCACHEPREFIX := $(abspath $(VENV))/pycache

# The full suite (the README's command). PYTEST_ARGS adds options, e.g. CI's --durations=20.
# The soak test measures that the demo keeps up, so it runs at normal priority beside the rest,
# which runs under `nice -n 19` (its workers and every process they start inherit it): the
# kernel gives niced work only what CPU the soak leaves (tests/README.md, "Running in
# parallel"). The soak's output is printed after the rest's; either failing fails the target.
test: $(STAMP)
	soak_log=$$(mktemp); \
	$(BIN)/python -m pytest -q -p no:cacheprovider -m soak tests $(PYTEST_ARGS) >"$$soak_log" 2>&1 & soak=$$!; \
	nice -n 19 $(BIN)/python -m pytest -q -p no:cacheprovider $(XDIST) -m "not soak" tests $(PYTEST_ARGS); rest=$$?; \
	wait $$soak; soaked=$$?; echo "== the soak test (-m soak), run beside the rest:"; \
	cat "$$soak_log"; rm -f "$$soak_log"; test $$rest -eq 0 && test $$soaked -eq 0

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# The integration tests whose Kafka path differs by client library (marked kafka_client) with
# every streamtrain Kafka client on kafka-python only (`make test` runs each of them with both
# libraries in one session: tests/conftest.py).
test-integration-kafka-python: $(STAMP)
	STREAMTRAIN_TEST_KAFKA_CLIENT=kafka-python $(BIN)/python -m pytest -q -p no:cacheprovider $(XDIST) -m kafka_client tests/integration $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check streamtrain tests bench
	$(BIN)/ruff format --check streamtrain tests bench
	$(BIN)/mypy

bench: $(STAMP) bench-peers
	$(BIN)/pip install --quiet --only-binary=scikit-learn,river -e ".[bench]"
	$(BIN)/pip install --quiet --no-deps "deep-river==0.3.4"
	STREAMTRAIN_TEST_BENCH=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/unit/test_bench_ctr.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/snapshot.py
	$(BIN)/python bench/peers.py

# bench/serve.py's KServe and MLServer peers, each in its own virtual environment (their pins
# of fastapi, pydantic, grpcio and protobuf do not meet ours): bench/.peers/<peer>, gitignored.
PEERS := bench/.peers
bench-peers: $(PEERS)/kserve/.installed $(PEERS)/mlserver/.installed

$(PEERS)/%/.installed:
	$(PY) -m venv $(PEERS)/$*
	$(PEERS)/$*/bin/pip install --quiet "$(TORCH_SPEC)"
	$(PEERS)/$*/bin/pip install --quiet "$*"
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The GPU check (bench/gpu_check.py; docs/operations.md, "GPU notes"). gpu-wheels fills .whl/
# with the cp312 wheels the device machine needs besides its own torch and numpy, within the
# 64 MiB a device call carries; gpu-check runs on that machine (python3 there holds the CUDA
# torch); gpu-check-dry is the same script here, its CUDA parts skipped, as CI runs it.
GPU_PY ?= python3

.PHONY: gpu-wheels gpu-check gpu-check-dry

gpu-wheels: $(STAMP)
	$(BIN)/python bench/gpu_wheels.py

gpu-check:
	PYTHONUNBUFFERED=1 $(GPU_PY) bench/gpu_check.py

gpu-check-dry: gpu-wheels
	PYTHONUNBUFFERED=1 $(BIN)/python bench/gpu_check.py --dry

