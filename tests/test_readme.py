"""The README's tour runs: every ```python block, in order, in one namespace."""

import pathlib
import re

from markdown_blocks import check_fences, python_blocks, run_python_blocks

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_starts_with_the_two_setup_commands():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    assert first_block[0].endswith("examples/vit_digits.py")
    assert first_block[1].endswith("-m pytest")
    assert text.index("```bash") < text.index("```python")


def test_every_code_block_runs_or_is_shell_or_output():
    """A block tagged anything but ``python`` is skipped by the tour: only shell and output may."""
    check_fences(README)


def test_readme_tour_runs(capsys):
    assert len(python_blocks(README)) >= 6
    namespace = run_python_blocks(README, {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "['temperature', 'backbone.weight', 'backbone.bias', 'head.weight', 'head.bias']" in out
    assert "875 330" in out
    assert namespace["loss"] < 2.3  # below chance level for 10 classes after training
