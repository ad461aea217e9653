"""Profile files: validated, atomic writes; reads that version-check, migrate older layouts and validate.

Versioning: ``schema_version`` is an integer. A profile newer than :data:`SCHEMA_VERSION` is refused
with an upgrade hint; an older one is migrated step by step through :data:`MIGRATIONS`
(``{from_version: function(dict) -> dict}`` producing ``from_version + 1``) or refused when no
migration exists. Writing validates first, then replaces the target atomically (temp file in the same
directory, fsync, ``os.replace``), so a crash never leaves a half-written profile.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from vtwcli.atomic import atomic_write_text
from vtwcli.errors import VtwError
from vtwcli.profile.schema import SCHEMA_VERSION, json_type, key_path, short_repr, validate_profile_dict
from vtwcli.profile.yaml_text import Loader, dump_profile_yaml, plain

__all__ = ["MIGRATIONS", "UPGRADE_HINT", "MAX_PROFILE_BYTES", "write_profile", "read_profile_dict",
           "parse_profile_text", "check_output_path"]

UPGRADE_HINT = "pip install -U vtwcli"
# A profile of 100k samples x 80 layers is ~20 MB of YAML: a larger file is not a profile, and is refused
# before it is read (bounded time and memory).
MAX_PROFILE_BYTES = 64 * 2 ** 20

# from_version -> function turning a profile dict of that version into one of from_version + 1.
# There is no older layout yet; a future v2 registers MIGRATIONS[1] here.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {}


def check_output_path(path: Path, example: str, *, option: str = "--output", overwrite: bool = True) -> None:
    """Refuse an output that cannot be written, before minutes of work rather than when writing the result:
    a directory, a link or other non-regular file, a missing folder, or (``overwrite=False``) a file."""
    from vtwcli.atomic import check_output_target

    if path.is_dir() and not path.is_symlink():
        raise VtwError(f"{option} {path} is a directory; pass a file name (e.g. {path / example})")
    check_output_target(path, option)
    if not overwrite and path.exists():
        raise VtwError(f"{path} exists; pass --force to overwrite or choose another {option}")


def write_profile(data: dict, path: Path | str, *, force: bool = False) -> Path:
    """Validate ``data`` and write it as YAML to ``path`` atomically; return the path.

    Refuses to replace an existing file unless ``force``. The file appears complete or not at all.
    """
    path = Path(path).expanduser()
    data = plain(data)
    validate_profile_dict(data, str(path))
    _refuse_non_finite(data, str(path))
    if path.is_dir():
        raise VtwError(f"{path} is a directory; pass a file name for the profile (e.g. {path / 'profile.yaml'})")
    if path.exists() and not force:
        raise VtwError(f"{path} exists; pass --force to overwrite or choose another --output")
    return atomic_write_text(path, dump_profile_yaml(data))


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def _migrate(data: dict, version: int, source: str) -> dict:
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise VtwError(f"{source}: schema_version {version} is too old for this vtwcli (reads {SCHEMA_VERSION}) "
                           "and cannot be migrated; re-create the profile with this vtwcli")
        data = step(dict(data))
        version += 1
        data["schema_version"] = version
    return data


def read_profile_dict(path: Path | str) -> dict:
    """Read, version-check (migrating older layouts) and validate a profile; return the plain dict."""
    path = Path(path).expanduser()
    source = str(path)
    if not path.exists():
        raise VtwError(f"{source}: no such profile file; check the path (profiles come from `vtw calibrate` / "
                       "`vtw profile`)")
    if not path.is_file():
        from vtwcli.atomic import file_kind

        raise VtwError(f"{source}: {file_kind(path.stat().st_mode)}, not a regular file; pass a profile YAML file")
    if path.stat().st_size > MAX_PROFILE_BYTES:
        raise VtwError(f"{source}: {path.stat().st_size:,} bytes is too large for a profile (at most "
                       f"{MAX_PROFILE_BYTES // 2 ** 20} MiB); pass a profile YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise VtwError(f"{source}: not a text file (byte {error.start} is not UTF-8); pass a profile YAML "
                       "file") from None
    except OSError as error:
        raise VtwError(f"{source}: cannot read it ({error.strerror or error}); check its permissions") from None
    return parse_profile_text(text, source)


def _refuse_aliases(text: str, source: str) -> None:
    """Profiles are plain trees (the writer never emits anchors): an alias is refused before anything is
    built from it, so an alias bomb costs one linear parse, not exponential time and memory later."""
    if "&" not in text and "*" not in text:
        return
    for event in yaml.parse(text, Loader=Loader):
        anchor = getattr(event, "anchor", None)
        if anchor is not None or isinstance(event, yaml.AliasEvent):
            line = event.start_mark.line + 1 if event.start_mark is not None else "?"
            raise VtwError(f"{source}:{line}: YAML anchor/alias '{anchor}' — vtwcli profiles never use them (an alias "
                           "can expand without bound); write the values out")


def _refuse_non_finite(data, source: str) -> None:
    """NaN and inf are no measurement: refused (with their key path) so every reader and `--json` output
    sees only finite numbers. Iterative: the tree is bounded by the file, nesting depth is not."""
    stack = [(data, [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            raise VtwError(f"{source}: {key_path(path)}: {node} is not a finite number (invalid profile; see "
                           "docs/profile-schema.md)")
        if isinstance(node, dict):
            stack.extend((value, path + [key]) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((value, path + [i]) for i, value in enumerate(node))


def parse_profile_text(text: str, source: str) -> dict:
    try:
        _refuse_aliases(text, source)
        data = yaml.load(text, Loader=Loader)  # noqa: S506 - Loader is a SafeLoader
    except yaml.YAMLError as error:
        raise VtwError(f"{source}: corrupted or truncated YAML at {_yaml_problem(error)}; re-create the profile "
                       "or restore it") from None
    except RecursionError:
        raise VtwError(f"{source}: YAML nested too deeply to be a profile") from None
    except VtwError:
        raise
    except ValueError as error:
        if "integer string conversion" not in str(error):
            raise VtwError(f"{source}: YAML could not be read (ValueError: {error})") from None
        raise VtwError(f"{source}: an integer of more than {sys.get_int_max_str_digits()} digits is no profile "
                       "value; re-create the profile") from None
    except Exception as error:  # noqa: BLE001 - e.g. a bad explicit !!tag value; still bad input
        raise VtwError(f"{source}: YAML could not be read ({type(error).__name__}: {error})") from None
    if data is None:
        raise VtwError(f"{source}: the file is empty; a profile is a YAML mapping starting with schema_version")
    if not isinstance(data, dict):
        raise VtwError(f"{source}: a profile must be a YAML mapping at the top level, got {json_type(data)}")
    if "schema_version" not in data:
        raise VtwError(f"{source}: schema_version is missing; this is not a vtwcli profile (or it was cut short)")
    version = data["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise VtwError(f"{source}: schema_version must be an integer, got {short_repr(version)}")
    if version > SCHEMA_VERSION:
        raise VtwError(f"{source}: schema_version {version} was written by a newer vtwcli (this one reads up to "
                       f"{SCHEMA_VERSION}); upgrade: {UPGRADE_HINT}")
    _refuse_non_finite(data, source)
    migrated = version < SCHEMA_VERSION
    if migrated:
        data = _migrate(data, version, source)
    validate_profile_dict(data, source, text=None if migrated else text)
    return data
