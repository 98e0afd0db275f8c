"""Layer tar streams: safe application onto a directory, and production from a tree or changes.

Part of the plugin API: graph drivers use it so that every driver applies layers with the same,
safe semantics. Layer tars are uncompressed and follow Docker's conventions: ``DIR/.wh.NAME``
deletes ``NAME`` of a lower layer, ``DIR/.wh..wh..opq`` makes ``DIR`` opaque (the lower layers'
content of ``DIR`` is hidden), and PAX ``SCHILY.xattr.*`` records carry extended attributes.

Applying a layer is a security boundary. ``apply_layer``:

* refuses absolute member names and any ``..`` component (``InvalidParameter`` naming the member);
* resolves each parent directory from the root one component at a time with
  ``openat(O_NOFOLLOW)``, so no symlink is ever followed. A parent that this tar itself made a
  symlink (or another non-directory) is refused; one left by a lower layer is replaced by a
  directory, which is what overlayfs shows when an upper directory covers a lower non-directory;
* removes whatever is at a path before writing, and creates with ``O_CREAT|O_EXCL|O_NOFOLLOW``;
* accepts symlinks whose target stays inside the root (absolute targets are relative to it, as
  in a container) and hardlinks whose target resolves inside the root through directories only;
* refuses device nodes unless ``allow_devices``; sets ownership, then modes exactly as in the tar
  (setuid/setgid only when the tar has them), xattrs and times;
* never writes ``trusted.overlay.*`` xattrs taken from a tar: they are overlayfs's own metadata.

Modules: ``apply`` (the boundary), ``tarread`` (stream and header parsing, the ``TarRecorder``
tap), ``paths`` (no-follow resolution), ``produce`` (tars from trees and change lists),
``differ`` (the naive differ).

A stream that carries a ``claim_recording()`` method (``recording_of``) is reported byte by
byte to a ``TarRecorder`` while ``apply_layer`` parses it: the image store records the tar's
framing for a byte-exact ``save`` in the same pass, whatever driver applies the layer.

Whiteouts are delegated to a ``WhiteoutHandler`` so each driver keeps its own on-disk format:
``NaiveWhiteouts`` (full-tree drivers such as vfs) deletes for real; overlay records 0:0 char
devices and the ``trusted.overlay.opaque`` xattr.
"""

from __future__ import annotations

from .apply import NaiveWhiteouts, WhiteoutHandler, apply_layer
from .differ import ContentCheck, diff_dirs
from .paths import (
    WHITEOUT_META_PREFIX,
    WHITEOUT_OPAQUE,
    WHITEOUT_PREFIX,
    clear_dir,
    remove_entry,
    split_member,
)
from .produce import (
    Entry,
    TarWriter,
    TreeReader,
    WhiteoutFormat,
    changes_size,
    changes_tar,
    iter_tree,
    layer_tar,
    read_xattrs,
    tar_stream,
    tree_size,
    walk_fd,
)
from .tarread import TarRecorder, recording_of

# Names of the single-module version, still used by pyd.engine.container_files_io.

__all__ = [
    "ContentCheck", "Entry", "NaiveWhiteouts", "TarRecorder", "TarWriter", "TreeReader", "WHITEOUT_META_PREFIX",
    "WHITEOUT_OPAQUE", "WHITEOUT_PREFIX", "WhiteoutFormat", "WhiteoutHandler", "apply_layer", "changes_size",
    "changes_tar", "clear_dir", "diff_dirs", "iter_tree", "layer_tar", "read_xattrs", "recording_of", "remove_entry",
    "split_member", "tar_stream", "tree_size", "walk_fd",
]
