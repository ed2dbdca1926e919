"""pytest plugin: set launcher switches for a GPU test run, in every xdist worker.

    FK_SWITCHES="HOPPER_BWD_S_EARLY=True" PYTHONPATH=src:scripts \
        python -m pytest -p pytest_switch tests/test_hopper_bwd.py -m gpu -n 8

``FK_SWITCHES`` holds ``NAME=VALUE`` pairs separated by ``;``: each NAME an attribute of
flashkernels.ops.attention.launch that already exists (a typo fails the run), each VALUE a Python
literal. For testing a switch before it becomes a default (scripts/ab_attention.py times one).
"""
import ast
import os

from flashkernels.ops.attention import launch


def set_switches(text: str, label: str) -> None:
    """Set the ``NAME=VALUE;...`` pairs of ``text`` on flashkernels.ops.attention.launch (each NAME an attribute it
    already has, each VALUE a Python literal), printing each; ValueError, led by ``label``, for an unknown NAME.
    Shared by this plugin, scripts/ab_attention.py --also and scripts/exp_chain_probe.py --set."""
    for pair in filter(None, (p.strip() for p in text.split(";"))):
        name, _, value = pair.partition("=")
        name = name.strip()
        if not hasattr(launch, name):
            raise ValueError(f"{label}: launch has no attribute {name!r}")
        setattr(launch, name, ast.literal_eval(value.strip()))
        print(f"{label}: launch.{name} = {getattr(launch, name)!r}")


def pytest_configure(config):
    set_switches(os.environ.get("FK_SWITCHES", ""), "FK_SWITCHES")
