"""Strict YAML reading for the client policy file.

A safe loader that also rejects duplicate and non-string mapping keys, so
that a policy cannot silently lose a rule to a repeated key, or match a
serial that YAML read as a number.
"""

from __future__ import annotations

from typing import Any

import yaml


class PolicyYamlError(ValueError):
    """The policy file is not valid YAML or JSON, or repeats a key."""


class _StrictLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects duplicate and non-string keys."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is not a string", key_node.start_mark
            )
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def load_policy_yaml(data: bytes) -> object:
    """Parse a policy document.

    Raises:
        PolicyYamlError: The text is not valid YAML or JSON.
    """
    try:
        return yaml.load(data, Loader=_StrictLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as error:
        raise PolicyYamlError(str(error)) from None
