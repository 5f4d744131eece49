"""Matplotlib figures of results, made without pyplot (a script's global figure state is never touched).

A bare ``matplotlib.figure.Figure`` is shown as a picture in a notebook only once IPython has a formatter for
it, which ``%matplotlib inline`` or importing pyplot would register: a notebook that ends a cell with
``explanation.figure()`` got the text ``<Figure size 400x220 with 2 Axes>``. :func:`new_figure` registers a
PNG formatter in a kernel where none is set (a format the user chose stands), and :func:`show_figure` shows
a figure inline in a notebook or in a pyplot window in a script. Matplotlib is imported lazily.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

_FIGURE_MIMES = ("image/png", "image/svg+xml", "image/jpeg", "application/pdf")


def kernel_shell() -> Any | None:
    """The IPython shell of a Jupyter kernel, or None (a plain script, a terminal IPython)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return shell if shell is not None and "IPKernelApp" in getattr(shell, "config", {}) else None


def _figures_as_pictures(shell: Any) -> None:
    """Give ``shell`` a PNG formatter for matplotlib figures unless it has a figure format already."""
    from matplotlib.figure import Figure

    formatters = shell.display_formatter.formatters
    for mime in _FIGURE_MIMES:
        try:
            formatters[mime].lookup_by_type(Figure)
            return  # the user's (or the inline backend's) choice stands
        except KeyError:
            continue
    from IPython.core.pylabtools import print_figure

    formatters["image/png"].for_type(Figure, functools.partial(print_figure, fmt="png", base64=True))


def new_figure(figure: Any = None, **kwargs: Any) -> Any:
    """``figure``, or a new ``matplotlib.figure.Figure(**kwargs)``; in a kernel, figures then show as pictures."""
    import matplotlib.figure

    shell = kernel_shell()
    if shell is not None:
        _figures_as_pictures(shell)
    return figure if figure is not None else matplotlib.figure.Figure(**kwargs)


def show_figure(draw: Callable[[Any], Any]) -> None:
    """Show the figure ``draw(figure)`` makes (``figure`` None: its own): inline in a notebook (once: nothing is
    returned to be displayed again as the cell's value), in a pyplot window in a plain script."""
    if kernel_shell() is not None:
        from IPython.display import display

        display(draw(None))
        return
    import matplotlib.pyplot as plt

    draw(plt.figure())
    plt.show()
