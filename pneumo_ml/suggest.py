"""Names a user types: the display names the UI shows (ResNet50_Aug, ...) and "did you mean" for a near miss."""
from __future__ import annotations

import difflib


def did_you_mean(word, options) -> str:
    """'; did you mean 'x'?' for the closest option, or '' when none is close."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _squash(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def display_names() -> dict[str, tuple[str, bool | None]]:
    """Every experiment's display name (its YAML's `name`) -> (model, aug); aug None when the YAML has none."""
    import yaml

    from .config import MODEL_NAMES, experiment_path
    from .errors import ConfigError
    names = {}
    for model in MODEL_NAMES:
        for stem in (model, f"{model}_aug", f"{model}_noaug"):
            try:
                data = yaml.safe_load(experiment_path(stem).read_text()) or {}
            except ConfigError:
                continue
            if data.get("name"):
                names[data["name"]] = (data.get("model", model), data.get("aug"))
    return names


def resolve_model(name: str | None) -> tuple[str | None, bool | None]:
    """(model, aug) for a model key ('resnet50') or a display name ('ResNet50_Aug', 'SmallCNN', 'resnet50_noaug');
    an unknown name comes back unchanged, for the config to refuse with a suggestion."""
    from .config import MODEL_NAMES
    if not name:
        return name, None
    for model in MODEL_NAMES:
        if _squash(name) == _squash(model):
            return model, None
    for display, (model, aug) in display_names().items():
        if _squash(name) == _squash(display):
            return model, aug
    return name, None


def known_model_names() -> list[str]:
    from .config import MODEL_NAMES
    return [*MODEL_NAMES, *display_names()]


def registry_hint(uri: str) -> str:
    """For a models:/ URI that failed to load: a near registered name, alias or version."""
    from . import tracking
    if not uri.startswith("models:/"):
        return ""
    ref = uri[len("models:/"):]
    name, sep, rest = ref.partition("@") if "@" in ref else ref.partition("/")
    names = tracking.registered_model_names()
    if name not in names:
        return did_you_mean(name, names)
    if sep == "@":
        aliases = tracking.model_aliases(name)
        return did_you_mean(rest, aliases) or f" (aliases of {name}: {', '.join(aliases) or 'none'})"
    versions = sorted((str(v.version) for v in tracking.model_versions(name)), key=int)
    listing = f" ({name} has versions {', '.join(versions)})" if versions else f" ({name} has no versions)"
    return did_you_mean(rest, versions) or listing
