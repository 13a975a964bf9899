"""Rendering: deterministic bytes, stable cache-friendly order, prefix retention."""

from __future__ import annotations

from ted_sglang.bank import ExperienceBank, approx_tokenize, prefix_retention

TEXTS = [
    "Check the units before answering.",
    "Draw a diagram of the figure first.",
    "Count the objects twice, from different corners.",
    "Rotate the shape mentally and compare edges.",
    "Estimate the answer before computing it exactly.",
]


def add(bank: ExperienceBank, *texts: str) -> None:
    report = bank.apply({"operations": [{"op": "add", "text": t} for t in texts]})
    assert report.ok and report.changed


def lines(bank: ExperienceBank) -> list[str]:
    return bank.render().splitlines(keepends=True)


def test_empty_bank_renders_empty_string():
    bank = ExperienceBank()
    assert bank.render() == "" and bank.version == 0 and bank.ids == [] and len(bank) == 0


def test_render_format_and_entries_listing():
    bank = ExperienceBank()
    add(bank, *TEXTS[:2])
    assert bank.render() == f"[E1] {TEXTS[0]}\n[E2] {TEXTS[1]}\n"
    assert bank.render_entries() == [("E1", TEXTS[0]), ("E2", TEXTS[1])]


def test_same_version_same_bytes_across_copies_and_files(tmp_path):
    bank = ExperienceBank()
    add(bank, *TEXTS[:3])
    bank.apply({"operations": [{"op": "update", "id": "E1", "text": "Check units first."}]})
    first = bank.render().encode()
    bank.record_shown(bank.ids, step=5)
    bank.record_cited(helpful=["E2"], harmful=["E3"], step=5)
    assert bank.render().encode() == first  # usage never moves the rendering
    path = tmp_path / "bank.json"
    bank.save(path)
    assert ExperienceBank.load(path).render().encode() == first
    assert ExperienceBank.from_dict(bank.to_dict()).render().encode() == first
    rebuilt = ExperienceBank.load(path, version=bank.version)
    assert rebuilt.render().encode() == first


def test_add_appends_at_the_tail():
    bank = ExperienceBank()
    add(bank, *TEXTS[:3])
    old = bank.render()
    add(bank, TEXTS[3])
    new = bank.render()
    assert new.startswith(old) and len(new) > len(old)
    assert bank.ids[-1] == "E4"


def test_update_keeps_everything_before_the_entry_and_moves_it_to_the_tail():
    bank = ExperienceBank()
    add(bank, *TEXTS)
    old_lines = lines(bank)
    k = bank.ids.index("E3")
    bank.apply({"operations": [{"op": "update", "id": "E3", "text": "Count every object twice."}]})
    new = bank.render()
    assert new.startswith("".join(old_lines[:k]))
    assert bank.ids == ["E1", "E2", "E4", "E5", "E3"]
    assert lines(bank)[:k] == old_lines[:k]
    assert lines(bank)[-1] == "[E3] Count every object twice.\n"


def test_delete_removes_in_place_and_merge_result_goes_last():
    bank = ExperienceBank()
    add(bank, *TEXTS)
    old_lines = lines(bank)
    bank.apply({"operations": [{"op": "delete", "id": "E2"}]})
    assert lines(bank) == [old_lines[0], *old_lines[2:]]
    bank.apply({"operations": [{"op": "merge", "ids": ["E4", "E3"], "text": "Look twice."}]})
    assert bank.ids == ["E1", "E5", "E6"]


def test_order_does_not_depend_on_usage():
    bank = ExperienceBank()
    add(bank, *TEXTS)
    order = bank.ids
    bank.record_cited(harmful=["E1"], helpful=["E5"], step=3)
    bank.record_outcome(["E2"], correct=False, step=3)
    assert bank.ids == order


def test_prefix_retention():
    assert prefix_retention("abc", "abc") == 1.0
    assert prefix_retention("anything", "") == 1.0
    assert prefix_retention("", "abc") == 0.0
    by_char = lambda s: [ord(c) for c in s]  # noqa: E731
    assert prefix_retention("abcd", "abXY", by_char) == 0.5

    bank = ExperienceBank()
    add(bank, *TEXTS[:3])
    old = bank.render()
    add(bank, TEXTS[3])
    new = bank.render()
    expected = len(approx_tokenize(old)) / len(approx_tokenize(new))
    assert prefix_retention(old, new) == expected
    bank.apply({"operations": [{"op": "update", "id": "E1", "text": "Units first, always."}]})
    # Only the opening "[" survives an edit of the first entry.
    assert prefix_retention(new, bank.render()) == 1 / len(approx_tokenize(bank.render()))


def test_approx_tokenize_is_deterministic_and_plausible():
    text = "Check the units before answering: 3.5 m/s, not 3.5 km/h!"
    assert approx_tokenize(text) == approx_tokenize(text)
    assert len(text) / 6 < len(approx_tokenize(text)) < len(text)
    assert approx_tokenize("") == []
