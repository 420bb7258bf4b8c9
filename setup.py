"""The one part of the build that pyproject.toml cannot say.

The bundled recipes live in the top-level ``recipes/`` folder (the project's layout
names it, and the README links into it). A wheel must carry them, so this maps that
folder into the package as ``kcnn/recipes/bundled/`` at build time: one copy in the
source tree, no second copy kept by hand. ``kcnn.recipes.load.RECIPES_DIR`` finds the
packaged folder in an installed wheel and the top-level one in a source tree or an
editable install. Everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["kcnn", "kcnn.*"]), "kcnn.recipes.bundled"],
    package_dir={"kcnn.recipes.bundled": "recipes"},
    package_data={"kcnn": ["py.typed"], "kcnn.recipes.bundled": ["*.yaml", "*.csv"]},
)
