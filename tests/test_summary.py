"""summary() tables and the nested repr: names, shapes, totals; shapes not values; folding."""

import pickle
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import jparam as jp
from jparam.display import Summary


class Lin(jp.Module):
    weight: jp.Parameter
    bias: jp.Parameter
    act: object = jp.field(static=True, default=jax.nn.gelu)

    def __init__(self, i, o):
        self.weight = jp.Parameter(jnp.ones((o, i)))
        self.bias = jp.Parameter(jnp.zeros(o))


class Net(jp.Module):
    blocks: list
    head: Lin
    emb: jp.Parameter
    steps: jp.Buffer
    cfg: dict = jp.field(plain_arrays=True)

    def __init__(self):
        self.blocks = [Lin(4, 4) for _ in range(3)] + [Lin(4, 8)]
        self.head = Lin(8, 2)
        self.emb = jp.Parameter(jnp.full((10, 4), 123.0, jnp.bfloat16), trainable=False)
        self.steps = jp.Buffer(jnp.array(0))
        self.cfg = {"scale": jnp.ones(())}


def _rows(table: str) -> list[list[str]]:
    lines = table.splitlines()
    rules = [i for i, line in enumerate(lines) if set(line) == {"-"}]
    return [line.split() for line in lines[rules[0] + 1 : rules[1]]]


def test_summary_rows_and_totals():
    s = Net().summary()
    lines = s.splitlines()
    assert lines[0] == "Net"
    assert lines[1].split() == ["name", "shape", "dtype", "trainable", "count"]
    assert _rows(s) == [
        ["emb", "(10,", "4)", "bfloat16", "frozen", "40"],
        ["steps", "()", "int32", "buffer", "1"],
        ["blocks.0-2.weight", "(4,", "4)", "float32", "yes", "3", "x", "16"],
        ["blocks.0-2.bias", "(4,)", "float32", "yes", "3", "x", "4"],
        ["blocks.3.weight", "(8,", "4)", "float32", "yes", "32"],
        ["blocks.3.bias", "(8,)", "float32", "yes", "8"],
        ["head.weight", "(2,", "8)", "float32", "yes", "16"],
        ["head.bias", "(2,)", "float32", "yes", "2"],
    ]
    # 118 trainable f32 (472 B) + 40 frozen bf16 (80 B) + one int32 buffer (4 B) = 556 B
    assert lines[-1] == ("parameters: 158 (trainable 118, frozen 40)   buffers: 1   size: 556 B")


def test_summary_counts_shared_parameters_once_and_large_counts():
    w = jp.Parameter(jnp.zeros((1000, 1100)))

    class Tied(jp.Module):
        enc: jp.Parameter
        dec: jp.Parameter

    s = Tied(w, w).summary()  # one Parameter at two fields: tied at construction
    assert [r[0] for r in _rows(s)] == ["enc", "dec"]
    assert _rows(s)[0][-1] == "1,100,000"
    assert _rows(s)[1][-1] == "0"
    assert s.splitlines()[-1] == (
        "parameters: 1,100,000 (trainable 1,100,000, frozen 0)   buffers: 0   size: 4.2 MB"
    )


def test_summary_free_function_on_a_dict():
    s = jp.summary({"a": Lin(8, 2)})
    assert s.splitlines()[0] == "dict"
    assert [r[0] for r in _rows(s)] == ["a.weight", "a.bias"]
    assert s.splitlines()[-1].startswith("parameters: 18 (trainable 18, frozen 0)")


def test_repr_nested_shapes_not_values_with_folding():
    assert repr(Net()) == (
        "Net(\n"
        "  blocks=[\n"
        "    3 x Lin(weight=Parameter(f32[4,4]), bias=Parameter(f32[4]), act=gelu),\n"
        "    Lin(weight=Parameter(f32[8,4]), bias=Parameter(f32[8]), act=gelu),\n"
        "  ],\n"
        "  head=Lin(weight=Parameter(f32[2,8]), bias=Parameter(f32[2]), act=gelu),\n"
        "  emb=Parameter(bf16[10,4], trainable=False),\n"
        "  steps=Buffer(i32[]),\n"
        "  cfg={'scale': f32[]},\n"
        ")"
    )
    assert "123" not in repr(Net())  # values never print


def test_repr_short_module_on_one_line_and_training_flag():
    lin = Lin(3, 3)
    assert repr(lin) == "Lin(weight=Parameter(f32[3,3]), bias=Parameter(f32[3]), act=gelu)"
    assert repr(lin.eval()).endswith("act=gelu, training=False)")


def test_repr_folds_many_identical_blocks():
    class Deep(jp.Module):
        layers: list

    r = repr(Deep([Lin(2, 2) for _ in range(48)]))
    assert r.count("Lin(") == 1
    assert "48 x Lin(weight=Parameter(f32[2,2])" in r
    different = repr(Deep([Lin(2, 2), Lin(2, 2).eval(), Lin(2, 2)]))
    assert different.count("Lin(") == 3  # only runs of identical items fold


def test_summary_folds_48_identical_blocks_into_one_row_each():
    class Deep(jp.Module):
        blocks: list

    s = Deep([Lin(4, 4) for _ in range(48)]).summary()
    assert _rows(s) == [
        ["blocks.0-47.weight", "(4,", "4)", "float32", "yes", "48", "x", "16"],
        ["blocks.0-47.bias", "(4,)", "float32", "yes", "48", "x", "4"],
    ]
    assert s.splitlines()[-1].startswith("parameters: 960 (trainable 960, frozen 0)")


def test_summary_does_not_fold_blocks_that_differ():
    class Deep(jp.Module):
        blocks: list

    blocks = [Lin(4, 4), Lin(4, 4).freeze(), Lin(4, 4)]
    names = [r[0] for r in _rows(Deep(blocks).summary())]
    assert names == [
        "blocks.0.weight",
        "blocks.0.bias",
        "blocks.1.weight",
        "blocks.1.bias",
        "blocks.2.weight",
        "blocks.2.bias",
    ]


def test_repr_folds_repeated_modules_but_not_tuples_of_numbers():
    class Conv(jp.Module):
        weight: jp.Parameter
        kernel_size: tuple = jp.field(static=True)

    class Deep(jp.Module):
        blocks: list

    text = repr(Deep([Conv(jp.Parameter(jnp.ones((2, 2))), (3, 3)) for _ in range(3)]))
    assert "3 x Conv(" in text
    assert "kernel_size=(3, 3)" in text


# -- richer renderings: notebooks (HTML), rich, treescope ------------------------------------


def test_summary_is_the_plain_text_with_its_parts():
    s = Net().summary()
    assert isinstance(s, str) and isinstance(s, Summary)
    lines = s.splitlines()
    assert s.title == lines[0] == "Net"
    assert s.header == ("name", "shape", "dtype", "trainable", "count")
    assert [list(r) for r in s.rows][:2] == [
        ["emb", "(10, 4)", "bfloat16", "frozen", "40"],
        ["steps", "()", "int32", "buffer", "1"],
    ]
    assert s.rows[2] == ("blocks.0-2.weight", "(4, 4)", "float32", "yes", "3 x 16")
    assert [r.split() for r in lines[3 : 3 + len(s.rows)]] == _rows(s)
    assert s.footer == lines[-1]
    copied = pickle.loads(pickle.dumps(s))
    assert copied == s and copied.rows == s.rows and copied.footer == s.footer

    class Printer:  # IPython's pretty printer: shows the table itself, not a quoted string
        def text(self, t):
            self.got = t

    printer = Printer()
    s._repr_pretty_(printer, False)
    assert printer.got == str(s)


def test_summary_html_table_for_notebooks():
    s = Net().summary()
    page = s._repr_html_()
    assert page.startswith("<table><caption>Net</caption>") and page.endswith("</table>")
    cells = re.findall(r"<t([dh]) [^>]*>([^<]*)</t[dh]>", page)
    assert [c for tag, c in cells if tag == "h"] == list(s.header)
    assert [c for tag, c in cells if tag == "d"] == [c for r in s.rows for c in r] + [s.footer]
    assert f'<tfoot><tr><td colspan="5">{s.footer}</td></tr></tfoot>' in page
    assert page.count('style="text-align:right"') == 1 + len(s.rows)  # the count column

    class Odd(jp.Module):
        weights: dict

    escaped = jp.summary(Odd({"<b>": jp.Parameter(jnp.ones(2))}))._repr_html_()
    assert "&lt;b&gt;.weights" not in escaped and "weights.&lt;b&gt;" in escaped
    assert "<b>" not in escaped


def test_summary_renders_as_a_rich_table():
    pytest.importorskip("rich")
    from rich.console import Console

    console = Console(record=True, width=120, color_system=None)
    console.print(Net().summary())
    lines = console.export_text().splitlines()
    assert lines[0].strip() == "Net"
    table = [tuple(c.strip() for c in line.split("│")[1:-1]) for line in lines if "│" in line]
    assert table == list(Net().summary().rows)  # the same cells, right-aligned counts included
    assert "┃ name" in lines[2]
    assert lines[-1] == Net().summary().footer


def test_treescope_shows_parameters_with_shape_dtype_flag_and_metadata():
    treescope = pytest.importorskip("treescope")
    model = Lin(3, 2).replace(bias=jp.Parameter(jnp.zeros(2), trainable=False, axes=("out",)))
    text = treescope.render_to_text({"lin": model, "steps": jp.Buffer(jnp.array(3))})
    assert "weight=Parameter(" in text and "jax.Array float32(2, 3)" in text
    assert "trainable=True" in text
    bias = text[text.index("bias=Parameter(") :]
    assert bias.index("trainable=False") < bias.index("metadata={'axes': ('out',)}")
    steps = text[text.index("'steps': Buffer(") :]
    assert "value=<jax.Array(3, dtype=int32)>" in steps and "trainable" not in steps
    assert len(treescope.render_to_html(model)) > 1000  # the notebook view renders


def test_importing_jparam_imports_no_display_or_logging_library():
    libraries = "{'rich', 'treescope', 'tensorboardX'}"
    code = f"import sys, jparam; print(sorted({libraries} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
