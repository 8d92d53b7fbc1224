"""`python -m ipo_tui.backends.llama_server ARGS`: llama-cpp-python's OpenAI-compatible server
(`python -m llama_cpp.server ARGS`, needs `llama-cpp-python[server]`) with ipo's llama.cpp set-up,
so it does not crash on an AMX CPU (see llama_runtime). Its log is the server's output: verbose."""

import runpy
import sys

from ipo_tui import verbosity
from ipo_tui.backends import llama_runtime

if __name__ == "__main__":
    verbosity.set_verbose(True)
    print(f"ipo: llama.cpp weight repacking {llama_runtime.repack_decision()[1]}", file=sys.stderr, flush=True)
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
