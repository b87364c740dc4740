"""batman.data.download against a local threaded HTTP server on 127.0.0.1 (nothing leaves the machine)."""
from __future__ import annotations

import io
import json
import random
import stat
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from batman.config import BatmanError
from batman.data import download as dl

FAST = dict(retries=3, backoff_s=0.01, timeout_s=5.0)


@dataclass
class FakeHost:
    """What the server holds and how it misbehaves; the tests change it between calls."""
    files: dict[str, bytes] = field(default_factory=dict)   # URL path -> body
    ranges: bool = True                                     # honour Range (206) or always send 200 full
    drop_after: list = field(default_factory=list)          # per GET, popped: close after N body bytes
    fail_codes: list = field(default_factory=list)          # per GET, popped: answer this status instead
    declared_extra: int = 0                                 # Content-Length claims this many more bytes
    requests: list = field(default_factory=list)            # (method, path, Range header or None)
    bytes_sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, data: bytes) -> None:
        self.files[path] = data


def _make_handler(host: FakeHost):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self._answer(send_body=False)

        def do_GET(self):
            self._answer(send_body=True)

        def _answer(self, send_body: bool):
            rng = self.headers.get("Range")
            with host.lock:
                host.requests.append((self.command, self.path, rng))
                code = host.fail_codes.pop(0) if host.fail_codes and send_body else None
                drop = host.drop_after.pop(0) if host.drop_after and send_body else None
            if code:
                return self.send_error(code)
            data = host.files.get(self.path)
            if data is None:
                return self.send_error(404)
            start, status = 0, 200
            if rng and host.ranges:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                status = 206
            body = data[start:]
            self.send_response(status)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body) + host.declared_extra))
            self.end_headers()
            if send_body:
                body = body if drop is None else body[:drop]
                with host.lock:  # counted before writing: the client cannot finish before the count
                    host.bytes_sent += len(body)
                try:
                    self.wfile.write(body)
                    self.wfile.flush()
                except OSError:
                    return

    return Handler


@pytest.fixture
def server(monkeypatch):
    """(FakeHost, base URL) of a threaded server on 127.0.0.1; proxies bypassed so nothing leaves the machine."""
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    host = FakeHost()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(host))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield host, f"http://127.0.0.1:{httpd.server_address[1]}/DRV"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def make_zip(members: dict, compression=zipfile.ZIP_STORED) -> bytes:
    """A zip from {name: bytes | ZipInfo-with-bytes tuple}."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            if isinstance(data, tuple):
                info, data = data
                zf.writestr(info, data)
            else:
                zf.writestr(name, data)
    return buf.getvalue()


def noise(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def long_zip() -> bytes:
    return make_zip({"long/0001/half0001.png": noise(40_000, 1), "long/0002/half0001.png": noise(30_000, 2)})


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- parts -------------------------------------------------------------------------------------

def test_parts_resolve_groups_and_lists():
    assert dl.resolve_parts("raw") == ["long", "short1", "short2", "short3", "short4", "short5"]
    assert dl.resolve_parts("preprocessed") == ["long", "VBM4D_rawRGB"]
    assert len(dl.resolve_parts("all")) == 7
    assert dl.resolve_parts("short2, long,vbm4d_rawrgb,long") == ["short2", "long", "VBM4D_rawRGB"]


def test_unknown_part_lists_the_valid_ones():
    with pytest.raises(BatmanError, match=r"unknown part 'short9'.*raw, preprocessed, all.*short5"):
        dl.resolve_parts("long,short9")


def test_url_base_must_be_http(tmp_path):
    with pytest.raises(BatmanError, match="--url-base"):
        dl.download(tmp_path, parts="long", url_base="file:///etc")


# --- transfer ----------------------------------------------------------------------------------

def test_interrupted_download_resumes_with_range_and_is_byte_identical(server, tmp_path):
    host, url = server
    data = long_zip()
    host.add("/DRV/long.zip", data)
    host.drop_after = [10_000]
    received = dl.download(tmp_path, parts="long", url_base=url, keep_zips=True, **FAST)
    gets = [r for r in host.requests if r[0] == "GET"]
    assert [r[2] for r in gets] == [None, "bytes=10000-"]
    assert (tmp_path / ".download" / "long.zip").read_bytes() == data
    assert received == {"long": len(data)} and host.bytes_sent == len(data)
    assert (tmp_path / "long" / "0001" / "half0001.png").read_bytes() == noise(40_000, 1)


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    host, url = server
    data = long_zip()
    host.add("/DRV/long.zip", data)
    host.ranges = False
    host.drop_after = [10_000]
    dl.download(tmp_path, parts="long", url_base=url, keep_zips=True, **FAST)
    assert host.requests[1][2] == "bytes=10000-"  # asked to resume, got a 200 with the whole file
    assert (tmp_path / ".download" / "long.zip").read_bytes() == data
    assert host.bytes_sent == 10_000 + len(data)


def test_500_then_200_succeeds_after_a_retry(server, tmp_path):
    host, url = server
    host.add("/DRV/long.zip", long_zip())
    host.fail_codes = [500, 503]
    dl.download(tmp_path, parts="long", url_base=url, **FAST)
    assert len(host.requests) == 3
    assert (tmp_path / "long" / "0002" / "half0001.png").read_bytes() == noise(30_000, 2)
    assert not (tmp_path / ".download" / "long.zip").exists()  # removed after extraction


def test_404_is_an_immediate_error_naming_the_url(server, tmp_path):
    host, url = server
    with pytest.raises(BatmanError, match=rf"{url}/long.zip: HTTP 404"):
        dl.download(tmp_path, parts="long", url_base=url, **FAST)
    assert len(host.requests) == 1


def test_unreachable_host_fails_within_the_budget(tmp_path, monkeypatch):
    import socket
    monkeypatch.setenv("no_proxy", "*")
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/DRV"
    t0 = time.monotonic()
    with pytest.raises(BatmanError, match=rf"{url}/long.zip: giving up after 3 tries"):
        dl.download(tmp_path, parts="long", url_base=url, retries=3, backoff_s=0.01, timeout_s=2.0)
    assert time.monotonic() - t0 < 10


def test_complete_part_file_is_finished_without_transfer(server, tmp_path):
    host, url = server
    data = long_zip()
    host.add("/DRV/long.zip", data)
    (tmp_path / ".download").mkdir()
    (tmp_path / ".download" / "long.zip.part").write_bytes(data)  # stopped just before the rename
    dl.download(tmp_path, parts="long", url_base=url, **FAST)
    assert host.bytes_sent == 0 and host.requests[0][2] == f"bytes={len(data)}-"
    assert (tmp_path / "long" / "0001" / "half0001.png").exists()


def test_rerun_transfers_nothing(server, tmp_path):
    host, url = server
    host.add("/DRV/long.zip", long_zip())
    dl.download(tmp_path, parts="long", url_base=url, **FAST)
    sent, asked = host.bytes_sent, len(host.requests)
    assert dl.download(tmp_path, parts="long", url_base=url, **FAST) == {"long": 0}
    assert (host.bytes_sent, len(host.requests)) == (sent, asked)
    marker = json.loads((tmp_path / ".download" / "long.done").read_text())
    assert marker["members"] == 2 and marker["zip_bytes"] == len(long_zip()) and marker["extracted_at"]


# --- verification ------------------------------------------------------------------------------

def test_body_shorter_than_declared_is_refused(server, tmp_path):
    host, url = server
    host.add("/DRV/long.zip", long_zip())
    host.ranges = False
    host.declared_extra = 100
    with pytest.raises(BatmanError, match=r"long.zip: giving up after 3 tries.*of \d+ bytes"):
        dl.download(tmp_path, parts="long", url_base=url, **FAST)
    assert not (tmp_path / "long").exists() and not (tmp_path / ".download" / "long.zip").exists()


def test_size_that_changes_between_answers_is_refused(server, tmp_path):
    host, url = server
    host.add("/DRV/long.zip", long_zip())
    host.declared_extra = 100  # the 200 claims 100 bytes more; the 416 on resume tells the truth
    with pytest.raises(BatmanError, match=r"long.zip: the server reported \d+ bytes, then \d+"):
        dl.download(tmp_path, parts="long", url_base=url, **FAST)
    assert not (tmp_path / "long").exists() and not list((tmp_path / ".download").glob("long.zip*"))


def test_size_against_known_sizes(server, tmp_path, monkeypatch):
    host, url = server
    data = long_zip()
    host.add("/DRV/long.zip", data[:-50])  # a truncated release, served with a consistent length
    monkeypatch.setitem(dl.KNOWN_SIZES, "long", len(data))
    with pytest.raises(BatmanError, match=rf"reports {len(data) - 50} bytes, expected {len(data)}"):
        dl.download(tmp_path, parts="long", url_base=url, **FAST)
    assert not (tmp_path / "long").exists() and not list((tmp_path / ".download").glob("long.zip*"))


def test_truncated_zip_is_refused_removed_and_fetched_again(server, tmp_path):
    host, url = server
    data = long_zip()
    host.add("/DRV/long.zip", data[:-50])
    with pytest.raises(BatmanError, match=r"long.zip: not a readable zip.*removed it"):
        dl.download(tmp_path, parts="long", url_base=url, **FAST)
    assert not (tmp_path / "long").exists() and not (tmp_path / ".download" / "long.zip").exists()
    host.add("/DRV/long.zip", data)
    dl.download(tmp_path, parts="long", url_base=url, **FAST)
    assert (tmp_path / "long" / "0001" / "half0001.png").read_bytes() == noise(40_000, 1)


def test_crc_broken_zip_is_refused_and_nothing_extracted(server, tmp_path):
    host, url = server
    good = make_zip({"long/0001/a.png": b"A" * 5000, "long/0002/b.png": b"B" * 5000})
    broken = bytearray(good)
    broken[good.index(b"B" * 100) + 10] ^= 0xFF  # a flipped byte in the second member's stored data
    host.add("/DRV/long.zip", bytes(broken))
    with pytest.raises(BatmanError, match=r"member 'long/0002/b.png' is corrupt.*CRC"):
        dl.download(tmp_path, parts="long", url_base=url, **FAST)
    assert not (tmp_path / "long").exists()  # not even the good first member
    assert set(p.name for p in (tmp_path / ".download").iterdir()) <= {"lock"}


def _symlink_member() -> tuple:
    info = zipfile.ZipInfo("long/0001/link")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, b"../../../evil"


@pytest.mark.parametrize("name, member, why", [
    ("dotdot", ("../evil", b"x"), "climbs out"),
    ("nested_dotdot", ("long/../../evil", b"x"), "climbs out"),
    ("backslash", ("..\\evil", b"x"), "climbs out"),
    ("absolute", ("/abs/path/evil", b"x"), "absolute path"),
    ("drive", ("C:/evil", b"x"), "drive letter"),
    ("symlink", ("long/0001/link", _symlink_member()), "symbolic link"),
])
def test_unsafe_member_refuses_the_archive_and_writes_nothing(server, tmp_path, name, member, why):
    host, url = server
    member_name, data = member
    host.add("/DRV/long.zip", make_zip({"long/0001/half0001.png": b"ok", member_name: data}))
    root = tmp_path / "root"
    with pytest.raises(BatmanError, match=why):
        dl.download(root, parts="long", url_base=url, **FAST)
    assert not any(tmp_path.parent.rglob("evil")) and not Path("/abs/path").exists()
    assert not (root / "long").exists() and not (root / ".download" / "long.zip").exists()


# --- disk space and extraction ---------------------------------------------------------------------

def test_too_little_space_for_the_archive_stops_before_the_body(server, tmp_path, monkeypatch):
    host, url = server
    host.add("/DRV/long.zip", long_zip())
    monkeypatch.setattr(dl, "free_bytes", lambda path: 1000)
    with pytest.raises(BatmanError, match=r"long.zip \(archive .* needs .* free, only 1000 B left"):
        dl.download(tmp_path, parts="long", url_base=url, **FAST)
    assert not list((tmp_path / ".download").glob("long.zip*"))  # the body was never read


def test_too_little_space_for_the_extraction_keeps_the_archive(server, tmp_path, monkeypatch):
    host, url = server
    member = bytes(b & 1 for b in noise(2_000_000, 3))  # one bit per byte: ~8x (1000x would be a zip bomb)
    data = make_zip({"long/0001/half0001.png": member}, zipfile.ZIP_DEFLATED)
    host.add("/DRV/long.zip", data)
    with monkeypatch.context() as m, pytest.raises(BatmanError, match=r"extracting long.zip .* needs 1.9 MB free"):
        m.setattr(dl, "free_bytes", lambda path: 1_000_000)
        dl.download(tmp_path, parts="long", url_base=url, **FAST)
    assert not (tmp_path / "long").exists()
    assert (tmp_path / ".download" / "long.zip").read_bytes() == data  # kept: no second download
    dl.download(tmp_path, parts="long", url_base=url, **FAST)
    assert host.bytes_sent == len(data) and (tmp_path / "long" / "0001" / "half0001.png").stat().st_size == 2_000_000


def test_interrupted_extraction_leaves_no_tree_and_reruns_from_the_zip(server, tmp_path, monkeypatch):
    host, url = server
    data = long_zip()
    host.add("/DRV/long.zip", data)

    def crash(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(dl, "_merge", crash)
        dl.download(tmp_path, parts="long", url_base=url, **FAST)
    assert not (tmp_path / "long").exists() and not (tmp_path / ".download" / "long.done").exists()
    assert not (tmp_path / ".download" / "long.extracting").exists()
    dl.download(tmp_path, parts="long", url_base=url, **FAST)
    assert host.bytes_sent == len(data) and (tmp_path / ".download" / "long.done").exists()


def test_raw_parts_merge_into_the_drv_layout(server, tmp_path):
    host, url = server
    host.add("/DRV/long.zip", make_zip({f"long/{i}/half0001.png": f"gt{i}".encode() for i in ("0001", "0002")}))
    host.add("/DRV/short1.zip", make_zip({"short/0001/0001.ARW": b"a1", "short/0001/0002.ARW": b"a2"}))
    host.add("/DRV/short2.zip", make_zip({"short/0002/0001.ARW": b"b1"}))
    host.add("/DRV/short3.zip", make_zip({"short3/0003/0001.ARW": b"c1"}))  # folder named after the part
    host.add("/DRV/short4.zip", make_zip({"0004/0001.ARW": b"d1"}))          # no top folder at all
    host.add("/DRV/short5.zip", make_zip({"short/M0000/0001.ARW": b"e1", "__MACOSX/._x": b""}))
    dl.download(tmp_path, parts="raw", url_base=url + "/", **FAST)
    assert files_under(tmp_path / "long") == {"0001/half0001.png": b"gt0001", "0002/half0001.png": b"gt0002"}
    assert files_under(tmp_path / "short") == {
        "0001/0001.ARW": b"a1", "0001/0002.ARW": b"a2", "0002/0001.ARW": b"b1", "0003/0001.ARW": b"c1",
        "0004/0001.ARW": b"d1", "M0000/0001.ARW": b"e1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".download", "long", "short"]
    assert sorted(p.name for p in (tmp_path / ".download").iterdir()) == sorted(
        ["lock"] + [f"{n}.done" for n in dl.PART_SETS["raw"]])


def test_a_second_download_in_the_same_root_is_refused(server, tmp_path):
    import fcntl
    host, url = server
    (tmp_path / ".download").mkdir()
    with open(tmp_path / ".download" / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BatmanError, match="another `batman download`"):
            dl.download(tmp_path, parts="long", url_base=url, **FAST)
    assert host.requests == []
