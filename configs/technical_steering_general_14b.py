"""The technical-prose example, general steering vector on Qwen2.5-14B-Instruct (paper_14b.technical_steering).
Build the data first: emjax technical build-data --config=configs/technical_data_14b.py"""
from configs import paper_14b


def get_config():
    return paper_14b.technical_steering(narrow=False)
