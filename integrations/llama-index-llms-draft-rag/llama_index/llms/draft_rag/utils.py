"""Serialisation shared by draft-rag's LlamaIndex components: models as reference strings, configs as dicts."""

from __future__ import annotations

import dataclasses

from draft_rag import DraftEngine, LoadedModel, SpecKVConfig, SpecPCConfig

CONFIGS = {"specpc": SpecPCConfig, "speckv": SpecKVConfig}


def model_ref(loaded: LoadedModel) -> str:
    """The string ``load_model`` reloads ``loaded`` from: what was asked for, else the checkpoint's name_or_path."""
    if loaded.name != LoadedModel._field_defaults["name"]:
        return loaded.name
    return getattr(loaded.model.config, "name_or_path", "") or loaded.name


def engine_dict(engine: DraftEngine, *keys: str) -> dict:
    """``keys`` among target, draft, specpc, speckv: models as reference strings, configs as plain dicts."""
    values = {"target": engine.target, "draft": engine.draft, "specpc": engine.specpc, "speckv": engine.speckv}
    return {k: model_ref(values[k]) if k in ("target", "draft") else dataclasses.asdict(values[k]) for k in keys}


def configs_from_dict(data: dict) -> dict:
    """A copy of ``data`` whose ``specpc``/``speckv`` dicts are config objects again."""
    return {k: CONFIGS[k](**v) if k in CONFIGS and isinstance(v, dict) else v for k, v in data.items()}
