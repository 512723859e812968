#!/bin/sh
cat >/dev/null
echo "about to crash" >&2
kill -SEGV $$
