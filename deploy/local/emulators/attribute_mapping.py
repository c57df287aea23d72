"""Workload Identity Federation attribute mapping, limited to dotted paths.

A mapping is the ``--attribute-mapping`` value of gcloud: comma-separated
``TARGET=EXPRESSION`` pairs. Google evaluates each expression as CEL over the
token claims. This emulator accepts only the CEL subset ``assertion`` followed
by one or more ``.name`` field selections, for example
``assertion.client.x5_sha256``. Limits follow the provider reference: a
required ``google.subject`` of at most 127 bytes, at most 50 ``attribute.*``
keys of ``[a-z0-9_]{1,100}``, expressions of at most 2048 characters and at
most 8 KB of mapped attributes in total.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_MAPPING = (
    "google.subject=assertion.client_id, "
    "attribute.client_x5_spiffe=assertion.client.x5_spiffe, "
    "attribute.client_x5_dnssan=assertion.client.x5_dnssan, "
    "attribute.client_x5_urisan=assertion.client.x5_urisan, "
    "attribute.client_x5_sha256=assertion.client.x5_sha256, "
    "attribute.client_x5_serial=assertion.client.x5_serial"
)
SUBJECT = "google.subject"
GROUPS = "google.groups"
MAX_SUBJECT_BYTES = 127
MAX_CUSTOM_ATTRIBUTES = 50
MAX_EXPRESSION_CHARS = 2048
MAX_MAPPED_BYTES = 8 * 1024

_CUSTOM_TARGET = re.compile(r"^attribute\.[a-z0-9_]{1,100}$")
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_PATH_EXPRESSION = re.compile(rf"^assertion(?:\.{_IDENTIFIER})+$")

SUBJECT_TOO_LONG_MESSAGE = (
    "The size of mapped attribute google.subject exceeds the 127 bytes limit. "
    "Either modify your attribute mapping or the incoming assertion to produce "
    "a mapped attribute that is less than 127 bytes."
)

MappedValue = str | list[str]


class AttributeMappingError(ValueError):
    """The claims cannot be mapped, so STS rejects the exchange with invalid_request."""


@dataclass(frozen=True)
class AttributeMapping:
    """Parsed mapping: each target with the claim path it reads."""

    entries: tuple[tuple[str, tuple[str, ...]], ...]

    def apply(self, claims: Mapping[str, object]) -> dict[str, MappedValue]:
        """Map ``claims`` to attributes; a missing or null claim maps to nothing.

        Raises:
            AttributeMappingError: ``google.subject`` is missing, empty or too
                long, a value is not a string (or list of strings), or the
                attributes exceed 8 KB together.
        """
        mapped: dict[str, MappedValue] = {}
        for target, path in self.entries:
            value = _select(claims, path)
            if value is not None:
                mapped[target] = _check_value(target, value)

        subject = mapped.get(SUBJECT)
        if not isinstance(subject, str) or not subject:
            raise AttributeMappingError(
                "The mapped attribute google.subject is missing or empty."
            )
        if len(subject.encode()) > MAX_SUBJECT_BYTES:
            raise AttributeMappingError(SUBJECT_TOO_LONG_MESSAGE)
        if _mapped_size(mapped) > MAX_MAPPED_BYTES:
            raise AttributeMappingError(
                "The mapped attributes exceed the 8 KB limit in total."
            )
        return mapped


def _select(claims: Mapping[str, object], path: tuple[str, ...]) -> object:
    value: object = claims
    for name in path:
        if not isinstance(value, Mapping) or name not in value:
            return None
        value = value[name]
    return value


def _check_value(target: str, value: object) -> MappedValue:
    if isinstance(value, str) and target != GROUPS:
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        if target == SUBJECT:
            raise AttributeMappingError(
                "The mapped attribute google.subject must be a string."
            )
        return [str(item) for item in value]
    raise AttributeMappingError(
        f"The mapped attribute {target} must be a string or a list of strings."
    )


def _mapped_size(mapped: Mapping[str, MappedValue]) -> int:
    size = 0
    for target, value in mapped.items():
        values = [value] if isinstance(value, str) else value
        size += len(target.encode()) + sum(len(item.encode()) for item in values)
    return size


def parse_attribute_mapping(spec: str) -> AttributeMapping:
    """Parse a gcloud-style ``TARGET=EXPRESSION,...`` mapping.

    Raises:
        ValueError: a pair is malformed, a target or expression is outside
            the supported subset or limits, or ``google.subject`` is missing.
    """
    entries: list[tuple[str, tuple[str, ...]]] = []
    for pair in spec.split(","):
        target, separator, expression = (part.strip() for part in pair.partition("="))
        if not separator or not target or not expression:
            raise ValueError(f"invalid attribute mapping entry {pair.strip()!r}")
        _check_target(target)
        if any(target == existing for existing, _ in entries):
            raise ValueError(f"attribute mapping names {target} twice")
        entries.append((target, _parse_expression(target, expression)))

    targets = [target for target, _ in entries]
    if SUBJECT not in targets:
        raise ValueError("the attribute mapping must map google.subject")
    custom = [target for target in targets if target.startswith("attribute.")]
    if len(custom) > MAX_CUSTOM_ATTRIBUTES:
        raise ValueError(
            f"the attribute mapping has {len(custom)} attribute.* keys; "
            f"the maximum is {MAX_CUSTOM_ATTRIBUTES}"
        )
    return AttributeMapping(tuple(entries))


def _check_target(target: str) -> None:
    if target in (SUBJECT, GROUPS) or _CUSTOM_TARGET.match(target):
        return
    raise ValueError(
        f"invalid attribute mapping target {target!r}: expected google.subject, "
        "google.groups or attribute.NAME with NAME of 1 to 100 characters "
        "from [a-z0-9_]"
    )


def _parse_expression(target: str, expression: str) -> tuple[str, ...]:
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(
            f"the expression for {target} exceeds {MAX_EXPRESSION_CHARS} characters"
        )
    if not _PATH_EXPRESSION.match(expression):
        raise ValueError(
            f"unsupported expression for {target}: {expression!r}; the emulator "
            "accepts only field paths such as assertion.client.x5_sha256"
        )
    return tuple(expression.split(".")[1:])
