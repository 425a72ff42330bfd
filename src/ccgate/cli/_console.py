"""The rich console every command prints through: no markup, no emoji codes, no raw control characters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console, ConsoleOptions, JustifyMethod, OverflowMethod, RenderableType
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from ccgate.core.display import printable


class SafeConsole(Console):
    """A console whose strings are never markup and whose output never carries a control character it was given.

    Text from the ledger or config (a model named `[bold]x` or `\\x1b[2J`) is shown as typed: markup and emoji
    codes are off (styles come from `Text` and `style=`), and every segment of text is passed through
    `printable` — the one choke point, so a table cell, a `Text` and a plain line are all covered. Rich's own
    escape sequences (colours) are control segments and stay untouched.
    """

    def __init__(self, *, stderr: bool = False) -> None:
        super().__init__(stderr=stderr, markup=False, emoji=False, highlight=False)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        # before layout, so that a table measures the escaped text it will show
        return super().render_str(printable(text, newlines=True), **kwargs)

    def render(self, renderable: RenderableType, options: ConsoleOptions | None = None) -> Iterable[Segment]:
        for segment in super().render(renderable, options):
            if segment.control:
                yield segment
            else:
                text = printable(segment.text, newlines=True)
                yield segment if text is segment.text else Segment(text, segment.style)

    def print(
        self,
        *objects: Any,
        sep: str = " ",
        end: str = "\n",
        style: str | Style | None = None,
        justify: JustifyMethod | None = None,
        overflow: OverflowMethod | None = None,
        no_wrap: bool | None = None,
        emoji: bool | None = None,
        markup: bool | None = None,
        highlight: bool | None = None,
        width: int | None = None,
        height: int | None = None,
        crop: bool = True,
        soft_wrap: bool | None = None,
        new_line_start: bool = False,
    ) -> None:
        """As rich's, but lines piped to a file or another program are not hard-wrapped at 80 columns."""
        if soft_wrap is None and not self.is_terminal and all(isinstance(obj, str | Text) for obj in objects):
            soft_wrap = True
        super().print(
            *objects,
            sep=sep,
            end=end,
            style=style,
            justify=justify,
            overflow=overflow,
            no_wrap=no_wrap,
            emoji=emoji,
            markup=markup,
            highlight=highlight,
            width=width,
            height=height,
            crop=crop,
            soft_wrap=soft_wrap,
            new_line_start=new_line_start,
        )
