"""Evaluation of trained runs (SPEC §3): Table 1, Figures 2, 3, 5, 7-8, the N = 0
clusters, and the paper's grid (`reproduce`)."""
