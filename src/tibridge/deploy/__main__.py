"""`python -m tibridge.deploy`: print the ARM template (deploy/azure/main.json is its checked-in output)."""

import sys

from tibridge.deploy.azure import template_json

sys.stdout.write(template_json())
