"""The package list, the one setting pyproject.toml cannot state: every package under emjax/, and the
top-level configs/ folder of the checkout shipped inside the wheel as `emjax.configs`, so that an
installed (non-editable) emjax finds the configs its jobs run (emjax.configuration.shipped_config)."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["emjax", "emjax.*"]) + ["emjax.configs"],
      package_dir={"emjax.configs": "configs"})
