"""The data set and benchmark registry: one declaration per data set, read by every stage.

Each :class:`Dataset` says what its raw download holds (label tables and the file names they go by, image suffixes,
class folders), where the real data comes from, how ``prepare`` splits it, its findings, and the benchmarks
evaluated on it. Each :class:`Benchmark` says which split, classes and task it uses, its domain (which picks the
prompt templates) and the default prompt phrase(s) of every class.

``fetch`` checks a raw folder against ``tables``/``files``/``folders``; ``prepare`` finds its tables by the same
names and splits as ``split`` says; ``prompts`` builds prompts from the benchmarks' phrases; the evaluation loads
benchmarks from here; the CLI offers :data:`DATASET_NAMES` as choices; the demo generator writes one synthetic raw
folder per data set. The Snakemake and DVC files list the same data sets (``tests/test_registry.py`` checks).

This module is plain data (standard library only), so that importing it costs nothing and changes nothing a stage
depends on but the facts written here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

TASKS = ("multiclass", "binary", "multilabel", "segmentation", "detection")
DOMAINS = ("chest", "histopathology")
#: How ``prepare`` assigns the ``split`` column: the data set's own partition (``official``), the head of an
#: official list (``list_head``: NIH's validation images), everything one split (``single``), or a seeded hash of
#: the patient id over ``fractions`` (``patient_hash``).
SPLIT_RULES = ("official", "list_head", "single", "patient_hash")
#: How ``fetch`` may download a data set's real data (:class:`Source`); ``None``: manual download only.
DOWNLOADS = ("kaggle", "url", "physionet", None)


class RegistryError(ValueError):
    """An unknown data set or benchmark, or a declaration that contradicts itself; the message names it."""


# ------------------------------------------------------------------------------------------------ findings

#: The 14 findings of the CheXpert labeller, alphabetical (the column order of MIMIC-CXR's
#: ``mimic-cxr-2.0.0-chexpert.csv``; the order of every manifest and label vector of this project).
CHEXPERT_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
#: The same 14 findings in the column order of CheXpert's ``train.csv``.
CHEXPERT_TABLE_ORDER = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
#: The 14 NIH ChestX-ray14 findings, spelled and ordered as in ``Data_Entry_2017_v2020.csv``'s documentation.
NIH_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
#: The five classes of CheXpert 5x200 (GLoRIA/MGCA protocol).
CHEXPERT_5X200_CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")

#: Default phrase of a "no finding" class in prompts.
NORMAL_PHRASE = "no acute findings"
#: ``prompts.negative`` -> phrase of the negative ("Normal") class of the benchmarks that declare one
#: (``negative_class``); the reference's phrase is "No Finding".
NEGATIVE_PHRASES = MappingProxyType({"reference": "No Finding", "no_acute_findings": NORMAL_PHRASE})

# One phrase per finding (the lower-case name unless the name is not what a report says).
_CHEXPERT_PHRASES = {f: (f.lower(),) for f in CHEXPERT_FINDINGS} | {
    "No Finding": (NORMAL_PHRASE,),
    "Pleural Other": ("pleural thickening",),
}
_NIH_PHRASES = {f: (f.lower(),) for f in NIH_FINDINGS} | {
    "Effusion": ("pleural effusion",),
    "Pleural_Thickening": ("pleural thickening",),
    "No Finding": (NORMAL_PHRASE,),
}


# ------------------------------------------------------------------------------------------------ classes


@dataclass(frozen=True)
class Table:
    """A label table of a raw download: ``key`` (how code refers to it), the file names it goes by (the first one
    present wins; found at any depth by ``fetch``, within a few folders of the top by ``prepare``), and what it is."""

    key: str
    names: tuple[str, ...]
    what: str


@dataclass(frozen=True)
class Source:
    """Where the real data comes from: what to get and from where (every "missing data" message says both), and
    how ``fetch`` may download it (``download``, one of :data:`DOWNLOADS`): ``kaggle`` runs the Kaggle CLI with the
    arguments ``kaggle``; ``url`` downloads the zip archive at ``data.urls.<name>`` (else the Kaggle CLI, when
    ``kaggle`` is given); ``physionet`` downloads MIMIC-CXR-JPG's tables and frontal images below ``urls["jpg_base"]``
    and the reports archive ``urls["reports"]`` with a credentialed account; ``None``: a manual download only."""

    what: str
    where: str
    kaggle: tuple[str, ...] = ()
    urls: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    download: str | None = None

    def __post_init__(self):
        if self.download not in DOWNLOADS:
            raise RegistryError(f"source {self.what!r}: download {self.download!r} is not one of {DOWNLOADS}")
        if self.download == "kaggle" and not self.kaggle:
            raise RegistryError(f"source {self.what!r}: a kaggle download needs the Kaggle CLI arguments")
        if self.download == "physionet" and not {"jpg_base", "reports"} <= set(self.urls):
            raise RegistryError(f"source {self.what!r}: a physionet download needs urls jpg_base and reports")


@dataclass(frozen=True)
class Split:
    """How ``prepare`` fills the ``split`` column (one of :data:`SPLIT_RULES`). ``names``: the data set's own split
    name -> the manifest's (``official``); ``fractions``: train/val/test shares of ``patient_hash``; ``fraction``:
    the share of the list taken by ``list_head``; ``value``: the one split of ``single``."""

    rule: str
    names: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    fractions: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    fraction: float | None = None
    value: str | None = None

    def __post_init__(self):
        if self.rule not in SPLIT_RULES:
            raise RegistryError(f"split rule {self.rule!r} is not one of {SPLIT_RULES}")
        if self.rule == "patient_hash" and not self.fractions:
            raise RegistryError("a patient_hash split needs fractions")


@dataclass(frozen=True)
class Benchmark:
    """One evaluation unit over a prepared data set.

    ``classes``: class names (the manifest's ``label`` values for single-label tasks; the 0/1 columns for
    multilabel ones). ``phrases``: class -> default prompt phrase(s); it may name one class more than ``classes``,
    the "No Finding" negative of a multilabel benchmark. ``label_column``: ``label`` (single-label), ``None``
    (multilabel: ``classes`` are columns), ``mask`` (segmentation); detection reads ``boxes.csv``. ``filter``:
    column -> value rows must match (e.g. LC25000's organ). ``positive``: the positive class of a binary task.
    ``negative_class``: the class whose phrase ``prompts.negative`` sets. ``dataset`` is filled in by the
    :class:`Dataset` that lists the benchmark.
    """

    name: str
    task: str
    classes: tuple[str, ...]
    phrases: MappingProxyType
    description: str = ""
    domain: str = "chest"
    split: str = "test"
    label_column: str | None = "label"
    filter: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    positive: str | None = None
    negative_class: str | None = None
    dataset: str = ""

    def __post_init__(self):
        object.__setattr__(self, "phrases", MappingProxyType({k: tuple(v) for k, v in dict(self.phrases).items()}))
        object.__setattr__(self, "filter", MappingProxyType(dict(self.filter)))
        if self.task not in TASKS:
            raise RegistryError(f"benchmark {self.name}: task {self.task!r} is not one of {TASKS}")
        if self.domain not in DOMAINS:
            raise RegistryError(f"benchmark {self.name}: domain {self.domain!r} is not one of {DOMAINS}")
        if self.positive is not None and self.positive not in self.classes:
            raise RegistryError(f"benchmark {self.name}: positive {self.positive!r} is not among {self.classes}")
        missing = [c for c in self.classes if not self.phrases.get(c)]
        if missing:
            raise RegistryError(f"benchmark {self.name}: no prompt phrase for class(es) {missing}")
        if self.negative_class is not None and self.negative_class not in self.classes:
            raise RegistryError(f"benchmark {self.name}: negative class {self.negative_class!r} is not a class")

    @property
    def prompt_classes(self) -> tuple[str, ...]:
        """The classes that get prompts, in evaluation order: ``classes``, then any further phrased class (the
        "No Finding" negative of a multilabel benchmark)."""
        return tuple(self.classes) + tuple(c for c in self.phrases if c not in self.classes)

    def root(self, processed_root: str | Path) -> Path:
        """The prepared data set folder under ``processed_root`` (manifest paths are relative to it)."""
        return Path(processed_root) / self.dataset

    @property
    def columns(self) -> list[str]:
        """Manifest columns the benchmark needs."""
        needed = ["image", "split"]
        if self.task == "multilabel":
            needed += list(self.classes)
        elif self.label_column:
            needed.append(self.label_column)
        if self.task in ("segmentation", "detection") and "label" not in needed:
            needed.append("label")
        return needed + [c for c in self.filter if c not in needed]


@dataclass(frozen=True)
class Dataset:
    """One data set: its raw layout, source, split rule, findings and benchmarks.

    ``tables``: the label tables ``fetch`` requires and ``prepare`` reads. ``files``: kind -> image/text suffixes
    the raw folder must hold at least one of. ``folders``: class folders that must each hold images (LC25000).
    ``findings``: the 0/1 label columns of its manifest (multi-label sets). ``role``: ``train`` (image-report
    pairs), ``validation`` (model selection) or ``test`` (zero-shot benchmarks only).
    """

    name: str
    title: str
    role: str
    domain: str
    tables: tuple[Table, ...]
    files: MappingProxyType
    source: Source
    split: Split
    benchmarks: tuple[Benchmark, ...] = ()
    findings: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "files", MappingProxyType({k: tuple(v) for k, v in dict(self.files).items()}))
        object.__setattr__(
            self,
            "benchmarks",
            tuple(b if b.dataset == self.name else _with_dataset(b, self.name) for b in self.benchmarks),
        )
        if self.role not in ("train", "validation", "test"):
            raise RegistryError(f"data set {self.name}: role {self.role!r} is not train, validation or test")
        if self.domain not in DOMAINS:
            raise RegistryError(f"data set {self.name}: domain {self.domain!r} is not one of {DOMAINS}")

    def table(self, key: str) -> Table:
        """The table declared under ``key``."""
        for table in self.tables:
            if table.key == key:
                return table
        raise RegistryError(
            f"data set {self.name} declares no table {key!r}; it has {', '.join(t.key for t in self.tables) or 'none'}"
        )


def _with_dataset(benchmark: Benchmark, dataset: str) -> Benchmark:
    if benchmark.dataset:
        raise RegistryError(f"benchmark {benchmark.name} is declared by data sets {benchmark.dataset} and {dataset}")
    values = {f: getattr(benchmark, f) for f in benchmark.__dataclass_fields__}
    return Benchmark(**{**values, "dataset": dataset})


def _pair(*classes: str, negative: str = "Normal", **phrases: str) -> dict[str, tuple[str, ...]]:
    """Phrases of a two-class chest benchmark whose negative class takes ``prompts.negative``'s phrase."""
    return {c: ((NEGATIVE_PHRASES["reference"],) if c == negative else (phrases[c.lower()],)) for c in classes}


# ----------------------------------------------------------------------------------------------- registry

_MIMIC = Dataset(
    "mimic",
    "MIMIC-CXR-JPG 2.1.0 with the MIMIC-CXR free-text reports",
    role="train",
    domain="chest",
    tables=(
        Table("metadata", ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"), "MIMIC metadata table"),
        Table("split", ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv"), "MIMIC split table"),
        Table("chexpert", ("mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-chexpert.csv"), "MIMIC chexpert table"),
    ),
    files={"images": (".jpg",), "reports": (".txt",)},
    source=Source(
        what="MIMIC-CXR-JPG 2.1.0 (images + the metadata/split/chexpert tables) and the MIMIC-CXR 2.1.0 free-text "
        "reports (mimic-cxr-reports.zip)",
        where="https://physionet.org/content/mimic-cxr-jpg/2.1.0/ and https://physionet.org/content/mimic-cxr/2.1.0/ "
        "(credentialed PhysioNet account + signed DUA)",
        urls=MappingProxyType(
            {
                "jpg_base": "https://physionet.org/files/mimic-cxr-jpg/2.1.0/",
                "reports": "https://physionet.org/files/mimic-cxr/2.1.0/mimic-cxr-reports.zip",
            }
        ),
        download="physionet",
    ),
    split=Split("official", names=MappingProxyType({"train": "train", "validate": "val", "test": "test"})),
    findings=CHEXPERT_FINDINGS,
    benchmarks=(
        Benchmark(
            "mimic",
            "multilabel",
            CHEXPERT_FINDINGS,
            _CHEXPERT_PHRASES,
            split="val",
            label_column=None,
            description="MIMIC-CXR official validate split, 14 CheXpert findings (training data; validation only)",
        ),
    ),
)

_NIH14 = Dataset(
    "nih14",
    "NIH ChestX-ray14",
    role="validation",
    domain="chest",
    tables=(
        Table(
            "labels",
            (
                "Data_Entry_2017_v2020.csv",
                "Data_Entry_2017_v2020.csv.gz",
                "Data_Entry_2017.csv",
                "Data_Entry_2017.csv.gz",
            ),
            "NIH Data_Entry table",
        ),
        Table("test_list", ("test_list.txt",), "NIH test_list.txt"),
    ),
    files={"images": (".png",)},
    source=Source(
        what="NIH ChestX-ray14: Data_Entry_2017_v2020.csv, test_list.txt, train_val_list.txt and images_001 ... "
        "images_012 (each images_XXX/images/*.png)",
        where="https://nihcc.app.box.com/v/ChestXray-NIHCC",
    ),
    split=Split("list_head", fraction=0.20),
    findings=NIH_FINDINGS,
    benchmarks=(
        Benchmark(
            "nih14",
            "multilabel",
            NIH_FINDINGS,
            _NIH_PHRASES,
            split="val",
            label_column=None,
            description="NIH ChestX-ray14 validation (first 20% of test_list.txt), model selection only",
        ),
    ),
)

_CHEXPERT = Dataset(
    "chexpert",
    "CheXpert-v1.0-small (the 5x200 subset of its training set)",
    role="test",
    domain="chest",
    tables=(Table("labels", ("train.csv",), "CheXpert train.csv"),),
    files={"images": (".jpg",)},
    source=Source(
        what="CheXpert-v1.0-small (train.csv + train/patient*/study*/view*.jpg)",
        where="https://stanfordaimi.azurewebsites.net/datasets/8cbd9ed4-2eb9-4565-affc-111cf4f7ebe2 (Stanford AIMI, "
        "free account + research use agreement)",
    ),
    split=Split("single", value="test"),
    benchmarks=(  # no findings: its manifest has one class label (its train.csv has CHEXPERT_TABLE_ORDER's columns)
        Benchmark(
            "chexpert5x200",
            "multiclass",
            CHEXPERT_5X200_CLASSES,
            {c: _CHEXPERT_PHRASES[c] for c in CHEXPERT_5X200_CLASSES},
            description="CheXpert 5x200 zero-shot classification (GLoRIA/MGCA protocol)",
        ),
    ),
)

_RSNA = Dataset(
    "rsna",
    "RSNA Pneumonia Detection Challenge",
    role="test",
    domain="chest",
    tables=(
        Table(
            "labels",
            (
                "stage_2_train_labels.csv",
                "stage_2_train_labels.csv.gz",
                "stage_1_train_labels.csv",
                "stage_1_train_labels.csv.gz",
            ),
            "RSNA labels table",
        ),
    ),
    files={"images": (".dcm",)},
    source=Source(
        what="RSNA Pneumonia Detection Challenge: stage_2_train_labels.csv and stage_2_train_images/*.dcm",
        where="https://www.kaggle.com/c/rsna-pneumonia-detection-challenge (accept the rules)",
        kaggle=("competitions", "download", "-c", "rsna-pneumonia-detection-challenge"),
        download="kaggle",
    ),
    split=Split("patient_hash", fractions=MappingProxyType({"train": 0.70, "val": 0.15, "test": 0.15})),
    benchmarks=(
        Benchmark(
            "rsna",
            "binary",
            ("Normal", "Pneumonia"),
            _pair("Normal", "Pneumonia", pneumonia="pneumonia"),
            positive="Pneumonia",
            negative_class="Normal",
            description="RSNA Pneumonia zero-shot classification, seeded patient-disjoint test split",
        ),
        Benchmark(
            "rsna_det",
            "detection",
            ("Normal", "Pneumonia"),
            _pair("Normal", "Pneumonia", pneumonia="pneumonia"),
            label_column=None,
            positive="Pneumonia",
            negative_class="Normal",
            filter={"label": "Pneumonia"},
            description="RSNA pneumonia detection, positive images only; boxes in boxes.csv (original pixels)",
        ),
    ),
)

_SIIM = Dataset(
    "siim",
    "SIIM-ACR Pneumothorax Segmentation",
    role="test",
    domain="chest",
    tables=(Table("labels", ("stage_2_train.csv", "train-rle.csv", "train-rle.csv.gz"), "SIIM RLE table"),),
    files={"images": (".dcm",)},
    source=Source(
        what="SIIM-ACR Pneumothorax: train-rle.csv (or stage_2_train.csv) and "
        "dicom-images-train/<study>/<series>/<ImageId>.dcm",
        where="https://www.kaggle.com/datasets/jesperdramsch/siim-acr-pneumothorax-segmentation-data",
        kaggle=("datasets", "download", "-d", "jesperdramsch/siim-acr-pneumothorax-segmentation-data"),
        download="kaggle",
    ),
    split=Split("patient_hash", fractions=MappingProxyType({"train": 0.60, "val": 0.10, "test": 0.30})),
    benchmarks=(
        Benchmark(
            "siim",
            "binary",
            ("Normal", "Pneumothorax"),
            _pair("Normal", "Pneumothorax", pneumothorax="pneumothorax"),
            positive="Pneumothorax",
            negative_class="Normal",
            description="SIIM-ACR Pneumothorax zero-shot classification, 30% seeded test split",
        ),
        Benchmark(
            "siim_seg",
            "segmentation",
            ("Normal", "Pneumothorax"),
            _pair("Normal", "Pneumothorax", pneumothorax="pneumothorax"),
            label_column="mask",
            positive="Pneumothorax",
            negative_class="Normal",
            description="SIIM pneumothorax segmentation (masks = union of all RLE rows)",
        ),
    ),
)

_MHIST = Dataset(
    "mhist",
    "MHIST colorectal polyp histopathology",
    role="test",
    domain="histopathology",
    tables=(Table("labels", ("annotations.csv",), "MHIST annotations.csv"),),
    files={"images": (".png",)},
    source=Source(
        what="MHIST: annotations.csv and images/*.png (images.zip)",
        where="https://bmirds.github.io/MHIST/ (request form; the download link arrives by e-mail)",
    ),
    split=Split("official", names=MappingProxyType({"train": "train", "test": "test"})),
    benchmarks=(
        Benchmark(
            "mhist",
            "binary",
            ("HP", "SSA"),
            {"HP": ("hyperplastic polyp",), "SSA": ("sessile serrated adenoma",)},
            domain="histopathology",
            positive="SSA",
            description="MHIST test partition, hyperplastic polyp vs sessile serrated adenoma",
        ),
    ),
)

#: LC25000 class folder -> organ.
LC25000_CLASSES = MappingProxyType(
    {"lung_aca": "lung", "lung_n": "lung", "lung_scc": "lung", "colon_aca": "colon", "colon_n": "colon"}
)

_LC25000 = Dataset(
    "lc25000",
    "LC25000 lung and colon histopathology",
    role="test",
    domain="histopathology",
    tables=(),
    files={"images": (".jpeg", ".jpg")},
    folders=tuple(LC25000_CLASSES),
    source=Source(
        what="LC25000 (LC25000.zip -> lung_colon_image_set/{lung,colon}_image_sets/<class>/*.jpeg)",
        where="https://github.com/tampapath/lung_colon_image_set (academictorrents) or Kaggle "
        "andrewmvd/lung-and-colon-cancer-histopathological-images; or set data.urls.lc25000 to a mirror of "
        "LC25000.zip",
        kaggle=("datasets", "download", "-d", "andrewmvd/lung-and-colon-cancer-histopathological-images"),
        download="url",
    ),
    split=Split("single", value="test"),
    benchmarks=(
        Benchmark(
            "lc25000_lung",
            "multiclass",
            ("lung_aca", "lung_n", "lung_scc"),
            {
                "lung_aca": ("lung adenocarcinoma",),
                "lung_n": ("benign lung tissue",),
                "lung_scc": ("lung squamous cell carcinoma",),
            },
            domain="histopathology",
            filter={"organ": "lung"},
            description="LC25000 lung, 3-way zero-shot",
        ),
        Benchmark(
            "lc25000_colon",
            "binary",
            ("colon_aca", "colon_n"),
            {"colon_aca": ("colon adenocarcinoma",), "colon_n": ("benign colonic tissue",)},
            domain="histopathology",
            filter={"organ": "colon"},
            positive="colon_aca",
            description="LC25000 colon, 2-way zero-shot",
        ),
    ),
)

#: Every data set, in pipeline order (training data, validation data, then the test benchmarks).
DATASETS: MappingProxyType = MappingProxyType(
    {d.name: d for d in (_MIMIC, _NIH14, _CHEXPERT, _RSNA, _SIIM, _MHIST, _LC25000)}
)
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)

#: Data sets of the zero-shot test benchmarks: the choices of ``evaluate.datasets``.
TEST_DATASETS: tuple[str, ...] = tuple(n for n, d in DATASETS.items() if d.role == "test")
#: Data sets that can select the model (``train.validation``): the validation set first, then the training set's
#: own validation split.
VALIDATION_DATASETS: tuple[str, ...] = tuple(
    n for role in ("validation", "train") for n, d in DATASETS.items() if d.role == role
)

#: Every benchmark, in the order of its data set and its declaration.
BENCHMARKS: MappingProxyType = MappingProxyType({b.name: b for d in DATASETS.values() for b in d.benchmarks})


def get_dataset(name: str) -> Dataset:
    """The data set called ``name``; :class:`RegistryError` lists the known ones."""
    if name not in DATASETS:
        raise RegistryError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``; :class:`RegistryError` lists the known ones."""
    if name not in BENCHMARKS:
        raise RegistryError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def benchmarks_of(dataset: str) -> list[str]:
    """Names of the benchmarks evaluated on data set ``dataset`` (declaration order)."""
    return [b.name for b in get_dataset(dataset).benchmarks]
