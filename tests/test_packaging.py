"""The wheel as a user gets it: the bundled recipes and py.typed inside, and an
installed wheel (not the source tree) that lists and finds its recipes.

The wheel is built from a copy of the source files (so a stale ``build/`` folder in
the checkout cannot leak into it) without build isolation, and installed with
``--no-deps --no-index`` into a fresh virtual environment whose dependencies come
from this one through a ``.pth`` file: no downloads. ``.ci/run`` does the same with
the real checkout and trains the quickstart recipe from the installed wheel.
"""

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from kcnn import __version__

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "kcnn", "recipes")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "bundled"))
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(dist), str(src)],
                   check=True, capture_output=True, text=True, timeout=300)
    (path,) = dist.glob("kcnn-*.whl")
    return path


def test_wheel_ships_every_bundled_recipe_and_py_typed(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = sorted(p.name for p in (ROOT / "recipes").iterdir() if p.suffix in (".yaml", ".csv"))
    assert "quickstart.yaml" in recipes and "digits_lt_cost_matrix.csv" in recipes
    assert {f"kcnn/recipes/bundled/{n}" for n in recipes} <= names
    assert "kcnn/py.typed" in names and "kcnn/quiet.py" in names
    assert not [n for n in names if n.startswith(("recipes/", "tests/"))]


def test_installed_wheel_lists_and_finds_its_recipes(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "kcnn-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()

    def kcnn(*args):
        return subprocess.run([venv / "bin" / "kcnn", *args], capture_output=True, text=True,
                              cwd=work, timeout=120)

    where = subprocess.run([python, "-c", "import kcnn; from kcnn.recipes.load import RECIPES_DIR; "
                            "print(kcnn.__file__); print(RECIPES_DIR)"],
                           check=True, capture_output=True, text=True, cwd=work).stdout.split()
    assert where[0].startswith(str(site)), where  # the wheel's kcnn, not the checkout's
    assert where[1] == str(site / "kcnn" / "recipes" / "bundled")
    listing = kcnn("recipe", "list")
    assert listing.returncode == 0, listing.stderr
    names = [line.split()[0] for line in listing.stdout.splitlines()]
    assert names == sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
    shown = kcnn("recipe", "show", "quickstart")
    assert shown.returncode == 0 and shown.stdout.startswith("name: quickstart"), shown.stderr
    # A bundled recipe that reads a file beside it (its cost matrix CSV).
    assert kcnn("recipe", "validate", "digits_lt_cost_matrix").returncode == 0
    assert kcnn("--version").stdout.strip() == f"kcnn {__version__}"
