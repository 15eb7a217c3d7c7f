"""Install with `pip install --no-build-isolation .` after torch, so pip never fetches another torch."""
import re
from pathlib import Path

from setuptools import setup

version = re.search(r'__version__ = "([^"]+)"', Path("udd_fast/__init__.py").read_text()).group(1)

setup(
    name="udd_fast",
    version=version,
    description="Fast, checkable dataset distillation: IDC multi-formation gradient matching and UDD",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=["udd_fast"],
    python_requires=">=3.10",
    # torch unpinned on purpose: an installed build (CPU or the user's CUDA one) satisfies it.
    install_requires=["torch", "numpy>=2", "tqdm", "pillow", "scipy"],
    extras_require={"test": ["pytest", "pytest-benchmark", "hypothesis"]},
)
