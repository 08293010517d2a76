"""CPU-sized narrow steering run on the embedded Qwen2.5-Coder-0.5B model and the shipped samples."""
from emjax.experiment import embedded_config


def get_config():
    return embedded_config(narrow=True)
