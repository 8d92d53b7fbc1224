"""Measuring judges and policies: pairwise accuracy on labelled pairs, template search, best-of-n."""
