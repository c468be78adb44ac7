"""Print the service URL of a deployed comfy-remote app (run by `comfy-remote deploy` after `modal deploy`).

Usage: python get_url.py APP_NAME. Prints one JSON line {"url": ...}.
Asks Modal's API instead of parsing `modal deploy` output, whose format changes.
"""

import json
import sys

import modal

app_name = sys.argv[1]
web = modal.Function.from_name(app_name, "web")
print(json.dumps({"url": web.get_web_url()}))
