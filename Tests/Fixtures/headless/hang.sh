#!/bin/sh
# One text event, then never ends (the sleep is a child in the same group).
echo '{"type":"text","text":"partial answer"}'
sleep 300
