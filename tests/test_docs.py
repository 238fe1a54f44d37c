"""The documentation's examples run: every ```python block of the README, and every `>>>` example in the package's
docstrings (outputs compared by doctest)."""

import doctest
import importlib
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README_BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
DOCTEST_MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for path in (ROOT / "fastssl").rglob("*.py")
    if ">>>" in path.read_text()
)


def test_the_readme_and_the_package_have_examples():
    assert len(README_BLOCKS) >= 3
    assert {"fastssl.ops.info_nce", "fastssl.ops.augment", "fastssl.ops.masking"} <= set(DOCTEST_MODULES)


@pytest.mark.parametrize("index", range(len(README_BLOCKS)))
def test_readme_python_block_runs(index):
    torch.manual_seed(index)
    exec(compile(README_BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "readme"})


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples(name):
    torch.manual_seed(0)
    failed, attempted = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert attempted > 0, f"{name}: no examples found"
    assert failed == 0, f"{name}: {failed} of {attempted} docstring examples failed (doctest's report above)"
