"""Functions, methods and assignments of the vendored reference code, compiled on their own.

The statements are cut out of the source text with `tokenize` and compiled from that text, not
from `ast` objects: on CPython 3.11 `ast.parse` and compiling an `ast.Module` share one global
recursion counter with every other thread, so a Ray thread formatting a traceback at the same
moment fails the test with "AST constructor recursion depth mismatch" (seen in CI, 2026-12-07).
"""

import io
import re
import textwrap
import tokenize

_NAMED = re.compile(r"^(?:async\s+)?(?:def|class)\s+(\w+)|^(\w+)\s*(?::[^=]*)?=[^=]")


def statements(source: str) -> list[tuple[str | None, str]]:
    """(name, text) of each top-level statement, decorators kept with what they decorate."""
    lines = source.splitlines(keepends=True)
    starts, depth, at_start, pending = [], 0, True, None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.INDENT:
            depth += 1
        elif tok.type == tokenize.DEDENT:
            depth -= 1
        elif tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT, tokenize.ENCODING):
            at_start = at_start or tok.type == tokenize.NEWLINE
        elif tok.type == tokenize.ENDMARKER:
            break
        elif at_start:
            at_start = False
            if depth == 0:
                if pending is None:
                    starts.append(tok.start[0] - 1)
                pending = tok.start[0] - 1 if tok.string == "@" else None
    bounds = [*starts, len(lines)]
    out = []
    for begin, end in zip(bounds, bounds[1:]):
        text = "".join(lines[begin:end])
        header = next(line for line in text.splitlines() if not line.lstrip().startswith("@"))
        match = _NAMED.match(header)
        out.append((match and (match.group(1) or match.group(2)), text))
    return out


def compiled(source: str, filename: str, names: tuple[str, ...], namespace: dict) -> dict:
    """The named top-level statements of `source`, run in `namespace`; returns each name's value."""
    chosen = [text for name, text in statements(source) if name in names]
    exec(compile("".join(chosen), filename, "exec"), namespace)
    return {name: namespace[name] for name in names}


def method_source(source: str, cls: str, name: str) -> str:
    """One method of a top-level class, dedented to a plain function."""
    (klass,) = [text for n, text in statements(source) if n == cls]
    body = textwrap.dedent("".join(klass.splitlines(keepends=True)[1:]))
    (text,) = [text for n, text in statements(body) if n == name]
    return text
