import ast
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


# All metadata lives in setup.cfg. This file adds one step: a built package carries copies of the repository files
# it reads at run time, so a wheel works without a checkout. The list is e5_mistral/resources.py's BUNDLED_FILES.
ROOT = Path(__file__).resolve().parent


def bundled_files() -> tuple:
    tree = ast.parse((ROOT / "e5_mistral" / "resources.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "BUNDLED_FILES" for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError("e5_mistral/resources.py defines no BUNDLED_FILES")


class BuildWithResources(build_py):
    def run(self):
        super().run()
        for relative in bundled_files():
            target = Path(self.build_lib) / "e5_mistral" / "resources" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / relative, target)


setup(cmdclass={"build_py": BuildWithResources})
