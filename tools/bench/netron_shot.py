"""Screenshot of a node's properties in Netron, to check that onnx-amp annotations are visible.

Serves the ONNX file with Netron's Python package (``pip install netron``) on localhost, opens it in
headless Chromium (Debian ``chromium``), clicks a layer node so Netron's "Node Properties" sidebar
opens (it lists the node's ``metadata_props``: ``onnx_amp.region``, ``onnx_amp.layer``,
``onnx_amp.unit``, ``onnx_amp.precision``, ...), checks that the sidebar text contains them and
writes a PNG. Chromium is driven over the Chrome DevTools protocol (``websocket-client``).

    python -m onnx_amp.tools.bench.netron_shot model.amp.onnx --node L4 -o shot.png
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1600,1000",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pick_node(path: Path, node: str | None) -> tuple[str, dict[str, str]]:
    """(node name, its onnx_amp.* metadata) for a layer id (``L4``), node name, or the first layer."""
    import onnx_ir as ir

    model = ir.load(path)  # external data stays on disk
    for n in model.graph:
        props = dict(n.metadata_props)
        if node is None and "onnx_amp.layer" in props or node is not None and node in (n.name, props.get("onnx_amp.layer")):
            return n.name, {k: v for k, v in props.items() if k.startswith("onnx_amp.")}
    raise SystemExit(f"{path}: no node {node or 'with onnx_amp.layer'}; partition the model first")


class _CDP:
    def __init__(self, ws_url: str):
        import websocket  # websocket-client

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.i = 0

    def call(self, method: str, **params):
        self.i += 1
        self.ws.send(json.dumps({"id": self.i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        return r.get("result", {}).get("value")


def shoot(model_path: str | os.PathLike, out_png: str | os.PathLike, node: str | None = None,
          chromium: str = "chromium", timeout_s: float = 120.0) -> dict:
    """Open ``model_path`` in Netron, show ``node``'s properties, save ``out_png``; returns what it saw."""
    import netron

    path = Path(model_path).resolve()
    name, props = _pick_node(path, node)
    port, dbg = _free_port(), _free_port()
    address = netron.start(str(path), address=("localhost", port), browse=False)
    profile = tempfile.mkdtemp(prefix="netron-chromium-")
    exe = shutil.which(chromium) or chromium
    proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                             f"--remote-debugging-port={dbg}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        ws = None
        while ws is None and time.time() - t0 < 30:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{dbg}/json/list", timeout=2) as r:
                    pages = [p for p in json.load(r) if p.get("type") == "page"]
                    ws = pages[0]["webSocketDebuggerUrl"] if pages else None
            except OSError:
                time.sleep(0.3)
        if ws is None:
            raise RuntimeError("chromium did not open its DevTools endpoint")
        cdp = _CDP(ws)
        cdp.call("Page.enable")
        cdp.call("Runtime.enable")
        cdp.call("Page.navigate", url=f"http://localhost:{address[1]}/")
        elem_id = f"node-name-{name}"
        while time.time() - t0 < timeout_s:
            if cdp.js(f"!!document.getElementById({json.dumps(elem_id)})"):
                break
            # Netron's browser host asks for cookie consent before it opens the model: accept it
            cdp.js("(() => { for (const b of document.querySelectorAll('button')) "
                   "{ if (b.innerText.trim() === 'Accept' && b.offsetParent !== null) { b.click(); return true; } } "
                   "return false; })()")
            time.sleep(0.5)
        else:
            shot = cdp.call("Page.captureScreenshot", format="png")
            Path(str(out_png) + ".failed.png").write_bytes(base64.b64decode(shot["data"]))
            body = (cdp.js("document.body.innerText") or "")[:300].replace("\n", " | ")
            ids = cdp.js("Array.from(document.querySelectorAll('g.node')).slice(0, 5).map(e => e.id).join(',')")
            raise RuntimeError(f"Netron did not render node {name!r} within {timeout_s:.0f} s "
                               f"(page: {body!r}; first nodes: {ids!r}; see {out_png}.failed.png)")
        locate = f"""(() => {{ const g = document.getElementById({json.dumps(elem_id)});
            if (!g) return null;
            const t = g.querySelector('.node-item') || g;
            t.scrollIntoView({{block: 'center', inline: 'center'}});
            const b = t.getBoundingClientRect(); return [b.x + b.width / 2, b.y + b.height / 2]; }})()"""
        sidebar = ("(() => { const s = document.getElementById('sidebar'); if (!s) return ''; "
                   "return s.innerText + '\\n' + Array.from(s.querySelectorAll('input, textarea'))"
                   ".map(i => i.value).join('\\n'); })()")
        text = ""
        time.sleep(2.0)  # Netron lays the graph out, then draws it again
        while time.time() - t0 < timeout_s:
            xy = cdp.js(locate)
            time.sleep(0.5)
            if xy:  # a real mouse click (synthetic DOM clicks do not open Netron's sidebar)
                for typ in ("mousePressed", "mouseReleased"):
                    cdp.call("Input.dispatchMouseEvent", type=typ, x=xy[0], y=xy[1], button="left", clickCount=1)
            time.sleep(1.0)
            text = cdp.js(sidebar) or ""
            if props.get("onnx_amp.layer", "\0") in text and props.get("onnx_amp.region", "\0") in text:
                break
        time.sleep(1.0)
        shot = cdp.call("Page.captureScreenshot", format="png")
        Path(out_png).write_bytes(base64.b64decode(shot["data"]))
        lines = set(t.strip() for t in text.splitlines())
        seen = {k: (k in text, v in lines) for k, v in props.items() if len(v) < 200}
        return {"node": name, "png": str(out_png), "keys_visible": seen, "sidebar_text": text[:2000]}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        netron.stop(address)
        shutil.rmtree(profile, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="an annotated .onnx file")
    ap.add_argument("--node", help="layer id (L4) or node name (default: the first layer)")
    ap.add_argument("-o", "--output", default="netron_node.png")
    ap.add_argument("--chromium", default="chromium")
    args = ap.parse_args(argv)
    res = shoot(args.model, args.output, args.node, args.chromium)
    print(json.dumps({k: v for k, v in res.items() if k != "sidebar_text"}, indent=1))
    ok = all(res["keys_visible"].get(k, (False, False))[1] for k in ("onnx_amp.region", "onnx_amp.layer"))
    print("annotations visible in Netron" if ok else "annotations NOT visible in Netron", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
