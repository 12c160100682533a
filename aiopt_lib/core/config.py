"""Reading configuration files: a YAML (or JSON) file that must hold a mapping, with one clear line
naming the file for each way it can be wrong (missing, unreadable, not YAML, not a mapping)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from aiopt_lib.core.errors import ConfigError

__all__ = ["read_yaml_mapping"]


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping at the top of the YAML file ``path`` (an empty file is an empty mapping);
    ``what`` names the file in the errors (``"batch file"``: "b.yaml: batch file not found")."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: {what} not found")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the {what} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: the {what} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{file}: a {what} must be a mapping at the top level, got {type(data).__name__}"
        )
    return data
