"""The ``fetch`` stage: put a data set's raw files into ``{raw}/<name>/`` in its distributed layout
(docs/method.md#data-sets).

``data.source: demo`` generates the synthetic fixture (:mod:`ace_lora.demo`) atomically and skips the
work when a complete one with the same settings exists. ``data.source: real`` verifies data already in place,
or downloads what can be downloaded, as the registry's ``source.download`` says (:mod:`ace_lora.registry`):
LC25000 from a URL (``data.urls.lc25000``) or Kaggle, RSNA and SIIM with the Kaggle CLI, MIMIC-CXR-JPG and its
reports from PhysioNet with a credentialed account. CheXpert, MHIST and NIH ChestX-ray14 need a request form or a
manual download: the error says what to get, from where (the registry's ``source``), and where to put it. The
layout check reads the registry's ``tables``, ``files`` and ``folders``.

Every path returns a *layout record*: data set, source, the label tables found with their sha256, file counts, and
a fingerprint of every raw file (``files``: content sha256 by default, or size + mtime with ``data.raw_hash:
stat``), so a repaired raw image changes the record and reruns ``prepare``. The record holds no machine path or
time: identical data give a byte-identical record.

Downloaded tables and archives are not trusted: ids that would build a path or URL outside its folder are refused
before any request, archive entries that are links or leave the target folder are refused, and URLs are printed
only through :func:`redact_url` (no user info, no signed query parameters).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from ace_lora.config import DataConfig, to_dict
from ace_lora.data.readers import BadInputError, read_table, safe_name
from ace_lora.demo import FIXTURE_VERSION, write_fixture
from ace_lora.io import atomic_dir, within
from ace_lora.registry import DATASETS

__all__ = [
    "FetchError",
    "DownloadError",
    "fetch_dataset",
    "verify_layout",
    "download",
    "fingerprint_files",
    "redact_url",
]

FIXTURE_MARKER = ".fixture.json"
log = logging.getLogger(__name__)


# Query parameters whose value is a secret (signed URLs: AWS, GCS, Azure SAS, CloudFront; tokens and keys).
_SECRET_PARAM = re.compile(r"sig|signature|token|key|secret|passw|pwd|credential|auth|session|policy|code", re.I)
_USERINFO = re.compile(r"(?<=://)[^/\s@'\"]+@")
_QUERY_PARAM = re.compile(r"([?&;])([^=&#;\s'\"]+)=([^&#;\s'\"]*)")


def redact_url(text: str) -> str:
    """``text`` (a URL, or a message holding URLs) with user info (``user:pass@``) and the values of secret query
    parameters (X-Amz-Signature, X-Amz-Credential, Signature, sig, token, key, ...) replaced by ``***``."""
    text = _USERINFO.sub("***@", str(text))
    return _QUERY_PARAM.sub(lambda m: f"{m[1]}{m[2]}=***" if _SECRET_PARAM.search(m[2]) else m[0], text)


class _RedactFilter(logging.Filter):
    """Redacts URLs in log records (this module's and urllib3's request lines, which hold the query string)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_url(record.getMessage()), ()
        return True


for _name in (__name__, "urllib3.connectionpool"):
    if not any(isinstance(f, _RedactFilter) for f in logging.getLogger(_name).filters):
        logging.getLogger(_name).addFilter(_RedactFilter())


class FetchError(RuntimeError):
    """The raw data set is missing, incomplete or cannot be fetched; the message says what to do (URLs redacted)."""

    def __init__(self, message: str):
        super().__init__(redact_url(message))


class DownloadError(FetchError):
    """A download failed (HTTP error, checksum mismatch); nothing partial is left at the destination."""


# ----------------------------------------------------------------------------------------- downloads


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    auth: tuple[str, str] | None = None,
    *,
    retries: int = 5,
    chunk_size: int = 1 << 16,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming with HTTP Range after interruptions.

    An existing complete ``dest`` (matching ``sha256`` when given) is kept. The ``.part`` file is renamed to
    ``dest`` only when the transfer is complete and its sha256 matches; on a mismatch both are removed and
    :class:`DownloadError` names the URL and both hashes. ``auth``: HTTP basic (user, password).
    """
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or _sha256(dest) == sha256.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            if _transfer(url, part, auth, chunk_size=chunk_size, timeout=timeout, progress=progress):
                break
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
            attempt += 1
            if attempt > retries:
                raise DownloadError(
                    f"{url}: download failed after {retries} retries ({err}); the partial file "
                    f"{part} is kept and the next run resumes it"
                ) from None  # no URL in a traceback
            time.sleep(min(2.0**attempt, 30.0) * 0.05)
    got = _sha256(part)
    if sha256 is not None and got != sha256.lower():
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: sha256 mismatch: expected {sha256.lower()}, got {got}; the file was removed")
    os.replace(part, dest)
    return dest


def _transfer(
    url: str, part: Path, auth: tuple[str, str] | None, *, chunk_size: int, timeout: float, progress: bool
) -> bool:
    """One request of :func:`download`: append the rest of ``url`` to ``part`` (from its current size, by HTTP
    Range). True when ``part`` is complete; False when a stale ``part`` was removed and the transfer must start
    over. A connection error propagates (the caller retries); an HTTP error raises :class:`DownloadError`."""
    from tqdm.auto import tqdm

    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with requests.get(url, headers=headers, auth=auth, stream=True, timeout=timeout) as resp:
        if resp.status_code == 416 and offset:  # nothing left to send: the .part is complete (or stale)
            total = resp.headers.get("Content-Range", "").rpartition("/")[2]
            if total.isdigit() and int(total) == offset:
                return True
            part.unlink()
            return False
        if resp.status_code in (401, 403):
            raise DownloadError(
                f"{url}: HTTP {resp.status_code} (access denied; check the credentials "
                "and that the data use agreement is signed)"
            )
        if resp.status_code >= 400:
            raise DownloadError(f"{url}: HTTP {resp.status_code} {resp.reason}")
        resumed = resp.status_code == 206
        if offset and resumed:
            start = resp.headers.get("Content-Range", "").removeprefix("bytes ").partition("-")[0]
            if start != str(offset):
                raise DownloadError(f"{url}: server resumed at byte {start!r}, expected {offset}")
        length = resp.headers.get("Content-Length")
        total = (int(length) + (offset if resumed else 0)) if length and length.isdigit() else None
        with (
            open(part, "ab" if resumed else "wb") as f,
            tqdm(
                total=total,
                initial=offset if resumed else 0,
                unit="B",
                unit_scale=True,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            for block in resp.iter_content(chunk_size=chunk_size):
                f.write(block)
                bar.update(len(block))
        if total is not None and part.stat().st_size < total:
            raise requests.ConnectionError(f"connection closed at byte {part.stat().st_size} of {total}")
    return True


def _extract(archive: Path, into: Path) -> None:
    """Unzip ``archive`` into ``into``; entries that are links, or that would land outside the folder, are refused
    before anything is written."""
    into = into.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise FetchError(
                        f"{archive}: refusing entry {info.filename!r}: it is a symbolic link; the archive "
                        "is not the expected data set"
                    )
                if not within(into, into / info.filename) or (into / info.filename).resolve() == into:
                    raise FetchError(f"{archive}: refusing entry {info.filename!r} outside the target folder")
            zf.extractall(into)
    except (zipfile.BadZipFile, EOFError) as err:
        raise FetchError(f"{archive}: not a complete zip archive ({err}); delete it and fetch again") from None


# -------------------------------------------------------------------------------------------- layout


def verify_layout(name: str, root: str | Path) -> dict:
    """Check ``root`` (= ``{raw}/<name>``) has the files of its distributed layout (the registry's ``tables``,
    ``files`` and ``folders`` of data set ``name``); returns the layout record.

    Raises :class:`FetchError` listing what is missing (and what to get, from where).
    """
    if name not in DATASETS:
        raise FetchError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    root = Path(root)
    if not root.is_dir():
        raise FetchError(_missing_message(name, root, ["the data set folder"]))
    dataset = DATASETS[name]
    wanted = {n for table in dataset.tables for n in table.names}
    found_tables: dict[str, Path] = {}
    counts = {kind: 0 for kind in dataset.files}
    folders: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        for fn in filenames:
            if fn in wanted:
                prev = found_tables.get(fn)
                if prev is None or len((here / fn).parts) < len(prev.parts):
                    found_tables[fn] = here / fn
            suffix = os.path.splitext(fn)[1].lower()
            for kind, suffixes in dataset.files.items():
                if suffix in suffixes:
                    counts[kind] += 1
                    if here.name in dataset.folders:
                        folders[here.name] = folders.get(here.name, 0) + 1
    missing, tables = [], {}
    for table in dataset.tables:
        hit = next((found_tables[n] for n in table.names if n in found_tables), None)
        if hit is None:
            missing.append(" or ".join(table.names))
        else:
            tables[table.key] = hit
    missing += [f"{kind} ({'/'.join(sfx)} files)" for kind, sfx in dataset.files.items() if counts[kind] == 0]
    missing += [f"class folder {f}/ with images" for f in dataset.folders if not folders.get(f)]
    if missing:
        raise FetchError(_missing_message(name, root, missing))
    record = {
        "dataset": name,
        "tables": {k: p.relative_to(root).as_posix() for k, p in tables.items()},
        "sha256": {p.relative_to(root).as_posix(): _sha256(p) for p in tables.values()},
        "counts": counts,
    }
    if folders:
        record["counts"]["per_folder"] = dict(sorted(folders.items()))
    return record


def fingerprint_files(root: str | Path, mode: str = "content", workers: int | None = None) -> dict:
    """One fingerprint of every file under ``root`` (names starting with ``.`` excepted): ``sha256`` of the lines
    ``<relative path>\\t<sha256 of the content>`` (``mode="content"``) or ``<relative path>\\t<size>\\t<mtime ns>``
    (``mode="stat"``) in sorted path order, with the file count and total bytes. Content hashing runs on a thread
    pool (hashlib releases the GIL)."""
    if mode not in ("content", "stat"):
        raise ValueError(f"data.raw_hash must be content or stat, got {mode!r}")
    root = Path(root)
    files: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [
            (Path(dirpath, f).relative_to(root).as_posix(), Path(dirpath, f))
            for f in filenames
            if not f.startswith(".")
        ]
    files.sort()
    stats = [p.stat() for _, p in files]
    if mode == "content":
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            keys = list(pool.map(_sha256, [p for _, p in files]))
    else:
        keys = [f"{st.st_size}\t{st.st_mtime_ns}" for st in stats]
    digest = hashlib.sha256()
    for (rel, _), key in zip(files, keys):
        digest.update(f"{rel}\t{key}\n".encode())
    return {
        "hash": mode,
        "count": len(files),
        "bytes": int(sum(st.st_size for st in stats)),
        "sha256": digest.hexdigest(),
    }


def _missing_message(name: str, root: Path, missing: list[str]) -> str:
    src = DATASETS[name].source
    return (
        f"{root}: data set {name!r} is incomplete or absent (missing: {'; '.join(missing)}). "
        f"Get {src.what} from {src.where} and unpack it into {root}/ (any nesting below it works), "
        f"or set data.source: demo to use the synthetic demo data."
    )


# ---------------------------------------------------------------------------------------------- demo


def _fetch_demo(name: str, raw_root: Path, data_cfg: DataConfig) -> dict:
    dest = raw_root / name
    settings = {"dataset": name, "fixture_version": FIXTURE_VERSION, **to_dict(data_cfg.demo)}
    marker = dest / FIXTURE_MARKER
    if dest.exists():
        if not marker.is_file():
            raise FetchError(
                f"{dest} exists but is not a synthetic demo fixture (real data?); refusing to overwrite "
                "it. Set data.source: real to use it, or move it away to generate the demo data."
            )
        info = json.loads(marker.read_text())
        if info.get("settings") == settings:
            record = verify_layout(name, dest)
            log.info("%s: demo data with the same settings already in place; not regenerated", dest)
            return {**record, "source": "demo", "settings": settings, "fixture": info.get("summary", {})}
    with atomic_dir(dest) as tmp:
        summary = write_fixture(name, tmp, data_cfg.demo)
        record = verify_layout(name, tmp)
        (tmp / FIXTURE_MARKER).write_text(
            json.dumps({"settings": settings, "summary": summary}, indent=2, sort_keys=True) + "\n"
        )
    return {**record, "source": "demo", "settings": settings, "fixture": summary}


# ---------------------------------------------------------------------------------------------- real


def kaggle_credentials() -> bool:
    """True when the Kaggle CLI can authenticate (environment variables or ~/.kaggle/kaggle.json)."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config_dir / "kaggle.json").is_file()


def _fetch_kaggle(name: str, dest: Path, data_cfg: DataConfig) -> None:
    """The Kaggle CLI download of the registry's ``source.kaggle`` arguments, unzipped into ``dest``."""
    src = DATASETS[name].source
    if not kaggle_credentials():
        raise FetchError(
            _missing_message(name, dest, ["the data set folder"])
            + " To download it automatically, provide Kaggle credentials (KAGGLE_USERNAME and "
            "KAGGLE_KEY, or ~/.kaggle/kaggle.json) and install the Kaggle CLI (pip install kaggle)."
        )
    exe = shutil.which("kaggle")
    if exe is None:
        raise FetchError(
            f"Kaggle credentials found but the `kaggle` command is not installed; run "
            f"`pip install kaggle` and re-run `python -m ace_lora fetch {name}`."
        )
    with atomic_dir(dest) as tmp:
        proc = subprocess.run([exe, *src.kaggle, "-p", str(tmp)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise FetchError(
                f"kaggle {' '.join(src.kaggle)} failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-800:]}. Check that you accepted the rules at "
                f"{src.where}."
            )
        for archive in sorted(tmp.glob("*.zip")):
            _extract(archive, tmp)
            archive.unlink()
        verify_layout(name, tmp)


def _fetch_url(name: str, dest: Path, data_cfg: DataConfig) -> None:
    """The zip archive at ``data.urls.<name>`` (checked against ``data.sha256.<name>`` when set), unzipped into
    ``dest``; without a URL, the Kaggle download when the source has one and the Kaggle CLI can run."""
    url = data_cfg.urls.get(name)
    kaggle = bool(DATASETS[name].source.kaggle)
    if not url:
        if kaggle and kaggle_credentials() and shutil.which("kaggle"):
            _fetch_kaggle(name, dest, data_cfg)
            return
        raise FetchError(
            _missing_message(name, dest, ["the data set folder"])
            + f" To download it automatically, set data.urls.{name} to a URL of its zip archive "
            f"(optionally data.sha256.{name}){', or provide Kaggle credentials' if kaggle else ''}."
        )
    file_name = Path(url.split("?")[0].split("#")[0]).name
    archive = dest.parent / ".downloads" / (file_name if file_name not in ("", ".", "..") else f"{name}.zip")
    download(url, archive, sha256=data_cfg.sha256.get(name))
    with atomic_dir(dest) as tmp:
        _extract(archive, tmp)
        verify_layout(name, tmp)
    archive.unlink()


def _physionet_auth() -> tuple[str, str] | None:
    user, password = os.environ.get("PHYSIONET_USERNAME"), os.environ.get("PHYSIONET_PASSWORD")
    return (user, password) if user and password else None


def _fetch_physionet(name: str, dest: Path, data_cfg: DataConfig) -> None:
    """MIMIC-CXR-JPG from PhysioNet: its tables (the first registry name of each), the reports archive and the
    frontal images listed in the metadata table, over HTTP basic auth (like ``wget -r``).

    Files already downloaded are kept, so an interrupted fetch resumes; the folder is complete only when
    every listed file is present. ``data.urls.<name>`` / ``data.urls.<name>_reports`` override the registry's
    ``jpg_base`` / ``reports`` URLs.
    """
    auth = _physionet_auth()  # sent only to the configured base URLs, never to a host a table names
    if auth is None:
        raise FetchError(
            _missing_message(name, dest, ["the data set folder"]) + " To download it automatically, "
            "set PHYSIONET_USERNAME and PHYSIONET_PASSWORD for a credentialed PhysioNet account."
        )
    dataset = DATASETS[name]
    base = data_cfg.urls.get(name, dataset.source.urls["jpg_base"]).rstrip("/") + "/"
    reports_url = data_cfg.urls.get(f"{name}_reports", dataset.source.urls["reports"])
    work = dest.parent / f".{dest.name}.download"
    for table in dataset.tables:
        download(base + table.names[0], work / table.names[0], auth=auth)
    reports_zip = dest.parent / ".downloads" / Path(dataset.source.urls["reports"]).name
    download(reports_url, reports_zip, auth=auth)
    files = _physionet_images(work / dataset.table("metadata").names[0], work)
    for rel in files:
        download(base + rel, work / rel, auth=auth, progress=False)
    _extract(reports_zip, work)
    verify_layout(name, work)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(work, dest)
    reports_zip.unlink()


def _physionet_images(table: Path, work: Path) -> list[str]:
    """The relative paths of the frontal (PA/AP) images the MIMIC-CXR-JPG metadata ``table`` lists; every id is
    checked before the first image is requested."""
    try:
        meta = read_table(table, ["dicom_id", "subject_id", "study_id", "ViewPosition"], dtype=str)
    except BadInputError as err:
        table.unlink(missing_ok=True)
        raise FetchError(f"{err}; the file was removed, run fetch again to download it again") from None
    frontal = meta.assign(row=range(1, len(meta) + 1))
    frontal = frontal[frontal["ViewPosition"].astype(str).str.strip().isin(["PA", "AP"])]
    files = []
    for rec in frontal.itertuples():
        try:
            subject, study, dicom = (
                safe_name(getattr(rec, c), table, rec.row, c) for c in ("subject_id", "study_id", "dicom_id")
            )
        except BadInputError as err:
            raise FetchError(f"{err}. Refusing to download from a table with such ids.") from None
        rel = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
        if not within(work, work / rel):
            raise FetchError(f"{table}, row {rec.row}: path {rel!r} leaves {work}; refusing to download")
        files.append(rel)
    return files


# Downloaders by the registry's ``source.download``.
_DOWNLOADERS = {"kaggle": _fetch_kaggle, "url": _fetch_url, "physionet": _fetch_physionet}


def _fetch_real(name: str, raw_root: Path, data_cfg: DataConfig) -> dict:
    dest = raw_root / name
    if dest.exists() and not (dest / FIXTURE_MARKER).exists():
        return {**verify_layout(name, dest), "source": "real"}
    if (dest / FIXTURE_MARKER).exists():
        raise FetchError(
            f"{dest} holds the synthetic demo data but data.source is real; move it away (or delete "
            f"it) and put the real {DATASETS[name].source.what} there."
        )
    downloader = _DOWNLOADERS.get(DATASETS[name].source.download)
    if downloader is None:  # a request form / manual download
        raise FetchError(
            _missing_message(name, dest, ["the data set folder"]) + " It cannot be downloaded automatically."
        )
    downloader(name, dest, data_cfg)
    log.info("%s: downloaded", dest)
    return {**verify_layout(name, dest), "source": "real"}


# -------------------------------------------------------------------------------------------- public


def fetch_dataset(name: str, raw_root: Path, data_cfg: DataConfig) -> dict:
    """Make ``raw_root/name`` hold data set ``name`` in its raw layout; returns the layout record
    (``dataset``, ``source``, ``tables``, ``sha256`` of the label tables, ``counts``, ``files`` (the
    :func:`fingerprint_files` of the folder), and for the demo ``settings`` + ``fixture`` summary). The record
    depends only on the data, not on whether this call generated, downloaded or merely verified it, so re-running
    the stage leaves downstream stages up to date."""
    if name not in DATASETS:
        raise FetchError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    raw_root = Path(raw_root)
    raw_root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    fetch = _fetch_demo if data_cfg.source == "demo" else _fetch_real
    record = fetch(name, raw_root, data_cfg)
    record["files"] = fingerprint_files(raw_root / name, data_cfg.raw_hash)
    log.info(
        "%s: %d raw files, %.1f MB, fingerprinted (%s) in %.1f s",
        raw_root / name,
        record["files"]["count"],
        record["files"]["bytes"] / 1e6,
        data_cfg.raw_hash,
        time.perf_counter() - start,
    )
    return record
