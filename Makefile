# Thin wrapper over Meson/Ninja. `make run` and `make test` are the two
# commands of the README.
PYTHON ?= /usr/bin/python3
BUILD ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= h1_request h1_response h1_chunked config cache_rules cache_file h2_session realip proxy_protocol accept_encoding auth jwt dns cookie subfilter securelink

.PHONY: all deps build asan test unit integration fuzz run bench bench-quick micro docs clean format

all: build

deps:
	bash scripts/deps.sh

$(BUILD)/build.ninja:
	meson setup $(BUILD) --buildtype=release -Db_lto=false

build: $(BUILD)/build.ninja
	ninja -C $(BUILD)

$(ASAN_BUILD)/build.ninja:
	meson setup $(ASAN_BUILD) --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false

asan: $(ASAN_BUILD)/build.ninja
	ninja -C $(ASAN_BUILD)

# Unit tests and corpus replays under ASan+UBSan, integration tests against
# both builds' binaries where it matters; one summary line at the end.
test: deps build asan
	PYTHON=$(PYTHON) BUILD=$(BUILD) ASAN_BUILD=$(ASAN_BUILD) bash scripts/test.sh

unit: asan
	meson test -C $(ASAN_BUILD) --suite unit --suite fuzz --print-errorlogs

integration: build asan
	PORTICO_BIN=$(abspath $(ASAN_BUILD))/portico $(PYTHON) -m pytest tests/integration -q

$(FUZZ_BUILD)/build.ninja:
	CC=clang meson setup $(FUZZ_BUILD) --buildtype=debug -Dfuzz=true -Dtests=false

# Run every libFuzzer target for FUZZ_SECONDS, growing fuzz/out/<target>.
fuzz: $(FUZZ_BUILD)/build.ninja
	ninja -C $(FUZZ_BUILD)
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/out/$$t; \
	  $(FUZZ_BUILD)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	    -artifact_prefix=fuzz/out/$$t- fuzz/out/$$t fuzz/corpus/$$t || exit 1; \
	done

run: deps build
	@echo "Portico on http://127.0.0.1:8080/ (Ctrl-C to stop)"
	$(BUILD)/portico -c examples/quickstart.conf

bench: deps build
	bash scripts/deps.sh --bench
	PORTICO_BIN=$(abspath $(BUILD))/portico $(PYTHON) bench/run.py $(BENCH_ARGS)

bench-quick: deps build
	bash scripts/deps.sh --bench
	PORTICO_BIN=$(abspath $(BUILD))/portico $(PYTHON) bench/run.py --quick $(BENCH_ARGS)

micro: build
	$(BUILD)/micro_h1_parse
	$(BUILD)/micro_router_lookup
	$(BUILD)/micro_balancer
	$(BUILD)/micro_header_rewrite

docs: build
	$(BUILD)/portico --docs > docs/directives.md

format:
	clang-format -i $$(git ls-files 'src/*.c' 'src/*.h' 'tests/unit/*.c' 'fuzz/*.c' 'bench/*.c' 'bench/micro/*.c')

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
