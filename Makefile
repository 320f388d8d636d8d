# The developer's entry point.  `make help` lists the targets.
PYTHON ?= python3
CC ?= gcc
CORE_SRC := csrc/pq_ring.c csrc/pq_park.c csrc/pq_lane.c csrc/pq_pool.c csrc/pq_kernels.c
CORE_HDR := $(wildcard csrc/*.h)
C_TESTS := test_ring test_fuzz test_wakeup test_pool test_kernels
CFLAGS_TEST := -std=c11 -g -O1 -Wall -Wextra -Werror -pthread
SAN_ASAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
SAN_TSAN := -fsanitize=thread

.PHONY: help build test test-c test-py test-py-asan test-py-debug bench bench-c bench-c-bin bench-micro profile callgrind lint format clean

help:
	@echo "build      build the extension in place (pyqueue._native)"
	@echo "test       C tests under sanitizers, then the Python tests"
	@echo "test-c     C core tests under ASan+UBSan and under TSan"
	@echo "test-py    the Python test suite (pytest); ARGS=\"tests/unit -k name\" narrows it"
	@echo "test-py-asan  unit and stress tests against an ASan+UBSan build of the extension"
	@echo "test-py-debug unit and stress tests against a PYQUEUE_DEBUG=1 build (counters back to zero)"
	@echo "bench      C microbenchmark, then the peer comparison (quick)"
	@echo "bench-micro  pytest-benchmark microbenchmarks of the Python API"
	@echo "profile    py-spy flame graphs (profiling/out/)"
	@echo "callgrind  instruction counts of the C microbenchmark"
	@echo "lint       ruff check, ruff format --check, mypy (what CI runs)"
	@echo "format     ruff format and ruff check --fix (rewrites files)"
	@echo "clean      remove build products"

build:
	$(PYTHON) setup.py build_ext --inplace

test: test-c test-py

# ARGS go to pytest: make test-py ARGS="tests/unit/test_task.py -k cancel -x"
ARGS ?= tests
test-py: build
	$(PYTHON) -m pytest $(ARGS)

# The extension built with ASan+UBSan into build/asan (next to a copy of the
# Python files), and the tests run from outside the tree so that they import
# it.  CPython itself leaks by design at exit, so leak detection is off.
ASAN_PRELOAD = $(shell $(CC) -print-file-name=libasan.so):$(shell $(CC) -print-file-name=libubsan.so)
test-py-asan:
	rm -rf build/asan build/asan-tmp
	PYQUEUE_SANITIZE=address $(PYTHON) setup.py build_ext -b build/asan -t build/asan-tmp
	cp pyqueue/*.py pyqueue/py.typed pyqueue/_native.pyi build/asan/pyqueue/
	cd /tmp && LD_PRELOAD=$(ASAN_PRELOAD) ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 \
	  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PYTHONPATH=$(CURDIR)/build/asan \
	  $(PYTHON) -m pytest $(CURDIR)/tests/unit $(CURDIR)/tests/stress -q -p no:cacheprovider --capture=sys

# The extension built with PYQUEUE_DEBUG=1 (-O0, assertions, debug counters)
# into build/debug; the unit and stress tests then assert at every teardown
# that the engine's counters (unfinished tasks, ring references, native
# batches) are back to zero.
test-py-debug:
	rm -rf build/debug build/debug-tmp
	PYQUEUE_DEBUG=1 $(PYTHON) setup.py build_ext -b build/debug -t build/debug-tmp
	cp pyqueue/*.py pyqueue/py.typed pyqueue/_native.pyi build/debug/pyqueue/
	cd /tmp && PYTHONPATH=$(CURDIR)/build/debug \
	  $(PYTHON) -m pytest $(CURDIR)/tests/unit $(CURDIR)/tests/stress -q -p no:cacheprovider
	cd /tmp && PYTHONPATH=$(CURDIR)/build/debug $(PYTHON) -c \
	  "from pyqueue import _native; assert _native._debug_counters() is not None, 'not a debug build'"

# Each test binary is built twice, once per sanitizer family (ASan and TSan
# cannot share a binary), and run with halt-on-error settings.
build/c-asan/%: csrc/tests/%.c $(CORE_SRC) $(CORE_HDR) csrc/tests/pq_test.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_TEST) $(SAN_ASAN) -o $@ $< $(CORE_SRC)

build/c-tsan/%: csrc/tests/%.c $(CORE_SRC) $(CORE_HDR) csrc/tests/pq_test.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_TEST) $(SAN_TSAN) -o $@ $< $(CORE_SRC)

test-c: $(addprefix build/c-asan/,$(C_TESTS)) $(addprefix build/c-tsan/,$(C_TESTS))
	@set -e; for t in $(C_TESTS); do \
	  echo "== asan+ubsan: $$t"; \
	  ASAN_OPTIONS=halt_on_error=1:detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 build/c-asan/$$t; \
	done
	@set -e; for t in $(C_TESTS); do \
	  echo "== tsan: $$t"; \
	  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 setarch $$(uname -m) -R build/c-tsan/$$t; \
	done
	@echo "test-c: $(words $(C_TESTS)) tests x 2 sanitizer builds passed"

build/pq_bench: csrc/bench/pq_bench.c $(CORE_SRC) $(CORE_HDR)
	@mkdir -p build
	$(CC) -std=c11 -O2 -g -Wall -Wextra -Werror -pthread -o $@ $< $(CORE_SRC)

bench-c-bin: build/pq_bench

bench-c: build/pq_bench
	build/pq_bench

bench: bench-c
	$(PYTHON) -m benchmarks.compare --quick

bench-micro: build
	$(PYTHON) -m pytest benchmarks/ --benchmark-only

profile: build
	$(PYTHON) profiling/flame.py all

callgrind: build/pq_bench
	profiling/callgrind.sh

LINT_PATHS := pyqueue tests benchmarks profiling setup.py
lint:
	$(PYTHON) -m ruff check $(LINT_PATHS)
	$(PYTHON) -m ruff format --check $(LINT_PATHS)
	$(PYTHON) -m mypy pyqueue

format:
	$(PYTHON) -m ruff format $(LINT_PATHS)
	$(PYTHON) -m ruff check --fix $(LINT_PATHS)

clean:
	rm -rf build dist *.egg-info pyqueue/*.so pyx/*.c pyqueue/_native.c .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
