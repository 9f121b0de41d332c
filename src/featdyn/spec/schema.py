"""Unknown config keys, with the closest valid key: a misspelt key must stop the run.

A misspelt optional block (``trainig:``, ``probes:``) would otherwise be ignored and the run would
use the defaults without a word. The JSON schema refuses unknown keys (``additionalProperties:
false`` in every object); this module turns those refusals into one message that names each
unknown key by its full path and suggests the closest valid one. It is generic: the valid keys come
from the schema, so a new block needs only its schema entry. No torch here (it runs at every
workflow start, before anything else is imported).
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Iterator, Mapping

import jsonschema
import yaml

from featdyn import FeatdynError


def load_schema(path: str | os.PathLike) -> dict:
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise FeatdynError(f"cannot read the config schema {path}: {exc}") from exc


def _errors(errors) -> Iterator[jsonschema.ValidationError]:
    """Every error, with the sub-errors of oneOf / anyOf branches."""
    for err in errors:
        yield err
        yield from _errors(err.context or [])


def unknown_keys(config: Mapping, schema: Mapping) -> list[tuple[str, str, list[str]]]:
    """(full path of the unknown key, the key, the valid keys at that place), in config order."""
    found: dict[str, tuple[str, str, list[str]]] = {}
    for err in _errors(jsonschema.Draft202012Validator(schema).iter_errors(config)):
        if err.validator != "additionalProperties" or err.validator_value is not False:
            continue
        if not isinstance(err.instance, Mapping):
            continue
        valid = list(err.schema.get("properties", {}))
        patterns = list(err.schema.get("patternProperties", {}))
        where = ".".join(str(p) for p in err.absolute_path)
        for key in err.instance:
            if key in valid or any(re.search(p, str(key)) for p in patterns):
                continue
            path = f"{where}.{key}" if where else str(key)
            found.setdefault(path, (path, str(key), valid))
    return list(found.values())


def describe_unknown(path: str, key: str, valid: list[str]) -> str:
    """"unknown key 'training.epoch' (did you mean 'training.epochs'?)", or the valid keys there."""
    parent = path[: -len(key)]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"unknown key {path!r} (did you mean {parent + close[0]!r}?)"
    return f"unknown key {path!r} (valid keys {'under ' + parent.rstrip('.') if parent else 'at the top'}: " \
           f"{', '.join(valid) or 'none'})"


def check_keys(config: Mapping, schema_path: str | os.PathLike) -> None:
    """Raise a FeatdynError listing every unknown key of ``config``, each with its full path and the
    closest valid key (or the valid keys), before anything else checks the config."""
    problems = [describe_unknown(*u) for u in unknown_keys(config, load_schema(schema_path))]
    if problems:
        raise FeatdynError("invalid config (a misspelt key would be ignored and its defaults used):\n  - "
                           + "\n  - ".join(problems))


def check_config_keys(config: Mapping, schema_path: str | os.PathLike) -> None:
    """:func:`check_keys` for the workflow's start: the message alone, as a SystemExit (Snakemake
    prints it and stops, without a traceback through the Snakefile)."""
    try:
        check_keys(config, schema_path)
    except FeatdynError as exc:
        raise SystemExit(f"Error: {exc}") from None


SCHEMA_FILE = os.path.join("workflow", "schemas", "config.schema.yaml")


def schema_path(repo: str | os.PathLike) -> str:
    """The config schema of the workflow in the repository at ``repo``."""
    return os.path.join(repo, SCHEMA_FILE)


def _fill(instance, schema: Mapping, root: Mapping) -> None:
    """Set every missing property that has a ``default`` in ``schema`` (a copy of it), then descend
    into the object's properties, ``allOf`` parts and ``$ref``s. Maps of user-named entries
    (models, datasets, metrics: ``additionalProperties`` schemas) get their entries' defaults too."""
    if not isinstance(instance, dict):
        return
    if "$ref" in schema:
        ref = schema["$ref"]
        target = root
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        _fill(instance, target, root)
    for part in schema.get("allOf", []):
        _fill(instance, part, root)
    for key, sub in (schema.get("properties") or {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill(instance[key], sub, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, Mapping):
        for key, value in instance.items():
            if key not in (schema.get("properties") or {}):
                _fill(value, extra, root)


def fill_defaults(config: dict, schema: Mapping) -> dict:
    """``config`` with every default of ``schema`` filled in, in place (and returned).

    The schema is the one home of the config's defaults: the workflow fills them once when it
    loads the config (workflow/Snakefile), and so do the tools that read a config, so that no code
    keeps a fallback of its own. Blocks that override another (``models.<m>.training``,
    ``datasets.<d>.training``) declare no defaults: an override holds only what it changes.
    """
    _fill(config, schema, schema)
    return config
