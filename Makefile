# Descartes: build, stage, install, test.
#
#   make            build the CLI and every plugin (release) and stage a prefix in build/prefix
#   make run        install missing build packages, build, then run the main job:
#                   plugins list, plugins verify, a streamed completion
#   make check      install what the tests need (support/deps.sh test), run the
#                   test suite and every fuzz target briefly: the README's test command
#   make test       build (debug), install into build/test-prefix, run the whole test suite
#   make fuzz       run every libFuzzer target for FUZZ_SECONDS (default 60)
#   make bench      the benchmark suite against a C libcurl+cJSON client and nginx: docs/benchmarks.md
#                   (stages descartes-bench in build/prefix/bin beside descartes; make install leaves it out)
#   make bench-headless   claude session turn vs fresh spawn, process runtime round trip
#   make sanitize   the test suite under AddressSanitizer, then ThreadSanitizer (sanitize-address, sanitize-thread)
#   make soak       20,000 requests through one instance sampling RSS, and 1,000 in flight at once
#   make bench-lock Synchronization.Mutex against the project's Lock
#   make api-check  fail when docs/api/Descartes.txt (the library's public API) is stale
#   make api        rewrite docs/api/Descartes.txt (support/api-listing.sh)
#   make install    PREFIX=/usr/local DESTDIR= : bin/descartes, bin/descartes-plugin-host, lib/descartes/plugins/,
#                   share/descartes/ (conformance specs, the C examples, the plugin docs,
#                   swift/descartes: the Swift plugin kit as a SwiftPM package),
#                   include/descartes/{plugin.h,json.h,sse.h}, lib/pkgconfig/descartes-plugin.pc
#
# The C example plugin (Plugins/EchoC) is built with $(CC) against the staged
# headers through pkg-config, exactly as a third party would build one. The
# helpers for C authors (Plugins/CKit/include/descartes: JSON, SSE/NDJSON,
# header-only) are installed beside plugin.h; the HTTP example
# (Plugins/OpenAIC, libcurl) is installed as source only.

SWIFT   ?= swift
CC      ?= cc
CONFIG  ?= release
PREFIX  ?= /usr/local
DESTDIR ?=
VERSION := 0.1.0

# Swift plugin products (dynamic libraries libdescartes-<name>.so) that are installed.
SWIFT_PLUGINS := openai anthropic gemini bedrock ollama llamacpp claude-code headless-cli acp codex
# C plugins built by this Makefile: Plugins/<Dir>/<name>.c -> libdescartes-<name>.so
C_PLUGINS := echo
# The header-only helpers for C plugins, installed beside plugin.h.
C_HELPERS := Plugins/CKit/include/descartes/json.h Plugins/CKit/include/descartes/sse.h
# The Swift plugin kit's targets, installed as a SwiftPM package with
# support/swift-kit/Package.swift in share/descartes/swift/descartes.
SWIFT_KIT := CDescartesPlugin CCurl CCurlShim CProcessShim DescartesCore DescartesSupport DescartesPluginKit

STAGE      ?= build/prefix
STAGE_ABS   = $(abspath $(STAGE))
BIN_DIR     = $(shell $(SWIFT) build -c $(CONFIG) --show-bin-path)
PLUGIN_DIR  = lib/descartes/plugins
SHARE_DIR   = share/descartes
# What a plugin author reads, installed in share/descartes/doc.
# Every doc these name is installed with them (KitDocsTests checks it).
PLUGIN_DOCS = docs/writing-a-plugin.md docs/abi.md docs/abi-changelog.md docs/manifest.md docs/conformance.md \
	docs/isolation.md docs/policy.md docs/configuration.md docs/reliability.md \
	docs/scaling.md docs/benchmarks.md docs/embeddings.md docs/structured-output.md docs/gateway.md \
	docs/headless.md docs/headless-cli-protocol.md docs/conversations.md docs/fault-matrix.md
CFLAGS_PLUGIN ?= -std=c11 -O2 -Wall -Wextra -pedantic -Werror -fPIC -fvisibility=hidden -pthread

.PHONY: all build stage stage-bench run test check api api-check deps test-deps install uninstall clean swift-build c-plugins check-header fuzz bench bench-headless bench-lock sanitize sanitize-address sanitize-thread soak

all: stage

swift-build:
	$(SWIFT) build -c $(CONFIG)

# Stage the install layout: what `make install` copies, with a pkg-config
# file pointing at the stage so the C example builds against it.
stage: swift-build
	@mkdir -p $(STAGE)/bin $(STAGE)/$(PLUGIN_DIR) $(STAGE)/include/descartes $(STAGE)/lib/pkgconfig
	cp $(BIN_DIR)/descartes $(BIN_DIR)/descartes-plugin-host $(STAGE)/bin/
	cp Sources/CDescartesPlugin/include/descartes/plugin.h $(C_HELPERS) $(STAGE)/include/descartes/
	sed -e 's|@PREFIX@|$(STAGE_ABS)|' -e 's|@VERSION@|$(VERSION)|' support/descartes-plugin.pc.in > $(STAGE)/lib/pkgconfig/descartes-plugin.pc
	@for p in $(SWIFT_PLUGINS); do cp $(BIN_DIR)/libdescartes-$$p.so $(STAGE)/$(PLUGIN_DIR)/ || exit 1; done
	cp manifests/*.yaml $(STAGE)/$(PLUGIN_DIR)/
	@rm -rf $(STAGE)/$(SHARE_DIR) && mkdir -p $(STAGE)/$(SHARE_DIR)/conformance $(STAGE)/$(SHARE_DIR)/examples $(STAGE)/$(SHARE_DIR)/doc
	cp -R conformance/. $(STAGE)/$(SHARE_DIR)/conformance/
	cp Plugins/EchoC/echo.c manifests/echo.yaml Plugins/OpenAIC/openai-c.c Plugins/OpenAIC/openai-c.yaml $(STAGE)/$(SHARE_DIR)/examples/
	cp $(PLUGIN_DOCS) support/valgrind-swift.supp $(STAGE)/$(SHARE_DIR)/doc/
	@mkdir -p $(STAGE)/$(SHARE_DIR)/swift/descartes/Sources
	cp support/swift-kit/Package.swift $(STAGE)/$(SHARE_DIR)/swift/descartes/
	@for t in $(SWIFT_KIT); do cp -R Sources/$$t $(STAGE)/$(SHARE_DIR)/swift/descartes/Sources/ || exit 1; done
	@$(MAKE) --no-print-directory c-plugins STAGE=$(STAGE)

c-plugins:
	@for p in $(C_PLUGINS); do \
	  src=$$(ls Plugins/*/$$p.c | head -n 1); \
	  echo "$(CC) $$src -> $(STAGE)/$(PLUGIN_DIR)/libdescartes-$$p.so"; \
	  PKG_CONFIG_PATH=$(STAGE_ABS)/lib/pkgconfig $(CC) $(CFLAGS_PLUGIN) -shared \
	    $$(PKG_CONFIG_PATH=$(STAGE_ABS)/lib/pkgconfig pkg-config --cflags descartes-plugin) \
	    -o $(STAGE)/$(PLUGIN_DIR)/libdescartes-$$p.so $$src || exit 1; \
	done

deps:
	support/deps.sh build

test-deps:
	support/deps.sh test

# The main job, with no keys needed.
run: deps
	$(MAKE) --no-print-directory stage
	$(STAGE)/bin/descartes --version
	$(STAGE)/bin/descartes plugins list
	$(STAGE)/bin/descartes plugins verify
	$(STAGE)/bin/descartes complete -p echo --stream --set delay_ms=60 "Descartes streams this sentence back word by word through a plugin written in C."

install: stage
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/$(PLUGIN_DIR) $(DESTDIR)$(PREFIX)/include/descartes $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 755 $(STAGE)/bin/descartes $(STAGE)/bin/descartes-plugin-host $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(STAGE)/include/descartes/plugin.h $(STAGE)/include/descartes/json.h $(STAGE)/include/descartes/sse.h $(DESTDIR)$(PREFIX)/include/descartes/
	install -m 755 $(STAGE)/$(PLUGIN_DIR)/*.so $(DESTDIR)$(PREFIX)/$(PLUGIN_DIR)/
	install -m 644 $(STAGE)/$(PLUGIN_DIR)/*.yaml $(DESTDIR)$(PREFIX)/$(PLUGIN_DIR)/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' support/descartes-plugin.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/descartes-plugin.pc
	rm -rf $(DESTDIR)$(PREFIX)/$(SHARE_DIR)
	install -d $(DESTDIR)$(PREFIX)/share
	cp -R $(STAGE)/$(SHARE_DIR) $(DESTDIR)$(PREFIX)/$(SHARE_DIR)
	chmod -R u=rwX,go=rX $(DESTDIR)$(PREFIX)/$(SHARE_DIR)

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/descartes $(DESTDIR)$(PREFIX)/bin/descartes-plugin-host $(DESTDIR)$(PREFIX)/lib/pkgconfig/descartes-plugin.pc
	rm -f $(DESTDIR)$(PREFIX)/include/descartes/plugin.h $(DESTDIR)$(PREFIX)/include/descartes/json.h $(DESTDIR)$(PREFIX)/include/descartes/sse.h
	rm -rf $(DESTDIR)$(PREFIX)/$(PLUGIN_DIR) $(DESTDIR)$(PREFIX)/$(SHARE_DIR)

# The test suite: a debug build installed into build/test-prefix (the
# out-of-tree plugin test builds against that prefix), then `swift test` in
# three phases. The tests that assert a wall-clock bound (listed in
# Tests/timed-tests.txt) run after the rest, TIMED_WIDTH at a time: started
# together with the whole suite on two cores, a call due in 300 ms was seen
# answered 5 s late, which says nothing about the product. The real-model
# suite (RealModelTests) and the real agent CLIs against the gateway
# (RealAgentTests) and Mistral's vibe (VibeACPTests) run last, on their own:
# a model generating tokens or an agent starting takes both cores. With TEST_ARGS (a --filter), one
# run as asked.
TEST_PREFIX := $(abspath build/test-prefix)
TIMED := \.($(shell sed -e 's/\#.*//' -e '/^ *$$/d' Tests/timed-tests.txt | paste -sd'|'))
TIMED_WIDTH ?= 4
LAST := RealModelTests|RealAgentTests|VibeACPTests
test:
	$(MAKE) --no-print-directory install CONFIG=debug STAGE=build/stage-debug PREFIX=$(TEST_PREFIX) DESTDIR=
	$(SWIFT) build --build-tests
ifeq ($(strip $(TEST_ARGS)),)
	DESCARTES_TEST_PREFIX=$(TEST_PREFIX) DESCARTES_TEST_PHASE=untimed $(SWIFT) test --skip-build --skip '$(LAST)' --skip '$(TIMED)'
	DESCARTES_TEST_PREFIX=$(TEST_PREFIX) DESCARTES_TEST_PHASE=timed SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH=$(TIMED_WIDTH) \
		$(SWIFT) test --skip-build --filter '$(TIMED)' --skip '$(LAST)'
	DESCARTES_TEST_PREFIX=$(TEST_PREFIX) $(SWIFT) test --skip-build --filter '$(LAST)'
else
	DESCARTES_TEST_PREFIX=$(TEST_PREFIX) $(SWIFT) test --skip-build $(TEST_ARGS)
endif

# Everything a fresh machine needs, the test suite, the fuzz targets
# briefly, and the README's first command (the release build, which the
# optimizer can break where the debug build is fine): what CI runs.
check: test-deps
	$(MAKE) --no-print-directory test
	$(MAKE) --no-print-directory run
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=15

# The public API of the Descartes library, one declaration a line
# (support/api-listing.sh, from the debug build's symbol graph): `api`
# rewrites docs/api/Descartes.txt, `api-check` fails when it is stale.
api:
	$(SWIFT) build --target Descartes
	support/api-listing.sh docs/api/Descartes.txt

api-check:
	$(SWIFT) build --target Descartes
	@support/api-listing.sh - | diff -u docs/api/Descartes.txt - \
	    || { echo "docs/api/Descartes.txt is stale: the public API changed; run 'make api' and review the diff" >&2; exit 1; }

# libFuzzer targets (Fuzz/*.swift) against the package's own modules with
# AddressSanitizer, FUZZ_SECONDS each; corpora in Fuzz/corpus, crashes in
# Fuzz/crashes. CI runs each briefly.
FUZZ_SECONDS ?= 60
fuzz:
	Fuzz/run.sh $(FUZZ_SECONDS)

# The benchmark suite (bench/, docs/benchmarks.md): the release build against
# a C client doing the same work with libcurl and cJSON, both against nginx on
# 127.0.0.1; writes the table to docs/benchmarks.md. Installs nginx, hyperfine
# and libcjson-dev from apt when they are missing (as root). BENCH_ARGS, e.g.
# "--runs 7 --only 1,2 --wait-quiet 600", goes to bench/run.py.
BENCH_ARGS ?=
bench: stage-bench
	python3 bench/run.py --skip-build $(BENCH_ARGS)

# The stage plus descartes-bench beside descartes (so it finds the staged
# plugins as descartes does); `make install` does not install it.
stage-bench: stage
	cp $(BIN_DIR)/descartes-bench $(STAGE)/bin/

# Headless backends: a session turn of claude against a fresh spawn, and the
# process runtime's own round trip (needs the claude binary, see .ci/run).
bench-headless:
	$(SWIFT) build --build-tests
	DESCARTES_BENCH=1 $(SWIFT) test --skip-build --filter HeadlessBenchmarks $(TEST_ARGS)

clean:
	rm -rf build .build-fuzz .build-asan .build-tsan
	$(SWIFT) package clean

# Synchronization.Mutex against the project's Lock (Sources/DescartesCore/Lock.swift),
# the lock a separate module as in the package, both built with -O.
bench-lock:
	@d=$$(mktemp -d) && \
	$(SWIFT)c -O -parse-as-library -module-name DescartesCore Sources/DescartesCore/Lock.swift -emit-library -static \
	  -emit-module -emit-module-path $$d/DescartesCore.swiftmodule -o $$d/libDescartesCore.a && \
	cp support/bench/lock.swift $$d/main.swift && \
	$(SWIFT)c -O -I $$d $$d/main.swift -L $$d -lDescartesCore -o $$d/bench-lock 2>&1 | grep -v warning; \
	$$d/bench-lock $(LOCK_CALLS); rm -rf $$d

# The test suite under AddressSanitizer and ThreadSanitizer, each in its own
# build directory (.build-asan, .build-tsan). The test runner exports its
# symbols (--export-dynamic) so the sanitized plugins it dlopens find the
# sanitizer's runtime in it. DESCARTES_SANITIZER tells the tests which
# sanitizer runs them (docs/hardening.md: what is skipped under each, and why).
SAN_ARGS ?=
sanitize: sanitize-address sanitize-thread

sanitize-address:
	$(SWIFT) build --build-tests --sanitize=address --build-path .build-asan -Xlinker --export-dynamic
	DESCARTES_SANITIZER=address ASAN_OPTIONS=detect_leaks=0:handle_segv=0 SWIFT_BACKTRACE=enable=no \
	  $(SWIFT) test --skip-build --no-parallel --sanitize=address --build-path .build-asan $(SAN_ARGS)

sanitize-thread:
	$(SWIFT) build --build-tests --sanitize=thread --build-path .build-tsan -Xlinker --export-dynamic
	DESCARTES_SANITIZER=thread TSAN_OPTIONS=halt_on_error=0:handle_segv=0 SWIFT_BACKTRACE=enable=no \
	  $(SWIFT) test --skip-build --no-parallel --sanitize=thread --build-path .build-tsan $(SAN_ARGS)

# 20,000 requests through one openai instance, sampling resident memory
# (DESCARTES_SOAK_REQUESTS=N to change); 1,000 in flight at once.
soak:
	$(SWIFT) build --build-tests
	DESCARTES_SOAK=1 $(SWIFT) test --skip-build --filter LoadTests $(TEST_ARGS)
