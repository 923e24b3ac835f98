"""``--config FILE``: every setting, in TOML, under the same names as the command-line options.

    app = "myapp:app"
    procs = 4
    listen = ["tcp:8080", "unix:/run/myapp.sock"]
    max-body = "10M"

Values are checked by the same rules as on the command line; an unknown key or a bad value is an
error that names the file, the key, the value and what is allowed. Pure: reading a file is the only
I/O.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path

from catalyzer.settings import BY_NAME, SettingError

__all__ = ["load_config_file"]


def load_config_file(path: str) -> dict[str, object]:
    """Validated values keyed by setting name."""
    try:
        with Path(path).open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise SettingError(f"--config {path!r}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SettingError(f"--config {path!r}: not valid TOML: {e}") from None
    values: dict[str, object] = {}
    for key, raw in data.items():
        name = key.replace("_", "-")
        setting = BY_NAME.get(name)
        if setting is None:
            close = difflib.get_close_matches(name, BY_NAME, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SettingError(f"{path}: unknown setting {key!r}{hint}")
        try:
            if setting.repeatable:
                items = [raw] if isinstance(raw, str) else raw
                if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                    raise SettingError(
                        f"setting {name!r}: bad value {raw!r}: expected a string or a list of "
                        "strings"
                    )
                values[name] = [setting.coerce(i) for i in items]
            else:
                values[name] = setting.coerce(raw)
        except SettingError as e:
            raise SettingError(f"{path}: {e}") from None
    return values
