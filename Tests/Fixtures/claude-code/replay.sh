#!/bin/sh
# Stands in for `claude` in the parser tests: ignores its arguments, reads
# stdin to the end, prints a recorded stream-json output.
#   REPLAY_FILE         the recording
#   REPLAY_DROP_RESULT  non-empty: leave out the final result line
#   REPLAY_NOISE        non-empty: put ANSI-coloured non-JSON lines around it
#   REPLAY_EXIT         exit status (default 0)
cat >/dev/null
[ -n "$REPLAY_NOISE" ] && printf '\033[33mwarning:\033[0m \033[1mconfig file ignored\033[0m\n'
if [ -n "$REPLAY_DROP_RESULT" ]; then
  grep -v '"type":"result"' "$REPLAY_FILE"
else
  cat "$REPLAY_FILE"
fi
[ -n "$REPLAY_NOISE" ] && printf '\033[2K\r\033[36mDone.\033[0m\n'
exit "${REPLAY_EXIT:-0}"
