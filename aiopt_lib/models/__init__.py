"""Signal models: the interface and registry, the compact network and baselines, the VLM, evaluation.

Every model follows :class:`~aiopt_lib.models.base.SignalModel`; a model kind registers its
loader with :func:`~aiopt_lib.models.base.register_model` (in the module that defines it) and
:func:`load_model` finds it by the ``kind`` in the folder's ``model.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from aiopt_lib.core.errors import ConfigError, DataError
from aiopt_lib.models.base import (
    _LOADERS,
    _REMOTE_CODE_KINDS,
    MODEL_FILE,
    SampleSet,
    SignalModel,
    register_model,
    require_remote_code_opt_in,
)

__all__ = ["MODEL_FILE", "SampleSet", "SignalModel", "load_model", "register_model"]


def load_model(directory: str | Path, *, trust_remote_code: bool | None = None) -> SignalModel:
    """Load any saved signal model (the kind is read from ``model.json``).

    Loading never runs code stored in the folder unless the caller says so: a model whose
    ``model.json`` asks for remote code (a vision-language model whose repository ships its own
    Python) loads only with ``trust_remote_code=True`` or ``AIOPT_TRUST_REMOTE_CODE=1`` (an
    explicit ``False`` wins over the variable), else a :class:`ConfigError`. Weights are read as
    safetensors, ``torch.load(weights_only=True)`` or skops with a fixed allow-list, never pickle.
    """
    path = Path(directory) / MODEL_FILE
    if not path.is_file():
        raise DataError("not a saved signal model (no model.json)", file=Path(directory))
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"model.json is not valid JSON ({exc})", file=path) from None
    if not isinstance(info, dict):
        raise DataError("model.json must hold a JSON object", file=path)
    kind = info.get("kind")
    kind = kind if isinstance(kind, str) else repr(kind)
    if kind not in _LOADERS:
        # in-function on purpose: the built-in kinds register themselves when their module is
        # imported, and `import aiopt_lib.models` loads no model implementation until one is needed
        import aiopt_lib.models.networks
        import aiopt_lib.models.vlm  # noqa: F401

    if kind not in _LOADERS:
        raise ConfigError(f"{path}: unknown model kind {kind!r}; known: {sorted(_LOADERS)}")
    # checked here for every kind, before any loader imports anything of the folder
    require_remote_code_opt_in(directory, bool(info.get("trust_remote_code")), trust_remote_code)
    if kind in _REMOTE_CODE_KINDS:
        return _LOADERS[kind](Path(directory), trust_remote_code=trust_remote_code)
    return _LOADERS[kind](Path(directory))
