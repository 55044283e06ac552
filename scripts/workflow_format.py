"""ComfyUI's two workflow forms: the UI (litegraph) graph a user drags into the page, and the API
graph the page queues.

- :class:`WorkflowSpec` describes a workflow by node, widget name and link, laid out on a grid, with
  groups and notes; :meth:`WorkflowSpec.ui_graph` writes the UI form against a server's
  ``/object_info`` (widget order, control widgets, socket types), so a node that gains an input
  only needs the workflow rebuilt (``python -m scripts.build_workflows``).
- :func:`ui_to_api` turns a UI graph into the API graph as the page's ``graphToPrompt`` does:
  widget values by the node's widget order (the control value after a seed, the upload button
  after an image choice), links followed to their source, notes left out, muted nodes dropped and
  bypassed ones passed through. The browser test checks it against the page's own conversion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PRIMITIVES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
VIRTUAL_NODES = ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")
MUTED, BYPASSED = 2, 4
COLUMN, ROW = 400, 30  # grid of a spec's positions, in canvas pixels
NODE_WIDTH = 340
GAP = 70  # between nodes stacked in a column (their title bars sit above their positions)


def _is_widget(spec: list) -> bool:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    return (isinstance(kind, list) or kind in PRIMITIVES) and not options.get("forceInput")


def _inputs(info: dict) -> list[tuple[str, list]]:
    """``(name, spec)`` of a node's required then optional inputs, in the node's order."""
    order = info.get("input_order", {})
    out = []
    for section in ("required", "optional"):
        specs = info["input"].get(section, {})
        out.extend((name, specs[name]) for name in order.get(section, specs))
    return out


# The values the page adds after some widgets, and what it serialises for them.
CONTROL_VALUE, UPLOAD_VALUE = "fixed", "image"


def widget_slots(info: dict) -> list[tuple[str | None, Any]]:
    """The node's serialised widget values in order: ``(input name, spec)`` for its widgets and
    ``(None, value)`` for the values the page adds after some (a seed's control-after-generate, an
    image input's upload button)."""
    slots: list[tuple[str | None, Any]] = []
    for name, spec in _inputs(info):
        if not _is_widget(spec):
            continue
        slots.append((name, spec))
        options = spec[1] if len(spec) > 1 else {}
        if options.get("control_after_generate"):
            slots.append((None, CONTROL_VALUE))
        if options.get("image_upload"):
            slots.append((None, UPLOAD_VALUE))
    return slots


@dataclass(frozen=True)
class Output:
    node: int
    slot: int


@dataclass
class Node:
    id: int
    type: str
    at: tuple[float, float]  # (column, row) on the spec's grid
    title: str | None
    values: dict[str, Any]  # widget values and links (Output) by input name
    text: str | None = None  # a note's text
    color: str | None = None

    def __getitem__(self, slot: int) -> Output:
        return Output(self.id, slot)


@dataclass
class Group:
    title: str
    nodes: list[Node]
    color: str = "#3f789e"


@dataclass
class WorkflowSpec:
    name: str
    nodes: list[Node] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    _sections: list[int] = field(default_factory=list)

    def node(self, type_: str, at: tuple[float, float], title: str | None = None, **values) -> Node:
        node = Node(len(self.nodes) + 1, type_, at, title, values)
        self.nodes.append(node)
        return node

    def note(self, text: str, at: tuple[float, float], title: str = "Note") -> Node:
        node = Node(len(self.nodes) + 1, "Note", at, title, {}, text=text, color="#432")
        self.nodes.append(node)
        return node

    def group(self, title: str, *nodes: Node, color: str = "#3f789e") -> None:
        self.groups.append(Group(title, list(nodes), color))

    def new_section(self) -> None:
        """Lay the nodes added from now on out below every node so far (a new band of groups)."""
        self._sections.append(len(self.nodes))

    # ------------------------------------------------------------------------------------- UI form
    def ui_graph(self, object_info: dict) -> dict:
        self._layout(object_info)
        links, nodes = [], []
        sockets: dict[int, list[dict]] = {}
        for node in self.nodes:
            if node.type in VIRTUAL_NODES:
                continue
            if node.type not in object_info:
                raise KeyError(f"workflow {self.name}: the server has no node {node.type!r}")
            unknown = set(node.values) - {name for name, _ in _inputs(object_info[node.type])}
            if unknown:
                raise KeyError(f"workflow {self.name}: {node.type} has no input(s) {sorted(unknown)}")
            sockets[node.id] = [
                {"name": n, "type": t, "links": [], "slot_index": i}
                for i, (n, t) in enumerate(
                    zip(object_info[node.type]["output_name"], object_info[node.type]["output"], strict=True)
                )
            ]
        by_id = {n.id: n for n in self.nodes}
        for order, node in enumerate(self.nodes):
            entry = {
                "id": node.id, "type": node.type, "pos": self._pos(node),
                "size": list(self._size(node, object_info)), "flags": {}, "order": order, "mode": 0,
                "properties": {"Node name for S&R": node.type},
            }  # fmt: skip
            if node.title:
                entry["title"] = node.title
            if node.color:
                entry["color"], entry["bgcolor"] = node.color, "#653"
            if node.type == "Note":
                entry["widgets_values"] = [node.text]
                nodes.append(entry)
                continue
            info = object_info[node.type]
            inputs, values = [], []
            for name, spec in _inputs(info):
                value = node.values.get(name)
                widget = _is_widget(spec)
                if isinstance(value, Output):
                    source = by_id[value.node]
                    kind = object_info[source.type]["output"][value.slot]
                    link_id = len(links) + 1
                    links.append([link_id, value.node, value.slot, node.id, len(inputs), kind])
                    sockets[value.node][value.slot]["links"].append(link_id)
                    socket = {"name": name, "type": kind, "link": link_id}
                    if widget:
                        socket["widget"] = {"name": name}
                    inputs.append(socket)
                elif not widget:
                    inputs.append({"name": name, "type": spec[0], "link": None})
            for name, spec in widget_slots(info):
                if name is None:
                    values.append(spec)
                    continue
                value = node.values.get(name)
                if isinstance(value, Output) or value is None:
                    value = _default(spec)
                values.append(value)
            if inputs:
                entry["inputs"] = inputs
            if sockets[node.id]:
                entry["outputs"] = sockets[node.id]
            if values:
                entry["widgets_values"] = values
            nodes.append(entry)
        groups = [
            {"id": i + 1, "title": g.title, "bounding": self._bounding(g, object_info), "color": g.color,
             "font_size": 24, "flags": {}}
            for i, g in enumerate(self.groups)
        ]  # fmt: skip
        return {
            "id": _stable_uuid(self.name), "revision": 0, "last_node_id": len(self.nodes),
            "last_link_id": len(links), "nodes": nodes, "links": links, "groups": groups, "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [60, 110]}}, "version": 0.4,
        }  # fmt: skip

    def _layout(self, object_info: dict) -> None:
        """Canvas positions: column ``at[0]``; in it, ``at[1]`` rows below the top of the node's section,
        and below the node above, so that nodes stacked in a column never overlap."""
        bottoms: dict[float, float] = {}
        floor = 0.0
        self._positions: dict[int, list[float]] = {}
        for index, node in enumerate(self.nodes):
            if index in self._sections and bottoms:
                floor = max(bottoms.values()) + 2 * GAP  # room for the next band's group titles
                bottoms = {}
            col, row = node.at
            y = max(floor + row * ROW, bottoms.get(col, floor - GAP) + GAP)
            self._positions[node.id] = [col * COLUMN, y]
            bottoms[col] = y + self._size(node, object_info)[1]

    def _pos(self, node: Node) -> list[float]:
        return self._positions[node.id]

    @staticmethod
    def _size(node: Node, object_info: dict) -> tuple[int, int]:
        if node.type == "Note":
            return NODE_WIDTH, 40 + 18 * (node.text.count("\n") + len(node.text) // 48 + 1)
        info = object_info[node.type]
        widgets = [spec for name, spec in widget_slots(info) if name is not None]
        multiline = sum(1 for spec in widgets if len(spec) > 1 and spec[1].get("multiline"))
        sockets = max(len(info["output"]), sum(1 for _, spec in _inputs(info) if not _is_widget(spec)))
        images = 260 if info.get("output_node") and "images" in info["input"].get("required", {}) else 0
        return NODE_WIDTH, 36 + 22 * sockets + 26 * len(widgets) + 70 * multiline + images

    def _bounding(self, group: Group, object_info: dict) -> list[float]:
        boxes = []
        for node in group.nodes:
            (x, y), (w, h) = self._pos(node), self._size(node, object_info)
            boxes.append((x, y - 30, x + w, y + h))  # 30: the node's title bar, above pos
        x0, y0 = min(b[0] for b in boxes) - 20, min(b[1] for b in boxes) - 50
        x1, y1 = max(b[2] for b in boxes) + 20, max(b[3] for b in boxes) + 20
        return [x0, y0, x1 - x0, y1 - y0]


def _default(spec: list):
    options = spec[1] if len(spec) > 1 else {}
    if "default" in options:
        return options["default"]
    choices = spec[0] if isinstance(spec[0], list) else options.get("options", [])
    if choices:
        return choices[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(spec[0])


def _stable_uuid(name: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-spatial-control/workflows/{name}"))


# ------------------------------------------------------------------------------------------ UI -> API
def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API graph of a UI graph, as the page queues it."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}

    def source(link_id: int, kind: str | None = None):
        """``[node id, slot]`` feeding a link, through reroutes and bypassed nodes; None if none."""
        _, origin, slot, *_ = links[link_id]
        node = nodes[origin]
        if node["type"] == "Reroute" or node.get("mode") == BYPASSED:
            kind = kind or links[link_id][5]
            for socket in node.get("inputs", []):
                feeding = socket.get("link")
                if feeding is not None and (node["type"] == "Reroute" or links[feeding][5] == kind):
                    return source(feeding, kind)
            return None
        if node.get("mode") == MUTED:
            return None
        return [str(origin), slot]

    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES or node.get("mode") in (MUTED, BYPASSED):
            continue
        if node["type"] not in object_info:
            raise KeyError(f"node {node['id']}: the server has no node type {node['type']!r}")
        info = object_info[node["type"]]
        inputs: dict[str, Any] = {}
        values = list(node.get("widgets_values", []))
        slots = widget_slots(info)
        if len(values) != len(slots):
            raise ValueError(
                f"node {node['id']} ({node['type']}): {len(values)} widget values for {len(slots)} widgets; "
                "the workflow was saved for another version of the node: rebuild it"
            )
        for (name, _), value in zip(slots, values, strict=True):
            if name is not None:
                inputs[name] = value
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                fed = source(socket["link"])
                if fed is not None:
                    inputs[socket["name"]] = fed
                else:
                    inputs.pop(socket["name"], None)
        entry = {"inputs": inputs, "class_type": node["type"]}
        entry["_meta"] = {"title": node.get("title") or info.get("display_name") or node["type"]}
        prompt[str(node["id"])] = entry
    return prompt
