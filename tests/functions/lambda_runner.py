"""Run a handler the way the Lambda Python runtime does (used by test_template_invoke.py).

    python lambda_runner.py SPEC.json

SPEC: {"code_uri", "handler" ("module.function"), "layers": [dirs], "events": [...], "out": path}.
The process environment is exactly what the test built from template.yaml. sys.path is
CodeUri first, then the layer directories (Lambda: /var/task, /opt/python), then the runtime's
own packages; the editable install of this repo is removed from the import system so that the
engine can only come from the layer directories. The handler is imported by name (`app`) from
CodeUri and invoked once per event in the same process (warm invocations).
"""

import importlib
import json
import sys
import traceback
import uuid
from pathlib import Path


class Context:
    def __init__(self, name):
        self.function_name = name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
        self.memory_limit_in_mb = 2048
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = "local"

    def get_remaining_time_in_millis(self):
        return 30000


def main():
    spec = json.loads(Path(sys.argv[1]).read_text())
    repo_engine = str(Path(spec["repo"]) / "layers" / "engine")
    sys.path[:] = [p for p in sys.path if not p.startswith(repo_engine) and "__editable__" not in p]
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                        and "editable" not in getattr(f, "__name__", "").lower()]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in repr(h).lower()]
    sys.path_importer_cache.clear()
    sys.path[:0] = [spec["code_uri"], *spec["layers"]]
    results = []
    try:
        module_name, func_name = spec["handler"].rsplit(".", 1)
        module = importlib.import_module(module_name)
        handler = getattr(module, func_name)
        import harmony_image

        engine_from = harmony_image.__file__
        for event in spec["events"]:
            try:
                results.append({"ok": True, "response": handler(event, Context(spec["name"]))})
            except Exception as exc:  # noqa: BLE001 - reported like Lambda reports it
                results.append({"ok": False, "errorType": type(exc).__name__, "errorMessage": str(exc),
                                "trace": traceback.format_exc()})
        Path(spec["out"]).write_text(json.dumps({"init": "ok", "engine_from": engine_from, "results": results}))
    except Exception as exc:  # noqa: BLE001 - Runtime.ImportModuleError / init failure
        Path(spec["out"]).write_text(json.dumps({"init": "failed", "errorType": type(exc).__name__,
                                                  "errorMessage": str(exc), "trace": traceback.format_exc()}))


if __name__ == "__main__":
    main()
