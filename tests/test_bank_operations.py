"""Operations: schema derivation, validation and atomic apply (incl. hypothesis properties)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ted_sglang.bank import (
    OP_FIELDS,
    SEMANTIC_CODES,
    SHAPE_CODES,
    ExperienceBank,
    OperationLimits,
    operations_schema,
)

TEXTS = [
    "Check the units before answering.",
    "Draw a diagram of the figure first.",
    "Count the objects twice, from different corners.",
    "Rotate the shape mentally and compare edges.",
    "Estimate the answer before computing it exactly.",
    "Read the question's last sentence again.",
]


def make_bank() -> ExperienceBank:
    """Entries E2, E5, E6, E7: E2 updated, E4 deleted, E1+E3 merged into E6."""
    bank = ExperienceBank()
    bank.apply({"operations": [{"op": "add", "text": t} for t in TEXTS[:4]]}, step=1)
    bank.apply(
        {
            "operations": [
                {"op": "delete", "id": "E4"},
                {"op": "update", "id": "E2", "text": "Draw a labelled diagram first."},
                {"op": "add", "text": TEXTS[4]},
            ]
        },
        step=2,
    )
    bank.apply({"operations": [{"op": "merge", "ids": ["E1", "E3"], "text": TEXTS[5]}]}, step=3)
    bank.apply({"operations": [{"op": "add", "text": "Write down what is given."}]}, step=4)
    return bank


def clone(bank: ExperienceBank) -> ExperienceBank:
    return ExperienceBank.from_dict(bank.to_dict())


def state(bank: ExperienceBank) -> dict:
    data = bank.to_dict()
    return {k: data[k] for k in ("version", "next_id", "entries", "history")}


# ---- schema ------------------------------------------------------------------------


def variants(schema: dict) -> dict[str, dict]:
    items = schema["properties"]["operations"]["items"]["anyOf"]
    return {v["properties"]["op"]["const"]: v for v in items}


def test_schema_for_empty_bank_allows_only_add_and_none():
    schema = operations_schema([])
    assert set(variants(schema)) == {"add", "none"}
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["operations"]


def test_schema_with_one_id_has_no_merge():
    assert set(variants(operations_schema(["E4"]))) == {"add", "update", "delete", "none"}


def test_schema_is_derived_from_op_fields_and_limits():
    limits = OperationLimits(
        max_operations=3, max_text_chars=120, min_text_chars=5, max_merge_ids=3
    )
    schema = operations_schema(["E10", "E2", "E7", "E9"], limits)
    assert schema["properties"]["operations"]["maxItems"] == 3
    found = variants(schema)
    assert set(found) == set(OP_FIELDS)
    for op, variant in found.items():
        assert list(variant["properties"]) == ["op", *OP_FIELDS[op]]
        assert variant["required"] == list(variant["properties"])
        assert variant["additionalProperties"] is False
    assert found["update"]["properties"]["id"]["enum"] == ["E2", "E7", "E9", "E10"]
    assert found["add"]["properties"]["text"] == {
        "type": "string",
        "minLength": 5,
        "maxLength": 120,
    }
    merge_ids = found["merge"]["properties"]["ids"]
    assert merge_ids["items"]["enum"] == ["E2", "E7", "E9", "E10"]
    assert (merge_ids["minItems"], merge_ids["maxItems"]) == (2, 3)


def test_schema_rejects_malformed_ids_and_limits():
    with pytest.raises(ValueError, match="not experience ids"):
        operations_schema(["E1", "foo"])
    with pytest.raises(ValueError):
        OperationLimits(min_text_chars=10, max_text_chars=5)
    with pytest.raises(ValueError):
        OperationLimits(max_merge_ids=1)


def test_bank_schema_uses_current_ids():
    bank = make_bank()
    found = variants(bank.operations_schema())
    assert found["delete"]["properties"]["id"]["enum"] == sorted(bank.ids, key=lambda i: int(i[1:]))


# ---- apply: examples -----------------------------------------------------------------


def test_apply_reports_each_operation():
    bank = ExperienceBank()
    report = bank.apply(
        json.dumps(
            {
                "operations": [
                    {"op": "add", "text": "  Check   the units\nbefore answering. "},
                    {"op": "none"},
                    {"op": "add", "text": "CHECK the units before answering."},
                    {"op": "delete", "id": "E1"},
                    {"op": "add", "text": "tiny"},
                    {"op": "add", "text": "x" * 401},
                    {"op": "add", "text": "   \t  "},
                ]
            }
        ),
        step=7,
        meta={"sample_id": "q1", "source": "teacher"},
    )
    statuses = [r.status for r in report.results]
    assert statuses == [
        "applied",
        "none",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
    ]
    codes = [r.code for r in report.rejected]
    assert codes == [
        "duplicate_text",
        "unknown_id",
        "text_too_short",
        "text_too_long",
        "empty_text",
    ]
    assert all(r.reason for r in report.rejected)
    assert report.new_ids == ["E1"] and report.version == 1 and report.changed
    assert bank["E1"].text == "Check the units before answering."
    assert (bank["E1"].created_step, bank["E1"].updated_step) == (7, 7)
    assert bank.history[0].meta == {"sample_id": "q1", "source": "teacher"}
    assert bank.history[0].operations == (
        {"op": "add", "text": bank["E1"].text, "result_id": "E1"},
    )
    assert "rejected" in report.summary()


def test_conflicts_within_a_document():
    bank = make_bank()
    report = bank.apply(
        {
            "operations": [
                {"op": "update", "id": "E5", "text": "Estimate first, then compute exactly."},
                {"op": "delete", "id": "E5"},
                {"op": "merge", "ids": ["E6", "E6"], "text": "Re-read the question carefully."},
                {"op": "merge", "ids": ["E6", "E7"], "text": "Re-read the question carefully."},
                {"op": "add", "text": "re-read the QUESTION carefully."},
                {"op": "update", "id": "E2", "text": bank["E7"].text},
                {"op": "update", "id": "E7", "text": bank["E7"].text.upper()},
            ]
        },
        step=9,
    )
    assert [r.code for r in report.results] == [
        None,
        "id_conflict",
        "duplicate_id",
        None,
        "duplicate_text",
        "duplicate_text",
        "id_conflict",
    ]
    assert report.new_ids == ["E8"]
    assert "E6" not in bank and "E7" not in bank and bank.ids[-1] == "E8"


def test_merge_may_keep_the_text_of_a_merged_entry():
    bank = make_bank()
    text = bank["E6"].text
    report = bank.apply({"operations": [{"op": "merge", "ids": ["E6", "E7"], "text": text}]})
    assert report.ok and bank[report.new_ids[0]].text == text


def test_update_to_same_text_is_rejected_and_keeps_version():
    bank = make_bank()
    before = state(bank)
    report = bank.apply({"operations": [{"op": "update", "id": "E5", "text": bank["E5"].text}]})
    assert report.rejected[0].code == "unchanged_text" and not report.changed
    assert state(bank) == before


@pytest.mark.parametrize(
    ("document", "code"),
    [
        ("{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        ("[" * 100_000, "invalid_json"),
        ("[]", "not_object"),
        (42, "not_object"),
        ({"ops": []}, "missing_operations"),
        ({"operations": [], "why": "x"}, "unexpected_field"),
        ({"operations": {"op": "none"}}, "wrong_type"),
    ],
)
def test_unreadable_documents_are_reported_not_raised(document, code):
    bank = make_bank()
    before = state(bank)
    report = bank.apply(document)
    assert report.error and report.error_code == code and report.results == ()
    assert not report.changed and state(bank) == before


def test_too_many_operations_rejects_the_excess():
    bank = ExperienceBank(limits=OperationLimits(max_operations=2))
    ops = [{"op": "add", "text": t} for t in TEXTS[:4]]
    report = bank.apply({"operations": ops})
    codes = [r.code for r in report.results]
    assert codes == [None, None, "too_many_operations", "too_many_operations"]
    assert len(bank) == 2


def test_ids_are_never_reused():
    bank = ExperienceBank()
    bank.apply({"operations": [{"op": "add", "text": TEXTS[0]}, {"op": "add", "text": TEXTS[1]}]})
    bank.apply({"operations": [{"op": "delete", "id": "E2"}]})
    report = bank.apply({"operations": [{"op": "add", "text": TEXTS[2]}]})
    assert report.new_ids == ["E3"]
    bank.apply({"operations": [{"op": "merge", "ids": ["E1", "E3"], "text": TEXTS[3]}]})
    assert bank.ids == ["E4"] and bank.next_id == "E5"


def test_apply_checks_caller_arguments():
    bank = ExperienceBank()
    with pytest.raises(ValueError, match="step"):
        bank.apply({"operations": []}, step=-1)
    with pytest.raises(ValueError, match="meta"):
        bank.apply({"operations": []}, meta={"x": object()})


# ---- apply: properties -----------------------------------------------------------------

BASE = make_bank()
ID_POOL = [*BASE.ids, "E1", "E4", "E999", "E0", "e2", "", "x" * 50]
text_st = st.one_of(
    st.sampled_from(TEXTS + [e.text for e in BASE.entries]),
    st.sampled_from([e.text.upper() + "  " for e in BASE.entries]),
    st.text(max_size=30),
    st.text(min_size=380, max_size=420, alphabet="ab \t\n"),
    st.just(""),
    st.just("\ud800 lone surrogate text"),
)
id_st = st.one_of(
    st.sampled_from(BASE.ids),
    st.sampled_from(BASE.ids),
    st.sampled_from(ID_POOL),
    st.text(max_size=5),
)
junk_st = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
well_formed_op_st = st.one_of(
    st.fixed_dictionaries({"op": st.just("add"), "text": text_st}),
    st.fixed_dictionaries({"op": st.just("update"), "id": id_st, "text": text_st}),
    st.fixed_dictionaries(
        {"op": st.just("merge"), "ids": st.lists(id_st, max_size=7), "text": text_st}
    ),
    st.fixed_dictionaries({"op": st.just("delete"), "id": id_st}),
    st.just({"op": "none"}),
)
op_st = st.one_of(
    well_formed_op_st,
    well_formed_op_st,
    # A well-formed op with one field dropped, retyped or added.
    st.tuples(
        well_formed_op_st, st.sampled_from(["op", "id", "ids", "text"]), junk_st, st.booleans()
    ).map(
        lambda t: {**{k: v for k, v in t[0].items() if k != t[1]}, **({t[1]: t[2]} if t[3] else {})}
    ),
    st.dictionaries(st.sampled_from(["op", "id", "ids", "text", "why"]), junk_st, max_size=4),
    junk_st,
)
document_st = st.one_of(
    st.fixed_dictionaries({"operations": st.lists(op_st, max_size=11)}),
    st.fixed_dictionaries({"operations": st.lists(op_st, max_size=11)}).map(json.dumps),
    junk_st,
    junk_st.map(json.dumps),
    st.text(max_size=60),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=document_st)
def test_apply_never_crashes_and_equals_applying_only_the_accepted_ops(document):
    bank = clone(BASE)
    before = state(bank)
    report = bank.apply(document, step=11, meta={"source": "test"})

    if report.error is not None:
        assert report.error and report.error_code and report.results == ()
    for result in report.rejected:
        assert result.reason.strip()
        assert result.code in SHAPE_CODES | SEMANTIC_CODES
    for result in report.results:
        assert result.describe()
    assert report.version == BASE.version + (1 if report.applied else 0)
    assert report.changed == bool(report.applied)
    if not report.applied:
        assert state(bank) == before
        return

    # The accepted ops alone, applied to the same starting bank, give the same bank.
    replayed = clone(BASE)
    accepted = {"operations": [r.raw for r in report.applied]}
    report2 = replayed.apply(accepted, step=11, meta={"source": "test"})
    assert report2.ok and len(report2.applied) == len(report.applied)
    assert state(replayed) == state(bank)
    assert replayed.render() == bank.render()
    json.dumps(bank.to_dict())  # everything stored is JSON-serialisable
    assert ExperienceBank.from_dict(bank.to_dict()).render() == bank.render()


@settings(max_examples=60, deadline=None)
@given(
    documents=st.lists(
        st.fixed_dictionaries({"operations": st.lists(well_formed_op_st, max_size=6)}), max_size=6
    )
)
def test_random_sequences_keep_the_history_consistent(documents):
    bank = clone(BASE)
    for document in documents:
        bank.apply(document)
    rebuilt = ExperienceBank.from_dict(bank.to_dict())  # replays the whole history
    assert state(rebuilt) == state(bank)
    for k in range(bank.version + 1):
        assert bank.at_version(k).version == k
    assert len(set(bank.ids)) == len(bank.ids)
