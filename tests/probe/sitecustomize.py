"""Test-only (tests/test_pipeline.py puts this folder on PYTHONPATH): every `kdlab` process appends the kdlab
source files it ran to $KDLAB_IMPORTS_LOG, with DVC's stage name, so the test can hold dvc.yaml's deps to them."""
import atexit
import json
import os
import sys

_LOG = os.environ.get("KDLAB_IMPORTS_LOG")


def _record() -> None:
    files = sorted({m.__file__ for name, m in list(sys.modules.items())
                    if (name == "kdlab" or name.startswith("kdlab.")) and getattr(m, "__file__", None)})
    if files:
        with open(_LOG, "a") as f:
            f.write(json.dumps({"stage": os.environ.get("DVC_STAGE", ""), "argv": sys.argv, "files": files}) + "\n")


if _LOG:
    atexit.register(_record)
