"""Name the module whose ``forward`` torch.fx cannot trace, for a one-line error."""

from __future__ import annotations

from typing import Any

from torch import fx, nn


class _LocatingTracer(fx.Tracer):
    """A tracer that remembers which module (by path) it was inside when tracing failed."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.failed_in: str | None = None

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.stack.append(self.path_of_module(m))
        try:
            result = super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # innermost module: the first to see the error
                self.failed_in = self.stack[-1]
            raise
        self.stack.pop()
        return result


def untraceable_module(model: nn.Module) -> tuple[str, str] | None:
    """(path, type name) of the innermost module whose forward fails to trace; None if it traces."""
    tracer = _LocatingTracer()
    try:
        tracer.trace(model)
    except Exception:  # symbolic tracing raises many types
        path = tracer.failed_in
        if path is None:
            return "", type(model).__name__  # the top-level forward itself
        return path, type(model.get_submodule(path)).__name__
    return None


def graph_module_name_clashes(model: nn.Module) -> list[str]:
    """Children of ``model`` named like an attribute of ``torch.fx.GraphModule`` (``meta``, ``graph``,
    ``code``, ...): FX's traced copy of the model cannot hold them, whatever the forward does."""
    reserved = set(dir(fx.GraphModule)) | set(vars(fx.GraphModule(nn.Module(), fx.Graph())))
    return [name for name, _ in model.named_children() if name in reserved]


def fx_error_message(model: nn.Module, error: BaseException) -> str:
    """One line: which module FX cannot trace, why, and the two ways out."""
    clashes = graph_module_name_clashes(model)
    if clashes:
        named = ", ".join(f"'{name}'" for name in clashes)
        return (
            f"FX cannot quantize {type(model).__name__}: its submodule {named} is named like an attribute "
            f"of torch.fx.GraphModule, which FX's traced copy of the model needs; rename it in the model "
            f"(e.g. self.{clashes[0]}_net)"
        )
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    where = untraceable_module(model)
    if where is None or not where[0]:
        module = f"{type(model).__name__}.forward"
    else:
        module = f"module '{where[0]}' ({where[1]}) of {type(model).__name__}"
    return (
        f"FX cannot trace {module}: {first[:160]}; make that forward traceable (no Python control flow "
        "on tensor values), or add QuantStub/DeQuantStub and a fuse_model() and use mode: eager"
    )
