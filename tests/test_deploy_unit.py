"""deploy/storeflow-ops.service: what it promises (notify, watchdog, reload by SIGHUP,
restart on failure, its own user, a read-only system, secrets from a file), and that
systemd itself accepts it (`systemd-analyze verify`, where the tool is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import EXE

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "storeflow-ops.service"
INSTALLED_EXE = "/opt/storeflow-ops/venv/bin/storeflow-ops"
MIN_SYSTEMD = 247  # ProtectProc= and ProcSubset=


def directives(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values, in file order (a key may repeat, like SystemCallFilter=)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out[section] = {}
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key, []).append(value)
    return out


def test_the_unit_runs_the_runner_the_way_systemd_expects() -> None:
    service = directives(UNIT.read_text())["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["ExecStart"].startswith(f"{INSTALLED_EXE} --config /etc/storeflow-ops/")
    assert one["ExecStart"].endswith(" run --log-format json")
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["Restart"] == "on-failure"
    assert one["WatchdogSec"] == "60s"
    # Longer than [runner] shutdown_timeout's default, so runs in hand are marked.
    assert int(one["TimeoutStopSec"].rstrip("s")) > 25
    assert one["EnvironmentFile"] == "/etc/storeflow-ops/env"
    assert not [v for v in service.get("Environment", []) if re.search(
        r"DATABASE_URL|SMTP_URL|TOKEN|SECRET", v)]  # secrets only in the EnvironmentFile
    assert one["DynamicUser"] == "yes" and one["StateDirectory"] == "storeflow-ops"
    assert "XDG_DATA_HOME=%S" in service["Environment"]  # the embedded SQLite in the state dir
    for key, value in {"ProtectSystem": "strict", "NoNewPrivileges": "yes",
                       "PrivateTmp": "yes", "ProtectHome": "yes", "CapabilityBoundingSet": "",
                       "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
                       "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes",
                       "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6"}.items():
        assert one[key] == value, key
    assert service["SystemCallFilter"][0] == "@system-service"


def systemd_version(tool: str) -> int:
    first = subprocess.run([tool, "--version"], capture_output=True, text=True,
                           timeout=30).stdout.split("\n", 1)[0]
    match = re.match(r"systemd (\d+)", first)
    return int(match.group(1)) if match else 0


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian/Ubuntu: apt-get install systemd)")
    version = systemd_version(tool)
    if version < MIN_SYSTEMD:
        pytest.skip(f"systemd {version} predates keys the unit uses (needs {MIN_SYSTEMD}+)")
    # verify checks that ExecStart= exists: point it at this venv's runner.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_EXE, EXE))
    done = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60)
    # An unknown or misspelt key is only a warning (exit 0): any output is a failure.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_systemd_analyze_verify_would_catch_a_misspelt_key(tmp_path: Path) -> None:
    """The verify test above can fail: a misspelt key is reported."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian/Ubuntu: apt-get install systemd)")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_EXE, EXE)
                    .replace("ProtectClock=", "ProtectClok="))
    done = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60)
    assert "Unknown key" in done.stderr and "ProtectClok" in done.stderr
