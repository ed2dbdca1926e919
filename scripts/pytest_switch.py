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


def pytest_configure(config):
    for pair in filter(None, (p.strip() for p in os.environ.get("FK_SWITCHES", "").split(";"))):
        name, _, value = pair.partition("=")
        name = name.strip()
        if not hasattr(launch, name):
            raise ValueError(f"FK_SWITCHES: launch has no attribute {name!r}")
        setattr(launch, name, ast.literal_eval(value.strip()))
        print(f"pytest_switch: launch.{name} = {getattr(launch, name)!r}")
