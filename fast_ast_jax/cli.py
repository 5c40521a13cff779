"""Command-line errors read like a tool's: one line on stderr and exit status 2.

Every error a user can cause is the user's to fix, not a crash: `train.py`, `evaluate.py`,
`python -m fast_ast_jax.predict`, `.distill` and `.export` report a missing config file, a
misspelt `--config.` field (with ml_collections' "did you mean" hint), a missing or empty
checkpoint, an impossible config value (`--config.batch_size=-3`), options that do not go
together and mismatched files as `error: ...` and exit with status 2 (as argparse does for
bad arguments), without a traceback; `--debug` shows it.

The rule for "a user can cause it": a ValueError that this project's code raises on purpose
(its messages name the field, file or value and the fix) or a missing path. A ValueError
raised inside a library (jax, numpy, ...) is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import re
import sys
import traceback
from pathlib import Path
from typing import Iterator, NoReturn, Sequence

from absl import flags
from ml_collections import config_flags

from fast_ast_jax.checkpoints.store import CheckpointError

USAGE = 2  # exit status of usage errors (argparse's)
# Top-level directories whose ValueErrors are deliberate user-facing checks.
_OWN = (Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "configs")
_ENTRY_SCRIPTS = ("train.py", "evaluate.py")

DEBUG = flags.DEFINE_boolean("debug", False, "show the traceback of usage errors "
                             "(train.py, evaluate.py)")


def fail(message: str) -> NoReturn:
    """Print `error: message` (one line) to stderr and exit with status 2."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(USAGE)


def _field_error(exc: Exception, argv: Sequence[str]) -> str:
    """ml_collections' KeyError/AttributeError text -> '--config.a.b: no such config field;
    did you mean "c"?' naming the flag as typed."""
    text = str(exc).encode().decode("unicode_escape")
    name = re.match(r"""['"]*([\w-]+)""", text)
    name = name.group(1) if name else text.splitlines()[0]
    typed = [a.split("=")[0] for a in argv if a.startswith("--config.")
             and a.split("=")[0].endswith(f".{name}")]
    hint = re.search(r'Did you mean "([^"]+)"', text)
    return (f"{typed[0] if typed else name}: no such config field"
            + (f'; did you mean "{hint.group(1)}"?' if hint else ""))


def parse_flags(argv: Sequence[str], *, config_flag: str = "config") -> list[str]:
    """absl flags parser for app.run(main, flags_parser=parse_flags) of scripts with a
    config_flags config file: usage errors of the config file and its fields -> fail()."""
    try:
        rest = flags.FLAGS(argv)
    except (KeyError, AttributeError) as e:  # --config.<misspelt field>=...
        fail(_field_error(e, argv))
    except flags.Error as e:  # absl's own: unknown flag, bad value, missing required flag
        auto = any(re.fullmatch(r"--config\.frontend\.(mean|std)=auto", a) for a in argv)
        fail(str(e) + ("; for the training set's statistics set --config.data.auto_stats=True"
                       if auto else ""))
    if config_flag in flags.FLAGS and flags.FLAGS[config_flag].present:
        path = config_flags.get_config_filename(flags.FLAGS[config_flag])
        if not Path(path.split(":")[0]).is_file():
            fail(f"config file {path.split(':')[0]} does not exist")
        try:
            flags.FLAGS[config_flag].value  # noqa: B018  (loads the file: errors surface here)
        except (KeyError, AttributeError) as e:
            fail(_field_error(e, argv))
    return rest


def _raised_by_us(error: BaseException) -> bool:
    """Whether the innermost frame of `error`'s traceback is this project's code."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return False
    path = Path(frames[-1].filename).resolve()
    return path.name in _ENTRY_SCRIPTS or any(own in path.parents for own in _OWN)


@contextlib.contextmanager
def user_errors(*, debug: bool = False) -> Iterator[None]:
    """A user's mistake inside the block -> fail() (one line, status 2); debug=True lets
    it propagate with its traceback.

    A user's mistake: a missing path (checkpoint, data, teacher file), an unreadable
    checkpoint, or a ValueError raised by this project's checks (config values, options
    that do not go together, mismatched checkpoints / teacher logits / labels).
    """
    try:
        yield
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, CheckpointError) as e:
        if debug:
            raise
        fail(str(e))
    except ValueError as e:
        if debug or not _raised_by_us(e):
            raise
        fail(str(e))
