"""The start of every PyTorch reference-data generator run by ctest (no torch import here).

    from parity_guard import start
    start("make_parity_data.py", ["torch"])

start() deletes --out's manifest.txt first (a manifest exists only after a run that
completed, so the C++ tests never run on stale data), then imports the modules named; if one
is missing it exits 77 (ctest's "skipped"), or 1 when DYNCONV_REQUIRE_TORCH=1 (CI).
write_manifest(out, names) is every generator's last step: the names, one per line, written
atomically.
"""

import argparse
import importlib
import os
import sys


def start(script, modules):
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--out")
    out = pre.parse_known_args()[0].out
    if out:
        try:
            os.remove(os.path.join(out, "manifest.txt"))
        except FileNotFoundError:
            pass
    try:
        for name in modules:
            importlib.import_module(name)
    except ImportError as e:  # depends on the machine
        required = os.environ.get("DYNCONV_REQUIRE_TORCH") == "1"
        print(f"{script}: {', '.join(modules)} not available ({e}); "
              f"{'DYNCONV_REQUIRE_TORCH=1, failing' if required else 'skipping'} "
              f"(install python3-torch python3-torchvision; run with /usr/bin/python3)",
              file=sys.stderr)
        sys.exit(1 if required else 77)


def write_manifest(out, names):
    """Writes out/manifest.txt, one name per line, last and atomically."""
    manifest = os.path.join(out, "manifest.txt")
    with open(manifest + ".tmp", "w") as f:
        f.write("".join(name + "\n" for name in names))
    os.replace(manifest + ".tmp", manifest)
