#!/bin/sh
# A stand-in `llm` for the conformance suite (conformance/llm.yaml), run as
# the llm dialect runs llm: llm -m MODEL -u -- PROMPT, nothing on stdin. It
# prints what llm 0.36 printed against a scripted OpenAI-compatible server on
# 127.0.0.1 (the answer on stdout, "Token usage: ..." and "Error: ..." on
# stderr, exit status 1 for an error), as STAND_IN (the plugin's `env`) says:
#   text          "Hello from loopback" and llm -u's usage line
#   slow          a word every 200 ms for a minute
#   hang          nothing, for ten minutes
#   auth          llm's line for a 401 (exit 1)
#   rate-limited  llm's line for a 429 (exit 1)
#   crash         a Python traceback on stderr, exit 3
if [ "$1" = "--version" ]; then echo "llm, version 0.36 (stand-in)"; exit 0; fi
case "$STAND_IN" in
  text)
    echo "Hello from loopback"
    echo "Token usage: 11 input, 4 output" >&2 ;;
  slow)
    i=0
    while [ $i -lt 300 ]; do printf 'tick '; sleep 0.2; i=$((i + 1)); done ;;
  hang) exec sleep 600 ;;
  auth) echo "Error: Error code: 401 - Incorrect API key provided: sk-stand-in" >&2; exit 1 ;;
  rate-limited) echo "Error: Error code: 429 - Rate limit reached for requests" >&2; exit 1 ;;
  crash) printf 'Traceback (most recent call last):\n  File "llm", line 1\nKeyError: 3\n' >&2; exit 3 ;;
  *) echo "stand-in: unknown STAND_IN '$STAND_IN'" >&2; exit 2 ;;
esac
