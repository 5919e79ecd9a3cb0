"""Optional dependencies stay optional: a fleet's coordination imports without ccxt."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_the_fleets_shared_nonces_import_without_ccxt():
    """coordination.nonces once imported the ccxt adapter (and so ccxt) for NonceSource."""
    script = textwrap.dedent(
        """
        import builtins
        real = builtins.__import__
        def refuse_ccxt(name, *args, **kwargs):
            if name == "ccxt" or name.startswith("ccxt."):
                raise ImportError("ccxt is not installed")
            return real(name, *args, **kwargs)
        builtins.__import__ = refuse_ccxt
        import brokerguard.coordination.nonces
        import brokerguard.brokers.nonces
        print("ok")
        """
    )
    done = subprocess.run(  # noqa: S603 (this interpreter, a fixed script)
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr
