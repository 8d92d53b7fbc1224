"""The workspace: the SQLite store (the one source of truth), record formats in and out (JSONL,
CSV, Parquet; TRL and RewardBench shapes), and candidate files."""
