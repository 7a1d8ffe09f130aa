"""The fetch stage: demo generation (atomic, skipped when current), verification of real layouts, clear errors for
missing data, and HTTP downloads (Range resume, checksum, basic auth) against a local server."""

import base64
import gzip
import hashlib
import io
import json
import os
import stat
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ace_lora import demo, registry
from ace_lora.config import DataConfig, DemoConfig
from ace_lora.data.fetch import (
    FIXTURE_MARKER,
    DownloadError,
    FetchError,
    download,
    fetch_dataset,
    fingerprint_files,
    redact_url,
    verify_layout,
)
from ace_lora.registry import DATASETS

TINY = DemoConfig(seed=1, n_train=12, n_per_class=3, image_size=16)


class _Server:
    """Serves ``files`` {url path: bytes} with HTTP Range support. ``cut`` {path: n}: the first GET of that path
    announces the full length but closes after ``n`` bytes (an interrupted transfer). ``auth``: required
    (user, password) for every request."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.auth: tuple[str, str] | None = None
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if server.auth is not None:
                    want = "Basic " + base64.b64encode(":".join(server.auth).encode()).decode()
                    if self.headers.get("Authorization") != want:
                        self._reply(401, b"")
                        return
                data = server.files.get(self.path)
                if data is None:
                    self._reply(404, b"not found")
                    return
                start = 0
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                        return
                body = data[start:]
                headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if rng else {}
                headers["Accept-Ranges"] = "bytes"
                limit = server.cut.pop(self.path, None)
                self._reply(206 if rng else 200, body, headers, limit)

            def _reply(self, code, body, headers=None, limit=None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                if limit is not None:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body if limit is None else body[:limit])
                self.wfile.flush()
                if limit is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


PAYLOAD = bytes(range(256)) * 4000  # ~1 MB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_download_full(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    dest = download(server.url + "/a.bin", tmp_path / "a.bin", sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "a.bin.part").exists()
    assert server.requests == [("/a.bin", None)]
    download(server.url + "/a.bin", dest, sha256=SHA, progress=False)  # complete file kept: no request
    assert len(server.requests) == 1


def test_download_resumes_an_existing_part_file(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD[:300_000])
    dest = download(server.url + "/a.bin", tmp_path / "a.bin", sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/a.bin", "bytes=300000-")]


def test_download_resumes_after_an_interrupted_transfer(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.cut["/a.bin"] = 123_456
    dest = download(server.url + "/a.bin", tmp_path / "a.bin", sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[0] == ("/a.bin", None)
    assert server.requests[-1][1] is not None and int(server.requests[-1][1][6:-1]) > 0
    assert not (tmp_path / "a.bin.part").exists()


def test_download_complete_part_file_is_not_fetched_again(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD)
    assert download(server.url + "/a.bin", tmp_path / "a.bin", sha256=SHA, progress=False).read_bytes() == PAYLOAD


def test_download_wrong_checksum_leaves_nothing(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    with pytest.raises(DownloadError, match="sha256 mismatch") as err:
        download(server.url + "/a.bin", tmp_path / "a.bin", sha256="0" * 64, progress=False)
    assert "/a.bin" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_download_http_errors_and_basic_auth(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        download(server.url + "/missing", tmp_path / "m.bin", progress=False)
    server.files["/s.bin"] = b"secret"
    server.auth = ("alice", "pw")
    with pytest.raises(DownloadError, match="401"):
        download(server.url + "/s.bin", tmp_path / "s.bin", progress=False)
    assert (
        download(server.url + "/s.bin", tmp_path / "s.bin", auth=("alice", "pw"), progress=False).read_bytes()
        == b"secret"
    )
    assert list(tmp_path.iterdir()) == [tmp_path / "s.bin"]


# ---------------------------------------------------------------------------------------------- demo


def test_demo_fetch_generates_atomically_and_skips_when_current(tmp_path):
    cfg = DataConfig(demo=TINY)
    record = fetch_dataset("siim", tmp_path, cfg)
    assert record["source"] == "demo"
    assert record["tables"] == {"labels": "train-rle.csv"}
    assert record["counts"]["images"] == 2 * demo.images_per_class("siim", TINY)
    assert set(record["sha256"]) == {"train-rle.csv"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["siim"]  # no temp folders left
    json.dumps(record)  # the stage writes it as JSON
    marker = tmp_path / "siim" / FIXTURE_MARKER
    stamp = marker.stat().st_mtime_ns
    again = fetch_dataset("siim", tmp_path, cfg)
    assert again == record and marker.stat().st_mtime_ns == stamp  # skipped: nothing rewritten
    changed = fetch_dataset(
        "siim", tmp_path, DataConfig(demo=DemoConfig(seed=2, n_train=12, n_per_class=4, image_size=16))
    )
    per_class = demo.images_per_class("siim", DemoConfig(n_per_class=4))
    assert marker.stat().st_mtime_ns != stamp and changed["counts"]["images"] == 2 * per_class


def test_demo_fetch_refuses_to_overwrite_real_data(tmp_path):
    (tmp_path / "mhist").mkdir()
    (tmp_path / "mhist" / "annotations.csv").write_text("x\n")
    with pytest.raises(FetchError, match="not a synthetic demo fixture"):
        fetch_dataset("mhist", tmp_path, DataConfig(demo=TINY))
    assert (tmp_path / "mhist" / "annotations.csv").read_text() == "x\n"


@pytest.mark.parametrize("name", registry.DATASET_NAMES)
def test_every_fixture_passes_the_layout_check(tmp_path, name):
    record = fetch_dataset(name, tmp_path, DataConfig(demo=TINY))
    assert record["dataset"] == name and record["counts"]["images"] > 0
    if name == "mimic":
        assert set(record["tables"]) == {"metadata", "split", "chexpert"} and record["counts"]["reports"] > 0


# ---------------------------------------------------------------------------------------------- real


def test_real_mode_verifies_data_in_place(tmp_path):
    demo.write_fixture("rsna", tmp_path / "rsna", TINY)  # no demo marker: looks like real data
    record = fetch_dataset("rsna", tmp_path, DataConfig(source="real"))
    assert record["source"] == "real"
    assert record["counts"]["images"] == 2 * demo.images_per_class("rsna", TINY)
    (tmp_path / "rsna" / "stage_2_train_labels.csv").unlink()
    with pytest.raises(FetchError, match="stage_2_train_labels.csv") as err:
        fetch_dataset("rsna", tmp_path, DataConfig(source="real"))
    assert "kaggle.com" in str(err.value) and str(tmp_path / "rsna") in str(err.value)


def test_real_mode_refuses_demo_data(tmp_path):
    fetch_dataset("mhist", tmp_path, DataConfig(demo=TINY))
    with pytest.raises(FetchError, match="synthetic demo data"):
        fetch_dataset("mhist", tmp_path, DataConfig(source="real"))


@pytest.mark.parametrize("name", ["chexpert", "mhist", "nih14", "rsna", "siim", "mimic", "lc25000"])
def test_real_mode_missing_data_says_what_and_where(tmp_path, monkeypatch, name):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "PHYSIONET_USERNAME", "PHYSIONET_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    with pytest.raises(FetchError) as err:
        fetch_dataset(name, tmp_path / "raw", DataConfig(source="real"))
    msg = str(err.value)
    assert DATASETS[name].source.where.split()[0] in msg and str(tmp_path / "raw" / name) in msg
    extra = {
        "rsna": "KAGGLE_USERNAME",
        "siim": "KAGGLE_USERNAME",
        "mimic": "PHYSIONET_USERNAME",
        "lc25000": "data.urls.lc25000",
    }.get(name, "cannot be downloaded automatically")
    assert extra in msg
    assert not (tmp_path / "raw" / name).exists()


def _zip_tree(root: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(root).as_posix())
    return buf.getvalue()


def test_real_lc25000_downloads_verifies_and_unpacks(server, tmp_path):
    demo.write_fixture("lc25000", tmp_path / "src", TINY)
    archive = _zip_tree(tmp_path / "src")
    server.files["/LC25000.zip"] = archive
    server.cut["/LC25000.zip"] = len(archive) // 3
    raw = tmp_path / "raw"
    cfg = DataConfig(
        source="real",
        urls={"lc25000": server.url + "/LC25000.zip"},
        sha256={"lc25000": hashlib.sha256(archive).hexdigest()},
    )
    record = fetch_dataset("lc25000", raw, cfg)
    assert record["source"] == "real" and record["counts"]["per_folder"] == {
        c: 3 for c in ["colon_aca", "colon_n", "lung_aca", "lung_n", "lung_scc"]
    }
    assert (raw / "lc25000" / "lung_colon_image_set" / "lung_image_sets" / "lung_n" / "lungn1.jpeg").is_file()
    assert not list((raw / ".downloads").iterdir())
    n_requests = len(server.requests)
    assert fetch_dataset("lc25000", raw, cfg) == record  # present now: verified, not downloaded again
    assert len(server.requests) == n_requests


def test_real_lc25000_bad_checksum(server, tmp_path):
    server.files["/LC25000.zip"] = b"not the archive"
    cfg = DataConfig(source="real", urls={"lc25000": server.url + "/LC25000.zip"}, sha256={"lc25000": "ab" * 32})
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch_dataset("lc25000", tmp_path, cfg)
    assert not (tmp_path / "lc25000").exists() and not list((tmp_path / ".downloads").iterdir())


def test_real_mimic_from_a_physionet_style_server(server, tmp_path, monkeypatch):
    cfg = _serve_mimic(server, tmp_path, monkeypatch)
    src = tmp_path / "src"
    record = fetch_dataset("mimic", tmp_path / "raw", cfg)
    assert record["source"] == "real" and record["counts"]["reports"] == len(list(src.rglob("*.txt")))
    frontal = len(list(src.rglob("*.jpg"))) - demo.write_fixture("mimic", tmp_path / "again", TINY)["lateral_images"]
    assert record["counts"]["images"] == frontal  # only the frontal views are downloaded
    assert (
        record["sha256"]["mimic-cxr-2.0.0-chexpert.csv.gz"]
        == hashlib.sha256((src / "mimic-cxr-2.0.0-chexpert.csv.gz").read_bytes()).hexdigest()
    )


def test_verify_layout_unknown_dataset(tmp_path):
    with pytest.raises(FetchError, match="unknown data set"):
        verify_layout("imagenet", tmp_path)


# --------------------------------------------------------------------- deterministic records, raw fingerprints


def test_fetch_record_is_identical_on_a_rerun_and_holds_no_machine_path(tmp_path):
    cfg = DataConfig(demo=TINY)
    first = json.dumps(fetch_dataset("rsna", tmp_path / "a", cfg), sort_keys=True)
    assert json.dumps(fetch_dataset("rsna", tmp_path / "a", cfg), sort_keys=True) == first  # verified in place
    assert json.dumps(fetch_dataset("rsna", tmp_path / "b", cfg), sort_keys=True) == first  # generated elsewhere
    assert str(tmp_path) not in first and "seconds" not in first


@pytest.mark.parametrize("mode", ["content", "stat"])
def test_fetch_record_changes_when_one_raw_image_changes(tmp_path, mode):
    demo.write_fixture("rsna", tmp_path / "rsna", TINY)
    cfg = DataConfig(source="real", raw_hash=mode)
    before = fetch_dataset("rsna", tmp_path, cfg)
    assert before["files"]["hash"] == mode and before["files"]["count"] == before["counts"]["images"] + 1
    assert fetch_dataset("rsna", tmp_path, cfg) == before
    image = sorted((tmp_path / "rsna").rglob("*.dcm"))[3]
    data = bytearray(image.read_bytes())
    data[-1] ^= 0xFF  # a repaired (or damaged) pixel: same size, same name
    image.write_bytes(bytes(data))
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    after = fetch_dataset("rsna", tmp_path, cfg)
    assert after["files"]["sha256"] != before["files"]["sha256"]
    assert after["sha256"] == before["sha256"] and after["counts"] == before["counts"]  # the old record missed it


def test_fingerprint_cost_on_the_demo(tmp_path):
    """Content hashing of a whole demo data set stays well under the stage's budget (figures: see the report)."""
    demo.write_fixture("mimic", tmp_path / "mimic", DemoConfig(n_train=400, n_per_class=8))
    start = time.perf_counter()
    content = fingerprint_files(tmp_path / "mimic", "content")
    seconds = time.perf_counter() - start
    stat = fingerprint_files(tmp_path / "mimic", "stat")
    assert content["count"] == stat["count"] > 800 and content["sha256"] != stat["sha256"]
    assert seconds < 10, f"hashing {content['bytes']} bytes took {seconds:.1f} s"


# ----------------------------------------------------------------------- hostile tables, archives and URLs


def _serve_mimic(server, tmp_path, monkeypatch, edit_metadata=None) -> DataConfig:
    """Write the tiny MIMIC fixture to ``tmp_path/src`` and serve it PhysioNet-style (basic auth): images under
    /jpg/, reports as /reports.zip; ``edit_metadata`` rewrites the metadata table's text first."""
    src = tmp_path / "src"
    demo.write_fixture("mimic", src, TINY)
    if edit_metadata is not None:
        path = src / "mimic-cxr-2.0.0-metadata.csv.gz"
        with gzip.open(path, "rt") as f:
            text = f.read()
        with gzip.open(path, "wt") as f:
            f.write(edit_metadata(text))
    for p in src.rglob("*"):
        if p.is_file() and p.suffix != ".txt":
            server.files["/jpg/" + p.relative_to(src).as_posix()] = p.read_bytes()
    reports = io.BytesIO()
    with zipfile.ZipFile(reports, "w") as zf:
        for p in sorted(src.rglob("*.txt")):
            zf.write(p, p.relative_to(src).as_posix())
    server.files["/reports.zip"] = reports.getvalue()
    server.auth = ("u", "p")
    monkeypatch.setenv("PHYSIONET_USERNAME", "u")
    monkeypatch.setenv("PHYSIONET_PASSWORD", "p")
    return DataConfig(source="real", urls={"mimic": server.url + "/jpg/", "mimic_reports": server.url + "/reports.zip"})


def test_mimic_table_with_a_traversal_dicom_id_is_refused_before_any_image_request(server, tmp_path, monkeypatch):
    def hostile(text: str) -> str:
        lines = text.splitlines()
        first = lines[1].split(",")
        first[0] = "../../../../../../evil"
        lines[1] = ",".join(first)
        return "\n".join(lines) + "\n"

    cfg = _serve_mimic(server, tmp_path, monkeypatch, hostile)
    server.files["/evil.jpg"] = b"server-chosen bytes"
    before = sorted(p for p in tmp_path.rglob("*") if "src" not in p.parts)
    with pytest.raises(
        FetchError,
        match=r"metadata\.csv\.gz, row 1: dicom_id '\.\./\.\./\.\./\.\./\.\./\.\./evil' "
        r"is not a plain file name.*Refusing",
    ):
        fetch_dataset("mimic", tmp_path / "raw", cfg)
    assert not any("evil" in path for path, _ in server.requests)
    assert not any(p.suffix == ".jpg" for path, _ in server.requests for p in [Path(path)])  # no image requested
    written = sorted(p for p in tmp_path.rglob("*") if "src" not in p.parts)
    assert [p for p in written if p not in before and tmp_path / "raw" not in p.parents and p != tmp_path / "raw"] == []
    assert not (tmp_path / "raw" / "mimic").exists()


def test_truncated_mimic_table_is_named_and_removed(server, tmp_path, monkeypatch):
    cfg = _serve_mimic(server, tmp_path, monkeypatch)
    key = "/jpg/mimic-cxr-2.0.0-metadata.csv.gz"
    good = server.files[key]
    server.files[key] = good[:-30]
    with pytest.raises(FetchError, match=r"mimic-cxr-2\.0\.0-metadata\.csv\.gz: the compressed table is truncated"):
        fetch_dataset("mimic", tmp_path / "raw", cfg)
    server.files[key] = good
    assert fetch_dataset("mimic", tmp_path / "raw", cfg)["source"] == "real"  # the next run downloads it again


def test_zip_entries_that_are_links_are_refused(server, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("lung_colon_image_set/readme.txt", "x")
        link = zipfile.ZipInfo("lung_colon_image_set/lung_image_sets/lung_n/evil.jpeg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    server.files["/LC25000.zip"] = buf.getvalue()
    cfg = DataConfig(source="real", urls={"lc25000": server.url + "/LC25000.zip"})
    with pytest.raises(
        FetchError,
        match=r"refusing entry 'lung_colon_image_set/lung_image_sets/lung_n/evil\.jpeg': "
        "it is a symbolic link",
    ):
        fetch_dataset("lc25000", tmp_path / "raw", cfg)
    assert not (tmp_path / "raw" / "lc25000").exists()
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [".downloads"]


def test_zip_entries_outside_the_folder_are_refused(server, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../escaped.txt", "x")
    server.files["/LC25000.zip"] = buf.getvalue()
    cfg = DataConfig(source="real", urls={"lc25000": server.url + "/LC25000.zip"})
    with pytest.raises(FetchError, match=r"refusing entry '\.\./\.\./escaped\.txt' outside the target folder"):
        fetch_dataset("lc25000", tmp_path / "raw", cfg)
    assert not list(tmp_path.rglob("escaped.txt"))


SECRETS = ("hunter2", "AKIAEXAMPLE", "deadbeefsig", "tok123", "k3y")


@pytest.mark.parametrize(
    "url",
    [
        "http://alice:hunter2@HOST/missing.zip",
        "http://HOST/missing.zip?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIAEXAMPLE%2F2026&X-Amz-Signature=deadbeefsig",
        "http://HOST/missing.zip?Expires=1&Signature=deadbeefsig&Key-Pair-Id=k3y",
        "http://HOST/missing.zip?sv=2020&sig=deadbeefsig&token=tok123",
    ],
)
def test_urls_in_errors_and_logs_are_redacted(server, tmp_path, caplog, url):
    url = url.replace("HOST", server.url.removeprefix("http://"))
    cfg = DataConfig(source="real", urls={"lc25000": url})
    with caplog.at_level("DEBUG"), pytest.raises(DownloadError, match="HTTP 404") as err:
        fetch_dataset("lc25000", tmp_path, cfg)
    text = str(err.value) + caplog.text
    assert "missing.zip" in text and "***" in text
    assert not [s for s in SECRETS if s in text]
    dead = url.replace(server.url.removeprefix("http://"), "127.0.0.1:9")  # nothing listens: connection errors
    with pytest.raises(DownloadError, match="failed after 1 retries") as err:
        download(dead, tmp_path / "x.zip", retries=1, progress=False)
    assert not [s for s in SECRETS if s in str(err.value)] and err.value.__cause__ is None


def test_redact_url_keeps_what_helps_and_hides_secrets():
    assert (
        redact_url("https://u:pw@h.org/a/b.zip?X-Amz-Date=20260101&X-Amz-Signature=abc")
        == "https://***@h.org/a/b.zip?X-Amz-Date=20260101&X-Amz-Signature=***"
    )
    assert (
        redact_url("fetching /f.zip?access_token=xyz&part=2 failed") == "fetching /f.zip?access_token=***&part=2 failed"
    )
    plain = "https://physionet.org/files/mimic-cxr-jpg/2.1.0/"
    assert redact_url(plain) == plain
