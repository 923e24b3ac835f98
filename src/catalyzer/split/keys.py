"""``python -m catalyzer.split.keys DIR NAME``: make a CURVE key pair for split mode.

Writes ``DIR/NAME.key`` (the public key: copy a handler's into the front's ``--handler-keys``
directory, the front's to each handler's ``--front-key``) and ``DIR/NAME.key_secret`` (this side's
``--curve-key``; keep it private).
"""

from __future__ import annotations

import os
import sys

from catalyzer.split.zmqio import create_keys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m catalyzer.split.keys DIR NAME", file=sys.stderr)
        return 2
    directory, name = args
    if not name or "/" in name or name.startswith("."):
        print(f"catalyzer.split.keys: error: bad key name {name!r}", file=sys.stderr)
        return 2
    try:
        os.makedirs(directory, exist_ok=True)
        public, secret = create_keys(directory, name)
        os.chmod(secret, 0o600)
    except OSError as e:
        print(f"catalyzer.split.keys: error: {directory}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"public key: {public}\nsecret key: {secret} (keep it private)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
