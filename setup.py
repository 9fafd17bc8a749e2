"""The build's one step beyond pyproject.toml: the optional compiled accelerator of the
vetting pass (``streampickle._policy._scan``, and the model objects it works on,
``_nodes``; from Cython).

It is built where a C compiler is present. Where the build fails, or the environment sets
``STREAMPICKLE_PURE_PYTHON`` (to anything but ``0``), the package installs without it and
runs its pure-Python path, which gives the same results (the suite runs both).
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """``build_ext`` that warns instead of failing: the accelerator is optional."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, no Python headers...
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skip(exc)

    @staticmethod
    def _skip(exc: BaseException) -> None:
        print(
            f"streampickle: the compiled accelerator was not built ({exc}); "
            "the pure-Python path will be used",
            file=sys.stderr,
        )


def extensions() -> list[Extension]:
    if os.environ.get("STREAMPICKLE_PURE_PYTHON", "") not in ("", "0"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    folder = os.path.join("src", "streampickle", "_policy")
    modules = [
        Extension(f"streampickle._policy.{name}", [os.path.join(folder, f"{name}.pyx")])
        for name in ("_nodes", "_scan")
    ]
    return list(
        cythonize(
            modules,
            compiler_directives={"language_level": "3"},
            quiet=True,
        )
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
