"""Real ComfyUI, headless and in-process: find it, load this pack into it, execute API-format graphs.

Used by the test suite (``tests/conftest.py``) and by the demo (``scripts/demo.py``). ComfyUI is a
test dependency, never part of the pack: it is taken from ``COMFYUI_PATH``, from the ComfyUI that
the pack is installed in (``<ComfyUI>/custom_nodes/<pack>``), from the pinned source snapshot in
``../shared/comfyui/`` (unpacked once into the cache), or else cloned at the pinned release.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import tarfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent
COMFYUI_VERSION = "0.3.64"
COMFYUI_REPO = "https://github.com/comfyanonymous/ComfyUI"
SNAPSHOT = PACK_ROOT.parent / "shared" / "comfyui" / f"ComfyUI-{COMFYUI_VERSION}.tar.gz"


def cache_dir() -> Path:
    """Where built fixtures live (ComfyUI unpacked, random-weight checkpoints): never in git."""
    root = os.environ.get("SPATIAL_CONTROL_CACHE") or Path.home() / ".cache" / "comfyui-spatial-control"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _is_comfyui(path: Path) -> bool:
    return (path / "comfy" / "model_management.py").is_file() and (path / "nodes.py").is_file()


def find_comfyui() -> Path:
    """Locate (or fetch) the ComfyUI source tree, in the order documented in the README."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        path = Path(env).expanduser().resolve()
        if not _is_comfyui(path):
            raise FileNotFoundError(
                f"COMFYUI_PATH={env} is not a ComfyUI source tree (no comfy/ or nodes.py)"
            )
        return path
    if PACK_ROOT.parent.name == "custom_nodes" and _is_comfyui(PACK_ROOT.parent.parent):
        return PACK_ROOT.parent.parent
    target = cache_dir() / f"ComfyUI-{COMFYUI_VERSION}"
    if _is_comfyui(target):
        return target
    if SNAPSHOT.is_file():
        unpack = target.with_name(target.name + ".unpacking")
        unpack.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SNAPSHOT) as tar:
            tar.extractall(unpack, filter="data")
        (unpack / "comfyui").rename(target)
        unpack.rmdir()
        return target
    subprocess.run(
        ["git", "clone", "--depth", "1", "--branch", f"v{COMFYUI_VERSION}", COMFYUI_REPO, str(target)],
        check=True,
    )
    return target


class _StandInServer:
    """The few attributes of ComfyUI's PromptServer that the executor touches, recording events."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.events: list[tuple[str, object]] = []

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))

    def queue_updated(self):
        pass


class GraphError(RuntimeError):
    """A graph that ComfyUI refused (validation) or that failed while executing."""


@dataclass
class RunResult:
    prompt_id: str
    outputs: dict  # node id -> UI output (e.g. {"images": [{"filename": ...}]})
    events: list = field(default_factory=list)
    progress: list = field(
        default_factory=list
    )  # (node id, value, total, has preview) per ProgressBar update

    def images(self, output_dir: Path) -> list[Path]:
        """Files written by saving nodes (type "output"; previews go to temp and are left out)."""
        return [
            output_dir / img.get("subfolder", "") / img["filename"]
            for out in self.outputs.values()
            for img in out.get("images", [])
            if img.get("type", "output") == "output"
        ]


class HeadlessComfyUI:
    """ComfyUI started in this process, with this pack loaded as a custom node.

    One instance per process: ComfyUI keeps module-level registries. ``run`` executes an API-format
    graph with a persistent executor, exactly like consecutive prompts on a real server (so node
    outputs are cached between runs the way users experience it); ``fresh=True`` drops the cache.
    """

    def __init__(
        self, base_dir: Path, comfy_root: Path | None = None, pack_root: Path = PACK_ROOT, cpu: bool = True
    ):
        self.comfy_root = comfy_root or find_comfyui()
        self.cpu = cpu
        self.base_dir = Path(base_dir)
        self.pack_root = pack_root
        self.progress: list[tuple] = []
        self._executor = None
        self._start()

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    def _start(self):
        for sub in ("models/checkpoints", "models/embeddings", "custom_nodes", "input", "output", "temp"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        root = str(self.comfy_root)
        if root in sys.path:
            sys.path.remove(root)
        sys.path.insert(0, root)  # ComfyUI's top-level `nodes`, `utils`, ... must win

        import comfy.cli_args

        args = comfy.cli_args.args
        args.cpu = self.cpu  # False: ComfyUI picks the GPU it finds
        args.base_directory = str(self.base_dir)
        args.disable_api_nodes = True
        args.database_url = "sqlite:///:memory:"
        if "folder_paths" in sys.modules:
            raise RuntimeError("HeadlessComfyUI: ComfyUI was already imported in this process")

        import importlib

        # order matters: model_management reads args.cpu; utils.install_util must precede `nodes`
        importlib.import_module("comfy.model_management")
        importlib.import_module("utils.install_util")
        comfy_utils = importlib.import_module("comfy.utils")
        execution = importlib.import_module("execution")
        nodes = importlib.import_module("nodes")

        self._execution = execution
        self._nodes = nodes
        comfy_utils.set_progress_bar_global_hook(self._on_progress)
        root_logger = logging.getLogger()
        level = root_logger.level
        root_logger.setLevel(logging.ERROR)  # ComfyUI's audio nodes warn at length without torchaudio
        try:
            asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        finally:
            root_logger.setLevel(level)
        loaded = asyncio.run(nodes.load_custom_node(str(self.pack_root), module_parent="custom_nodes"))
        if not loaded:
            raise RuntimeError(f"ComfyUI could not load the pack at {self.pack_root}: see the log above")
        self.reset()

    def _on_progress(self, value, total, preview, prompt_id=None, node_id=None):
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        if node_id is None and context is not None:
            node_id = context.node_id
        self.progress.append((node_id, value, total, preview is not None))

    @property
    def node_classes(self) -> dict:
        return self._nodes.NODE_CLASS_MAPPINGS

    def reset(self):
        self._server = _StandInServer()
        cache_type = self._execution.CacheType.CLASSIC
        self._executor = self._execution.PromptExecutor(self._server, cache_type=cache_type)

    def validate(self, graph: dict) -> list[str]:
        """Node ids of the graph's outputs; raises GraphError with ComfyUI's messages if any node is
        invalid (ComfyUI itself would run the valid outputs and drop the others)."""
        valid, error, outputs, node_errors = asyncio.run(
            self._execution.validate_prompt(str(uuid.uuid4()), graph, None)
        )
        if not valid or node_errors:
            raise GraphError(f"invalid graph: {error}; node errors: {node_errors}")
        return list(outputs)

    def run(self, graph: dict, fresh: bool = False) -> RunResult:
        if fresh:
            self.reset()
        outputs = self.validate(graph)
        prompt_id = str(uuid.uuid4())
        self.progress = []
        self._server.events = []
        self._executor.execute(graph, prompt_id, {}, outputs)
        if not self._executor.success:
            messages = [data for event, data in self._executor.status_messages if event == "execution_error"]
            detail = messages[0] if messages else self._executor.status_messages
            if isinstance(detail, dict):
                detail = (
                    f"node {detail.get('node_id')} ({detail.get('node_type')}): "
                    f"{detail.get('exception_type')}: {detail.get('exception_message')}"
                )
            raise GraphError(f"graph failed: {detail}")
        return RunResult(
            prompt_id,
            self._executor.history_result["outputs"],
            list(self._server.events),
            list(self.progress),
        )

    def node_output(self, node_id: str):
        """The cached Python outputs of a node from the last run (tuple of its outputs)."""
        entry = self._executor.caches.outputs.get(str(node_id))
        if entry is None:
            raise KeyError(f"node {node_id} has no cached output")
        values = entry.outputs if hasattr(entry, "outputs") else entry
        return tuple(v[0] if isinstance(v, list) and len(v) == 1 else v for v in values)


def quiet_comfy_logging(level=logging.WARNING):
    logging.getLogger().setLevel(level)
