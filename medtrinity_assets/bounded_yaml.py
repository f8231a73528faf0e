"""YAML written by contributors and publishers, read with bounded size and alias expansion.

``yaml.safe_load`` builds no arbitrary objects but bounds nothing: a 598-byte "billion laughs"
document (nine anchors, each a list of nine aliases of the one before) is a small node graph
that whatever walks the loaded value (pydantic, an error message quoting the input) expands
into 9^9 items and gigabytes. So the file size is capped before it is read, and the composed
node graph is measured as if every alias were expanded before any Python object is built.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

# Far above any spec, knowledge file or data.yaml (the largest knowledge file is 57 KB).
MAX_YAML_BYTES = 1_048_576
# Nodes of the document with every alias expanded: a spec has a few hundred, a knowledge file
# a few thousand; the alias bomb has 435 million.
MAX_EXPANDED_NODES = 200_000


class YamlLimitError(ValueError):
    """A YAML document over the size or alias-expansion bound; the message names the file."""


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: Node, name: str, limit: int) -> None:
    """Count nodes with aliases expanded; each shared node is measured once (memo), so the
    count of a bomb is found in time proportional to its size on disk."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise YamlLimitError(f"{name}: a YAML alias refers to a node that contains it (recursive alias)")
        open_nodes.add(key)
        total = 1
        for child in _children(node):
            total += size(child)
            if total > limit:
                raise YamlLimitError(
                    f"{name}: YAML aliases expand to over {limit:,} nodes (an alias bomb?); "
                    "write the values out or use fewer anchors"
                )
        open_nodes.discard(key)
        sizes[key] = total
        return total

    size(root)


def load_yaml_text(text: str, name: str, max_nodes: int = MAX_EXPANDED_NODES):
    """``yaml.safe_load`` of ``text``, refusing documents whose aliases expand past ``max_nodes``."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_expansion(node, name, max_nodes)
            return loader.construct_document(node)
        except RecursionError:
            raise YamlLimitError(f"{name}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def load_yaml_file(path: Path | str, max_bytes: int = MAX_YAML_BYTES, max_nodes: int = MAX_EXPANDED_NODES):
    """A YAML file of at most ``max_bytes`` (checked before parsing, whatever the file claims)."""
    path = Path(path)
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)  # never more, even from a device or a growing file
    if len(data) > max_bytes:
        raise YamlLimitError(f"{path}: larger than {max_bytes:,} bytes; not read as YAML")
    return load_yaml_text(data.decode("utf-8"), str(path), max_nodes)
