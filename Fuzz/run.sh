#!/usr/bin/env bash
# Builds the libFuzzer targets in Fuzz/ against the package's own modules
# (compiled with coverage and AddressSanitizer) and runs each for a while.
#
#   Fuzz/run.sh [SECONDS] [TARGET...]     default: 60 seconds, every target
#   FUZZ_MERGE=1 Fuzz/run.sh 0            minimize the corpora in place (libFuzzer -merge=1)
#
# Corpora live in Fuzz/corpus/<target>/ (seeded from the provider transcripts
# and manifests, kept in the repository); a crash is written to
# Fuzz/crashes/<target>/ and fails the run, and every file kept there is
# replayed before the target runs. Prints executions per target.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(sse ndjson eventstream chat claude json manifest providers)
BUILD=.build-fuzz
B=$BUILD/release
SHARED="$(cd .. && pwd)/shared/fixtures/provider-transcripts"

# -enable-testing: the claude target reaches the kit's internal PluginCall
# initializer (@testable import), to drive the parser without a host.
mkdir -p "$BUILD"
for target in DescartesPluginKit DescartesOpenAIChat Descartes; do
  if ! swift build -c release --build-path "$BUILD" --sanitize fuzzer --sanitize address -Xswiftc -enable-testing --target "$target" >"$BUILD/swift-build.log" 2>&1; then
    grep -E "error:" "$BUILD/swift-build.log" | head -n 20
    echo "fuzz: building $target failed (see $BUILD/swift-build.log)"
    exit 1
  fi
done

# The targets reach the host's `package` declarations (YAML, ConfigValidation,
# the catalog): compile them as part of the package SwiftPM just built.
pkg=$(grep -o 'package-name","[^"]*' "$BUILD/release.yaml" | head -n 1 | cut -d'"' -f3)
maps=()
for t in CCurlShim CProcessShim CDescartesPlugin CDescartesHost; do maps+=(-Xcc "-fmodule-map-file=$B/$t.build/module.modulemap"); done
common=(-O -sanitize=fuzzer,address -parse-as-library -package-name "$pkg" -I "$B/Modules" -I Sources/CCurl -I Sources/CYaml -I Sources/CSQLite -I Sources/CHiredis -I Sources/CDescartesPlugin/include "${maps[@]}")

link_for() {
  case "$1" in
    sse|ndjson|eventstream) echo "$B/DescartesCore.build/*.swift.o $B/DescartesSupport.build/*.swift.o $B/DescartesPluginKit.build/*.swift.o $B/CCurlShim.build/*.o $B/CProcessShim.build/*.o -lcurl" ;;
    chat) echo "$B/DescartesCore.build/*.swift.o $B/DescartesSupport.build/*.swift.o $B/DescartesPluginKit.build/*.swift.o $B/DescartesOpenAIChat.build/*.swift.o $B/CCurlShim.build/*.o $B/CProcessShim.build/*.o -lcurl" ;;
    claude) echo "Plugins/ClaudeCode/ClaudeStream.swift $B/DescartesCore.build/*.swift.o $B/DescartesSupport.build/*.swift.o $B/DescartesPluginKit.build/*.swift.o $B/CCurlShim.build/*.o $B/CProcessShim.build/*.o -lcurl" ;;
    json) echo "$B/DescartesCore.build/*.swift.o" ;;
    manifest|providers) echo "$B/DescartesCore.build/*.swift.o $B/DescartesSupport.build/*.swift.o $B/DescartesSQLite.build/*.swift.o $B/Descartes.build/*.swift.o $B/CDescartesHost.build/*.o $B/CDescartesPlugin.build/*.o $B/CProcessShim.build/*.o -lyaml -lsqlite3 -lhiredis" ;;
  esac
}

seed() {
  local t=$1 dir=Fuzz/corpus/$1
  mkdir -p "$dir"
  [ -n "$(ls -A "$dir" 2>/dev/null)" ] && return 0
  case "$t" in
    sse) for f in "$SHARED"/*/*.sse; do printf '\007' | cat - "$f" > "$dir/$(basename "$(dirname "$f")")-$(basename "$f")"; done ;;
    ndjson) for f in "$SHARED"/*/*.ndjson; do printf '\003' | cat - "$f" > "$dir/$(basename "$f")"; done ;;
    eventstream) for f in conformance/bedrock/*.bin; do printf '\004' | cat - "$f" > "$dir/$(basename "$f")"; done ;;
    chat) for f in "$SHARED"/{openai,deepseek,groq,mistral,openrouter,zai,openai-compatible}/*.sse; do
            printf '\037' | cat - "$f" > "$dir/$(basename "$(dirname "$f")")-$(basename "$f")"; done ;;
    claude) for f in Tests/Fixtures/claude-code/*.jsonl; do printf '\000' | cat - "$f" > "$dir/$(basename "$f")"; done
            printf '\001' | cat - Tests/Fixtures/claude-code/thinking-tool-text.jsonl > "$dir/whole-messages.jsonl"
            printf '\002' | cat - Tests/Fixtures/claude-code/thinking-tool-text.jsonl | grep -v '"type":"result"' > "$dir/no-result-stderr.jsonl" ;;
    json) for f in "$SHARED"/*/*.json; do cp "$f" "$dir/$(basename "$(dirname "$f")")-$(basename "$f")"; done ;;
    manifest) cp manifests/*.yaml "$dir/" ;;
    # Every YAML example in the docs (providers.yaml, plugins.yaml, the
    # middleware sections), one file each.
    providers) awk -v dir="$dir" '
        FNR == 1 { base = FILENAME; sub(/.*\//, "", base); sub(/\.md$/, "", base); n = 0 }
        /^ *```yaml/ { n++; out = sprintf("%s/%s-%02d.yaml", dir, base, n); on = 1; next }
        /^ *```/ { if (on) close(out); on = 0; next }
        on { print > out }' docs/*.md ;;
  esac
}

status=0
for t in "${TARGETS[@]}"; do
  # A target that no longer compiles must fail, not run an old binary.
  rm -f "$B/fuzz-$t"
  # shellcheck disable=SC2046
  swiftc "${common[@]}" "Fuzz/$t.swift" $(eval echo $(link_for "$t")) -o "$B/fuzz-$t" 2>&1 | grep -v "Cannot export local symbol" || true
  seed "$t"
  mkdir -p "Fuzz/crashes/$t"
  if [ "${FUZZ_MERGE:-0}" = 1 ]; then
    rm -rf "$BUILD/merge-$t" && mkdir -p "$BUILD/merge-$t"
    SWIFT_BACKTRACE=enable=no "$B/fuzz-$t" -merge=1 -max_len=65536 "$BUILD/merge-$t" "Fuzz/corpus/$t" >/dev/null 2>&1
    rm -rf "Fuzz/corpus/$t" && mv "$BUILD/merge-$t" "Fuzz/corpus/$t"
    echo "fuzz $t: corpus minimized to $(ls "Fuzz/corpus/$t" | wc -l) inputs"
    continue
  fi
  log=$BUILD/fuzz-$t.log
  # The Swift crash handler would report on top of libFuzzer (and trips ASan itself).
  export SWIFT_BACKTRACE=enable=no
  # Every reproducer kept in Fuzz/crashes/<target>/ runs first: a fixed crash
  # must stay fixed.
  repro=()
  for f in "Fuzz/crashes/$t"/*; do [ -f "$f" ] && repro+=("$f"); done
  if [ ${#repro[@]} -gt 0 ] && ! "$B/fuzz-$t" -timeout=10 "${repro[@]}" >"$log" 2>&1; then
    echo "fuzz $t: FAILED: a kept reproducer crashes again (see $log)"
    tail -n 30 "$log"
    status=1
    continue
  fi
  if "$B/fuzz-$t" -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 -max_len=65536 \
      -artifact_prefix="Fuzz/crashes/$t/" "Fuzz/corpus/$t" >"$log" 2>&1; then
    runs=$(grep -Eo 'Done [0-9]+ runs' "$log" | tail -n 1 | grep -Eo '[0-9]+')
    echo "fuzz $t: ${runs:-?} executions in ${SECONDS_EACH} s, no crash"
  else
    echo "fuzz $t: FAILED (see $log and Fuzz/crashes/$t/)"
    tail -n 30 "$log"
    status=1
  fi
done
exit $status
