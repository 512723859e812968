#!/bin/sh
# The public API of the Descartes library (what an application sees after
# `import Descartes`, apart from DescartesCore's value types it re-exports),
# one declaration a line, sorted:
#
#   support/api-listing.sh [OUT]      # default: docs/api/Descartes.txt; "-" for stdout
#
# Each line is `kind  path  declaration`, from the module's symbol graph
# (swift-symbolgraph-extract over the debug build, public and open only,
# synthesized members left out). It reads the build, so run `swift build`
# first; `make api-check` builds, lists and fails when docs/api/Descartes.txt
# is stale.
set -eu
cd "$(dirname "$0")/.."
out=${1:-docs/api/Descartes.txt}
bin=$(swift build --show-bin-path)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The C modules the library imports, found as the build found them.
set --
for m in "$bin"/*.build/module.modulemap; do set -- "$@" -Xcc "-fmodule-map-file=$m"; done
for d in Sources/*/include; do set -- "$@" -Xcc "-I$d"; done
for d in Sources/CCurl Sources/CYaml Sources/CSQLite Sources/CHiredis; do set -- "$@" -I "$d"; done
swift-symbolgraph-extract -module-name Descartes -target "$(uname -m)-unknown-linux-gnu" -I "$bin/Modules" "$@" \
    -output-dir "$tmp" -minimum-access-level public -skip-synthesized-members
python3 - "$tmp" > "$tmp/listing" <<'PY'
import json, os, sys
lines = set()
for name in sorted(os.listdir(sys.argv[1])):
    if not name.endswith(".symbols.json"):
        continue
    graph = json.load(open(os.path.join(sys.argv[1], name)))
    for s in graph["symbols"]:
        if s.get("accessLevel") not in ("public", "open"):
            continue
        kind = s["kind"]["identifier"].removeprefix("swift.")
        path = ".".join(s["pathComponents"])
        decl = " ".join("".join(f["spelling"] for f in s.get("declarationFragments", [])).split())
        lines.add(f"{kind}  {path}  {decl}")
print("\n".join(sorted(lines)))
PY
if [ "$out" = "-" ]; then cat "$tmp/listing"; else cp "$tmp/listing" "$out"; fi
