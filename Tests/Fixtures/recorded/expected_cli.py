"""The command line every recorded-answer extractor shares (stdlib only).

    python3 <provider>_expected.py [--write | --check] BODY...

Each BODY's expected result (what the extractor reads from the body alone)
is printed, written to its sidecar, BODY without its extension plus
.expected.json (--write), or compared with that sidecar (--check: prints
MISMATCH and exits 1 when one differs). Request and expected sidecars given
as BODY are skipped, so a directory's `*` can be passed.
"""
import json
import os
import re


def sidecar(path, body_extensions):
    return re.sub(r"\.(%s)$" % "|".join(body_extensions), "", path) + ".expected.json"


def run(argv, extract, body_extensions=("sse", "json")):
    mode = None
    if argv and argv[0] in ("--write", "--check"):
        mode, argv = argv[0], argv[1:]
    files = [a for a in argv if not a.endswith((".request.json", ".expected.json"))]
    bad = 0
    for path in files:
        got = extract(path)
        if mode == "--write":
            with open(sidecar(path, body_extensions), "w", encoding="utf-8") as f:
                json.dump(got, f, indent=2, ensure_ascii=False)
                f.write("\n")
        elif mode == "--check":
            with open(sidecar(path, body_extensions), encoding="utf-8") as f:
                if json.load(f) != got:
                    print("MISMATCH", path)
                    bad += 1
        else:
            print(json.dumps({os.path.basename(path): got}, ensure_ascii=False))
    return 1 if bad else 0
