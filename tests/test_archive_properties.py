"""Property tests of pyd.drivers.archive against the pure-Python layer model.

Random layer stacks (adds, deletions, opaque dirs, type changes, symlinks inside the root) are
applied in order to a directory and must give the model's tree; the tree's own tar and the
naive differ's tar of the last layer must reproduce it. The same stacks run through each graph
driver in ``pyd.testing.graphdriver.GraphDriverSuite``.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from pyd.drivers.archive import apply_layer, changes_tar, diff_dirs, layer_tar
from pyd.testing.graphdriver import LayerStack, layer_stacks, snapshot

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers set ownership: needs root")

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _copy(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True)


@SETTINGS
@given(layer_stacks())
def test_stack_gives_the_model_tree(stack: LayerStack) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp, "root")
        root.mkdir()
        for tar in stack.tars():
            apply_layer(str(root), tar.stream())
        assert snapshot(root, mtimes=False) == stack.expected()
        out = io.BytesIO()
        layer_tar(str(root), out)
        again = Path(tmp, "again")
        again.mkdir()
        apply_layer(str(again), io.BytesIO(out.getvalue()))
        assert snapshot(again) == snapshot(root)


@SETTINGS
@given(layer_stacks())
def test_naive_diff_of_the_top_layer_recreates_it(stack: LayerStack) -> None:
    tars = stack.tars()
    with tempfile.TemporaryDirectory() as tmp:
        below, top, copy = Path(tmp, "below"), Path(tmp, "top"), Path(tmp, "copy")
        below.mkdir()
        for tar in tars[:-1]:
            apply_layer(str(below), tar.stream())
        _copy(below, top)
        apply_layer(str(top), tars[-1].stream())
        out = io.BytesIO()
        changes_tar(str(top), diff_dirs(str(below), str(top)), out)
        _copy(below, copy)
        apply_layer(str(copy), io.BytesIO(out.getvalue()))
        assert snapshot(copy) == snapshot(top)
        assert snapshot(top, mtimes=False) == stack.expected()
