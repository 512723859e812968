#!/bin/sh
# The child answers and exits at once, but a grandchild it forked keeps
# stdout (and stderr) open for five minutes.
cat >/dev/null
sleep 300 &
echo "answer from the child"
exit 0
