#!/bin/sh
# Not the protocol: coloured text, a partial JSON object, then exit 0.
printf '\033[1;31mWARNING\033[0m: this tool prints colours\n'
printf 'Loading model...\r\033[Kdone\n'
printf '{"type": "text", "text": "unterminated\n'
printf '[1,2,3]\n'
exit 0
