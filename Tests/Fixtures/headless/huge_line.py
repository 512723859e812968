#!/usr/bin/python3
# One text event of N MiB (argv[1], default 8) on a single stdout line.
import json, sys
sys.stdin.read()
n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
text = ("0123456789abcdef" * 65536) * n
sys.stdout.write(json.dumps({"type": "text", "text": text}) + "\n")
sys.stdout.write(json.dumps({"type": "done", "finish_reason": "stop", "metadata": {"length": len(text)}}) + "\n")
