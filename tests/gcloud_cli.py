"""Runs the installed gcloud CLI offline, and checks JSON against the API messages it is built from.

gcloud needs no project, account or network for what the tests ask of it (``--print-only``, and
loading its generated API messages): a configuration directory of its own under the test's tmp
path, no prompts and no update check are enough, so CI (which has no network) runs it as well.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path


from tests.ci import missing

# Parses JSON into one of gcloud's generated API messages (apitools), the way gcloud does before
# it calls the API, and lists every field the message does not know: misspelt keys and enum
# values outside the API's enum both end up there instead of failing the parse.
_UNRECOGNIZED = r"""
import importlib, json, sys
from apitools.base.py import encoding
from apitools.base.protorpclite import messages

module, name, path = sys.argv[1:4]
message_type = getattr(importlib.import_module(module), name)

def unrecognized(msg, where):
    found = [f"{where}.{field}" for field in msg.all_unrecognized_fields()]
    for field in msg.all_fields():
        value = msg.get_assigned_value(field.name)
        if value is None or not isinstance(field, messages.MessageField):
            continue
        items = value if field.repeated else [value]
        for i, item in enumerate(items):
            found += unrecognized(item, f"{where}.{field.name}" + (f"[{i}]" if field.repeated else ""))
    return found

with open(path, encoding="utf-8") as f:
    print(json.dumps(unrecognized(encoding.PyValueToMessage(message_type, json.load(f)), "$")))
"""


def gcloud_or_skip() -> str:
    """The gcloud executable; the test is skipped without one (and fails under CI, which has it)."""
    found = shutil.which("gcloud")
    if found is None:
        missing("gcloud is not installed (the Google Cloud CLI)")
    return found


def offline_env(tmp_path: Path) -> dict[str, str]:
    """An environment in which gcloud uses a fresh config under tmp_path and asks nothing."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CLOUDSDK_", "GOOGLE_APPLICATION_CREDENTIALS"))}
    env.update({
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud-config"),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_CORE_PROJECT": "offline-check-project",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
    })
    return env


def run_gcloud(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([gcloud_or_skip(), *args], env=offline_env(tmp_path), capture_output=True, text=True,
                          timeout=180, check=False)


def unrecognized_fields(module: str, message: str, data: dict, tmp_path: Path) -> list[str]:
    """Paths of the fields in ``data`` that gcloud's ``module.message`` does not know ([] if none).

    Args:
        module: a generated messages module, e.g.
            ``googlecloudsdk.generated_clients.apis.monitoring.v1.monitoring_v1_messages``.
        message: the message class in it, e.g. ``Dashboard``.
        data: the JSON value to parse.
        tmp_path: where to write it and gcloud's config.
    """
    info = run_gcloud(["info", "--format=json(installation.sdk_root,basic.python_location)"], tmp_path)
    assert info.returncode == 0, info.stderr
    where = json.loads(info.stdout)
    sdk = Path(where["installation"]["sdk_root"])
    path = tmp_path / f"{message}.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    env = offline_env(tmp_path) | {"PYTHONPATH": os.pathsep.join([str(sdk / "lib"), str(sdk / "lib" / "third_party")])}
    result = subprocess.run([where["basic"]["python_location"], "-c", _UNRECOGNIZED, module, message, str(path)],
                            env=env, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)
