"""Layer 4, the stages DVC runs: the params, the workspace (every path), the training runs (teachers and students),
the logit cache, pruning, the checks, the bench, and the named studies' stages. Imports kdlab.distill (layer 3,
the methods: losses), kdlab.core and kdlab.infra; never kdlab.analysis."""
