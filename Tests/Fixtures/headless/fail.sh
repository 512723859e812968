#!/bin/sh
# Reads the request, complains on stderr, exits 1.
cat >/dev/null
echo "fail.sh: starting" >&2
printf '\033[31merror:\033[0m model "nope" is not installed\n' >&2
exit 1
