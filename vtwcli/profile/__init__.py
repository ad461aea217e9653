"""The profile: a typed, versioned YAML record of a calibration / measurement (docs/profile-schema.md).

One concern per module:

* :mod:`~vtwcli.profile.schema`: the JSON Schema and its one-line messages (``validate_profile_dict``);
* :mod:`~vtwcli.profile.yaml_text`: the YAML loader and the writer's layout (``dump_profile_yaml``);
* :mod:`~vtwcli.profile.files`: atomic writes, reads with version check and migration (``MIGRATIONS``);
* :mod:`~vtwcli.profile.header`: ``new_profile`` (schema_version, created_at, tool, environment);
* :mod:`~vtwcli.profile.model`: the typed :class:`Profile`, ``choice_of`` (K, kinds, KL) and the model check.

``apply_profile`` lives beside ``withdraw`` (:mod:`vtwcli.apply`) and is re-exported here.
"""

from __future__ import annotations

from vtwcli.profile.files import MIGRATIONS, UPGRADE_HINT, check_output_path, read_profile_dict, write_profile
from vtwcli.profile.header import MEASURED_SECTIONS, environment_section, extend_profile, new_profile, now_iso
from vtwcli.profile.model import *  # noqa: F403 - the typed model is this package's face (model.__all__)
from vtwcli.profile.model import __all__ as _typed_names
from vtwcli.profile.schema import SCHEMA_PATH, SCHEMA_VERSION, schema, validate_profile_dict
from vtwcli.profile.yaml_text import SECTION_ORDER, dump_profile_yaml

__all__ = [
    "SCHEMA_VERSION", "SCHEMA_PATH", "MIGRATIONS", "UPGRADE_HINT", "SECTION_ORDER", "MEASURED_SECTIONS", "schema",
    "environment_section", "now_iso", "new_profile", "extend_profile", "validate_profile_dict", "write_profile",
    "read_profile_dict", "check_output_path", "dump_profile_yaml", "apply_profile", *_typed_names,  # noqa: F405
]


def __getattr__(name: str):
    if name == "apply_profile":  # imported on use: it pulls in the withdrawal engine (torch)
        from vtwcli.apply import apply_profile

        return apply_profile
    raise AttributeError(f"module 'vtwcli.profile' has no attribute {name!r}")
