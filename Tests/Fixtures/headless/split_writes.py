#!/usr/bin/python3
# Writes its events in small pieces with pauses: lines cut in the middle,
# a UTF-8 sequence cut between two writes, two events in one write.
import os, sys, time
sys.stdin.read()
out = sys.stdout.buffer
data = ('{"type":"text","text":"h\u00e9llo "}\n{"type":"text","text":"w\u00f6rld \U0001F600"}\n'
        '{"type":"usage","input_tokens":3,"output_tokens":2}\n{"type":"done","finish_reason":"stop"}\n').encode("utf-8")
# Pieces of 1, 2, 3, ... bytes.
i, n = 0, 1
while i < len(data):
    out.write(data[i:i + n]); out.flush()
    i += n; n = n % 7 + 1
    time.sleep(0.005)
