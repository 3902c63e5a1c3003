"""The wheel, installed the way a deploy installs it and started from another folder, works.

The wheel is built from a copy of the sources (no checkout beside it), installed into a fresh
virtual environment that borrows this one's dependencies but not its editable copy of the
project, and run from an empty folder: so nothing here can find templates, migrations or the
data directory through the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from tests_support import open_request

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = {"worker.py", "db.py", "inngest_app.py", "support_worker"}


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path
    site: Path
    elsewhere: Path  # an empty folder to start it from


def _sources(into: Path) -> Path:
    """What an sdist holds: pyproject, README, the root modules and the package."""
    into.mkdir()
    for name in ("pyproject.toml", "README.md", *(p.name for p in ROOT.glob("*.py"))):
        shutil.copy2(ROOT / name, into / name)
    shutil.copytree(ROOT / "support_worker", into / "support_worker", ignore=shutil.ignore_patterns("__pycache__"))
    return into


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    source = _sources(base / "source")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # No build isolation and no index: the build backend comes from this venv (the dev extra).
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(base)], check=True)
    [wheel] = base.glob("support_worker-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # The dependencies from this venv, by path: its .pth files (the editable copy) are not read.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], check=True)
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    return Installed(wheel=wheel, python=python, site=site, elsewhere=elsewhere)


def _run(installed: Installed, code: str, **env: str) -> str:
    """Run `code` with the installed copy, from an empty folder, with none of the checkout's paths."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "EMBEDDED_PG", "SUPPORT_WORKER"))}
    home = installed.elsewhere / "home"
    clean |= {"HOME": str(home), "XDG_DATA_HOME": str(home / "data")} | env
    out = subprocess.run(
        [str(installed.python), "-c", code], cwd=installed.elsewhere, env=clean, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_wheel_installs_the_three_root_modules_and_one_package(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == TOP_LEVEL
    on_disk = {p.name for p in installed.site.iterdir() if not p.name.endswith((".dist-info", ".pth"))}
    assert on_disk - {"__pycache__"} == TOP_LEVEL


def test_templates_static_files_and_migrations_are_package_data(installed: Installed) -> None:
    for folder in ("doors/templates", "doors/static", "store/migrations"):
        source = {p.name for p in (ROOT / "support_worker" / folder).iterdir() if p.is_file()}
        assert source, folder
        assert {p.name for p in (installed.site / "support_worker" / folder).iterdir()} >= source, folder


def test_the_installed_copy_is_the_one_imported_and_its_metadata_is_complete(installed: Installed) -> None:
    found = json.loads(
        _run(
            installed,
            "import json, support_worker, inngest_app\nfrom importlib import metadata\n"
            "m = metadata.metadata('support-worker')\n"
            "print(json.dumps({'package': support_worker.__file__, 'app': inngest_app.__file__,"
            " 'version': m['Version'], 'license': m['License-Expression'],"
            " 'urls': m.get_all('Project-URL'), 'classifiers': m.get_all('Classifier')}))",
        )
    )
    assert found["package"].startswith(str(installed.site)) and found["app"].startswith(str(installed.site))
    import support_worker

    assert found["version"] == support_worker.__version__
    assert found["license"] == "MIT" and found["urls"] and found["classifiers"]


def test_local_state_lives_in_the_user_data_dir_never_in_site_packages(installed: Installed) -> None:
    code = (
        "import json\nfrom support_worker.core import settings as s\n"
        "print(json.dumps([str(s.data_home()), str(s.Settings().embedded_pg_dir), str(s.env_file())]))"
    )
    home, pgdata, env_file = json.loads(_run(installed, code))
    data = installed.elsewhere / "home" / "data" / "support-worker"
    assert (home, pgdata, env_file) == (str(data), str(data / ".pgdata"), str(data / ".env"))
    assert not pgdata.startswith(str(installed.site))
    chosen = installed.elsewhere / "my-pg"
    [_, pgdata, _] = json.loads(_run(installed, code, EMBEDDED_PG_DIR=str(chosen)))
    assert pgdata == str(chosen)


async def test_the_installed_app_serves_the_desk_with_its_templates_and_static_files(
    installed: Installed, database_url: str, pool: asyncpg.Pool
) -> None:
    request = await open_request(pool, order_id=1003, cents=49900)
    code = (
        "import json\nfrom fastapi.testclient import TestClient\nimport inngest_app\n"
        "with TestClient(inngest_app.app) as client:\n"
        "    page = client.get('/reviews', auth=('alice', 'pw1'))\n"
        "    css = client.get('/reviews/static/desk.css')\n"
        "print(json.dumps([page.status_code, page.text, css.status_code, css.headers['content-type']]))"
    )
    env = {"DATABASE_URL": database_url, "INNGEST_DEV": "1", "REVIEW_DESK_USERS": "alice:pw1"}
    status, page, css_status, css_type = json.loads(_run(installed, code, **env))
    assert status == 200, page
    assert request.id in page and "$499.00" in page
    assert css_status == 200 and css_type.startswith("text/css")


def test_the_installed_command_answers_from_another_folder(installed: Installed) -> None:
    script = installed.python.parent / "support-worker"
    out = subprocess.run([str(script), "--version"], cwd=installed.elsewhere, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    import support_worker

    assert out.stdout.strip() == f"support-worker {support_worker.__version__}"
