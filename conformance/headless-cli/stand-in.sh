#!/bin/sh
# A program speaking the headless-cli json-lines protocol
# (docs/headless-cli-protocol.md) for the conformance suite
# (conformance/headless-cli.yaml). It reads the request to the end and plays
# what STAND_IN (from the plugin's `env` config) names:
#   text         "Hello there" in two text events, usage, done
#   slow         a text event every 200 ms for a minute, no done
#   hang         nothing, for ten minutes
#   rate-limited an error event: rate_limited, status 429, retry_after_ms 1500
#   crash        exits with status 3 and a message on stderr, no output
#   truncated    text, then exit 0 without done
if [ "$1" = "--version" ]; then echo "stand-in 1.0"; exit 0; fi
cat >/dev/null
case "$STAND_IN" in
  text)
    echo '{"type":"start","model":"stand-in-1"}'
    echo '{"type":"text","text":"Hello"}'
    echo '{"type":"text","text":" there"}'
    echo '{"type":"usage","input_tokens":3,"output_tokens":2}'
    echo '{"type":"done","finish_reason":"stop"}' ;;
  slow)
    i=0
    while [ $i -lt 300 ]; do echo '{"type":"text","text":"tick "}'; sleep 0.2; i=$((i + 1)); done ;;
  hang) exec sleep 600 ;;
  rate-limited) echo '{"type":"error","kind":"rate_limited","message":"slow down","status":429,"retry_after_ms":1500}' ;;
  crash) echo "stand-in: told to crash" >&2; exit 3 ;;
  truncated) echo '{"type":"text","text":"Hel"}' ;;
  *) echo "stand-in: unknown STAND_IN '$STAND_IN'" >&2; exit 2 ;;
esac
