"""Pydantic validation errors as lines a person editing a YAML file can act on."""

from __future__ import annotations

from pydantic import ValidationError


def validation_problems(error: ValidationError, show_input: bool = False) -> list[str]:
    """One line per problem, naming the field by its dotted YAML path."""
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "<top level>"
        if item["type"] == "extra_forbidden":
            problems.append(f"field '{field}': unknown key")
        elif item["type"] == "missing":
            problems.append(f"field '{field}': required but missing")
        elif show_input:
            problems.append(f"field '{field}': {item['msg']} (got {item.get('input')!r})")
        else:
            problems.append(f"field '{field}': {item['msg']}")
    return problems
