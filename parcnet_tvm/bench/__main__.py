"""The worker entry point: python -m parcnet_tvm.bench --worker SPEC."""

import json
import sys

from .worker import worker

if len(sys.argv) == 3 and sys.argv[1] == "--worker":
    print(json.dumps(worker(json.loads(sys.argv[2]))))

