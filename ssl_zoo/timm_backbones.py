"""timm backbones (``timm:NAME``, the optional extra ``vit``) and the input-size checks of
patch-based models: a building block next to ``backbones.py``, which builds through it.

``timm:NAME`` is any model of timm's registry, built by ``timm.create_model(NAME,
pretrained=False, num_classes=0, **backbone_args)``: the module is timm's own (its key names, so
an export loads into that same call with ``strict=True``) and its features are timm's pooled
features (the class token after the final norm for a ViT). ViTs are built with
``dynamic_img_size=True``: each forward resamples the position embeddings to the input's patch
grid (timm's bicubic ``resample_abs_pos_embed``), so the 2 global and N local crops of
multi-crop go through one ViT, one forward per resolution. ``import timm`` happens only when a
timm backbone is built, so timm stays optional.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from torch import nn

from ssl_zoo.errors import ConfigError

TIMM_PREFIX = "timm:"
TIMM_INSTALL_HINT = 'pip install -e ".[vit]"'
_TIMM_RESERVED = {"pretrained": "ssl-zoo trains from random initialisation",
                  "num_classes": "the backbone ends at its pooled features (num_classes=0)"}


def _timm():
    """The timm module, or a one-line error naming the extra (timm is optional)."""
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise ConfigError(f"timm: backbones need timm, an optional extra: {TIMM_INSTALL_HINT} "
                          "(or pip install timm)") from None


def timm_model_name(name: str) -> str | None:
    """``NAME`` of a ``timm:NAME`` backbone; None for other backbones."""
    return name[len(TIMM_PREFIX):] if name.startswith(TIMM_PREFIX) else None


def _unknown_timm(timm, model: str) -> ConfigError:
    names = timm.list_models()
    close = difflib.get_close_matches(model, names, n=3, cutoff=0.6)
    if not close:  # a part of a name, or a pattern: what the registry has that matches
        close = timm.list_models(model if "*" in model else f"*{model}*")[:3]
    msg = f"unknown timm model {model!r}"
    if close:
        msg += f"; did you mean {', '.join(repr(TIMM_PREFIX + c) for c in close)}?"
    return ConfigError(msg + f" ({len(names)} names: timm.list_models('*vit*') lists the ViTs)")


def timm_kwargs(model: str, args: dict[str, Any] | None) -> dict[str, Any]:
    """The keyword arguments ``timm.create_model(model, **kw)`` gets for ``backbone_args``
    (``num_classes=0`` first; ``dynamic_img_size=True`` added by :func:`build_timm` when the
    model takes it)."""
    args = dict(args or {})
    for key, why in _TIMM_RESERVED.items():
        if key in args:
            raise ConfigError(f"backbone_args.{key}: not settable ({why})")
    return {"num_classes": 0, **args}


def build_timm(model: str, args: dict[str, Any] | None) -> tuple[nn.Module, int]:
    """``timm.create_model(model)`` without classifier, with dynamic image size where the model
    has it (ViTs, DeiT, EVA, ...), unless ``backbone_args.dynamic_img_size`` says otherwise."""
    timm = _timm()
    if not timm.is_model(model):
        raise _unknown_timm(timm, model)
    kwargs = timm_kwargs(model, args)
    tries = [kwargs] if "dynamic_img_size" in kwargs else [{**kwargs, "dynamic_img_size": True},
                                                          kwargs]
    for i, kw in enumerate(tries):
        try:
            net = timm.create_model(model, pretrained=False, **kw)
            break
        except TypeError as exc:  # a model without dynamic image size: build it without
            if i + 1 < len(tries) and "dynamic_img_size" in str(exc):
                continue
            raise _bad_timm_args(model, kwargs, exc) from None
        except (AssertionError, ValueError, RuntimeError, KeyError) as exc:
            raise _bad_timm_args(model, kwargs, exc) from None
    dim = getattr(net, "head_hidden_size", None) or net.num_features
    return net, int(dim)


def _bad_timm_args(model: str, kwargs: dict[str, Any], exc: Exception) -> ConfigError:
    given = {k: v for k, v in kwargs.items() if k != "num_classes"}
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ConfigError(f"backbone_args {given}: timm.create_model({model!r}) failed: {first}")


def input_size_problem(module: nn.Module, size: int) -> str | None:
    """Why ``module`` cannot take ``size``-px square inputs (patch grids), or None.

    timm models with a patch embedding need sizes divisible by the patch (unless they pad) and,
    without dynamic image size, exactly their ``img_size``; torchvision's ViT takes one size.
    """
    pe = getattr(module, "patch_embed", None)
    if pe is not None and hasattr(pe, "patch_size"):
        patch = tuple(pe.patch_size) if isinstance(pe.patch_size, (tuple, list)) else (
            pe.patch_size, pe.patch_size)
        fixed = getattr(pe, "img_size", None)
        if getattr(pe, "strict_img_size", False) and fixed is not None and tuple(fixed) != (
                size, size):
            return (f"takes only {fixed[0]}x{fixed[1]}-px inputs (no dynamic image size); "
                    "set backbone_args.img_size, or backbone_args.dynamic_img_size=true")
        if not getattr(pe, "dynamic_img_pad", False) and any(size % p for p in patch):
            p = patch[0]
            ok = sorted({max(p, size // p * p), (size // p + 1) * p})
            return (f"has {p}-px patches, which do not divide {size} px; use a multiple of {p} "
                    f"({' or '.join(map(str, ok))}), or another backbone_args.patch_size")
        return None
    if type(module).__name__ == "VisionTransformer" and hasattr(module, "image_size"):
        if size != module.image_size:  # torchvision.models.VisionTransformer
            return (f"(torchvision's ViT) takes only {module.image_size}-px inputs; for crops "
                    "of several sizes use a timm ViT (--backbone timm:vit_small_patch16_224)")
    return None


def timm_arch_info(model: str, module: nn.Module, args: dict[str, Any] | None) -> dict[str, Any]:
    """How to get the same module from timm alone (saved next to exported weights): the timm
    name, the keyword arguments of ``timm.create_model`` and the one-line recipe."""
    kw = timm_kwargs(model, args)
    if getattr(module, "dynamic_img_size", False):
        kw.setdefault("dynamic_img_size", True)  # no parameter of its own: any call loads
    call = ", ".join([repr(model), *(f"{k}={v!r}" for k, v in kw.items())])
    return {"timm_model": model, "timm_kwargs": kw,
            "timm_recipe": [f"model = timm.create_model({call})"]}
