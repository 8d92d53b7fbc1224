"""The judge: p'yes from one forward pass (scoring), the evaluation templates, the category router,
and the Self-Rewarding 1-5 baseline it is compared with."""
