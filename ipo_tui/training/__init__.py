"""Training: LoRA-DPO and SFT in a child process, its settings, the runner that follows it, adapter export."""
