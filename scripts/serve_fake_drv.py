"""Build tiny DRV-like zips and serve them on 127.0.0.1, to try `make download_dataset` without the real host.

    .venv/bin/python scripts/serve_fake_drv.py --port 8765 --dir /tmp/fake_drv
    make dataset_path=/tmp/d download_dataset url_base=http://127.0.0.1:8765/DRV

The zips (DIR/DRV/NAME.zip) follow DRV's layout: long.zip holds long/<id>/ (16-bit PNG ground
truth and the long exposure raw), short1..short5.zip add short/<id>/NNNN.ARW, and
VBM4D_rawRGB.zip holds VBM4D_rawRGB/<id>/NNNN.png. The raws are synthetic DNGs
(batman.data.synth) named .ARW like DRV's, which rawpy reads by content; the VBM4D PNGs are
stand-ins (copies of the ground truth), not the authors' pre-processing. The server honours
Range requests; --drop-first N cuts each file's first answer after N bytes to show a resume.
"""
from __future__ import annotations

import argparse
import re
import tempfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from batman.data.download import PART_SETS
from batman.data.synth import synthesize
from batman.files import atomic_path


def build_zips(out: Path, videos: int, frames: int, size: tuple[int, int], seed: int) -> list[Path]:
    """Write DIR/DRV/{long,short1..5,VBM4D_rawRGB}.zip from a synthetic data set; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp)
        synthesize(src, videos=videos, frames=frames, size=size, seed=seed, dynamic=1)
        ids = sorted(p.name for p in (src / "short").iterdir())
        members = {"long": _files(src, "long", ids), "VBM4D_rawRGB": _vbm4d_members(src, ids)}
        for k in range(5):  # DRV splits the raw frames over five archives, each adding ids to short/
            members[f"short{k + 1}"] = _files(src, "short", ids[k::5])
        return [_write_zip(out / f"{name}.zip", files) for name, files in members.items()]


def _files(src: Path, folder: str, ids: list[str]) -> dict[str, Path]:
    """{name in the zip: file} for the ids' folders; .dng renamed .ARW as in DRV."""
    files = {}
    for vid in ids:
        for path in sorted((src / folder / vid).iterdir()):
            files[f"{folder}/{vid}/{re.sub(r'[.]dng$', '.ARW', path.name)}"] = path
    return files


def _vbm4d_members(src: Path, ids: list[str]) -> dict[str, Path]:
    """One 3-channel 16-bit PNG per raw frame: the video's (first) ground truth as a stand-in."""
    files = {}
    for vid in ids:
        truths = sorted((src / "long" / vid).glob("half*.png"))
        for i, _ in enumerate(sorted((src / "short" / vid).glob("*.dng"))):
            files[f"VBM4D_rawRGB/{vid}/{i + 1:04d}.png"] = truths[min(i, len(truths) - 1)]
    return files


def _write_zip(path: Path, files: dict[str, Path]) -> Path:
    with atomic_path(path, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, file in files.items():
                zf.write(file, name)
    return path


def make_handler(folder: Path, drop_first: int):
    """A handler serving folder/NAME.zip at /DRV/NAME.zip, with Range; the first GET of each file may be cut."""
    dropped: set[str] = set()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self._answer(body=False)

        def do_GET(self):
            self._answer(body=True)

        def _answer(self, body: bool):
            m = re.fullmatch(r"/DRV/([A-Za-z0-9_]+\.zip)", self.path)
            path = folder / m[1] if m else None
            if path is None or not path.is_file():
                return self.send_error(404)
            data = path.read_bytes()
            start = 0
            rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if rng:
                start = int(rng[1])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
            self.send_response(206 if rng else 200)
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if not body:
                return
            with lock:
                cut = drop_first > 0 and path.name not in dropped
                dropped.add(path.name)
            self.wfile.write(data[start:start + drop_first] if cut else data[start:])

    return Handler


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--dir", type=Path, required=True, help="where the zips go (DIR/DRV/*.zip)")
    p.add_argument("--videos", type=int, default=4, help="static videos (plus one dynamic, M0000)")
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drop-first", type=int, default=0, metavar="N",
                   help="cut each file's first answer after N bytes (shows a resume)")
    p.add_argument("--build-only", action="store_true", help="write the zips and exit")
    args = p.parse_args()
    folder = args.dir / "DRV"
    needed = set(PART_SETS["all"])
    if not all((folder / f"{name}.zip").is_file() for name in needed):
        for path in build_zips(folder, args.videos, args.frames, (64, 96), args.seed):
            print(f"wrote {path} ({path.stat().st_size} bytes)")
    if args.build_only:
        return
    httpd = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(folder, args.drop_first))
    url = f"http://127.0.0.1:{httpd.server_address[1]}/DRV"
    print(f"serving {folder} at {url} (Ctrl-C to stop); try:\n"
          f"  make dataset_path=/tmp/d download_dataset url_base={url}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()
