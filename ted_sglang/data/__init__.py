"""Datasets, answer extraction and grading, and the bundled sample set.

Nothing here imports torch, transformers or sglang; PIL and pyarrow are
imported only by the functions that draw images or read parquet files.
"""

from ted_sglang.data.dataset import Dataset, MissingImageError, Problem
from ted_sglang.data.grading import GradeResult, answer_matches, extract_answer, grade
from ted_sglang.data.jsonl import read_jsonl, write_jsonl
from ted_sglang.data.loading import FORMATS, detect_format, load_dataset
from ted_sglang.data.sample import Sample, answer_instruction, format_question
from ted_sglang.data.sample_files import write_sample_set
from ted_sglang.data.sample_set import DEFAULT_COUNT, generate_rows
from ted_sglang.data.split import TEST, TRAIN, split_samples

__all__ = [
    "DEFAULT_COUNT",
    "FORMATS",
    "TEST",
    "TRAIN",
    "Dataset",
    "GradeResult",
    "MissingImageError",
    "Problem",
    "Sample",
    "answer_instruction",
    "answer_matches",
    "detect_format",
    "extract_answer",
    "format_question",
    "generate_rows",
    "grade",
    "load_dataset",
    "read_jsonl",
    "split_samples",
    "write_jsonl",
    "write_sample_set",
]
