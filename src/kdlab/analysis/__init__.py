"""Layer 5, what the runs mean: statistics (intervals, paired tests, Holm), the one module that words numbers
(present), the evaluation and each question's summary, the results table, the reports and the README blocks.
Imports any layer below it; only kdlab.cli (and the warm server) import it."""
