"""The TED loop: runs the programs of :mod:`ted_sglang.programs` over a dataset and
edits a bank with what the teacher learns.

``distill`` (the run: batches, workers, checkpoints, resume) drives ``step`` (one
sample's student and teacher phases through ``calls``), ``batch`` (a batch's proposals
``reconcile``d into one bank version, ``merging`` conflicting updates, ``compress``ing
an over-budget bank), and writes ``steplog``; ``evaluate`` scores a student with and
without a bank, ``leakage`` keeps evaluation off the training items; ``config`` holds
the token budgets and run settings, ``cli`` and ``demo`` the commands.
"""
