"""The experience bank: short, general experiences that prefix the student's prompt.

    from ted_sglang.bank import ExperienceBank, operations_schema

    bank = ExperienceBank(student_model="Qwen/Qwen3-VL-8B-Instruct")
    schema = operations_schema(bank.ids)        # constrain the teacher's output
    report = bank.apply(teacher_json, step=3, meta={"sample_id": "q17"})
    prompt_prefix = bank.render()
    bank.save("bank.json")                      # refuses if another writer saved since
    ExperienceBank.update_file("bank.json", lambda b: b.apply(teacher_json))  # under its lock

Nothing here imports torch, transformers, sglang or xgrammar.
"""

from ted_sglang.bank.apply_report import ApplyReport, OpResult
from ted_sglang.bank.bank import ExperienceBank
from ted_sglang.bank.compression import (
    CompressionBudget,
    CompressionPlan,
    CompressionPolicy,
    MergeGroup,
    Removal,
    Rewrite,
)
from ted_sglang.bank.errors import BankConflict, BankFileError, BankLockTimeout
from ted_sglang.bank.experience import Experience, normalize_text
from ted_sglang.bank.history import BankDiff, VersionRecord
from ted_sglang.bank.merge import BankMergePlan, EntryGroup, build_merged_bank, plan_merge
from ted_sglang.bank.meta import BankMeta
from ted_sglang.bank.operations import (
    OP_FIELDS,
    SEMANTIC_CODES,
    SHAPE_CODES,
    OperationLimits,
    operations_schema,
    operations_schema_text,
)
from ted_sglang.bank.render import Tokenize, approx_tokenize, prefix_retention
from ted_sglang.bank.similarity import (
    Similarity,
    near_duplicate_groups,
    sequence_ratio,
    token_jaccard,
)
from ted_sglang.bank.usage import Usage, utility

__all__ = [
    "OP_FIELDS",
    "SEMANTIC_CODES",
    "SHAPE_CODES",
    "ApplyReport",
    "BankConflict",
    "BankDiff",
    "BankFileError",
    "BankLockTimeout",
    "BankMergePlan",
    "BankMeta",
    "CompressionBudget",
    "CompressionPlan",
    "CompressionPolicy",
    "EntryGroup",
    "Experience",
    "ExperienceBank",
    "MergeGroup",
    "OpResult",
    "OperationLimits",
    "Removal",
    "Rewrite",
    "Similarity",
    "Tokenize",
    "Usage",
    "VersionRecord",
    "approx_tokenize",
    "build_merged_bank",
    "near_duplicate_groups",
    "normalize_text",
    "operations_schema",
    "operations_schema_text",
    "plan_merge",
    "prefix_retention",
    "sequence_ratio",
    "token_jaccard",
    "utility",
]
