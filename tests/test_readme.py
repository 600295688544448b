"""The README's tour runs: every ```python block, in order, in one namespace."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_starts_with_the_two_setup_commands():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    assert first_block[0].endswith("examples/vit_digits.py")
    assert first_block[1].endswith("-m pytest")
    assert text.index("```bash") < text.index("```python")


def test_every_code_block_runs_or_is_shell_or_output():
    """A block tagged anything but ``python`` is skipped by the tour: only shell and output may."""
    openings, inside = [], False
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            if not inside:
                openings.append((number, line.strip()[3:].strip()))
            inside = not inside
    assert not inside, "README.md ends inside a ``` block"
    odd = [(number, info) for number, info in openings if info not in ("python", "bash", "text")]
    assert not odd, (
        f"README.md blocks (line, tag) that the tour would skip: {odd}; tag Python code "
        "```python (it runs, in order), shell commands ```bash and printed output ```text"
    )
    assert len(python_blocks()) == sum(info == "python" for _, info in openings)


def test_readme_tour_runs(capsys):
    blocks = python_blocks()
    assert len(blocks) >= 6
    namespace: dict = {"__name__": "readme"}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "['temperature', 'backbone.weight', 'backbone.bias', 'head.weight', 'head.bias']" in out
    assert "875 330" in out
    assert namespace["loss"] < 2.3  # below chance level for 10 classes after training
