"""``torch.compile`` (Inductor) with an eager fallback, for training steps and inference.

:class:`CompiledOrEager` holds a module and its compiled twin (which share the parameters, so an
optimiser, a checkpoint or a moving average of the module sees the same weights). Each call runs
a function with the compiled module; if compiling fails — Dynamo cannot trace the model, Inductor
cannot lower an operator or build its C++ — it says why in one warning and runs that call, and
every later one, with the eager module. An error of the model itself (a wrong input shape) is
raised again by the eager call, with an eager traceback.

Compiling happens at the first call and again for each new input shape (after the second shape
Dynamo compiles for dynamic sizes); it takes tens of seconds on a CPU. Warnings of a failed compile
appear once.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, TypeVar

import torch
from torch import nn

logger = logging.getLogger(__name__)

Result = TypeVar("Result")


def compile_errors() -> tuple[type[BaseException], ...]:
    """What a failure to compile raises: Dynamo's errors (Inductor's failures in the forward
    arrive wrapped as ``BackendCompilerFailed``), and Inductor's own, unwrapped, from the backward
    graph, which is compiled at the first backward pass. (Imported here: Dynamo adds over a
    second to ``import pixelwise``, and only compiled runs need it.)"""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import CppCompileError, InvalidCxxCompiler, OperatorIssue

    return TorchDynamoException, CppCompileError, InvalidCxxCompiler, OperatorIssue


class CompiledOrEager:
    """A module compiled by ``torch.compile``, falling back to eager on a compile error.

    Args:
        module: the eager module (a ``DistributedDataParallel`` wrapper is fine: Dynamo splits
            its graph at the gradient buckets).
        what: how the warning names the module (``"train.compile"``, ``"the compiled runtime"``).
        **options: passed to ``torch.compile`` (``dynamic``, ``mode``, ...).
    """

    def __init__(self, module: nn.Module, what: str, **options) -> None:
        self.eager = module
        self.compiled = torch.compile(module, **options)
        self.what = what
        self.failure: str | None = None  # why compiling failed; None while it has not

    @property
    def module(self) -> nn.Module:
        """The module calls run with now: the compiled one until it fails to compile."""
        return self.eager if self.failure is not None else self.compiled

    def run(self, call: Callable[[nn.Module], Result]) -> Result:
        """``call(module)`` with the compiled module; after a compile error, with the eager one.

        ``call`` must be safe to repeat after it failed part-way (a training step that zeroes the
        gradients before its backward pass and steps the optimiser after it is).
        """
        if self.failure is None:
            try:
                return call(self.compiled)
            except Exception as error:  # noqa: BLE001 - anything but a compile failure is raised again
                if not (isinstance(error, compile_errors()) or _raised_by_compiler(error)):
                    raise
                self.failure = f"{type(error).__name__}: {_first_line(error)}"
                logger.warning("%s: the model could not be compiled, so it runs eagerly (as without compiling; "
                               "only slower) — %s", self.what, self.failure)
        return call(self.eager)


# Where PyTorch's compiler lives: an error raised from inside these (an assertion of a meta kernel
# checked against the real one at the first backward pass, say) is a failure to compile.
_COMPILER_PACKAGES = ("_dynamo", "_inductor", "_functorch", "_subclasses", "fx")


def _raised_by_compiler(error: BaseException) -> bool:
    """Whether ``error`` was raised inside PyTorch's compiler (its innermost frame is there)."""
    traceback = error.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    parts = Path(traceback.tb_frame.f_code.co_filename).parts
    return any(parts[index:index + 2] == ("torch", package) for index in range(len(parts) - 1)
               for package in _COMPILER_PACKAGES)


def _first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (Dynamo's run to pages)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else "(no message)"


def eager_module(module: nn.Module) -> nn.Module:
    """The module inside ``torch.compile``'s wrapper (``OptimizedModule._orig_mod``; the module
    itself when it is not compiled)."""
    return getattr(module, "_orig_mod", module)
