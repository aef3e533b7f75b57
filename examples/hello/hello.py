"""An example worker: reads its payload and config the IronWorker way, and says hello."""

import json
import os
import sys
import time


def read_json(path):
    if not path or not os.path.exists(path):
        return None
    with open(path) as handle:
        text = handle.read()
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return text


payload = read_json(os.environ.get("PAYLOAD_FILE")) or {}
config = read_json(os.environ.get("CONFIG_FILE")) or {}
name = payload.get("name", "world") if isinstance(payload, dict) else payload
greeting = config.get("greeting", "Hello") if isinstance(config, dict) else "Hello"

print(f"task {os.environ.get('TASK_ID')} running as uid {os.getuid()} in {os.getcwd()}")
for step in range(1, 4):
    print(f"{greeting}, {name}! (step {step}/3)", flush=True)
    time.sleep(0.3)
print("done; a note on stderr follows", flush=True)
print("this line went to stderr", file=sys.stderr)
sys.exit(payload.get("exit_code", 0) if isinstance(payload, dict) else 0)
